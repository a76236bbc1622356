// The play page: draws what the server's dream and real game send and sends the player's actions.
// Protocol: twm_fast/play.py. The server steps once per "step" message; while playing, the next
// step is sent when the last frame has arrived and the step interval has passed.
"use strict";

// Bits of the held-keys mask, in the order of twm_fast.play.ACTION_PARTS.
const PART_BITS = { UP: 1, DOWN: 2, LEFT: 4, RIGHT: 8, FIRE: 16 };
const KEY_PARTS = {
  ArrowUp: "UP", KeyW: "UP", ArrowDown: "DOWN", KeyS: "DOWN", ArrowLeft: "LEFT", KeyA: "LEFT",
  ArrowRight: "RIGHT", KeyD: "RIGHT", Space: "FIRE",
};
const HISTORY = 120;  // steps shown in the reward chart

const state = {
  socket: null, hello: null, playing: false, agent: false, waiting: false, lastSent: 0, interval: 200,
  held: new Set(), head: 0, lastFrame: null, frames: 0, history: [],
};
window.twmPlay = state;  // for the browser test and the curious

const $ = (id) => document.getElementById(id);

function heldMask() {
  let mask = 0;
  for (const part of state.held) mask |= PART_BITS[part];
  return mask;
}

function currentAction() {
  return state.agent ? null : state.hello.action_table[heldMask()];
}

function send(message) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify(message));
}

function requestStep() {
  if (state.waiting || !state.hello) return;
  state.waiting = true;
  state.lastSent = performance.now();
  send({ type: "step", action: currentAction() });
}

function requestReset() {
  state.waiting = true;
  send({ type: "reset" });
}

function tick() {
  if (state.playing && !state.waiting && performance.now() - state.lastSent >= state.interval) requestStep();
  requestAnimationFrame(tick);
}

// ---- Drawing ------------------------------------------------------------------------------------
function drawGray(canvas, b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const context = canvas.getContext("2d");
  const image = context.createImageData(canvas.width, canvas.height);
  for (let i = 0; i < bytes.length; i++) {
    image.data[4 * i] = image.data[4 * i + 1] = image.data[4 * i + 2] = bytes[i];
    image.data[4 * i + 3] = 255;
  }
  context.putImageData(image, 0, 0);
}

function fmt(x, digits = 3) {
  if (x === null || x === undefined) return "-";
  return (x >= 0 ? "+" : "") + x.toFixed(digits);
}

function banner(element, text) {
  element.hidden = !text;
  element.textContent = text || "";
}

function drawAttention() {
  const canvas = $("attention");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);  // 3 rows of at most 28 px and two lines of labels
  const frame = state.lastFrame;
  const attention = frame && frame.attention;
  context.fillStyle = "#555";
  context.font = "11px system-ui, sans-serif";
  if (!attention) {
    context.fillText("(after the first step)", 40, 50);
    return;
  }
  const probs = attention.probs[Math.min(state.head, attention.probs.length - 1)];  // [column][kind]
  const columns = probs.length;
  const cell = Math.min(28, Math.floor((canvas.width - 30) / columns));
  const rows = ["z", "a", "r"];
  let max = 0;
  probs.forEach((col, c) => col.forEach((p, k) => { if (attention.visible[c][k]) max = Math.max(max, p); }));
  for (let c = 0; c < columns; c++) {
    for (let k = 0; k < 3; k++) {
      const x = 24 + c * cell, y = 4 + k * cell;
      if (!attention.visible[c][k]) {
        context.fillStyle = "#eee";
        context.fillRect(x, y, cell - 2, cell - 2);
        context.strokeStyle = "#ccc";
        context.beginPath(); context.moveTo(x, y + cell - 2); context.lineTo(x + cell - 2, y); context.stroke();
        continue;
      }
      const v = max > 0 ? probs[c][k] / max : 0;  // relative to the largest weight
      context.fillStyle = `rgb(${Math.round(255 - 230 * v)}, ${Math.round(255 - 160 * v)}, ${Math.round(255 - 60 * v)})`;
      context.fillRect(x, y, cell - 2, cell - 2);
    }
  }
  context.fillStyle = "#555";
  rows.forEach((r, k) => context.fillText(r, 8, 4 + k * cell + cell / 2 + 3));
  const every = Math.max(1, Math.ceil(columns / 8));
  for (let c = columns - 1; c >= 0; c -= every) {  // labelled from t backwards
    context.fillText(c === columns - 1 ? "t" : `t-${columns - 1 - c}`, 24 + c * cell, 4 + 3 * cell + 12);
  }
  context.fillText(`layer ${attention.layer}, head ${state.head}; largest weight ${max.toFixed(3)}`, 24,
                   4 + 3 * cell + 28);
}

function drawChart() {
  const canvas = $("chart");
  const context = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 24;
  context.clearRect(0, 0, w, h);
  context.strokeStyle = "#ccc";
  context.beginPath(); context.moveTo(pad, h / 2); context.lineTo(w, h / 2); context.stroke();
  context.fillStyle = "#555";
  context.font = "11px system-ui, sans-serif";
  context.fillText("+1", 2, 12); context.fillText("0", 8, h / 2 + 4); context.fillText("-1", 2, h - 4);
  const y = (v) => h / 2 - (h / 2 - 6) * Math.max(-1, Math.min(1, v));
  const x = (i) => pad + (w - pad) * i / (HISTORY - 1);
  const line = (key, color) => {
    context.strokeStyle = color;
    context.beginPath();
    let started = false;
    state.history.forEach((point, i) => {
      const v = point[key];
      if (v === null || v === undefined) { started = false; return; }
      if (started) context.lineTo(x(i), y(v)); else context.moveTo(x(i), y(v));
      started = true;
    });
    context.stroke();
  };
  line("discount", "#999");
  line("real", "#d62728");
  line("dream", "#1f77b4");
}

function showFrame(frame) {
  state.lastFrame = frame;
  state.frames += 1;
  const stack = frame.dream.stack;
  drawGray($("dream"), stack[stack.length - 1]);
  Array.from($("dream-stack").children).forEach((canvas, i) => drawGray(canvas, stack[i]));
  $("episode").textContent = frame.episode;
  $("step").textContent = frame.step;
  $("action").textContent = frame.action === null ? "-" : `${frame.action_meaning} (${frame.by})`;
  $("dream-reward").textContent = fmt(frame.dream.reward);
  $("dream-return").textContent = fmt(frame.dream.return, 2);
  $("discount").textContent = frame.dream.discount === undefined ? "-" : frame.dream.discount.toFixed(3);
  $("p-end").textContent = frame.dream.termination_probability === undefined ? "-" :
    frame.dream.termination_probability.toFixed(3);
  const ended = frame.dream.terminated ? "the dream ended (predicted termination)" :
    frame.dream.truncated ? "the dream reached the time limit" : "";
  banner($("dream-banner"), ended && `${ended}: Enter for a new start`);
  if (frame.real) {
    drawGray($("real"), frame.real.frame);
    $("real-reward").textContent = frame.real.reward === null ? "-" :
      `${fmt(frame.real.reward, 1)} (${fmt(frame.real.tanh_reward)})`;
    $("real-return").textContent = fmt(frame.real.return, 1);
    $("real-lives").textContent = frame.real.lives;
    banner($("real-banner"), frame.real.event ? `real game: ${frame.real.event}` : "");
  }
  if (frame.step === 0) state.history = [];
  else {
    state.history.push({ dream: frame.dream.reward, discount: frame.dream.discount,
                         real: frame.real ? frame.real.tanh_reward : null });
    if (state.history.length > HISTORY) state.history.shift();
  }
  drawAttention();
  drawChart();
  if (ended && state.playing) {
    if (state.agent) setTimeout(requestReset, 1000);  // watching: go on with a new start
    else setPlaying(false);
  }
}

// ---- Controls -------------------------------------------------------------------------------------
function setPlaying(playing) {
  state.playing = playing;
  $("play").textContent = playing ? "pause" : "play";
}

function setAgent(on) {
  state.agent = on;
  $("agent").checked = on;
}

function setFps(fps) {
  state.interval = 1000 / fps;
  $("fps").value = fps;
  $("fps-value").textContent = fps;
}

function onHello(hello) {
  state.hello = hello;
  $("subtitle").textContent = `${hello.game}, ${hello.checkpoint}`;
  const legend = $("legend");
  legend.innerHTML = "";
  hello.legend.forEach(([meaning, keys], i) => {
    const row = legend.insertRow();
    row.insertCell().textContent = `${i} ${meaning}`;
    row.insertCell().textContent = keys || "(no key combination)";
  });
  const layer = $("layer"), head = $("head");
  layer.innerHTML = head.innerHTML = "";
  for (let i = 0; i < hello.num_layers; i++) layer.add(new Option(String(i), String(i)));
  for (let i = 0; i < hello.num_heads; i++) head.add(new Option(String(i), String(i)));
  layer.value = String(hello.attention_layer);
  $("attention-columns").textContent = `t-${hello.memory_length + 1} .. t`;
  document.querySelectorAll(".real-only").forEach((row) => { row.hidden = !hello.real; });
  $("real-panel").hidden = !hello.real;
  setFps(Math.round(hello.fps));
  setAgent(hello.agent_plays);
  setPlaying(hello.agent_plays);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const socket = new WebSocket(scheme + location.host + "/ws");
  state.socket = socket;
  state.waiting = true;  // the server sends hello and the first frame unasked
  socket.onopen = () => { $("status").textContent = "connected"; $("status").className = "status connected"; };
  socket.onclose = () => {
    $("status").textContent = "disconnected: is `python -m twm_fast.play` still running? (reload to reconnect)";
    $("status").className = "status error";
    setPlaying(false);
  };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "hello") onHello(message);
    else if (message.type === "frame") { state.waiting = false; showFrame(message); }
    else if (message.type === "error") {
      state.waiting = false;
      $("status").textContent = `error: ${message.message}`;
      $("status").className = "status error";
    }
  };
}

document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "SELECT" || event.target.tagName === "INPUT" && event.target.type === "range") return;
  const part = KEY_PARTS[event.code];
  if (part) {
    event.preventDefault();  // no scrolling with the arrows and Space
    const fresh = !state.held.has(part);
    state.held.add(part);
    if (!state.playing && fresh && !event.repeat && !state.agent) requestStep();
    return;
  }
  if (event.code === "KeyP") setPlaying(!state.playing);
  else if (event.code === "Enter" || event.code === "NumpadEnter") { event.preventDefault(); requestReset(); }
  else if (event.code === "KeyG") setAgent(!state.agent);
  else if (event.code === "Period") requestStep();
});
document.addEventListener("keyup", (event) => {
  const part = KEY_PARTS[event.code];
  if (part) state.held.delete(part);
});
window.addEventListener("blur", () => state.held.clear());

$("play").onclick = () => setPlaying(!state.playing);
$("step-once").onclick = () => requestStep();
$("reset").onclick = () => requestReset();
$("agent").onchange = (event) => setAgent(event.target.checked);
$("fps").oninput = (event) => setFps(Number(event.target.value));
$("layer").onchange = (event) => send({ type: "attention", layer: Number(event.target.value) });
$("head").onchange = (event) => { state.head = Number(event.target.value); drawAttention(); };
// Controls keep no focus once used, so that the arrows and Space go to the game again (not to a
// slider, a menu, a checkbox or another click of a button).
document.querySelectorAll("button").forEach((b) => b.addEventListener("mouseup", () => b.blur()));
document.querySelectorAll("input, select").forEach((c) => c.addEventListener("change", () => c.blur()));

connect();
requestAnimationFrame(tick);
