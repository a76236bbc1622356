"""The play page: its key mapping, its server (the real CLI, over HTTP and WebSocket) and the page itself
in headless Chromium (Debian's chromium and chromedriver; .ci/run installs them)."""
import base64
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from twm_fast.play import ACTION_PARTS, action_table, key_legend, main
from twm_fast.testing import tiny_catch_checkpoint

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Pong's minimal action set, and the full 18 actions of the ALE.
PONG = ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
FULL = ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT", "UPFIRE",
        "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE", "DOWNLEFTFIRE"]


def mask(*parts):
    return sum(1 << ACTION_PARTS.index(p) for p in parts)


def test_held_keys_compose_into_the_games_actions():
    full = action_table(FULL)
    assert len(full) == 2 ** len(ACTION_PARTS)
    assert full[mask()] == FULL.index("NOOP")
    assert full[mask("UP", "LEFT", "FIRE")] == FULL.index("UPLEFTFIRE")
    assert full[mask("DOWN", "RIGHT")] == FULL.index("DOWNRIGHT")
    assert full[mask("UP", "DOWN", "FIRE")] == FULL.index("FIRE")          # opposite directions cancel
    assert full[mask("LEFT", "RIGHT")] == FULL.index("NOOP")
    pong = action_table(PONG)
    assert pong[mask("RIGHT", "FIRE")] == PONG.index("RIGHTFIRE")
    assert pong[mask("UP", "FIRE")] == PONG.index("FIRE")                  # no UP in Pong: the part it has
    assert pong[mask("UP")] == PONG.index("NOOP")
    catch = action_table(["NOOP", "LEFT", "RIGHT"])
    assert catch[mask("LEFT")] == 1 and catch[mask("RIGHT", "FIRE")] == 2 and catch[mask("FIRE")] == 0
    assert key_legend(PONG)[4] == ["RIGHTFIRE", "Right + Space"]
    assert key_legend(FULL)[0] == ["NOOP", "no key"] and key_legend(FULL)[15] == ["UPLEFTFIRE", "Up + Left + Space"]


def test_session_keeps_the_real_game_going_after_a_lost_life():
    from twm_fast.agent.agent import Agent
    from twm_fast.play import PlaySession
    from twm_fast.testing import tiny_config

    session = PlaySession(Agent(tiny_config(game="catch"), 3), seed=0)
    first = session.reset()
    real_frame = np.frombuffer(base64.b64decode(first["real"]["frame"]), np.uint8).reshape(64, 64)
    assert np.array_equal(real_frame, session.start_obs[-1])  # the dream starts from the real game's frame
    assert torch.equal(session.dream.z, session.dream.dream.encode(torch.as_tensor(session.start_obs[None])))
    events, lives = [], []
    for _ in range(60):  # NOOP: the paddle stays, most balls are missed; 5 balls are about 45 steps
        frame = session.step(0)
        events.append(frame["real"]["event"])
        lives.append(frame["real"]["lives"])
    assert "life lost" in events and events.index("life lost") < events.index("game over")
    assert lives[-1] == 0 and lives == sorted(lives, reverse=True)
    over = events.index("game over")
    assert all(e == "game over" for e in events[over:])  # the finished game stays finished
    assert frame["step"] == 60 and frame["real"]["done"]


def test_an_atari_session_plays_the_dream_beside_the_real_game():
    pytest.importorskip("ale_py")
    from twm_fast.agent.agent import Agent
    from twm_fast.play import PlaySession
    from twm_fast.testing import tiny_config

    session = PlaySession(Agent(tiny_config(game="Pong"), 6), seed=0)
    hello = session.hello(checkpoint="-", agent_plays=False, fps=15)
    assert hello["action_meanings"] == PONG and hello["real"]
    session.reset()
    frame = session.step(hello["action_table"][mask("RIGHT", "FIRE")])
    assert frame["action_meaning"] == "RIGHTFIRE" and frame["real"]["reward"] == 0.0
    assert session.step(None)["by"] == "agent"
    session.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # The decoder's kaiming init: after 3 updates, PyTorch's default init (the published one, the default)
    # still decodes all-black frames, so the page's dream canvas could not show that the dream moved.
    return tiny_catch_checkpoint(tmp_path_factory.mktemp("run"), steps=100, updates=3, obs_decoder_init="kaiming")


@pytest.fixture(scope="module")
def server(checkpoint):
    """`python -m twm_fast.play CHECKPOINT --port 0` as a user runs it; yields its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "twm_fast.play", str(checkpoint), "--port", "0", "--seed", "1",
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tempfile.gettempdir())
    try:
        # The server prints its URL once it listens (torch's import and the model's load come first).
        ready, _, _ = select.select([proc.stdout], [], [], 180)
        line = proc.stdout.readline() if ready else ""
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, f"no URL in {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        yield match.group(0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_server_serves_the_page_and_refuses_what_it_should(server):
    with urllib.request.urlopen(server) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/html")
        assert b'<script src="play.js">' in response.read()
    with urllib.request.urlopen(server + "play.js") as response:
        assert response.headers["Content-Type"].startswith("text/javascript")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(server + "secrets.txt")
    assert missing.value.code == 404
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ws_url = server.replace("http://", "ws://") + "ws"
    with pytest.raises(InvalidStatus) as cross_site:  # a page of another site may not drive the model
        connect(ws_url, origin="http://evil.example")
    assert cross_site.value.response.status_code == 403


def test_a_session_over_the_websocket(server):
    from websockets.sync.client import connect

    with connect(server.replace("http://", "ws://") + "ws", origin=server.rstrip("/")) as ws:
        hello = json.loads(ws.recv())
        assert hello["type"] == "hello" and hello["game"] == "catch" and hello["real"]
        assert hello["action_meanings"] == ["NOOP", "LEFT", "RIGHT"] and hello["num_layers"] == 2
        first = json.loads(ws.recv())
        assert first["type"] == "frame" and first["step"] == 0 and first["dream"]["reward"] is None
        assert len(first["dream"]["stack"]) == 4 and first["real"]["lives"] == 5
        ws.send(json.dumps({"type": "step", "action": 1}))
        frame = json.loads(ws.recv())
        assert frame["step"] == 1 and frame["action_meaning"] == "LEFT" and frame["by"] == "you"
        assert isinstance(frame["dream"]["reward"], float) and 0 <= frame["dream"]["discount"] <= 1
        probs = frame["attention"]["probs"]                       # (heads, memory + 2, 3)
        assert len(probs) == 2 and len(probs[0]) == hello["memory_length"] + 2
        assert abs(sum(map(sum, probs[0])) - 1) < 1e-3
        ws.send(json.dumps({"type": "attention", "layer": 0}))
        ws.send(json.dumps({"type": "step", "action": None}))   # the actor chooses
        frame = json.loads(ws.recv())
        assert frame["by"] == "agent" and frame["attention"]["layer"] == 0 and frame["step"] == 2
        for bad, error in [({"type": "step", "action": 9}, "not in Discrete(3)"), ("{", "Expecting"),
                           ({"type": "jump"}, "unknown message type"), ({"type": "attention", "layer": 5}, "layer 5")]:
            ws.send(bad if isinstance(bad, str) else json.dumps(bad))
            reply = json.loads(ws.recv())
            assert reply["type"] == "error" and error in reply["message"]
        ws.send(json.dumps({"type": "reset"}))
        frame = json.loads(ws.recv())
        assert frame["episode"] == 1 and frame["step"] == 0


def test_cli_refuses_bad_input_with_one_line(tmp_path, capsys, checkpoint):
    assert main([str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(checkpoint), "--layer", "7", "--device", "cpu"]) == 2
    assert "--layer 7 is not in [0, 2)" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main([str(checkpoint), "--port", str(taken.getsockname()[1]), "--device", "cpu"]) == 2
    assert "choose another --port" in capsys.readouterr().err


def chromium_or_skip():
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return
    reason = f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); apt-get install them"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the browser test: {reason} (.ci/run does)")
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path):
    chromium_or_skip()
    pytest.importorskip("selenium", reason="the browser test drives chromium with selenium (the test extra)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1000"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def wait_for(predicate, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_page_in_headless_chromium(server, browser, tmp_path):
    """Load the page, play with the arrow keys, let the agent play; the screenshot is play.png in this
    test's tmp_path (pytest keeps the last runs under its basetemp, e.g. /tmp/pytest-of-$USER/)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    browser.get(server)
    text = lambda element_id: browser.find_element("id", element_id).text
    frames = lambda: browser.execute_script("return window.twmPlay.frames")
    canvas = lambda element_id: browser.execute_script(
        f"return document.getElementById('{element_id}').toDataURL()")
    def assert_readouts_show_the_last_frame():
        last = browser.execute_script("return window.twmPlay.lastFrame")
        assert text("step") == str(last["step"])
        assert re.fullmatch(r"[+-]\d+\.\d{3}", text("dream-reward")), text("dream-reward")
        assert float(text("dream-reward")) == pytest.approx(last["dream"]["reward"], abs=5e-4)
        assert float(text("discount")) == pytest.approx(last["dream"]["discount"], abs=5e-4)

    wait_for(lambda: frames() >= 1, "the first frame")
    assert text("status") == "connected" and text("step") == "0" and text("dream-reward") == "-"
    assert "LEFT" in text("legend") and text("real-lives") == "5"
    dream_before, real_before = canvas("dream"), canvas("real")

    def press(key):
        seen = frames()
        ActionChains(browser).key_down(key).pause(0.05).key_up(key).perform()
        wait_for(lambda: frames() > seen, f"the frame after {key!r}")

    for key in (Keys.ARROW_LEFT, Keys.ARROW_LEFT, Keys.ARROW_RIGHT):
        press(key)  # paused, each key press is one step
    assert text("step") == "3" and text("action") == "RIGHT (you)"
    assert_readouts_show_the_last_frame()
    assert canvas("dream") != dream_before and canvas("real") != real_before  # both games moved

    # G: the agent plays; P: play. The page steps by itself, the actor choosing.
    ActionChains(browser).send_keys("g").send_keys("p").perform()
    wait_for(lambda: int(text("step")) >= 8, "the agent's steps", timeout=60)
    ActionChains(browser).send_keys("p").perform()
    wait_for(lambda: browser.execute_script("return !window.twmPlay.waiting"), "the last step")
    assert text("action").endswith("(agent)")
    assert_readouts_show_the_last_frame()
    screenshot = tmp_path / "play.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    seen = frames()
    ActionChains(browser).send_keys(Keys.ENTER).perform()  # a new start
    wait_for(lambda: frames() > seen and text("step") == "0", "the new start")
    assert text("episode") == "1" and text("dream-reward") == "-"
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
