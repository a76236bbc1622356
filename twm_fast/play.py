"""Play inside the learned world model: `python -m twm_fast.play CHECKPOINT [--agent] [--port 8000]`.

Serves a local page (the files in ``twm_fast/play_page/``) and a WebSocket on the same port. A person
plays the dream with the keyboard (arrow keys or WASD and Space, composed into the game's action
meanings), or the actor plays it (``--agent``, or the page's toggle), and the real game runs beside it
from the same start with the same actions. The page shows the decoded frames, the predicted reward,
discount and termination probability, and the attention of a chosen layer and head over the memory.

The server is ``websockets`` (the ``play`` extra): one connection is one session with its own dream
and real game; the model runs in a worker thread, one step at a time. It listens on 127.0.0.1
only unless ``--host`` says otherwise; on a remote machine, forward the port
(``ssh -L 8000:localhost:8000 HOST``) and open http://localhost:8000/.

Protocol (JSON text messages). The page sends ``{"type": "step", "action": A}`` (A = null: the
actor chooses), ``{"type": "reset"}`` and ``{"type": "attention", "layer": L}``; the server sends
``hello`` once, then one ``frame`` per step or reset (see ``PlaySession.frame``), or ``error``.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import sys
import threading
from http import HTTPStatus
from importlib import resources
from itertools import combinations
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from twm_fast.video import viewing_fps

INSTALL_HINT = 'the play page needs websockets and gymnasium: pip install "twm-fast[play]"'
# Keys the page composes into an action: bit i of the mask is held direction or button i (play.js).
ACTION_PARTS = ("UP", "DOWN", "LEFT", "RIGHT", "FIRE")
# Page files served from the package, and their content types.
PAGE_FILES = {"/": "index.html", "/index.html": "index.html", "/play.js": "play.js", "/play.css": "play.css"}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}


def action_table(meanings: list[str]) -> list[int]:
    """For every mask of held keys (bits in ACTION_PARTS order), the action to take: the game's action
    whose meaning is the held direction(s) and FIRE, else the largest part of them the game has
    (e.g. UP + FIRE in a game without UPFIRE is UP), else NOOP. Opposite directions cancel."""
    index = {meaning: i for i, meaning in enumerate(meanings)}
    noop = index.get("NOOP", 0)
    table = []
    for mask in range(2 ** len(ACTION_PARTS)):
        held = {part for bit, part in enumerate(ACTION_PARTS) if mask >> bit & 1}
        vertical = ({"UP", "DOWN"} & held) if len({"UP", "DOWN"} & held) == 1 else set()
        horizontal = ({"LEFT", "RIGHT"} & held) if len({"LEFT", "RIGHT"} & held) == 1 else set()
        parts = [p for p in ("UP", "DOWN", "RIGHT", "LEFT", "FIRE") if p in vertical | horizontal | ({"FIRE"} & held)]
        action = noop
        for size in range(len(parts), 0, -1):
            found = [index["".join(c)] for c in combinations(parts, size) if "".join(c) in index]
            if found:
                action = found[0]
                break
        table.append(action)
    return table


def key_legend(meanings: list[str]) -> list[list[str]]:
    """[meaning, keys] per action, e.g. ["UPFIRE", "Up + Space"]; NOOP is no key held."""
    names = {"UP": "Up", "DOWN": "Down", "LEFT": "Left", "RIGHT": "Right", "FIRE": "Space"}
    legend = []
    for meaning in meanings:
        rest, keys = meaning, []
        for part in ("UP", "DOWN", "RIGHT", "LEFT", "FIRE"):
            if part in rest:
                keys.append(names[part])
                rest = rest.replace(part, "", 1)
        legend.append([meaning, " + ".join(keys) if keys and not rest else ("no key" if meaning == "NOOP" else "")])
    return legend


def _b64(frames: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(frames, dtype=np.uint8).tobytes()).decode("ascii")


class PlaySession:
    """One player's dream and, when the dream starts from the real game, the real game beside it.

    Both start from the same observation (the real env's reset, seeded per episode) and take the same
    actions. The real game is the training env of SPEC 1, whose episodes end at a lost life, as the
    world model learned them; after a lost life it goes on with the next one (the env's continuation,
    one no-op step), so that the real game can be watched to its end while the dream is restarted.
    """

    def __init__(self, agent, *, seed: int = 0, start="game", attention_layer: int = 0):
        from twm_fast.dream import DreamEnv
        from twm_fast.envs import make_env

        self.agent = agent
        self.config = agent.config
        self.seed = seed
        self.dream = DreamEnv(agent, start=start, attention_layer=attention_layer)
        self.real = None
        if isinstance(start, str) and start == "game":
            self.real = make_env(self.config.game, seed=seed, train=True, config=self.config)
        self.episode = -1

    def reset(self) -> dict:
        self.episode += 1
        seed = self.seed + self.episode
        self.step_count, self.dream_return, self.real_return = 0, 0.0, 0.0
        self.real_done, self.real_event = False, None
        options = None
        if self.real is not None:
            real_obs, self.real_info = self.real.reset(seed=seed)
            self.real_frame = real_obs[-1]
            options = {"obs": real_obs}
        self.start_obs = self.dream.reset(seed=seed, options=options)[1]["start_obs"]
        return self.frame(action=None, by=None, reward=None, info=None, real_reward=None)

    def set_attention_layer(self, layer: int) -> None:
        layers = len(self.agent.dynamics.layers)
        if not 0 <= layer < layers:
            raise ValueError(f"attention layer {layer} is not in [0, {layers})")
        self.dream.attention_layer = layer

    def step(self, action: int | None) -> dict:
        """One step of both games; action None: the actor chooses from the dream's z (as in imagination)."""
        by = "you"
        if action is None:
            action, by = int(self.agent.actor_critic.act(self.dream.z)[0]), "agent"
        _, reward, terminated, truncated, info = self.dream.step(action)
        self.step_count += 1
        self.dream_return += reward
        real_reward = None
        if self.real is not None and not self.real_done:  # a finished game keeps its last frame and event
            self.real_event = None
            real_obs, real_reward, real_terminated, real_truncated, self.real_info = self.real.step(action)
            self.real_return += real_reward
            if real_terminated and not real_truncated and self.real_info.get("lives", 0) > 0:
                real_obs, self.real_info = self.real.reset()  # the game goes on with the next life
                self.real_event = "life lost"
            elif real_terminated or real_truncated:
                self.real_done, self.real_event = True, "game over" if real_terminated else "time limit"
            self.real_frame = real_obs[-1]
        return self.frame(action, by, reward, info, real_reward, terminated, truncated)

    def frame(self, action, by, reward, info, real_reward, terminated=False, truncated=False) -> dict:
        """What the page draws after a reset (action None) or a step. Frames are base64 uint8 64 x 64
        (the dream's decoded stack oldest first, the real game's newest frame); the dream's reward is
        the prediction of tanh(r), the real one the raw game reward; attention is the a_t token's,
        per head, over steps t - memory_length - 1 .. t and the z, a, r tokens (see ``DreamStep``)."""
        message = {
            "type": "frame", "episode": self.episode, "step": self.step_count,
            "action": action, "action_meaning": None if action is None else self.dream.action_meanings[action],
            "by": by,
            "dream": {"stack": [_b64(f) for f in self.dream.frames()], "reward": reward,
                      "return": self.dream_return, "terminated": terminated, "truncated": truncated},
            "real": None, "attention": None,
        }
        if info is not None:
            message["dream"].update(discount=info["discount"], termination_probability=info["termination_probability"])
            if "attention" in info:
                message["attention"] = {"layer": self.dream.attention_layer,
                                        "probs": np.round(info["attention"], 4).tolist(),
                                        "visible": info["attention_visible"].tolist()}
        if self.real is not None:
            message["real"] = {"frame": _b64(self.real_frame), "reward": real_reward,
                               "tanh_reward": None if real_reward is None else math.tanh(real_reward),
                               "return": self.real_return, "done": self.real_done, "event": self.real_event,
                               "lives": int(self.real_info.get("lives", 0))}
        return message

    def hello(self, *, checkpoint: str, agent_plays: bool, fps: float) -> dict:
        c = self.config
        meanings = self.dream.action_meanings
        return {"type": "hello", "game": c.game, "checkpoint": checkpoint, "action_meanings": meanings,
                "action_table": action_table(meanings), "legend": key_legend(meanings),
                "num_layers": len(self.agent.dynamics.layers), "num_heads": c.dyn_num_heads,
                "memory_length": c.memory_length, "attention_layer": self.dream.attention_layer,
                "real": self.real is not None, "agent_plays": agent_plays, "fps": fps}

    def close(self) -> None:
        self.dream.close()
        if self.real is not None:
            self.real.close()


class PlayServer:
    """The page's files and one ``PlaySession`` per WebSocket connection at /ws."""

    def __init__(self, agent, *, checkpoint: str, seed: int, start, agent_plays: bool, fps: float,
                 attention_layer: int):
        self.agent, self.checkpoint, self.seed, self.start = agent, checkpoint, seed, start
        self.agent_plays, self.fps, self.attention_layer = agent_plays, fps, attention_layer
        self._model_lock = threading.Lock()  # sessions share the model; one step at a time
        self._sessions = 0

    def new_session(self) -> PlaySession:
        """The next connection's session: each one plays its own episodes (its seeds differ)."""
        self._sessions += 1
        return self._session(self._sessions - 1)

    def check(self) -> None:
        """Open (and close) a session, so that a missing game or replay file shows before serving."""
        self._session(0).close()

    def _session(self, index: int) -> PlaySession:
        return PlaySession(self.agent, seed=self.seed + 1_000_003 * index, start=self.start,
                           attention_layer=self.attention_layer)

    def process_request(self, connection, request):
        """HTTP before the WebSocket handshake: the page's files, and a same-origin check on /ws (a page
        from another site must not drive a local model: Cross-Site WebSocket Hijacking)."""
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        path = urlsplit(request.path).path
        if path == "/ws":
            origin = request.headers.get("Origin")
            if origin is not None and urlsplit(origin).netloc != request.headers.get("Host"):
                return connection.respond(HTTPStatus.FORBIDDEN, "cross-origin WebSocket refused\n")
            return None
        name = PAGE_FILES.get(path)
        if name is None:
            return connection.respond(HTTPStatus.NOT_FOUND, f"not found: {path}\n")
        body = resources.files("twm_fast").joinpath("play_page", name).read_bytes()
        headers = Headers([("Content-Type", CONTENT_TYPES[Path(name).suffix]), ("Content-Length", str(len(body))),
                           ("Cache-Control", "no-cache"), ("Connection", "close")])
        return Response(HTTPStatus.OK.value, "OK", headers, body)

    async def _run(self, fn, *args):
        def locked():
            with self._model_lock:
                return fn(*args)
        return await asyncio.to_thread(locked)

    async def handle(self, websocket) -> None:
        session = await self._run(self.new_session)
        try:
            await websocket.send(json.dumps(session.hello(checkpoint=self.checkpoint, agent_plays=self.agent_plays,
                                                          fps=self.fps)))
            await websocket.send(json.dumps(await self._run(session.reset)))
            async for message in websocket:
                reply = await self._reply(session, message)
                if reply is not None:
                    await websocket.send(json.dumps(reply))
        finally:
            session.close()

    async def _reply(self, session: PlaySession, message) -> dict | None:
        try:
            request = json.loads(message)
            kind = request.get("type")
            if kind == "step":
                action = request.get("action")
                return await self._run(session.step, None if action is None else int(action))
            if kind == "reset":
                return await self._run(session.reset)
            if kind == "attention":
                session.set_attention_layer(int(request["layer"]))
                return None
            raise ValueError(f"unknown message type {kind!r}; expected step, reset or attention")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return {"type": "error", "message": str(exc)}


async def _serve(server: PlayServer, host: str, port: int) -> None:
    from websockets.asyncio.server import serve

    async with serve(server.handle, host, port, process_request=server.process_request,
                     compression=None) as ws_server:
        bound = ws_server.sockets[0].getsockname()[1]
        shown = "127.0.0.1" if host in ("127.0.0.1", "localhost") else host
        print(f"twm-fast play: the dream of {server.checkpoint} ({server.agent.config.game}) at "
              f"http://{shown}:{bound}/  (Ctrl-C stops)", flush=True)
        if host in ("127.0.0.1", "localhost"):
            print(f"  on a remote machine: ssh -L {bound}:localhost:{bound} HOST, then open "
                  f"http://localhost:{bound}/ here", flush=True)
        await ws_server.serve_forever()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m twm_fast.play",
                                description="Play inside a checkpoint's world model (the dream) in the browser.")
    p.add_argument("checkpoint", help="a checkpoint .pt file or a run directory")
    p.add_argument("--agent", action="store_true", help="the actor plays (the page can switch back to you)")
    p.add_argument("--port", type=int, default=8000, help="port of the page (default 8000; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; forward the port to reach it)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the start observations and the dream's samples")
    p.add_argument("--start", choices=("game", "replay"), default="game",
                   help="start each dream from a reset of the real game (default; shown beside the dream) or from "
                        "a random observation of the checkpoint's replay file")
    p.add_argument("--fps", type=float, default=None,
                   help="steps per second when playing (default: 15, real time for Atari; Catch 5)")
    p.add_argument("--layer", type=int, default=None, help="transformer layer whose attention is shown (default last)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import gymnasium  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as exc:
        print(f"error: {INSTALL_HINT} ({exc})", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"error: --port {args.port} is not a port number (0 to 65535)", file=sys.stderr)
        return 2
    try:
        from twm_fast.evaluate import load_agent

        agent, config, payload = load_agent(args.checkpoint, args.device)
        start = "game"
        if args.start == "replay":
            start = Path(payload["path"]).with_name(payload["replay_file"])
        layers = len(agent.dynamics.layers)
        layer = layers - 1 if args.layer is None else args.layer
        if not 0 <= layer < layers:
            raise ValueError(f"--layer {layer} is not in [0, {layers}): the model has {layers} layers")
        fps = args.fps or viewing_fps(config.game)
        server = PlayServer(agent, checkpoint=str(payload["path"]), seed=args.seed, start=start,
                            agent_plays=args.agent, fps=fps, attention_layer=layer)
        server.check()
        asyncio.run(_serve(server, args.host, args.port))
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the port is taken, or the address is not this machine's
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; choose another --port",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
