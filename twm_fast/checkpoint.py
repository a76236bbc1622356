"""Checkpoints: everything a run needs to continue where it stopped, written so that it can be trusted.

A checkpoint `<name>` in a run's `checkpoints/` directory is three files:

- `<name>.replay`: the replay (contents, visit counts, its RNG), in the replay's own format, which
  ends with a CRC32 of its content (twm_fast/replay/common.py);
- `<name>.pt`: models, optimisers, counters, RNG states, the env's state where it has one, the
  config, and the replay file's name and CRC32 (so that the two belong together);
- `<name>.json`: the manifest, written last: the commit point. It names both files with their sizes
  and CRC32s. A checkpoint without its manifest is an interrupted write and is never used.

Each file is written to a temporary name, fsynced and renamed (twm_fast.durable.atomic_write).
Periodic checkpoints are `ckpt-<sequence>`; the newest `keep` of them are kept, older ones deleted
once a newer one is committed. The run's last checkpoint is `final`. Loading a run directory takes
its newest checkpoint that verifies (sizes, checksums, the pairing, the run's config.json) and says
which newer ones it skipped and why.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twm_fast.durable import TMP_SUFFIX, atomic_write, file_crc32

# 2: a manifest per checkpoint, checksums, the env's state, the log files' sizes (1: .pt + .replay).
FORMAT_VERSION = 2
CHECKPOINTS_DIR = "checkpoints"
FINAL = "final"
_PERIODIC = re.compile(r"^ckpt-(\d{6,})$")
# Fields a resumed run may change (train --resume --device/--threads); the others must equal the
# run's config.json for a checkpoint to count as this run's.
RESUME_SETTINGS = ("device", "threads")
SET_ASIDE_DIR = "set-aside"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says which file and why."""


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


def portable_optimizer_state(optimizer) -> dict[str, Any]:
    """The optimiser's state dict without the CUDA-graph setting (`capturable`, set by
    twm_fast.cuda_graph.make_capturable on a GPU), so that a checkpoint resumes on any device: a
    graphed run sets it again before its first capture."""
    state = optimizer.state_dict()
    state["param_groups"] = [{**group, "capturable": False} if "capturable" in group else group
                             for group in state["param_groups"]]
    # Adam's step counters go to the host; loading puts them where the optimiser keeps them.
    state["state"] = {k: {**v, "step": v["step"].cpu()} if torch.is_tensor(v.get("step")) else v
                      for k, v in state["state"].items()}
    return state


def _manifest_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.json"


def save_checkpoint(directory: Path, name: str, *, agent, replay, config, counters: dict[str, Any],
                    sequence: int = 0, extra: dict[str, Any] | None = None) -> Path:
    """Write checkpoint `name` in `directory` (replay, model file, then the manifest that commits
    them); returns the model file's path. `extra`: more entries of the model file (the trainer's
    env, log and guard states). A full disk raises twm_fast.durable.DiskFull and leaves every
    earlier checkpoint as it was."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    replay_path, model_path = directory / f"{name}.replay", directory / f"{name}.pt"
    replay_crc = replay.save(str(replay_path))
    payload = {
        "format": FORMAT_VERSION,
        "name": name,
        "sequence": sequence,
        "config": config.to_dict(),
        "num_actions": agent.num_actions,
        "counters": dict(counters),
        "agent": agent.state_dict(),
        "optimizers": {k: portable_optimizer_state(opt) for k, opt in agent.optimizers().items()},
        "rng": rng_state(),
        "replay_file": replay_path.name,
        "replay_crc32": replay_crc,
        **(extra or {}),
    }
    model_size, model_crc = atomic_write(model_path, lambda f: torch.save(payload, f))
    manifest = {
        "format": FORMAT_VERSION, "name": name, "sequence": sequence, "created": time.time(),
        "phase": counters.get("phase"), "env_steps": counters.get("env_steps"),
        "train_steps": counters.get("train_steps"),
        "model": {"file": model_path.name, "bytes": model_size, "crc32": model_crc},
        # The replay's own CRC32 (its last 4 bytes, checked over its whole content when it is read).
        "replay": {"file": replay_path.name, "bytes": replay_path.stat().st_size, "crc32": replay_crc},
    }
    atomic_write(_manifest_path(directory, name), lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    return model_path


def read_manifest(directory: Path, name: str) -> dict[str, Any]:
    path = _manifest_path(directory, name)
    if not path.is_file():
        raise CheckpointError(f"{name}: incomplete (no {path.name}: its write was interrupted)")
    try:
        manifest = json.loads(path.read_text())
        for part in ("model", "replay"):
            if not {"file", "bytes", "crc32"} <= manifest[part].keys():
                raise KeyError(f"its {part} entry lacks file, bytes or crc32")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{name}: its manifest {path.name} is unreadable ({exc})") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{name}: manifest of format {manifest.get('format')}, this code reads "
                              f"format {FORMAT_VERSION}")
    return manifest


def _check_file(directory: Path, name: str, entry: dict, what: str) -> Path:
    path = directory / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"{name}: its {what} file {path.name} is missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise CheckpointError(f"{name}: {path.name} is {'truncated' if size < entry['bytes'] else 'oversized'} "
                              f"({size} bytes, the manifest says {entry['bytes']})")
    return path


def verify_checkpoint(directory: Path, name: str) -> dict[str, Any]:
    """The payload of checkpoint `name` after checking the model file against its manifest (size,
    CRC32) and that the replay file is the one it was saved with (size, the CRC32 it ends with).
    The replay's content is checked when it is read (`load_replay`). Raises CheckpointError."""
    from twm_fast.replay.common import ReplayFileError, stored_crc32

    directory = Path(directory)
    manifest = read_manifest(directory, name)
    model_path = _check_file(directory, name, manifest["model"], "model")
    replay_path = _check_file(directory, name, manifest["replay"], "replay")
    if file_crc32(model_path)[1] != manifest["model"]["crc32"]:
        raise CheckpointError(f"{name}: {model_path.name} fails its checksum (the file is corrupted "
                              "or comes from another checkpoint)")
    try:
        replay_crc = stored_crc32(str(replay_path))
    except (OSError, ReplayFileError) as exc:
        raise CheckpointError(f"{name}: {replay_path.name} is unreadable ({exc})") from None
    if replay_crc != manifest["replay"]["crc32"]:
        raise CheckpointError(f"{name}: {replay_path.name} is not the replay saved with {model_path.name} "
                              "(checksum differs: a file from another checkpoint, or corrupted)")
    try:
        payload = torch.load(model_path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for damaged files
        raise CheckpointError(f"{name}: cannot read {model_path.name} ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{name}: {model_path.name} is not a twm-fast checkpoint of format {FORMAT_VERSION}")
    if payload.get("replay_crc32") != replay_crc or payload.get("replay_file") != replay_path.name:
        raise CheckpointError(f"{name}: {model_path.name} and {replay_path.name} do not belong together")
    payload["path"] = model_path
    payload["manifest"] = manifest
    return payload


def load_replay(payload: dict[str, Any], backend: str):
    """The replay saved with a verified checkpoint, its content checked (CheckpointError if not)."""
    from twm_fast.replay import ReplayFileError, replay_class

    path = Path(payload["path"]).with_name(payload["replay_file"])
    try:
        return replay_class(backend).load(str(path))
    except ReplayFileError as exc:
        raise CheckpointError(f"{payload['manifest']['name']}: {exc}") from None


def _sequence(name: str) -> int | None:
    match = _PERIODIC.match(name)
    return int(match.group(1)) if match else None


def describe(payload_or_manifest: dict[str, Any]) -> str:
    """'ckpt-000003 (main, env step 300)'."""
    m = payload_or_manifest.get("manifest", payload_or_manifest)
    return f"{m['name']} ({m.get('phase')}, env step {m.get('env_steps')})"


@dataclass
class Resumable:
    """What `find_checkpoint` chose: the verified payload, and the newer checkpoints it passed over."""

    payload: dict[str, Any]
    skipped: list[str] = field(default_factory=list)  # one reason per checkpoint, newest first

    def skipped_message(self) -> str | None:
        if not self.skipped:
            return None
        return (f"skipped {len(self.skipped)} newer checkpoint(s): " + "; ".join(self.skipped)
                + f". Using {describe(self.payload)}.")


class CheckpointStore:
    """A run's checkpoints/ directory: naming, retention and the choice of the checkpoint to resume."""

    def __init__(self, directory: Path, keep: int = 2):
        self.directory = Path(directory)
        self.keep = keep

    # ---- What is there ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every checkpoint name with a file here (committed or not), newest first (final first)."""
        if not self.directory.is_dir():
            return []
        stems = {p.name.split(".", 1)[0] for p in self.directory.iterdir() if p.is_file()}
        periodic = sorted((s for s in stems if _sequence(s) is not None), key=_sequence, reverse=True)
        return ([FINAL] if FINAL in stems else []) + periodic

    def committed(self) -> list[str]:
        """The names with a manifest, newest first."""
        return [n for n in self.names() if _manifest_path(self.directory, n).is_file()]

    def next_sequence(self) -> int:
        sequences = [_sequence(n) for n in self.names() if _sequence(n) is not None]
        return max(sequences, default=0) + 1

    # ---- Writing ----------------------------------------------------------------------------------
    def save(self, *, final: bool = False, **state) -> Path:
        """Commit a new checkpoint (`final`, or the next `ckpt-<sequence>`), then delete the periodic
        ones beyond the newest `keep` and any interrupted writes older than it."""
        sequence = self.next_sequence()
        name = FINAL if final else f"ckpt-{sequence:06d}"
        path = save_checkpoint(self.directory, name, sequence=sequence, **state)
        self._prune(sequence)
        return path

    def _prune(self, newest: int) -> None:
        kept = 0
        for name in self.names():
            seq = _sequence(name)
            if seq is None or seq == newest:
                continue
            committed = _manifest_path(self.directory, name).is_file()
            if committed and kept < self.keep - 1:
                kept += 1
                continue
            if seq < newest:
                self._delete(name)

    def _delete(self, name: str) -> None:
        # The manifest first: from then on the checkpoint is uncommitted, whatever else remains.
        _manifest_path(self.directory, name).unlink(missing_ok=True)
        _manifest_path(self.directory, name).with_suffix(".json" + TMP_SUFFIX).unlink(missing_ok=True)
        for suffix in (".pt", ".replay"):
            for path in (self.directory / f"{name}{suffix}", self.directory / f"{name}{suffix}{TMP_SUFFIX}"):
                path.unlink(missing_ok=True)

    def discard(self, names: list[str], after: str | None) -> str | None:
        """Clear the way for a resumed run, which will write checkpoints of these names again:
        committed ones among `names` (skipped as broken, or newer than the one resumed, `after`) are
        set aside (`set_aside`), interrupted writes (no manifest) are deleted, being of no use.
        Returns a line saying what was done, None when there was nothing."""
        committed = [n for n in names if _manifest_path(self.directory, n).is_file()]
        interrupted = [n for n in names if n not in committed]
        for name in interrupted:
            self._delete(name)
        parts = []
        if committed:
            aside = self.set_aside(committed)
            parts.append(f"set aside the checkpoints {'after ' + after + ' ' if after else ''}in {aside}: "
                         + ", ".join(committed))
        if interrupted:
            parts.append("removed the interrupted checkpoint write(s) " + ", ".join(interrupted))
        return "; ".join(parts) or None

    def set_aside(self, names: list[str]) -> Path | None:
        """Move checkpoints (skipped ones, or those of a future abandoned by resuming an older one)
        into checkpoints/set-aside/, out of the way of later resumes; returns that folder."""
        if not names:
            return None
        target = self.directory / SET_ASIDE_DIR
        target.mkdir(exist_ok=True)
        for name in names:
            # The manifest first: a checkpoint half moved is an uncommitted one, never a broken one.
            paths = sorted(self.directory.glob(f"{name}.*"), key=lambda p: p.suffix != ".json")
            for path in paths:
                shutil.move(str(path), target / path.name)
        return target

    # ---- Choosing one to resume -----------------------------------------------------------------
    def load(self, name: str, config_json: dict | None = None) -> dict[str, Any]:
        """Checkpoint `name` verified, belonging to the run of `config_json` (when given), with its
        replay loaded and checked (payload["replay"]); CheckpointError saying why not."""
        payload = verify_checkpoint(self.directory, name)
        check_belongs_to_run(payload, config_json)
        payload["replay"] = load_replay(payload, payload["config"].get("replay_backend", "cpp"))
        return payload

    def find(self, config_json: dict | None = None) -> Resumable:
        """The newest checkpoint that `load`s; CheckpointError listing every reason when none does."""
        skipped: list[str] = []
        for name in self.names():
            try:
                return Resumable(self.load(name, config_json), skipped)
            except CheckpointError as exc:
                skipped.append(str(exc))
        if not skipped:
            raise CheckpointError(f"{self.directory} holds no checkpoint; pass a run directory written by "
                                  "`python -m twm_fast.train` or a checkpoint .pt file")
        raise CheckpointError(f"no usable checkpoint in {self.directory}: " + "; ".join(skipped))

    def newer_than(self, name: str) -> list[str]:
        """The checkpoints (committed or not) that come after `name`."""
        names = self.names()
        return names[:names.index(name)] if name in names else []


def check_belongs_to_run(payload: dict[str, Any], config_json: dict | None) -> None:
    """CheckpointError when the checkpoint's config differs from the run's config.json (beyond the
    settings a resume may change): it was copied in from another run."""
    if config_json is None:
        return
    saved = payload.get("config", {})
    differ = sorted(k for k in set(saved) | set(config_json)
                    if k not in RESUME_SETTINGS and saved.get(k) != config_json.get(k))
    if differ:
        shown = ", ".join(f"{k}={saved.get(k)!r} (config.json: {config_json.get(k)!r})" for k in differ[:3])
        raise CheckpointError(f"{payload['manifest']['name']}: belongs to another run ({shown})")


def run_directory_of(path: Path) -> Path | None:
    """The run directory a path names: the run itself, its checkpoints/ folder, or a checkpoint file
    (or manifest) inside that folder; None for anything else."""
    path = Path(path)
    if path.is_dir():
        if path.name == CHECKPOINTS_DIR and not (path / CHECKPOINTS_DIR).is_dir():
            return path.parent
        return path
    if path.parent.name == CHECKPOINTS_DIR:
        return path.parent.parent
    return None


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a run directory holds a committed checkpoint (something `--resume` can continue)."""
    return bool(CheckpointStore(Path(run_dir) / CHECKPOINTS_DIR).committed())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The payload of a checkpoint for using its agent (evaluate, play, the dream): `path` is a run
    directory (its newest checkpoint that verifies), its checkpoints/ folder, or a `.pt` file
    (checked against the manifest beside it; one without a manifest loads with payload["unverified"]
    set, e.g. a copy taken elsewhere). Raises FileNotFoundError or CheckpointError (a ValueError)."""
    path = Path(path)
    if path.is_dir():
        run_dir = run_directory_of(path)
        store = CheckpointStore(run_dir / CHECKPOINTS_DIR)
        if not store.names():
            raise FileNotFoundError(f"{path} is a directory without checkpoints/; pass a run directory "
                                    "written by `python -m twm_fast.train` or a checkpoint .pt file")
        reasons = []
        for name in store.names():  # the newest that verifies; its replay is not needed here
            try:
                return verify_checkpoint(store.directory, name)
            except CheckpointError as exc:
                reasons.append(str(exc))
        raise CheckpointError(f"no usable checkpoint in {store.directory}: " + "; ".join(reasons))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    name = path.name.split(".", 1)[0]
    if _manifest_path(path.parent, name).is_file():
        return verify_checkpoint(path.parent, name)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}. The file is truncated or "
                              "not a twm-fast checkpoint") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a twm-fast checkpoint of format {FORMAT_VERSION}")
    payload["path"] = path
    payload["unverified"] = f"{path} has no manifest beside it ({name}.json): its checksum was not verified"
    return payload
