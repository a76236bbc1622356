"""Imagination captured in a CUDA graph and replayed (the fast path of SPEC 5.3 on a GPU).

The rollout of `twm_fast.imagination.rollout.imagine` has fixed shapes and no host sync (restarts
are computed in place, noise is drawn on the device), so the whole rollout, H steps of the dynamics
model and the actor, becomes one graph: a replay launches its ~1,300 kernels without Python or
per-kernel launch cost (PERF.md: the published rollout is bound by launches). See
`twm_fast.cuda_graph` for the capture and replay.
"""
from __future__ import annotations

from twm_fast.cuda_graph import CapturedCall
from twm_fast.imagination.rollout import ImaginationStart, Rollout, imagine


class GraphedImagination(CapturedCall):
    """Callable like `imagine` with the given models, horizon and threshold: (start, restart_z) ->
    Rollout, eager for the first calls per input shape, then replayed from a CUDA graph."""

    def __init__(self, obs_model, dynamics, actor_critic, horizon: int, discount_threshold: float):
        self.modules = (obs_model, dynamics, actor_critic)

        def rollout(start: ImaginationStart, restart_z) -> Rollout:
            return imagine(obs_model, dynamics, actor_critic, start, restart_z, horizon, discount_threshold)

        super().__init__(rollout)
