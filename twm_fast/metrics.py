"""Where a run's numbers go: metrics.jsonl, eval.jsonl, TensorBoard events, and a progress bar for
short jobs (a training run's display is `twm_fast.progress`).

A checkpoint records how far the log files had been written (`MetricsLog.state_dict`); a resumed
run cuts them back to that point and hides TensorBoard's later events, so that a record the
resumed run writes again is not listed twice, and none is lost.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm


def _to_float(value: Any) -> float:
    if torch.is_tensor(value):
        return float(value.detach().float().mean())
    return float(value)


class MetricsLog:
    """Appends one JSON object per record to metrics.jsonl (and per evaluation to eval.jsonl) and
    mirrors scalars to TensorBoard.

    resume: a `state_dict()` from a checkpoint: the files are cut back to the sizes it recorded,
    TensorBoard hides the events from its env step on (and gets the records at that step again),
    and the metrics accumulated but not yet flushed when it was taken are restored."""

    def __init__(self, run_dir: Path, resume: dict[str, Any] | None = None):
        self.path = run_dir / "metrics.jsonl"
        self.eval_path = run_dir / "eval.jsonl"
        replayed: list[dict] = []
        self.warnings: list[str] = []  # for the run to print: log files that lost records
        if resume is None and (self.path.exists() or self.eval_path.exists()):
            resume = _START  # a run started again (it stopped before its first checkpoint): empty logs
        if resume is not None:
            for path, size in ((self.path, resume["metrics_bytes"]), (self.eval_path, resume["eval_bytes"])):
                problem = _truncate(path, size)
                if problem:
                    self.warnings.append(problem)
            replayed = [r for r in _read_records(self.path) if r.get("env_steps") == resume["env_steps"]]
        self._file = open(self.path, "a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step: TensorBoard drops the events at env steps >= it that came before this writer.
            self._tb = SummaryWriter(str(run_dir / "tensorboard"),
                                     purge_step=None if resume is None else resume["env_steps"])
        except ImportError:  # tensorboard is a dependency, but a missing one must not stop training
            self._tb = None
        for record in replayed:  # the checkpoint's own step's records, which the purge hid
            self._write_tensorboard(record)
        self._pending: dict[str, list[float]] = defaultdict(list)
        self._flushed: dict[str, float] = {}  # the latest flushed mean of every key
        if resume is not None:
            self._pending.update({k: list(v) for k, v in resume["pending"].items()})
            self._flushed.update(resume["flushed"])

    def state_dict(self, env_steps: int) -> dict[str, Any]:
        """What a checkpoint taken at `env_steps` records: the files' sizes (written through to the
        disk first) and the metrics accumulated since the last flush."""
        self._file.flush()
        os.fsync(self._file.fileno())
        if self.eval_path.exists():
            with open(self.eval_path, "rb") as f:
                os.fsync(f.fileno())
        return {"env_steps": env_steps, "metrics_bytes": self.path.stat().st_size,
                "eval_bytes": self.eval_path.stat().st_size if self.eval_path.exists() else 0,
                "pending": {k: list(v) for k, v in self._pending.items() if v}, "flushed": dict(self._flushed)}

    def accumulate(self, metrics: dict[str, Any]) -> dict[str, float]:
        """Collect metrics of many steps; `flush` writes their means. Returns this step's values."""
        values = {k: _to_float(v) for k, v in metrics.items()}
        for k, v in values.items():
            self._pending[k].append(v)
        return values

    @property
    def pending(self) -> bool:
        """Whether metrics were accumulated since the last flush."""
        return any(self._pending.values())

    def running_means(self) -> dict[str, float]:
        """For a live display: the means since the last flush, else the latest flushed means."""
        return {**self._flushed, **{k: sum(v) / len(v) for k, v in self._pending.items() if v}}

    def flush(self, step: int, **extra: Any) -> dict[str, float]:
        means = {k: sum(v) / len(v) for k, v in self._pending.items() if v}
        self._pending.clear()
        self._flushed.update(means)
        self.write(step, {**means, **extra})
        return means

    def write(self, step: int, values: dict[str, Any]) -> None:
        record = {"env_steps": step, "time": time.time()}
        for k, v in values.items():
            record[k] = v if isinstance(v, (str, int, list, dict)) or v is None else _to_float(v)
        self._file.write(json.dumps(record) + "\n")
        self._write_tensorboard(record)

    def _write_tensorboard(self, record: dict[str, Any]) -> None:
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, float) and math.isfinite(v) and k != "time":
                    self._tb.add_scalar(k, v, record["env_steps"])

    def write_eval(self, result: dict[str, Any]) -> None:
        """One evaluation's record in eval.jsonl (its returns, mean, std, normalised score)."""
        with open(self.eval_path, "a") as f:
            f.write(json.dumps(result) + "\n")

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


# The log state of a run that has not started: empty files, TensorBoard's events hidden from step 0.
_START = {"env_steps": 0, "metrics_bytes": 0, "eval_bytes": 0, "pending": {}, "flushed": {}}


def _truncate(path: Path, size: int) -> str | None:
    """Cut a log file back to `size` bytes (what a checkpoint recorded); a file shorter than that
    (cut or replaced since) is kept as it is, with a warning as the result."""
    have = path.stat().st_size if path.exists() else 0
    if have < size:
        return (f"{path.name} holds {have} bytes, fewer than the {size} its checkpoint recorded: records "
                "from before the checkpoint are missing from it")
    if path.exists():
        os.truncate(path, size)
    return None


def _read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def progress(total: int, desc: str, initial: int = 0, unit: str = "step") -> tqdm:
    """A progress bar with rate and ETA (tqdm); `dynamic_ncols` keeps it readable in narrow terminals."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.05)
