"""Imagination captured in a CUDA graph and replayed (the fast path of SPEC 5.3 on a GPU).

The rollout of `twm_fast.imagination.rollout.imagine` has fixed shapes and no host sync (restarts
are a `torch.where`, noise is drawn on the device), so after a warm-up the whole rollout, H steps
of the dynamics model and the actor, becomes one graph: a replay launches thousands of kernels
without Python or per-kernel launch cost (PERF.md: the published rollout is bound by launches).

Inputs are copied into the graph's static tensors before each replay; the outputs are cloned out,
since the next replay overwrites them. Parameters are read in place, so optimiser steps between
replays are seen. Random numbers come from PyTorch's graph-safe generator: each replay draws afresh.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from twm_fast import ops
from twm_fast.imagination.rollout import ImaginationStart, Rollout, imagine

# Eager runs before capture: the first compiles the Triton kernels and creates cuBLAS workspaces,
# the second runs with everything warm, as the captured run will.
WARMUP_RUNS = 2


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    start: ImaginationStart
    restart_z: torch.Tensor
    rollout: Rollout


class GraphedImagination:
    """Callable like `imagine` (same arguments, same result) that captures one CUDA graph per input
    shape and replays it."""

    def __init__(self, obs_model, dynamics, actor_critic, horizon: int, discount_threshold: float):
        self.modules = (obs_model, dynamics, actor_critic)
        self.horizon = horizon
        self.discount_threshold = discount_threshold
        self._graphs: dict[tuple, _Captured] = {}

    def _eager(self, start: ImaginationStart, restart_z: torch.Tensor) -> Rollout:
        return imagine(*self.modules, start, restart_z, self.horizon, self.discount_threshold)

    def __call__(self, start: ImaginationStart, restart_z: torch.Tensor) -> Rollout:
        if not start.z.is_cuda:
            raise ValueError("GraphedImagination needs CUDA tensors; on a CPU call imagine() directly")
        # The backend is part of the key: a graph keeps the kernels it was captured with.
        key = (tuple(start.z.shape), tuple(restart_z.shape), start.z.dtype, start.z.device, ops.backend())
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(start, restart_z)
        for f in fields(ImaginationStart):
            getattr(captured.start, f.name).copy_(getattr(start, f.name))
        captured.restart_z.copy_(restart_z)
        captured.graph.replay()
        return Rollout(*(getattr(captured.rollout, f.name).clone() for f in fields(Rollout)))

    def _capture(self, start: ImaginationStart, restart_z: torch.Tensor) -> _Captured:
        static_start = ImaginationStart(*(getattr(start, f.name).clone() for f in fields(ImaginationStart)))
        static_restart = restart_z.clone()
        # Warm up on a side stream, as torch.cuda.graphs requires for capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self._eager(static_start, static_restart)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            rollout = self._eager(static_start, static_restart)
        return _Captured(graph, static_start, static_restart, rollout)
