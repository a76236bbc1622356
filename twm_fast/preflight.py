"""Checks at the start of a run, before anything is written: the run directory can be made and
written, and its disk and this machine's memory hold what the run will put there.

Each refusal is a ValueError with one line that names the path and, for space, the numbers: what
the replay at capacity and the checkpoints take (the replay's file size is known from its format,
`twm_fast.replay.common.saved_bytes`; a checkpoint's model part from the parameter count) and what
is free.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from twm_fast.replay.common import memory_bytes, saved_bytes

# Checkpoints on disk at once, at the most: the keep_checkpoints committed ones (the final one among
# them at the end) and the next one being written before the oldest is deleted (twm_fast.checkpoint).
def checkpoints_on_disk(config) -> int:
    return config.keep_checkpoints + 1


# A checkpoint's model part per parameter: float32 weights plus Adam's two moments; and what it holds
# besides (counters, RNG states, the config, pickling), generously.
CHECKPOINT_BYTES_PER_PARAMETER = 3 * 4
CHECKPOINT_OVERHEAD_BYTES = 2**20
# Logs, TensorBoard events, images and curves of a whole run, generously.
LOG_BYTES = 100 * 2**20


@dataclass(frozen=True)
class RunSpace:
    """What a run will keep on disk and in memory, in bytes."""

    replay_file: int        # one replay file at capacity
    model_file: int         # one checkpoint's .pt (weights, optimiser state)
    replay_memory: int      # the replay in memory at capacity
    checkpoints: int        # checkpoints on disk at once, at the most

    @property
    def disk(self) -> int:
        return self.checkpoints * (self.replay_file + self.model_file) + LOG_BYTES


def model_parameters(config) -> int:
    """The agent's parameter count, from a model built on the meta device (no memory, milliseconds)
    with the most actions a game has (18, Atari's full set)."""
    import torch

    from twm_fast.agent.agent import Agent

    with torch.device("meta"):
        return sum(p.numel() for p in Agent(config, 18).parameters())


def run_space(config, num_parameters: int) -> RunSpace:
    shape, stack = (config.frame_size, config.frame_size), config.frame_stack
    return RunSpace(saved_bytes(config.replay_capacity, shape, stack),
                    CHECKPOINT_BYTES_PER_PARAMETER * num_parameters + CHECKPOINT_OVERHEAD_BYTES,
                    memory_bytes(config.replay_capacity, shape, stack), checkpoints_on_disk(config))


def describe_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def _existing_ancestor(path: Path) -> Path:
    """The nearest path at or above `path` that exists (what a mkdir -p would start from)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(run_dir: Path, option: str, *, new: bool) -> Path:
    """Raise ValueError (one line) unless the directory `run_dir` (given as `option`) can be created, or
    exists, and can be written; with `new`, it must also be missing or empty (a new run's directory).
    Creates nothing (a write test leaves no file). Returns the nearest existing directory at or above
    it (whose disk it will fill)."""
    try:
        if run_dir.exists() and not run_dir.is_dir():
            what = "the run directory" if option == "--resume" else "a directory"
            raise ValueError(f"{option} {run_dir} is a file; give {what}")
        if new and run_dir.is_dir() and any(run_dir.iterdir()):
            held = "a twm-fast run" if (run_dir / "config.json").exists() else "other files"
            raise ValueError(f"output directory {run_dir} already holds {held}; pass --resume {run_dir} to "
                             "continue it, or choose another --out")
        problem, base = _directory_problem(run_dir)
    except OSError as exc:  # e.g. a name too long for the file system
        raise ValueError(f"{option} {run_dir}: {exc.strerror or exc}; choose another path") from None
    if problem:
        # A directory the user may not write: any writable path will do; else the path itself is wrong.
        advice = "choose a writable path" if problem.endswith(PERMISSION) else "choose another path"
        raise ValueError(f"{option} {run_dir}: {problem}; {advice}")
    return base


def check_output_file(path: Path, option: str) -> None:
    """Raise ValueError (one line) unless a file can be written at `path`, its directory made if missing.
    Creates nothing (a write test leaves no file)."""
    try:
        if path.is_dir():
            raise ValueError(f"{option} {path} is a directory; give a file name, e.g. {path / 'eval.json'}")
        if path.exists():
            problem = None if os.access(path, os.W_OK) else "permission denied"
        else:
            problem, _ = _directory_problem(path.parent)
    except OSError as exc:
        problem = exc.strerror or str(exc)
    if problem:
        raise ValueError(f"cannot write {option} {path}: {problem}")


PERMISSION = "(read-only or permission denied)"


def _directory_problem(directory: Path) -> tuple[str | None, Path]:
    """(Why no directory can be made at `directory` or written in it, or None; the nearest existing
    path at or above it)."""
    absolute = Path(os.path.abspath(directory))
    for parent in absolute.parents:
        if parent.exists() and not parent.is_dir():
            return f"{parent} is a file, so no directory can be made under it", parent
    if absolute.exists() and not absolute.is_dir():
        return f"{directory} is a file", absolute
    base = _existing_ancestor(absolute)
    if not (os.access(base, os.W_OK | os.X_OK) and _can_create_in(base)):
        doing = "write to" if base == absolute else f"create {directory} in"
        return f"cannot {doing} {base} {PERMISSION}", base
    return None, base


def _can_create_in(directory: Path) -> bool:
    """Whether a file can be made in `directory`, tried with a hidden file removed at once: the
    permission bits do not tell for root, a read-only mount or /proc."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".twm-fast-write-test-", dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def available_memory() -> int | None:
    """Bytes of memory this machine can give a new process now (Linux: MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_space(run_dir: Path, base: Path, space: RunSpace, capacity: int) -> None:
    """Raise ValueError (one line, with the numbers) unless the disk under `base` and this machine's
    memory hold the run: the replay at `capacity` steps in memory, and `space.checkpoints` checkpoints
    plus logs on disk."""
    free_disk = shutil.disk_usage(base).free
    if space.disk > free_disk:
        raise ValueError(
            f"not enough free space for the run in {run_dir}: {space.checkpoints} checkpoints of "
            f"{describe_bytes(space.replay_file + space.model_file)} (the replay at its capacity of {capacity:,} "
            f"steps {describe_bytes(space.replay_file)}, the model {describe_bytes(space.model_file)}) and logs "
            f"need {describe_bytes(space.disk)}, and {base} has {describe_bytes(free_disk)} free; free some "
            "space, choose another --out, or lower env_steps (the replay's capacity)")
    free_memory = available_memory()
    if free_memory is not None and space.replay_memory > free_memory:
        raise ValueError(
            f"not enough memory for the replay: at its capacity of {capacity:,} steps (env_steps) it holds "
            f"{describe_bytes(space.replay_memory)}, and this machine has {describe_bytes(free_memory)} available; "
            "lower env_steps or run on a machine with more memory")
