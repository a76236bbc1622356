"""The first run as README tells it: the main command from the repository root (where README leaves
you), heartbeat lines in a batch log, README's examples, and a clear refusal of an incomplete install."""
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from twm_fast.config import make_config
from twm_fast.testing import TINY_RUN
from twm_fast.train import build_parser

ROOT = Path(__file__).resolve().parents[1]
# A heartbeat line starts with the wall time and the time since the start: "12:03:01 +2m10s [5/6] ...".
HEARTBEAT = re.compile(r"^\d\d:\d\d:\d\d \+\S+ \[(\d)/6\] ")


def train(*args, cwd):
    return subprocess.run([sys.executable, "-m", "twm_fast.train", *args], capture_output=True, text=True, check=False,
                          timeout=600, cwd=cwd)


def test_main_command_from_the_repository_root_trains_with_heartbeats(tmp_path):
    """stderr is a pipe here, as in a batch job: no live display, a heartbeat line every second."""
    run = tmp_path / "run"
    proc = train("--preset", "quick", "--out", str(run), "--heartbeat", "1", *TINY_RUN, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = json.loads((run / "scores.json").read_text())
    assert scores["train_steps"] == 40 and scores["final_episodes"] == 2
    assert json.loads((run / "config.json").read_text())["threads"] >= 1

    assert "\x1b" not in proc.stderr and "\r" not in proc.stderr  # plain lines for a log
    lines = proc.stderr.splitlines()
    beats = [line for line in lines if HEARTBEAT.match(line)]
    assert {int(HEARTBEAT.match(line).group(1)) for line in beats} == {1, 2, 3, 4, 5, 6}
    main = [line for line in beats if "[5/6] main loop" in line]
    assert len(main) >= 3, beats
    for line in main[1:]:
        rate = "evaluating 2 episodes" if "evaluating" in line else "train steps/s ("
        for field in ("env steps (", "run ETA ", rate, "episode return", "losses: obs model", "dynamics", "critic",
                      "actor"):
            assert field in line, (field, line)
        assert re.search(r"\| eval -?\d+\.\d\d at (200, next 300|300, next final) \|", line), line
    assert any(line.startswith("[5/6] main loop done: 200 env steps in ") for line in lines)
    assert any(line.startswith("eval at env step 300: mean return ") for line in lines)
    assert lines[-1] == f"done: {run}/scores.json"


def test_stop_after_message_starts_its_own_line(tmp_path):
    run = tmp_path / "run"
    proc = train("--preset", "quick", "--out", str(run), "--stop-after", "150", *TINY_RUN, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1].startswith("stopped after 150 env steps: saved ")


def test_a_checkout_without_its_built_parts_is_refused_with_a_command_that_works(tmp_path):
    """The source tree shadows an installed copy when a command runs from its root: without the
    compiled replay core the run stops at once, says which command completes the checkout (one that
    works in a fresh venv) and leaves no run directory behind."""
    checkout = tmp_path / "clone"
    shutil.copytree(ROOT / "twm_fast", checkout / "twm_fast", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(ROOT / "setup.py", checkout)
    (checkout / "csrc").mkdir()
    # As after a plain `pip install .`: nothing maps twm_fast's submodules to another directory (an
    # editable install's finder would find this repository's extension).
    code = ("import runpy, sys; sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in repr(f)]; "
            "sys.argv = ['twm_fast.train', '--preset', 'quick', '--out', 'run']; "
            "runpy.run_module('twm_fast.train', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=checkout,
                          check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"from the source checkout {checkout}" in proc.stderr and "lacks twm_fast._replay" in proc.stderr
    assert 'install it with pip install -e ".[atari]"' in proc.stderr and "--no-build-isolation" not in proc.stderr
    assert not (checkout / "run").exists()


def readme_train_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()
            if line.startswith("python -m twm_fast.train") and "--resume" not in line]


def test_readme_examples_parse_and_those_on_a_budget_train():
    """Every `python -m twm_fast.train` line of README parses into a valid configuration, and an
    example cut short with --stop-after stops after its prefill, so that it trains."""
    commands = readme_train_commands()
    assert len(commands) >= 5
    budgeted = 0
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[3:])
        values = {k: v for k, v in (("game", args.game), ("seed", args.seed)) if v is not None}
        config = make_config(args.preset or "paper", args.overrides, **values)
        if args.stop_after is not None:
            budgeted += 1
            assert args.stop_after > config.prefill_steps + 100, command
    assert budgeted >= 1
