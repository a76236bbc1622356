"""The command lines over generated input (issue 12): `python -m twm_fast.train` with options and config
overrides that are negative, zero, huge, NaN, infinite, of the wrong type, unicode, empty, unknown or
misspelled, run as the real parser (`main([...]) --dry-run` in this process, a few through a real
subprocess), and `evaluate` and `report` with bad numbers and inputs. Every case exits 0 or 2; a
refusal is one line `error: ...`; none prints a traceback, and nothing is created on disk.

The machine probe of the estimate is replaced by a constant (the cases test validation, not timing),
so a valid case costs milliseconds.
"""
import contextlib
import dataclasses
import io
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from twm_fast import evaluate, report, train
from twm_fast.config import Config
from twm_fast.estimate import Machine

FIELD_NAMES = [f.name for f in dataclasses.fields(Config)]

# Values that have broken parsers: signs, zeros, huge and tiny numbers, NaN and infinities, other
# types' spellings, unicode, control characters, empty and blank text.
AWKWARD = ["0", "-0", "1", "-1", "-5", "2", "7", "64", "1e30", "1e308", "1e400", "-1e4", "inf", "-inf", "Infinity",
           "nan", "NaN", "", " ", "1.5", "0.5", "0.99", "1e-300", "true", "False", "yes", "None", "null", "[]", "()",
           "(,)", "1,2", "64,", "512,512", ",", "0x10", "1_000", "9" * 40, "-" + "9" * 40, "ü", "日本語", "\u200b",
           "\x00", "\n", "\t1", "'1'", "cpu", "cuda", "cuda:0", "cuda:99", "auto", "tpu", "float32", "bfloat16",
           "high", "catch", "Pong", "ms_pacman", "Pongg", "reference", "cpp", "vector"]
VALUES = st.one_of(
    st.sampled_from(AWKWARD),
    st.integers(-10**12, 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=8),
)


def misspelled(name: str) -> st.SearchStrategy[str]:
    i = st.integers(0, len(name) - 1)
    return st.one_of(i.map(lambda k: name[:k] + name[k + 1:]),                 # a letter dropped
                     i.map(lambda k: name[:k] + name[k] * 2 + name[k + 1:]),    # a letter doubled
                     st.just(name.upper()), st.just(name.replace("_", "-")))


def plausible(name: str) -> st.SearchStrategy[str]:
    """A value near the quick preset's for the field, so that many cases pass every rule."""
    from twm_fast.config import make_config
    from twm_fast.validation import format_value

    value = getattr(make_config("quick"), name)
    if isinstance(value, bool):
        return st.sampled_from(["true", "false", "1", "off"])
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return st.sampled_from([value, value * 2, value / 2, value + 1]).map(
            lambda v: str(type(value)(v)) if math.isfinite(v) else str(v))
    return st.just(format_value(value))


NAMES = st.one_of(st.sampled_from(FIELD_NAMES), st.sampled_from(FIELD_NAMES).flatmap(misspelled),
                  st.text(max_size=10))
OVERRIDES = st.one_of(st.tuples(NAMES, VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
                      st.sampled_from(FIELD_NAMES).flatmap(lambda n: plausible(n).map(lambda v: f"{n}={v}")),
                      st.sampled_from(FIELD_NAMES), VALUES)  # and tokens without "="

# Options with a value, with values each may well take besides the awkward ones; flags; options that do
# not exist.
VALUED = {"--game": st.sampled_from(["catch", "Pong", "ms_pacman", "Tetris"]),
          "--preset": st.sampled_from(["quick", "paper", "published"]),
          "--seed": st.integers(0, 2**32).map(str), "--device": st.sampled_from(["cpu", "auto"]),
          "--stop-after": st.integers(0, 10**6).map(str), "--threads": st.integers(0, 3).map(str),
          "--heartbeat": st.floats(0, 100).map(str)}
FLAGS = ["--allow-slow", "--no-progress", "--dry-run"]
UNKNOWN = ["--seeed", "--gpu", "--out-dir", "-x", "--", "--dry", "--d", "-"]


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A working directory (where a default runs/... would go), a finished tiny run to resume, a file and
    an empty directory; the machine probe made constant; torch's global settings restored after."""
    from twm_fast.testing import tiny_catch_checkpoint

    root = tmp_path_factory.mktemp("cli")
    run = root / "run"
    tiny_catch_checkpoint(run / "checkpoints", steps=60, updates=1)
    (root / "file").write_text("not a directory")
    (root / "empty").mkdir()
    saved = torch.get_num_threads(), torch.get_float32_matmul_precision(), os.getcwd()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Machine, "probe", classmethod(lambda cls, device, seconds=0.3, clock=None: cls("a probe", 9e10)))
        os.chdir(root)
        try:
            yield root
        finally:
            os.chdir(saved[2])
            torch.set_num_threads(saved[0])
            torch.set_float32_matmul_precision(saved[1])


def paths(root: Path) -> st.SearchStrategy[str]:
    """--out and --resume values: fresh, existing, a file, under a file, empty, NUL, far too long, unicode."""
    return st.one_of(
        st.text(min_size=1, max_size=12).map(lambda t: str(root / "new" / t)),
        st.sampled_from([str(root / "run"), str(root / "run" / "checkpoints"), str(root / "file"),
                         str(root / "file" / "under"), str(root / "empty"), str(root / "run" / "checkpoints" /
                                                                               "final.pt"),
                         "", " ", "\x00", str(root / ("x" * 300)), str(root / "ü" / "日本"), "/proc/1/new-run"]))


def snapshot(root: Path) -> set:
    return {p.relative_to(root) for p in root.rglob("*")}


def run_main(main, argv: list[str]) -> tuple[int, str, str]:
    """main(argv) as the command runs it: its exit code (argparse's SystemExit included), stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
        finally:
            torch.set_num_threads(threads)
            torch.set_float32_matmul_precision(precision)
    return code, out.getvalue(), err.getvalue()


def assert_clean_exit(argv, code, out, err):
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err and "Traceback" not in out, (argv, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
    else:
        assert out.startswith(("dry run:", "usage:")), (argv, out[:200], err)


@st.composite
def train_argv(draw, root: Path):
    """Half the cases lean towards valid input (plausible values only), half take anything."""
    valid_leaning = draw(st.booleans())
    values = (lambda option: VALUED[option]) if valid_leaning else (lambda option: st.one_of(VALUES, VALUED[option]))
    overrides = (st.sampled_from(FIELD_NAMES).flatmap(lambda n: plausible(n).map(lambda v: f"{n}={v}"))
                 if valid_leaning else OVERRIDES)
    argv = []
    if draw(st.integers(0, 3)):  # most cases start from the quick preset (on a CPU the others are refused)
        argv += ["--preset", "quick"]
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.integers(0, 9))
        if kind < 5:
            option = draw(st.sampled_from(sorted(VALUED)))
            value = draw(values(option))
            argv += [option, value] if draw(st.booleans()) else [f"{option}={value}"]
        elif kind < 7:
            argv += [draw(st.sampled_from(["--out", "--resume"])), draw(paths(root))]
        elif kind < 9:
            argv.append(draw(st.sampled_from(FLAGS)))
        elif not valid_leaning:
            argv.append(draw(st.sampled_from(UNKNOWN)))
    argv += draw(st.lists(overrides, max_size=3))
    return argv


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(data=st.data())
def test_train_command_line_exits_0_or_2_in_one_line(place, data):
    argv = data.draw(train_argv(place)) + ["--dry-run"]
    before = snapshot(place)
    code, out, err = run_main(train.main, argv)
    event(f"exit {code}")  # pytest --hypothesis-show-statistics: how many cases were valid
    assert_clean_exit(argv, code, out, err)
    assert snapshot(place) == before, argv  # a dry run or a refusal creates nothing


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_evaluate_and_report_command_lines_exit_0_or_2_in_one_line(place, data):
    """Bad numbers and paths; the inputs are missing, empty or not runs, so nothing is played."""
    number = st.one_of(VALUES, st.integers(-5, 5).map(str))
    if data.draw(st.booleans()):
        main = evaluate.main
        argv = [data.draw(st.sampled_from([str(place / "missing.pt"), str(place / "file"), str(place / "empty"),
                                           "", "\x00"]))]
        for option in data.draw(st.lists(st.sampled_from(["--episodes", "--seed", "--envs", "--device",
                                                          "--env-backend", "--out", "--video"]), max_size=3)):
            argv += [option, data.draw(paths(place) if option in ("--out", "--video") else number)]
    else:
        main = report.main
        argv = data.draw(st.lists(st.sampled_from([str(place / "missing"), str(place / "file"), str(place / "empty"),
                                                   "", "\x00"]), max_size=2))
        for option in data.draw(st.lists(st.sampled_from(["--reps", "--seed"]), max_size=2)):
            argv += [option, data.draw(number)]
    before = snapshot(place)
    code, out, err = run_main(main, argv)
    event(f"{main.__module__} exit {code}")
    assert code == 2 or (code == 0 and out.startswith("usage:")), (argv, code, err)
    assert_clean_exit(argv, code, out, err)
    assert snapshot(place) == before, argv


def test_the_generator_reaches_valid_runs(place):
    """The cases above are not all refusals: the preset, an override and a resume run to the dry run's
    report."""
    for argv in (["--preset", "quick", "seed=3"], ["--preset", "quick", "--out", str(place / "new" / "ü")],
                 ["--resume", str(place / "run"), "--threads", "1"]):
        code, out, err = run_main(train.main, argv + ["--dry-run"])
        assert code == 0 and out.startswith("dry run: every check passed"), (argv, err)
        assert not (place / "new").exists()


def test_real_processes_with_undecodable_arguments(tmp_path):
    """Through a real process: argv bytes that are not UTF-8 (a path on a Latin-1 disk) reach the parser
    as surrogates; a refusal still prints one line, and a dry run prints the path escaped."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    command = [sys.executable, "-m", "twm_fast.train", "--preset", "quick", "--dry-run"]
    bad = subprocess.run([*command, b"env_steps=\xff\xfe", "--out", str(tmp_path / "a")], capture_output=True,
                         timeout=300, cwd=tempfile.gettempdir(), env=env)
    stderr = bad.stderr.decode()
    assert bad.returncode == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("error: invalid config: env_steps='\\udcff\\udcfe': must be an integer"), stderr
    good = subprocess.run([*command, "--out", os.fsencode(tmp_path) + b"/caf\xe9"], capture_output=True, timeout=300,
                          cwd=tempfile.gettempdir(), env=env)
    assert good.returncode == 0, good.stderr.decode()
    assert "caf\\udce9" in good.stdout.decode() and "Traceback" not in good.stderr.decode()
    assert list(tmp_path.iterdir()) == []
