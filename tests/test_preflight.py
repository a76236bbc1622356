"""Checks at the start of a run, before anything is written (issue 12): the run directory can be made
and written (not a file, not under a file, not read-only, not another run's), the disk holds the replay
at capacity and the checkpoints and this machine's memory holds the replay, with the numbers in the
message; --dry-run prints what the run would do and creates nothing."""
import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from twm_fast import preflight, train
from twm_fast.config import Config, make_config
from twm_fast.estimate import Machine
from twm_fast.replay import make_replay
from twm_fast.replay.common import HEADER_BYTES, memory_bytes
from twm_fast.preflight import check_output_dir, check_output_file, describe_bytes, model_parameters, run_space
from twm_fast.testing import TINY_RUN, tiny_catch_checkpoint


def constant_probe(monkeypatch):
    """The estimate's machine probe as a constant: these tests check the run's start, not timing."""
    probe = classmethod(lambda cls, device, seconds=0.3, clock=None: cls("a probe", 9e10))
    monkeypatch.setattr(Machine, "probe", probe)


@pytest.fixture
def dry_run(monkeypatch):
    """train.main([... --dry-run]) in this process with a constant machine probe: (exit code, stdout, stderr)."""
    constant_probe(monkeypatch)
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()

    def call(*args):
        given = {a.split("=", 1)[0] for a in args if "=" in a}
        tiny = [item for item in TINY_RUN if item.split("=", 1)[0] not in given]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = train.main(["--preset", "quick", "--dry-run", *args, *tiny])
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)
        return code, out.getvalue(), err.getvalue()
    return call


def one_error(code, err) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_dry_run_reports_the_run_and_creates_nothing(tmp_path, dry_run):
    run = tmp_path / "a" / "b" / "run"
    code, out, err = dry_run("--out", str(run), "--threads", "1", "seed=4")
    assert code == 0, err
    assert not (tmp_path / "a").exists()
    assert f"write the run to {run}" in out and "on device cpu with 1 thread(s)" in out
    assert "take about " in out and "training steps" in out and "of free in" not in out
    config = Config.from_dict(json.loads(out.split("resolved config (config.json):\n", 1)[1]))
    assert config == make_config("quick", TINY_RUN, seed=4, threads=1, matmul_precision="highest")


@pytest.mark.parametrize("make,out,message", [
    (lambda p: (p / "file").write_text("x"), "file", "--out {p}/file is a file; give a directory"),
    (lambda p: (p / "file").write_text("x"), "file/run", "--out {p}/file/run: {p}/file is a file, so no directory "
                                                         "can be made under it; choose another path"),
    (lambda p: (p / "file").write_text("x"), "file/a/b", "{p}/file is a file, so no directory can be made under it"),
    (lambda p: (p / "old").mkdir() or (p / "old" / "config.json").write_text("{}"), "old",
     "output directory {p}/old already holds a twm-fast run; pass --resume {p}/old"),
    (lambda p: (p / "other").mkdir() or (p / "other" / "notes.txt").write_text(""), "other",
     "already holds other files"),
    (lambda p: None, "x" * 300, "File name too long; choose another path"),
])
def test_unusable_run_directories_are_refused_before_anything_is_written(tmp_path, dry_run, make, out, message):
    make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    for args in (["--dry-run"], []):  # a real start is refused the same way, before writing
        code, _, err = dry_run("--out", str(tmp_path / out), *args)
        assert message.format(p=tmp_path) in one_error(code, err)
        assert sorted(tmp_path.rglob("*")) == before


def test_an_empty_directory_is_a_good_run_directory(tmp_path, dry_run):
    code, out, err = dry_run("--out", str(tmp_path))
    assert code == 0, err


def test_read_only_directory_is_refused(tmp_path):
    """As an ordinary user (root may write anywhere but on a read-only file system): in a forked child
    that drops to the `nobody` user, in a directory it cannot write."""
    shared = Path(os.path.realpath(tmp_path)) / "shared"
    shared.mkdir()
    read_only = shared / "read-only"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    for p in [shared, *shared.parents]:  # the child must be able to reach it
        if p.stat().st_uid == os.geteuid():
            p.chmod(p.stat().st_mode | 0o005)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: check, report the message through the pipe, exit without cleanup
        code = 0
        try:
            os.close(reader)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            messages = []
            for check in (lambda: check_output_dir(read_only / "run", "--out", new=True),
                          lambda: check_output_dir(read_only, "--out", new=True),
                          lambda: check_output_file(read_only / "eval.json", "--out")):
                try:
                    check()
                    messages.append("accepted")
                except ValueError as error:
                    messages.append(str(error))
            os.write(writer, "\n".join(messages).encode())
        except BaseException:  # noqa: BLE001 - report anything as a failure code
            code = 1
        os._exit(code)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        messages = pipe.read().split("\n")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, messages
    assert messages == [
        f"--out {read_only}/run: cannot create {read_only}/run in {read_only} (read-only or permission denied); "
        "choose a writable path",
        f"--out {read_only}: cannot write to {read_only} (read-only or permission denied); choose a writable path",
        f"cannot write --out {read_only}/eval.json: cannot write to {read_only} (read-only or permission denied)",
    ]


def test_not_enough_disk_is_refused_with_the_numbers(tmp_path, dry_run, monkeypatch):
    config = make_config("quick", TINY_RUN)
    space = run_space(config, model_parameters(config))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage._replace(free=space.disk - 1))
    code, _, err = dry_run("--out", str(tmp_path / "run"))
    line = one_error(code, err)
    assert "not enough free space for the run in" in line and "the replay at its capacity of 400 steps" in line
    assert f"need {describe_bytes(space.disk)}" in line and f"has {describe_bytes(space.disk - 1)} free" in line
    assert not (tmp_path / "run").exists()


def test_not_enough_memory_for_the_replay_is_refused(tmp_path, dry_run, monkeypatch):
    monkeypatch.setattr(preflight, "available_memory", lambda: 10**6)
    code, _, err = dry_run("--out", str(tmp_path / "run"), "env_steps=100000")
    line = one_error(code, err)
    held = describe_bytes(memory_bytes(100_000, (64, 64), 4))
    assert held.startswith("41") and held.endswith(" MB")  # 100,004 frames of 64 x 64 bytes and the steps
    assert f"not enough memory for the replay: at its capacity of 100,000 steps (env_steps) it holds {held}" in line
    assert "this machine has 1.0 MB available" in line


def test_the_space_estimate_matches_a_real_checkpoint(tmp_path):
    checkpoint = tiny_catch_checkpoint(tmp_path, steps=60, updates=1)
    config = Config.from_dict(torch.load(checkpoint, weights_only=False)["config"])
    space = run_space(config, model_parameters(config))
    model = checkpoint.stat().st_size
    assert model <= space.model_file <= model + preflight.CHECKPOINT_OVERHEAD_BYTES
    # The replay's file at capacity: a replay filled past its capacity (the ring wrapped), saved.
    replay = make_replay(config.replay_backend, capacity=config.replay_capacity, frame_stack=config.frame_stack)
    frames = np.zeros((config.frame_stack, 64, 64), np.uint8)
    replay.add_first(frames)
    for step in range(2 * config.replay_capacity):
        replay.add(step % 3, 0.5, step % 7 == 0, False, frames)
    replay.save(str(tmp_path / "full.replay"))
    size = (tmp_path / "full.replay").stat().st_size
    assert size <= space.replay_file <= size + HEADER_BYTES


def test_resume_dry_run_and_its_refusals(tmp_path, dry_run):
    run = tmp_path / "run"
    tiny_catch_checkpoint(run / "checkpoints", steps=60, updates=1)
    before = sorted(p.name for p in run.rglob("*"))

    def resume(path=run, *args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = train.main(["--resume", str(path), "--dry-run", *args])
            except SystemExit as exit_:
                code = exit_.code
        return code, out.getvalue(), err.getvalue()

    code, out, err = resume(run, "--threads", "1")
    assert code == 0 and f"resume {run} at done, env step 60" in out, err
    assert "--stop-after 60: the run is already at env step 60" in one_error(*resume(run, "--stop-after", "60")[::2])
    for args, message in [(["--out", str(tmp_path / "x")], "drop --out"), (["seed=2"], "drop overrides"),
                          (["--preset", "quick"], "drop --preset")]:
        assert message in one_error(*resume(run, *args)[::2])
    # The checkpoints/ folder or a checkpoint file in it names the run: no new run nested inside.
    for path in (run / "checkpoints", run / "checkpoints" / "final.pt"):
        code, out, err = resume(path)
        assert code == 0 and f"resume {run} at done, env step 60" in out, err
    (tmp_path / "loose.pt").write_bytes((run / "checkpoints" / "final.pt").read_bytes())
    assert "this file is not in a run's checkpoints/ folder" in one_error(*resume(tmp_path / "loose.pt")[::2])
    assert sorted(p.name for p in run.rglob("*")) == before  # a dry run takes no lock and sets nothing aside


def test_a_refused_or_failed_start_leaves_nothing_behind(tmp_path, monkeypatch):
    """README's retry: the paper preset refused on a CPU, then the same --out with --allow-slow; and a
    start that fails while setting up (here the env) leaves neither a directory nor a config.json."""
    constant_probe(monkeypatch)
    run = tmp_path / "run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = train.main(["--game", "catch", "--device", "cpu", "--threads", "1", "--out", str(run)])
    assert "would take" in one_error(code, err.getvalue()) and not run.exists()

    def broken_env(*args, **kwargs):
        raise ValueError("the env cannot start")
    monkeypatch.setattr(train, "make_env", broken_env)
    for existing in (False, True):
        if existing:
            run.mkdir()
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = train.main(["--preset", "quick", "--threads", "1", "--no-progress", "--out", str(run), *TINY_RUN])
        assert code == 2 and err.getvalue().splitlines()[-1] == "error: the env cannot start"  # after the start line
        assert run.exists() == existing and not (existing and any(run.iterdir()))
