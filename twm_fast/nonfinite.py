"""Guarded numerics on the host side: counting the updates that were skipped for a non-finite loss,
gradient norm or imagined rollout, and stopping a run that keeps producing them.

The skip itself happens on the device (twm_fast.models.nets.optimizer_step: the flag goes to the
fused Adam kernel), so a NaN never reaches the weights and the fast path gains no host sync. The
flags come back with the update's other metrics (`*/skipped`, `imagine/nonfinite`), which the
trainer reads anyway for its log; `NonFiniteGuard` turns them into a log line per streak and a
stop after `limit` consecutive skipped updates. Weights that became non-finite all the same (an
infinite learning rate makes a finite gradient into an infinite step) are caught before every
checkpoint and evaluation (`nonfinite_modules`), so no checkpoint ever holds them.
"""
from __future__ import annotations

import torch

# Metric keys of a skipped optimiser step (1.0) and what a message calls them.
SKIP_FLAGS = {"dyn/skipped": "dynamics model", "obs/skipped": "observation model",
              "ac/critic_skipped": "critic", "ac/actor_skipped": "actor", "imagine/nonfinite": "imagined rollout"}


class RunFailed(RuntimeError):
    """The run cannot go on (its numerics, its weights); the message is one line for the user."""


class NonFiniteGuard:
    """Consecutive and total skipped updates (an update = a training step or a pretraining update)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.consecutive = 0
        self.total = 0
        self.first_of_streak: str | None = None  # where the current streak began

    def observe(self, values: dict[str, float], where: str) -> str | None:
        """values: one update's metrics as floats. Returns a line to print when a streak begins;
        raises RunFailed at `limit` skipped updates in a row."""
        flagged = [name for key, name in SKIP_FLAGS.items() if values.get(key, 0.0) > 0]
        if not flagged:
            self.consecutive, self.first_of_streak = 0, None
            return None
        self.consecutive += 1
        self.total += 1
        if self.consecutive == 1:
            self.first_of_streak = where
        if self.consecutive >= self.limit:
            raise RunFailed(f"{self.consecutive} updates in a row were skipped for a non-finite loss or gradient "
                            f"norm ({', '.join(flagged)}), from {self.first_of_streak} on")
        if self.consecutive == 1:
            return (f"non-finite {', '.join(flagged)} at {where}: update skipped (the run stops after "
                    f"{self.limit} in a row; {self.total} skipped so far)")
        return None

    def state_dict(self) -> dict:
        return {"consecutive": self.consecutive, "total": self.total, "first_of_streak": self.first_of_streak}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive, self.total = state["consecutive"], state["total"]
        self.first_of_streak = state["first_of_streak"]


@torch.no_grad()
def nonfinite_modules(agent) -> list[str]:
    """The names of the agent's top-level modules with a non-finite parameter (one host sync)."""
    names = [name for name, module in agent.named_children() if any(True for _ in module.parameters())]
    flags = torch.stack([
        torch.stack([p.isfinite().all() for p in getattr(agent, name).parameters()]).all() for name in names])
    return [name for name, finite in zip(names, flags.tolist()) if not finite]
