"""What both replay backends share: the checks of every argument the API receives, the layout of
`read_windows`' arrays and of a state dict, the replay file, and the base class holding the validated
configuration and save / load.

A bad argument is a ValueError whose message names the method and the argument, e.g.
``read_windows(starts): start 15 is not a valid window start for length 3: valid starts are [16, 22]
(stored steps [15, 24], total_steps 25)``. Both backends raise the same message for the same call
(tests/test_replay_validation.py): the checks run here, in Python, before the C++ core is called
(whose own checks stay as a second line of defence).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from twm_fast.durable import atomic_write

FILE_MAGIC = b"TWMREPLAY\n"
# 1: header JSON (scalars, array specs), raw C-order arrays, CRC32 of both.
FILE_VERSION = 1
STEP_ARRAYS = {
    "actions": np.int64,
    "rewards": np.float32,
    "terminated": np.bool_,
    "truncated": np.bool_,
    "visits": np.int64,
}
CONFIG_KEYS = ("capacity", "frame_shape", "frame_stack", "temperature")
# Bytes per stored step besides its frame: action 8, reward 4, two flags, visit count 8, and the
# C++ sampler's sum tree (two doubles per step) and held flag.
STEP_BYTES = 8 + 4 + 1 + 1 + 8
SAMPLER_BYTES = 16 + 1
# A replay file's JSON header is under this many bytes (scalars and a dozen array specs).
HEADER_BYTES = 4096
# Largest count or index the API takes: int64 on the C++ side.
INT64_MAX = 2**63 - 1


class ReplayFileError(ValueError):
    """A replay file that is not ours, of another version, truncated or corrupted."""


# ---- Scalars -------------------------------------------------------------------------------------------
def check_integer(value: Any, name: str, lo: int = 0, hi: int = INT64_MAX) -> int:
    """`value` as an int in [lo, hi]; bools, floats (2.0 too) and strings are refused, not cast."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    if value > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value}")
    return value


def check_flag(value: Any, name: str) -> bool:
    """A bool (numpy's too, or the integers 0 and 1), never the truth of an arbitrary object."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")


def check_config(capacity: Any, frame_shape: Any, frame_stack: Any, temperature: Any
                 ) -> tuple[int, tuple[int, int], int, float]:
    """The replay's configuration, validated: (capacity, (H, W), K, tau)."""
    capacity = check_integer(capacity, "capacity", 1, 2**40)
    try:
        frame_shape = tuple(frame_shape)
    except TypeError:
        raise ValueError(f"frame_shape must be (height, width), got {frame_shape!r}") from None
    if len(frame_shape) != 2:
        raise ValueError(f"frame_shape must be (height, width) with positive sizes, got {frame_shape!r}")
    frame_shape = tuple(check_integer(x, "frame_shape", 1, 2**16) for x in frame_shape)
    frame_stack = check_integer(frame_stack, "frame_stack", 1, 2**10)
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, numbers.Real) \
            or not temperature > 0:
        raise ValueError(f"temperature must be > 0 (math.inf for uniform sampling), got {temperature!r}")
    return capacity, frame_shape, frame_stack, float(temperature)


def check_seed(seed: Any) -> int:
    return check_integer(seed, "seed", 0, 2**64 - 1)


def check_step(action: Any, reward: Any, terminated: Any, truncated: Any) -> tuple[int, float, bool, bool]:
    """add()'s scalars: an action index, a tanh'd reward in [-1, 1] and two flags."""
    action = check_integer(action, "add(action)", 0, INT64_MAX)
    if isinstance(reward, (bool, np.bool_)) or not isinstance(reward, numbers.Real) \
            or not -1.0 <= float(reward) <= 1.0:
        raise ValueError(f"add(reward) must be a number in [-1, 1] (the tanh of the env's reward, SPEC 6), "
                         f"got {reward!r}")
    return action, float(reward), check_flag(terminated, "add(terminated)"), check_flag(truncated, "add(truncated)")


# ---- Arrays ----------------------------------------------------------------------------------------------
def check_obs(obs: Any, frame_stack: int, frame_shape: tuple[int, int], name: str = "obs") -> np.ndarray:
    """obs as a C-contiguous uint8 array (K, H, W); a wrong dtype is an error, not a cast."""
    obs = np.asarray(obs)
    if obs.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {obs.dtype}")
    if obs.shape != (frame_stack, *frame_shape):
        raise ValueError(f"{name} must have shape {(frame_stack, *frame_shape)}, got {obs.shape}")
    return np.ascontiguousarray(obs)


def check_indices(indices: Any, name: str) -> np.ndarray:
    """A 1-D int64 array of indices (any integer dtype is accepted; bools and floats are not)."""
    try:
        indices = np.asarray(indices)
    except (ValueError, TypeError):  # ragged nested lists
        raise ValueError(f"{name} must be a 1-D array of integers") from None
    if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or indices.size == 0):
        raise ValueError(
            f"{name} must be a 1-D array of integers, got shape {indices.shape} dtype {indices.dtype}"
        )
    if indices.dtype == np.uint64 and indices.size and indices.max() > INT64_MAX:
        raise ValueError(f"{name} holds {indices.max()}, beyond int64")
    return np.ascontiguousarray(indices, dtype=np.int64)


def describe_steps(first_step: int, total_steps: int) -> str:
    stored = f"[{first_step}, {total_steps - 1}]" if total_steps else "none"
    return f"stored steps {stored}, total_steps {total_steps}"


def start_range(first_step: int, total_steps: int, started: bool, length: int) -> tuple[int, int]:
    """Valid window starts [lo, hi] (empty if hi < lo): steps s-1 .. s+L-1 and obs s+L stored."""
    lo = 0 if first_step == 0 else first_step + 1  # s = 0 pads its context; else s-1 is read
    hi = total_steps - length if started else -1
    return lo, hi


def check_starts(starts: np.ndarray, lo: int, hi: int, length: int, steps: str, what: str) -> None:
    """Every start in [lo, hi]; else the first that is not, with the valid range and `steps`."""
    bad = np.flatnonzero((starts < lo) | (starts > hi))
    if bad.size:
        valid = f"[{lo}, {hi}]" if hi >= lo else "none"
        raise ValueError(f"{what}: start {starts[bad[0]]} is not a valid window start for length {length}: "
                         f"valid starts are {valid} ({steps})")


def check_readable(indices: np.ndarray, first_step: int, total_steps: int, started: bool, what: str) -> None:
    """Every observation index in [first_step, total_steps] (none before add_first)."""
    if not started and indices.size:
        raise ValueError(f"{what}: observation {indices[0]} is not stored: readable observations are none "
                         f"({describe_steps(first_step, total_steps)})")
    bad = np.flatnonzero((indices < first_step) | (indices > total_steps))
    if bad.size:
        raise ValueError(f"{what}: observation {indices[bad[0]]} is not stored: readable observations are "
                         f"[{first_step}, {total_steps}] ({describe_steps(first_step, total_steps)})")


def check_stored(steps: np.ndarray, first_step: int, total_steps: int, what: str) -> None:
    bad = np.flatnonzero((steps < first_step) | (steps >= total_steps))
    if bad.size:
        raise ValueError(f"{what}: step {steps[bad[0]]} is not stored: {describe_steps(first_step, total_steps)}")


def check_batch(batch_size: Any, lo: int, hi: int, length: int, steps: str) -> int:
    """sample_starts' batch size: an integer in [0, number of valid starts]."""
    batch_size = check_integer(batch_size, "batch_size")
    n = max(0, hi - lo + 1)
    if batch_size > n:
        raise ValueError(f"sample_starts(batch_size): need at least {batch_size} valid window starts, have {n} "
                         f"(length {length}, {steps})")
    return batch_size


def window_arrays(
    batch: int, length: int, frame_stack: int, frame_shape: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Empty arrays for read_windows: obs (B, L+2, K, H, W) uint8, the others (B, L+1)."""
    return {
        "obs": np.empty((batch, length + 2, frame_stack, *frame_shape), np.uint8),
        "actions": np.empty((batch, length + 1), np.int64),
        "rewards": np.empty((batch, length + 1), np.float32),
        "terminated": np.empty((batch, length + 1), np.bool_),
        "truncated": np.empty((batch, length + 1), np.bool_),
    }


def check_window_out(
    out: Any, batch: int, length: int, frame_stack: int, frame_shape: tuple[int, int]
) -> None:
    if not isinstance(out, dict):
        raise ValueError(f"read_windows(out) must be a dict of arrays, got {type(out).__name__}")
    for key, want in window_arrays(0, length, frame_stack, frame_shape).items():
        _check_out_array(out.get(key), want.dtype, (batch, *want.shape[1:]), f"out[{key!r}]")


def check_obs_out(out: Any, n: int, frame_stack: int, frame_shape: tuple[int, int]) -> None:
    _check_out_array(out, np.dtype(np.uint8), (n, frame_stack, *frame_shape), "out")


def _check_out_array(have: Any, dtype: np.dtype, shape: tuple[int, ...], name: str) -> None:
    """An `out` array the core writes into: the dtype and shape it fills, C-contiguous, writeable."""
    if (
        not isinstance(have, np.ndarray)
        or have.dtype != dtype
        or have.shape != shape
        or not have.flags.c_contiguous
        or not have.flags.writeable
    ):
        raise ValueError(f"{name} must be a writeable C-contiguous {dtype} array of shape {shape}")


# ---- State and the replay file ----------------------------------------------------------------------
def state_sizes(total_steps: int, started: bool, capacity: int, frame_stack: int) -> tuple[int, int]:
    """(num_obs, num_steps) of a state dict: frames of obs [max(0, F-K+1), T], steps [F, T-1]."""
    num_steps = min(total_steps, capacity)
    first_obs = max(0, total_steps - num_steps - frame_stack + 1)
    return (total_steps - first_obs + 1 if started else 0), num_steps


def saved_bytes(capacity: int, frame_shape: tuple[int, int] = (64, 64), frame_stack: int = 4) -> int:
    """At most the size of the file `save` writes for a full replay: C + K frames with their reset
    flags, C steps (write_state's layout), a header of under HEADER_BYTES and the checksum."""
    frame = frame_shape[0] * frame_shape[1]
    return (len(FILE_MAGIC) + 12 + HEADER_BYTES + (capacity + frame_stack) * (frame + 1)
            + capacity * sum(np.dtype(d).itemsize for d in STEP_ARRAYS.values()) + 8 * 6 + 4)


def memory_bytes(capacity: int, frame_shape: tuple[int, int] = (64, 64), frame_stack: int = 4) -> int:
    """About the memory a replay of `capacity` steps holds (both backends allocate it at once)."""
    frame = frame_shape[0] * frame_shape[1]
    return (capacity + frame_stack) * (frame + 1) + capacity * (STEP_BYTES + SAMPLER_BYTES)


def check_state(state: Any, config: dict[str, Any], rng_kind: str) -> None:
    """Config, RNG kind and array shapes of a state dict against the replay loading it."""
    if not isinstance(state, dict):
        raise ValueError(f"load_state_dict(state) must be a dict from state_dict(), got {type(state).__name__}")
    missing = {*CONFIG_KEYS, "total_steps", "started", "rng_kind", "rng_state"} - state.keys()
    if missing:
        raise ValueError(f"not a replay state dict: missing {sorted(missing)}")
    for key in CONFIG_KEYS:
        if state.get(key) != config[key]:
            raise ValueError(f"state dict has {key}={state.get(key)!r}, this replay has {config[key]!r}")
    if state.get("rng_kind") != rng_kind:
        raise ValueError(
            f"state dict holds a {state.get('rng_kind')!r} RNG state, this backend uses {rng_kind!r}; "
            "load it with the backend that saved it"
        )
    total_steps = check_integer(state["total_steps"], "state dict entry 'total_steps'")
    started = check_flag(state["started"], "state dict entry 'started'")
    num_obs, num_steps = state_sizes(total_steps, started, config["capacity"], config["frame_stack"])
    want = {
        "frames": (np.uint8, (num_obs, *config["frame_shape"])),
        "is_reset": (np.bool_, (num_obs,)),
        **{key: (dtype, (num_steps,)) for key, dtype in STEP_ARRAYS.items()},
    }
    for key, (dtype, shape) in want.items():
        have = state.get(key)
        if not isinstance(have, np.ndarray) or have.dtype != dtype or have.shape != shape:
            raise ValueError(
                f"state dict entry {key!r} must be a {np.dtype(dtype)} array of shape {shape} "
                f"for total_steps={state['total_steps']}"
            )


def write_state(file: BinaryIO, state: dict[str, Any]) -> int:
    """One file: magic, version, header length, JSON header, raw arrays, CRC32 of header + arrays.
    Returns that CRC32 (the checkpoint's manifest records it: twm_fast.checkpoint)."""
    arrays = {k: np.ascontiguousarray(v) for k, v in state.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    header = json.dumps(
        {"scalars": scalars, "arrays": [[k, a.dtype.str, list(a.shape)] for k, a in arrays.items()]}
    ).encode()
    file.write(FILE_MAGIC + struct.pack("<IQ", FILE_VERSION, len(header)) + header)
    crc = zlib.crc32(header)
    for a in arrays.values():
        data = a.reshape(-1).view(np.uint8)  # raw bytes, also for empty arrays
        file.write(data)
        crc = zlib.crc32(data, crc)
    file.write(struct.pack("<I", crc))
    return crc


def stored_crc32(path: str) -> int:
    """The CRC32 a replay file ends with (read_state checks it against the whole content)."""
    with open(path, "rb") as f:
        if f.read(len(FILE_MAGIC)) != FILE_MAGIC:
            raise ReplayFileError(f"{path}: not a twm-fast replay file (bad magic)")
        f.seek(-4, os.SEEK_END)
        return struct.unpack("<I", f.read(4))[0]


def read_state(path: str) -> dict[str, Any]:
    """Inverse of write_state; raises ReplayFileError naming `path` for any file it did not write whole."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(len(FILE_MAGIC)) != FILE_MAGIC:
            raise ReplayFileError(f"{path}: not a twm-fast replay file (bad magic)")
        prefix = f.read(12)
        if len(prefix) < 12:
            raise ReplayFileError(f"{path}: truncated replay file ({size} bytes)")
        version, header_len = struct.unpack("<IQ", prefix)
        if version != FILE_VERSION:
            raise ReplayFileError(
                f"{path}: replay file format version {version}, this code reads version {FILE_VERSION}"
            )
        header = f.read(header_len) if header_len <= size else b""
        if len(header) != header_len:
            raise ReplayFileError(
                f"{path}: truncated replay file ({size} bytes, header of {header_len} bytes)"
            )
        try:
            meta = json.loads(header)
            specs = [(k, np.dtype(dtype), tuple(shape)) for k, dtype, shape in meta["arrays"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ReplayFileError(f"{path}: corrupted replay file header ({e})") from e
        expected = len(FILE_MAGIC) + 12 + header_len + sum(d.itemsize * math.prod(s) for _, d, s in specs) + 4
        if size != expected:
            raise ReplayFileError(
                f"{path}: {'truncated' if size < expected else 'oversized'} replay file "
                f"({size} bytes, expected {expected})"
            )
        crc = zlib.crc32(header)
        state: dict[str, Any] = dict(meta["scalars"])
        for key, dtype, shape in specs:
            a = np.empty(shape, dtype)
            data = a.reshape(-1).view(np.uint8)
            f.readinto(data)
            crc = zlib.crc32(data, crc)
            state[key] = a
        (stored_crc,) = struct.unpack("<I", f.read(4))
    if stored_crc != crc:
        raise ReplayFileError(f"{path}: checksum mismatch, the replay file is corrupted")
    state["frame_shape"] = tuple(state["frame_shape"])
    return state


def check_path(path: Any, what: str) -> str:
    try:
        return os.fspath(path)
    except TypeError:
        raise ValueError(f"{what}(path) must be a file path, got {type(path).__name__}") from None


class ReplayBase:
    """What both backends share: their validated configuration, the checks that need it, and
    save(path) / Class.load(path) through state_dict()."""

    capacity: int
    frame_shape: tuple[int, int]
    frame_stack: int
    temperature: float

    def _set_config(self, capacity, frame_shape, frame_stack, temperature) -> None:
        self.capacity, self.frame_shape, self.frame_stack, self.temperature = check_config(
            capacity, frame_shape, frame_stack, temperature)

    def _describe_steps(self) -> str:
        return describe_steps(self.first_step, self.total_steps)

    def save(self, path: str) -> int:
        """Write the whole replay (contents, counters, RNG state) to one file at `path`, atomically
        (a temporary file, fsynced and renamed). Returns the file's CRC32 (of header and arrays)."""
        path = check_path(path, "save")
        state = self.state_dict()
        crc: list[int] = []
        atomic_write(Path(path), lambda f: crc.append(write_state(f, state)))
        return crc[0]

    @classmethod
    def load(cls, path: str):
        """A replay equal to the one saved at `path`; ReplayFileError for a truncated or foreign file."""
        state = read_state(check_path(path, "load"))
        try:
            replay = cls(**{key: state[key] for key in CONFIG_KEYS})
        except (KeyError, TypeError, ValueError) as exc:
            raise ReplayFileError(f"{path}: the replay file's configuration is not valid ({exc})") from None
        replay.load_state_dict(state)
        return replay
