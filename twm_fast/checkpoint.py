"""Checkpoints: everything a run needs to continue where it stopped.

A checkpoint is a directory entry `checkpoints/<name>.pt` (models, optimisers, counters, RNG
states, config) plus `checkpoints/<name>.replay` (the replay's own file, with its own version and
checksum). Both are written to a temporary name and renamed, so an interrupted save never
leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def portable_optimizer_state(optimizer) -> dict[str, Any]:
    """The optimiser's state dict without the CUDA-graph setting (`capturable`, set by
    twm_fast.cuda_graph.make_capturable on a GPU), so that a checkpoint resumes on any device: a
    graphed run sets it again before its first capture."""
    state = optimizer.state_dict()
    state["param_groups"] = [{**group, "capturable": False} if "capturable" in group else group
                             for group in state["param_groups"]]
    # Adam's step counters go back to the host, where a non-capturable Adam keeps them.
    state["state"] = {k: {**v, "step": v["step"].cpu()} if torch.is_tensor(v.get("step")) else v
                      for k, v in state["state"].items()}
    return state


def save_checkpoint(directory: Path, name: str, *, agent, replay, config, counters: dict[str, Any]) -> Path:
    """Write `<directory>/<name>.pt` and `<directory>/<name>.replay`; returns the .pt path."""
    directory.mkdir(parents=True, exist_ok=True)
    replay_path = directory / f"{name}.replay"
    tmp_replay = directory / f"{name}.replay.tmp"
    replay.save(str(tmp_replay))
    os.replace(tmp_replay, replay_path)
    payload = {
        "format": FORMAT_VERSION,
        "config": config.to_dict(),
        "num_actions": agent.num_actions,
        "counters": dict(counters),
        "agent": agent.state_dict(),
        "optimizers": {k: portable_optimizer_state(opt) for k, opt in agent.optimizers().items()},
        "rng": rng_state(),
        "replay_file": replay_path.name,
    }
    path = directory / f"{name}.pt"
    _atomic_torch_save(payload, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file, refusing with a clear error what is not one of ours."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "checkpoints" / "latest.pt", path / "latest.pt", path / "checkpoints" / "final.pt"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path} is a directory without checkpoints/latest.pt; pass a run "
                                    "directory written by `python -m twm_fast.train` or a .pt checkpoint")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ValueError(f"cannot read checkpoint {path}: {exc}. The file is truncated or not a twm-fast "
                         "checkpoint; use an earlier one (checkpoints/final.pt or latest.pt).") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a twm-fast checkpoint of format {FORMAT_VERSION}")
    payload["path"] = path
    return payload
