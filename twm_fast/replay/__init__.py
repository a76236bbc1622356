"""The replay of env steps and its balanced sampler (SPEC 6, Eq. 6).

Two backends with one API: `FastReplay` (C++ core in csrc/, the default) and `ReferenceReplay`
(numpy, the specification). Indices everywhere are logical step indices (monotone, never wrap).
"""

from __future__ import annotations

from twm_fast.install import install_command, install_problem
from twm_fast.replay.common import ReplayFileError
from twm_fast.replay.reference import ReferenceReplay

try:
    from twm_fast.replay.fast import FastReplay
except ImportError as _error:  # the extension was not built: only the reference is available
    FastReplay = None
    _FAST_IMPORT_ERROR = _error

__all__ = ["FastReplay", "ReferenceReplay", "ReplayFileError", "make_replay", "replay_class"]


def make_replay(
    backend: str = "cpp",
    *,
    capacity: int,
    frame_shape: tuple[int, int] = (64, 64),
    frame_stack: int = 4,
    temperature: float = 20.0,
    seed: int = 0,
):
    """A replay of `capacity` steps of (frame_stack, *frame_shape) uint8 observations, sampled with
    Eq. 6 at `temperature` (math.inf: uniform), its RNG seeded with `seed`.

    backend: "cpp" (FastReplay; raises ImportError if the extension is not built) or
    "reference" (ReferenceReplay).
    """
    cls = replay_class(backend)
    return cls(capacity, frame_shape=frame_shape, frame_stack=frame_stack, temperature=temperature, seed=seed)


def replay_class(backend: str):
    """The class of a backend: "cpp" (FastReplay; ImportError if the extension is not built) or
    "reference" (ReferenceReplay). `replay_class(backend).load(path)` reads a saved replay."""
    if backend == "reference":
        return ReferenceReplay
    if backend == "cpp":
        if FastReplay is None:
            problem = install_problem(("twm_fast._replay",)) or (
                f"the twm_fast._replay extension does not load ({_FAST_IMPORT_ERROR}); rebuild it with "
                f"{install_command()}")
            raise ImportError(f"replay backend 'cpp': {problem} (or use replay_backend=reference, the numpy "
                              "twin)") from _FAST_IMPORT_ERROR
        return FastReplay
    raise ValueError(f"unknown replay backend {backend!r}: use 'cpp' or 'reference'")
