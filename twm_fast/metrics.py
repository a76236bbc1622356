"""Where a run's numbers go: metrics.jsonl, TensorBoard events, and a progress bar for short jobs
(a training run's display is `twm_fast.progress`)."""
from __future__ import annotations

import json
import math
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
    """Appends one JSON object per record to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
        self._file = open(self.path, "a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # tensorboard is a dependency, but a missing one must not stop training
            self._tb = None
        self._pending: dict[str, list[float]] = defaultdict(list)
        self._flushed: dict[str, float] = {}  # the latest flushed mean of every key

    def accumulate(self, metrics: dict[str, Any]) -> None:
        """Collect metrics of many steps; `flush` writes their means."""
        for k, v in metrics.items():
            self._pending[k].append(_to_float(v))

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
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, float) and math.isfinite(v) and k != "time":
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def progress(total: int, desc: str, initial: int = 0, unit: str = "step") -> tqdm:
    """A progress bar with rate and ETA (tqdm); `dynamic_ncols` keeps it readable in narrow terminals."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.05)
