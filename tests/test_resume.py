"""A run that survives (issue 12): killed or stopped anywhere and resumed, it ends exactly as the run
that never stopped; broken checkpoints are skipped with a message; a full disk and a diverging loss
stop it with one line and a good checkpoint.

Every training process here is forked from one that has imported twm_fast.train already
(twm_fast.faults), so a trial costs its tiny run (Catch, a tiny model, 140 env steps, about 3 s),
not torch's start-up. One uninterrupted reference run is shared by all trials.
"""
import json
import math
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from twm_fast.checkpoint import CheckpointStore, verify_checkpoint
from twm_fast.durable import RunLock
from twm_fast.faults import run_training
from twm_fast.train import resume_point

# Catch with a tiny model: 60 prefill steps, pretraining phases of 10, 5 and 7 updates, 80 env steps
# of main loop with 16 training steps, a checkpoint every 20 env steps (the newest two kept) and an
# evaluation every 40.
TINY = ["--preset", "quick", "--device", "cpu", "--threads", "1", "--no-progress",
        "env_steps=140", "prefill_steps=60", "pretrain_budget=240", "total_budget=1136",
        "pretrain_obs_batch_size=16", "eval_every=40", "eval_episodes=1", "final_eval_episodes=1",
        "checkpoint_every=20", "keep_checkpoints=2", "z_categoricals=4", "z_categories=4", "obs_channels=4",
        "obs_hidden_dims=16", "dyn_embed_dim=16", "dyn_num_heads=2", "dyn_head_dim=8", "dyn_feedforward_dim=32",
        "dyn_z_head_dims=16", "dyn_reward_head_dims=8", "dyn_discount_head_dims=8", "actor_hidden_dims=16",
        "critic_hidden_dims=16", "memory_length=4", "wm_batch_size=4", "wm_sequence_length=4",
        "imagine_batch_size=8", "imagine_horizon=5"]
PREFILL, ENV_STEPS = 60, 140
# Metrics that measure the wall clock, not the run.
CLOCK_KEYS = {"time", "train_steps_per_s"}


def train(run: Path, *extra, plan=(), report=None, kill_after_s=None) -> tuple[int, str]:
    """A new run (`run` does not exist) or, with `--resume` in extra, its continuation; returns the
    exit code and what this process wrote to stderr."""
    run.parent.mkdir(parents=True, exist_ok=True)
    log = run.parent / f"{run.name}.log"
    before = log.stat().st_size if log.exists() else 0
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    options = [e for e in extra if e not in overrides]
    argv = list(extra) if "--resume" in extra else [*options, "--out", str(run), *TINY, *overrides]
    code = run_training(argv, log, plan=plan, report_path=report, kill_after_s=kill_after_s)
    return code, log.read_text()[before:]


def resume_to_end(run: Path) -> str:
    code, stderr = train(run, "--resume", str(run))
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr
    return stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, and how often each fault point came up in it."""
    root = tmp_path_factory.mktemp("reference")
    code, stderr = train(root / "run", report=root / "events.json")
    assert code == 0, stderr
    return root / "run", json.loads((root / "events.json").read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def final_state(run: Path) -> dict:
    """What must not depend on where the run was interrupted: the final checkpoint (weights,
    optimisers, counters, RNG, env and guard state, the replay file byte for byte: contents, visit
    counts, its RNG), and the log files' records without their clock readings."""
    checkpoints = run / "checkpoints"
    payload = torch.load(checkpoints / "final.pt", weights_only=False)
    payload.pop("sequence")  # how many checkpoints came before: a stop adds one
    log = payload.pop("log")
    payload["pending_metrics"] = log["pending"]
    return {"payload": payload, "replay": (checkpoints / "final.replay").read_bytes(),
            "metrics": [{k: v for k, v in r.items() if k not in CLOCK_KEYS} for r in read_jsonl(run / "metrics.jsonl")],
            "eval": read_jsonl(run / "eval.jsonl"), "scores": json.loads((run / "scores.json").read_text())}


def differences(a, b, where="") -> list[str]:
    """Where two nested states differ (tensors, arrays and floats exactly, NaN equal to NaN)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        same = (torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)))
        return [] if same else [where]
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return [] if np.array_equal(a, b) else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def assert_same_as_reference(run: Path, reference_run: Path, trial: str) -> None:
    got, want = final_state(run), final_state(reference_run)
    diff = differences(got, want)
    assert not diff, f"{trial}: the resumed run differs from the uninterrupted one at {diff[:8]}"


def kill_trials(events: dict) -> list[tuple[str, list]]:
    """(name, attempts): each attempt is a plan for one process, or a wall-clock kill in seconds;
    after the last, the run is resumed to its end. Drawn from the reference run's events."""
    rng = random.Random(12)
    counts, files = events["counts"], events["files"]

    def at(event, first=1, last=None):
        return [(event, rng.randint(first, last or counts[event]), "SIGKILL")]

    def file_plan(pattern):
        index = rng.choice([i for i, name in enumerate(files, 1) if pattern(name)])
        return f"writing {files[index - 1]}", [("file", index, "SIGKILL")]

    trials = [(f"prefill {i}", [at("env_step", 1, PREFILL)]) for i in range(2)]
    for phase in ("pretrain_obs", "pretrain_dyn", "pretrain_ac"):
        trials += [(f"{phase} {i}", [at(f"update:{phase}")]) for i in range(2)]
    trials += [(f"main loop env step {i}", [at("env_step", PREFILL + 1, ENV_STEPS)]) for i in range(2)]
    trials += [(f"inside training step {i}", [at("train_step")]) for i in range(2)]
    trials += [("inside an evaluation", [at("evaluate")])]
    for pattern in (lambda n: n.startswith("ckpt") and n.endswith(".replay"),
                    lambda n: n.startswith("ckpt") and n.endswith(".pt"),
                    lambda n: n.startswith("ckpt") and n.endswith(".json"),
                    lambda n: n == "final.pt", lambda n: n == "scores.json"):
        name, plan = file_plan(pattern)
        trials.append((name, [plan]))
    trials += [(f"before a rename {i}", [at("rename")]) for i in range(2)]
    trials += [("before deleting old checkpoints", [at("prune")])]
    trials += [("twice: a training step, then a checkpoint write", [at("train_step"), at("file", 1, 6)]),
               ("twice: pretraining, then the main loop", [at("update:pretrain_dyn"), at("env_step", 1, 60)])]
    trials += [(f"after {s:.2f} s of wall time", [s]) for s in (rng.uniform(0.5, 3.0) for _ in range(2))]
    return trials


def run_trial(root: Path, name: str, attempts: list) -> tuple[str, Path, list[str]]:
    run = root / "run"
    notes = []
    for i, attempt in enumerate(attempts):
        extra = ("--resume", str(run)) if i else ()
        if isinstance(attempt, float):
            code, stderr = train(run, *extra, kill_after_s=attempt)
        else:
            code, stderr = train(run, *extra, plan=attempt)
            assert code == -9, f"{name}: attempt {i} was not killed (exit {code}): {stderr[-2000:]}"
        notes.append(stderr)
    notes.append(resume_to_end(run))
    return name, run, notes


def test_sigkill_anywhere_then_resume_equals_the_uninterrupted_run(reference, tmp_path):
    reference_run, events = reference
    trials = kill_trials(events)
    assert len(trials) >= 20
    # Two at a time: the machine has two cores and every trial runs one thread.
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda t: run_trial(tmp_path / f"trial{t[0]}", *t[1]), enumerate(trials)))
    for (name, run, notes), (_, attempts) in zip(results, trials):
        assert_same_as_reference(run, reference_run, name)
        assert not list((run / "checkpoints").glob("*.tmp")), name
        if name.startswith("prefill"):  # no checkpoint yet: the run starts again
            assert "starting it again from its config.json" in notes[-1], notes[-1]
    # The kills inside a checkpoint write left a part-written file that the resume removed.
    writing = [notes for name, _, notes in results if name.startswith("writing ckpt")]
    assert any("removed the interrupted checkpoint write" in n[-1] for n in writing), writing


@pytest.mark.parametrize("name, plan, expect", [
    # A first signal waits for the step boundary; the checkpoint there has no half-applied step.
    ("SIGINT in pretraining", [("update:pretrain_dyn", 3, "SIGINT")], "(on SIGINT)"),
    ("SIGTERM inside a training step", [("train_step", 7, "SIGTERM")], "(on SIGTERM)"),
    # A closed terminal is a stop request too; inside an evaluation it stops at once.
    ("SIGHUP in an evaluation", [("evaluate", 2, "SIGHUP")], "(on SIGHUP)"),
    # A second signal while the first one's checkpoint is written: out without that checkpoint.
    # (The first comes as checkpoint 5 is committed, at env step 80: its 15 files are written; the
    # stop's checkpoint at the next step boundary gets the second in its model file, file 17.)
    ("SIGTERM twice", [("prune", 5, "SIGTERM"), ("file", 17, "SIGTERM")], "interrupted again"),
])
def test_stop_signals_then_resume_equal_the_uninterrupted_run(reference, tmp_path, name, plan, expect):
    run = tmp_path / "run"
    code, stderr = train(run, plan=plan)
    assert code == 130 and expect in stderr and "Traceback" not in stderr, stderr
    newest = CheckpointStore(run / "checkpoints").committed()[0]
    counters = verify_checkpoint(run / "checkpoints", newest)["counters"]
    if name == "SIGTERM inside a training step":  # the step went through and was counted
        assert counters["train_steps"] == 7, counters
    if name == "SIGINT in pretraining":
        assert (counters["phase"], counters["phase_updates"]) == ("pretrain_dyn", 3), counters
    if name == "SIGHUP in an evaluation":  # stopped at once; the evaluation is not kept, resume runs it
        assert counters["env_steps"] == 100 and [e["env_steps"] for e in counters["evals"]] == [60], counters
    if name == "SIGTERM twice":  # the stop's checkpoint was abandoned whole
        assert newest == "ckpt-000005" and counters["env_steps"] == 80, newest
    resume_to_end(run)
    assert_same_as_reference(run, reference[0], name)


# ---- Broken checkpoints ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """The reference configuration stopped at env step 110: checkpoints ckpt-000006 (env step 100)
    and ckpt-000007 (110); and a run of another seed, stopped there too, to swap files from."""
    root = tmp_path_factory.mktemp("stopped")
    for name, extra in (("run", ()), ("other", ("--seed", "1"))):
        code, stderr = train(root / name, "--stop-after", "110", *extra)
        assert code == 0, stderr
    assert CheckpointStore(root / "run" / "checkpoints").committed() == ["ckpt-000007", "ckpt-000006"]
    return root


def flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


BREAKAGES = {
    "flipped byte in the model file": (lambda c, o: flip_byte(c / "ckpt-000007.pt"), "ckpt-000007.pt fails its checksum"),
    "truncated model file": (lambda c, o: truncate(c / "ckpt-000007.pt"), "ckpt-000007.pt is truncated"),
    "flipped byte in the replay file": (lambda c, o: flip_byte(c / "ckpt-000007.replay"), "ckpt-000007.replay"),
    "truncated replay file": (lambda c, o: truncate(c / "ckpt-000007.replay"), "ckpt-000007.replay is truncated"),
    "replay of the previous checkpoint": (
        lambda c, o: shutil.copy(c / "ckpt-000006.replay", c / "ckpt-000007.replay"), "ckpt-000007.replay"),
    "model file of another run": (
        lambda c, o: shutil.copy(o / "ckpt-000007.pt", c / "ckpt-000007.pt"), "ckpt-000007"),
    "whole checkpoint of another run": (
        lambda c, o: [shutil.copy(p, c / p.name) for p in o.glob("ckpt-000007.*")], "belongs to another run"),
    "manifest lost": (lambda c, o: (c / "ckpt-000007.json").unlink(), "incomplete"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_broken_newest_checkpoint_falls_back_to_the_previous_one(stopped_run, tmp_path, breakage):
    run = tmp_path / "run"
    shutil.copytree(stopped_run / "run", run)
    break_it, reason = BREAKAGES[breakage]
    break_it(run / "checkpoints", stopped_run / "other" / "checkpoints")
    _, chosen = resume_point(run)
    assert chosen.payload["manifest"]["name"] == "ckpt-000006"
    assert chosen.payload["counters"]["env_steps"] == 100
    message = chosen.skipped_message()
    assert message.startswith("skipped 1 newer checkpoint(s): ckpt-000007") and reason in message, message
    assert message.endswith("Using ckpt-000006 (main, env step 100).")


def test_fallback_is_reported_and_resumes_exactly(stopped_run, reference, tmp_path):
    """Through the command line: the skipped checkpoint is named with its reason and set aside, and
    the run continued from the previous one ends as the uninterrupted run."""
    run = tmp_path / "run"
    shutil.copytree(stopped_run / "run", run)
    flip_byte(run / "checkpoints" / "ckpt-000007.pt", at=0.9)
    stderr = resume_to_end(run)
    assert "warning: skipped 1 newer checkpoint(s): ckpt-000007: ckpt-000007.pt fails its checksum" in stderr
    assert "from ckpt-000006" in stderr and "set aside the checkpoints after ckpt-000006" in stderr
    assert (run / "checkpoints" / "set-aside" / "ckpt-000007.pt").is_file()
    assert_same_as_reference(run, reference[0], "fallback")


def test_no_usable_checkpoint_is_one_line(stopped_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped_run / "run", run)
    for name in ("ckpt-000006.pt", "ckpt-000007.pt"):
        flip_byte(run / "checkpoints" / name)
    code, stderr = train(run, "--resume", str(run))
    assert code == 2 and "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("error: no usable checkpoint in") and "ckpt-000007" in line and "ckpt-000006" in line


def test_a_run_directory_has_one_owner(stopped_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped_run / "run", run)
    lock = RunLock(run).acquire()  # as a training process still running there holds it
    try:
        code, stderr = train(run, "--resume", str(run))
    finally:
        lock.release()
    assert code == 2 and "is in use by another training process" in stderr and "Traceback" not in stderr


# ---- A full disk and diverging numerics ---------------------------------------------------------------
def test_full_disk_stops_with_one_line_and_the_last_checkpoint_intact(reference, tmp_path):
    """The model file of the checkpoint at env step 100 meets a full disk halfway through."""
    files = reference[1]["files"]
    model_write = [i for i, name in enumerate(files, 1) if name == "ckpt-000006.pt"][0]
    run = tmp_path / "run"
    code, stderr = train(run, plan=[("file", model_write, "ENOSPC")])
    assert code == 1 and "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert len(errors) == 1, stderr
    assert errors[0].startswith("error: no space left on the device writing ") and "ckpt-000006.pt" in errors[0]
    assert "ckpt-000005.pt, is intact" in errors[0] and "--resume" in errors[0]
    checkpoints = run / "checkpoints"
    assert verify_checkpoint(checkpoints, "ckpt-000005")["counters"]["env_steps"] == 80
    assert not list(checkpoints.glob("*.tmp"))
    resume_to_end(run)  # space freed
    assert_same_as_reference(run, reference[0], "full disk")


def test_nan_loss_skips_the_update_and_is_logged(tmp_path):
    """NaN in the dynamics loss of three training steps: each update is skipped on the device (the
    weights stay finite), the first of a streak gets a line, the metrics count them."""
    run = tmp_path / "run"
    dyn_losses_before_main = 5  # the dynamics pretraining updates
    nan_steps = (3, 4, 9)
    code, stderr = train(run, plan=[("dyn_loss", dyn_losses_before_main + s, "NaN") for s in nan_steps])
    assert code == 0, stderr
    warnings = [line for line in stderr.splitlines() if "non-finite" in line]
    assert warnings == [
        "warning: non-finite dynamics model at train step 3 (env step 75): update skipped (the run stops "
        "after 20 in a row; 1 skipped so far)",
        "warning: non-finite dynamics model at train step 9 (env step 105): update skipped (the run stops "
        "after 20 in a row; 3 skipped so far)"], warnings
    records = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("phase") == "main"]
    assert records[-1]["skipped_updates"] == 3
    assert sum(r["dyn/skipped"] * 1 for r in records) > 0
    payload = verify_checkpoint(run / "checkpoints", "final")
    assert payload["guard"]["total"] == 3
    assert all(torch.isfinite(v).all() for v in payload["agent"].values() if v.is_floating_point())


def test_repeated_nan_stops_the_run_with_a_good_checkpoint(tmp_path):
    """From the second dynamics pretraining update on, every loss is NaN: after 3 skipped updates in
    a row (max_skipped_updates=3) the run stops with one line; its last checkpoint is good."""
    run = tmp_path / "run"
    code, stderr = train(run, "max_skipped_updates=3", plan=[("dyn_loss", n, "NaN") for n in range(2, 40)])
    assert code == 1 and "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error")]
    assert errors == [
        "error: 3 updates in a row were skipped for a non-finite loss or gradient norm (dynamics model), from "
        f"pretrain_dyn update 2 on; stopped, the last good checkpoint is {run / 'checkpoints' / 'ckpt-000002.pt'}"
    ], stderr
    assert CheckpointStore(run / "checkpoints").committed() == ["ckpt-000002", "ckpt-000001"]
    payload = verify_checkpoint(run / "checkpoints", "ckpt-000002")
    assert payload["counters"]["phase"] == "pretrain_dyn" and payload["counters"]["phase_updates"] == 0
    assert all(torch.isfinite(v).all() for v in payload["agent"].values() if v.is_floating_point())


def test_an_env_that_cannot_be_saved_ends_its_episode_at_the_resume(tmp_path, monkeypatch):
    """An Atari emulator cannot be saved (its env's state_dict is None): the resumed run ends the
    interrupted episode as a truncation in the replay and starts a fresh one (README, Departures)."""
    from twm_fast.config import make_config
    from twm_fast.envs import AgentEnv
    from twm_fast.train import StopRun, Trainer

    monkeypatch.setattr(AgentEnv, "state_dict", lambda self: None)
    config = make_config("quick", [o for o in TINY if "=" in o], device="cpu", threads=1)
    cpu = torch.device("cpu")
    stopped = Trainer(config, tmp_path, cpu, show_progress=False, stop_after=30)
    with pytest.raises(StopRun):
        stopped.run()
    stopped.checkpoint()
    last = stopped.replay.read_windows([29], 1)
    assert not last["terminated"][0, 1] and not last["truncated"][0, 1]  # step 29 is mid-episode
    payload = CheckpointStore(tmp_path / "checkpoints").load("ckpt-000001")
    assert payload["env"] is None and payload["counters"]["env_steps"] == 30
    resumed = Trainer(config, tmp_path, cpu, resume=payload, show_progress=False)
    window = resumed.replay.read_windows([29], 1)
    assert window["truncated"][0, 1] and not window["terminated"][0, 1]
    assert np.array_equal(window["obs"][0, 2], resumed.obs)  # o_30 is the fresh episode's first
    assert resumed.counters["episode_return"] == 0.0
