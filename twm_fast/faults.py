"""Fault injection for the durability tests (tests/test_resume.py): the training command run in a
child process that is killed with SIGKILL, or sent a stop signal, at the n-th time the run reaches
one of its events.

Children are forked from a multiprocessing fork server that has imported twm_fast.train once (and
never ran a torch op, so no thread pool is forked), so a trial costs its training and not the
interpreter's and torch's start-up. Inside a child, `train.main(argv)` runs as the command line
does; the events are counted by wrappers around the trainer's own methods:

- ``env_step``: before the n-th env step (prefill and main loop);
- ``update:<phase>``: after the n-th update of a pretraining phase, before the trainer counts it;
- ``train_step``: after the n-th training step's updates, before the trainer counts it;
- ``evaluate``: after the n-th evaluation's episodes, before the trainer keeps its result;
- ``file``: halfway through the first write into the n-th file written atomically
  (twm_fast.durable: a replay, a model file, a manifest, scores.json), so its temporary file is
  part-written;
- ``rename``: before the n-th rename of a complete temporary file onto its name;
- ``prune``: before the n-th deletion of old checkpoints, after their newer one was committed;
- ``dyn_loss``: the n-th dynamics loss (pretraining and training steps).

Actions: "SIGKILL" or a stop signal's name (sent to the child itself), "ENOSPC" (the event raises
the OSError of a full disk: at ``file``, a write that fails) and "NaN" (at ``dyn_loss``: the loss
times NaN).

A child reports how often each event happened (and the files written, in order), so that a test can
draw kill points over a whole reference run. The one thing a child changes besides: the machine
probe behind the progress display's estimates is skipped (it times matmuls for half a second).
"""
from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import sys
import traceback
from collections import Counter
from pathlib import Path

_CONTEXT = None


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        # What every run imports sooner or later (the pictures, TensorBoard, torch._dynamo for the
        # optimisers: 3 s): once, in the server.
        _CONTEXT.set_forkserver_preload(["twm_fast.faults", "twm_fast.train", "twm_fast.visualize",
                                         "torch.utils.tensorboard", "matplotlib.pyplot", "torch._dynamo"])
    return _CONTEXT


class Injector:
    """Counts the run's events and acts at the planned ones: plan = [(event, n, action)] (the
    module docstring lists both)."""

    def __init__(self, plan):
        self.plan = {(event, int(n)): action for event, n, action in plan}
        self.counts: Counter[str] = Counter()
        self.files: list[str] = []

    def hit(self, event: str) -> str | None:
        """Count `event`; act if planned: send a signal, or raise ENOSPC (as a full disk's write
        does); returns the action (the caller acts on "NaN")."""
        self.counts[event] += 1
        action = self.plan.get((event, self.counts[event]))
        if action == "ENOSPC":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if action is not None and action.startswith("SIG"):
            sys.stderr.flush()
            os.kill(os.getpid(), getattr(signal, action))
        return action

    def install(self) -> None:
        from twm_fast import checkpoint, durable, estimate, train
        from twm_fast.agent.agent import Agent

        hit = self.hit

        def wrap_before(cls, name, event):
            original = getattr(cls, name)

            def wrapper(self, *args, **kwargs):
                hit(event(self) if callable(event) else event)
                return original(self, *args, **kwargs)
            setattr(cls, name, wrapper)

        wrap_before(train.Trainer, "env_step", "env_step")
        wrap_before(train.Trainer, "_count_update", lambda trainer: f"update:{trainer.counters['phase']}")
        wrap_before(checkpoint.CheckpointStore, "_prune", "prune")

        agent_train_step = Agent.train_step

        def train_step(self, *args, **kwargs):
            result = agent_train_step(self, *args, **kwargs)
            hit("train_step")
            return result
        Agent.train_step = train_step

        dynamics_loss = Agent._dynamics_loss

        def nan_dynamics_loss(self, *args, **kwargs):
            loss, metrics, probs = dynamics_loss(self, *args, **kwargs)
            if hit("dyn_loss") == "NaN":
                loss = loss * float("nan")
            return loss, metrics, probs
        Agent._dynamics_loss = nan_dynamics_loss

        evaluate = train.evaluate

        def evaluate_then_hit(*args, **kwargs):
            result = evaluate(*args, **kwargs)
            hit("evaluate")
            return result
        train.evaluate = evaluate_then_hit

        writer_init, writer_write = durable._Crc32Writer.__init__, durable._Crc32Writer.write
        files = self.files

        def init(writer, file):
            writer_init(writer, file)
            writer._first_write = True
            files.append(Path(file.name).name.removesuffix(durable.TMP_SUFFIX))

        def write(writer, data):
            if not writer._first_write:
                return writer_write(writer, data)
            writer._first_write = False
            view = memoryview(data).cast("B")
            half = len(view) // 2
            n = writer_write(writer, view[:half])
            writer.flush()
            hit("file")
            return n + writer_write(writer, view[half:])
        durable._Crc32Writer.__init__, durable._Crc32Writer.write = init, write

        replace = os.replace

        def replace_then(src, dst, *args, **kwargs):
            hit("rename")
            return replace(src, dst, *args, **kwargs)
        durable.os.replace = replace_then  # durable's `os` is the os module: this child's renames

        estimate.Machine.probe = classmethod(lambda cls, device, *args, **kwargs: estimate.DEVELOPMENT_MACHINE)

    def report(self) -> dict:
        return {"counts": dict(self.counts), "files": self.files}


def _child(argv: list[str], log_path: str, plan, report_path: str | None) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    injector = Injector(plan)
    code = 1
    try:
        from twm_fast import train

        injector.install()
        code = train.main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        if report_path:
            Path(report_path).write_text(json.dumps(injector.report()))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_training(argv: list[str], log_path: Path, plan=(), report_path: Path | None = None,
                 kill_after_s: float | None = None, timeout_s: float = 300.0) -> int:
    """`python -m twm_fast.train *argv` in a forked child with its stdout and stderr appended to
    `log_path`; returns its exit code (-9 for SIGKILL). plan: see `Injector`; kill_after_s: SIGKILL
    it after this many seconds of wall time instead, wherever it is."""
    process = _context().Process(target=_child, args=(list(argv), str(log_path), list(plan),
                                                      None if report_path is None else str(report_path)))
    process.start()
    process.join(kill_after_s if kill_after_s is not None else timeout_s)
    if process.is_alive():
        process.kill()
        process.join(timeout_s)
        if kill_after_s is None:
            raise TimeoutError(f"training did not finish in {timeout_s:.0f}s: {argv}")
    return process.exitcode
