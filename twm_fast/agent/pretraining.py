"""The pretraining schedule (SPEC 7): which batches of the prefill data each phase trains on, and when
its budget is spent. The trainer runs these batches and the tests count them: one piece of code.

As the published code spends a phase's budget (``pretrain_budget`` times the phase's fraction):

- it makes passes over the prefill data: the observation model over a random permutation of the
  observations 0 .. n-1 in batches of ``pretrain_obs_batch_size`` frames; the dynamics model and the
  actor-critic over windows of L (resp. H) steps with starts offset, offset + L, ... < n - L (a
  random offset in [0, L), as the published ``generate_uniform_indices``, whose range leaves out
  the last start n - L), shuffled, in batches of ``wm_batch_size`` (resp. ``imagine_batch_size``)
  windows;
- a pass ends with the partial batch that holds what is left, and the next pass starts afresh;
- each batch counts the samples it actually used (frames; windows times L or H steps), and the
  phase stops after the batch that spends the rest of its budget.

With the published settings (5,000 prefill steps) a pass of the observation phase is 1,600 +
1,600 + 1,600 + 200 frames, a dynamics pass 311 or 312 windows (three full batches and one of 11 or
12), an actor-critic pass 332 or 333 windows of 15 steps: one batch, whatever M >= 333 is. The
dynamics and actor-critic counts therefore vary by about one update with the offsets drawn.

The batches are drawn from a generator of their own, seeded by the run's seed and the phase: the
schedule is the same every time it is asked for, so the trainer knows each phase's length before it
starts and a resumed phase continues with the batch it was interrupted at.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:
    from twm_fast.config import Config

PHASES = ("obs", "dyn", "ac")
# Mixed into the schedule's seed, so that its draws are unrelated to other streams of the same seed.
_SEED_SALT = 0x7E7E


@dataclass(frozen=True)
class PhasePlan:
    """What a phase will do: updates (batches) and the samples they count."""

    updates: int
    samples: int


def phase_budget(config: Config, phase: str) -> float:
    """The samples a phase may spend: pretrain_budget times the phase's fraction."""
    fraction = {"obs": config.pretrain_obs_fraction, "dyn": config.pretrain_dyn_fraction,
                "ac": config.pretrain_ac_fraction}[phase]
    return config.pretrain_budget * fraction


def window_length(config: Config, phase: str) -> int:
    """Steps per window: L for the dynamics phase, H for the actor-critic phase (1 for single frames)."""
    return {"obs": 1, "dyn": config.wm_sequence_length, "ac": config.imagine_horizon}[phase]


def batches(config: Config, phase: str, num_steps: int) -> Iterator[tuple[np.ndarray, int]]:
    """The phase's batches in order, as (indices, samples counted).

    phase: "obs" -> indices (N,) int64 of observations in [0, num_steps); "dyn", "ac" -> indices (N,)
    int64 of window starts s (the window is the steps s .. s + length - 1); num_steps: the prefill
    steps n (observations 0 .. n are stored).
    """
    if phase not in PHASES:
        raise ValueError(f"unknown pretraining phase {phase!r}; one of {', '.join(PHASES)}")
    budget = phase_budget(config, phase)
    length = window_length(config, phase)
    batch_size = {"obs": config.pretrain_obs_batch_size, "dyn": config.wm_batch_size,
                  "ac": config.imagine_batch_size}[phase]
    if budget > 0 and num_steps - length <= 0:
        raise ValueError(f"pretraining phase {phase!r} needs more than {length} prefill steps; got {num_steps}")
    rng = np.random.default_rng([config.seed, _SEED_SALT, PHASES.index(phase)])
    spent = 0
    while spent < budget:
        if phase == "obs":
            order = rng.permutation(num_steps)
        else:
            offset = int(rng.integers(length))
            order = rng.permutation(np.arange(offset, num_steps - length, length, dtype=np.int64))
        for first in range(0, len(order), batch_size):
            indices = order[first:first + batch_size]
            samples = len(indices) * length
            yield indices, samples
            spent += samples
            if spent >= budget:
                return


def phase_plan(config: Config, phase: str, num_steps: int) -> PhasePlan:
    """Updates and samples of one phase, by running its schedule."""
    updates = samples = 0
    for _, counted in batches(config, phase, num_steps):
        updates += 1
        samples += counted
    return PhasePlan(updates, samples)


def plan(config: Config, num_steps: int | None = None) -> dict[str, PhasePlan]:
    """Updates and samples of each phase (num_steps: the prefill steps, default config.prefill_steps)."""
    num_steps = config.prefill_steps if num_steps is None else num_steps
    return {phase: phase_plan(config, phase, num_steps) for phase in PHASES}
