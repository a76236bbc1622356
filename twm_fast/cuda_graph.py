"""A function of tensors captured in a CUDA graph and replayed: the fast path for launch-bound steps.

PERF.md: the published imagination rollout is bound by kernel launches and Python, not by the GPU;
a graph replays thousands of kernels with one launch. The recipe (PyTorch's CUDA-graph notes,
gpt-fast): run the first calls eagerly on a side stream (they compile the Triton kernels and create
the cuBLAS workspaces, and they are real calls, not wasted work), capture the next call, then copy
each call's inputs into the captured (static) tensors and replay. Outputs are cloned out, since
the next replay overwrites them. Parameters are read in place, so optimiser steps between replays
are seen; random numbers come from PyTorch's graph-safe generator, so each replay draws afresh.

What a captured function must not do: sync with the host (`.item()`, data-dependent shapes), copy
from pageable host memory, or change shape between calls (each distinct input layout gets its own
graph). `twm_fast.launch_count` checks the rollout for host syncs on any machine.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from twm_fast import ops
from twm_fast.precision import numerics_key

# Eager calls before the capture: the first compiles the Triton kernels and creates cuBLAS
# workspaces, the second runs with everything warm, as the captured call will.
EAGER_CALLS = 2


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """obj with fn applied to every tensor in it (tensors in tuples, lists, dicts and dataclasses)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return type(obj)(**{f.name: map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)})
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def tensors_of(obj: Any) -> list[torch.Tensor]:
    """The tensors in obj, in the order map_tensors visits them."""
    found: list[torch.Tensor] = []
    map_tensors(obj, found.append)
    return found


def on_cuda(tensors: list[torch.Tensor]) -> bool:
    """Whether these inputs can run in a CUDA graph: all on a CUDA device (and at least one)."""
    return bool(tensors) and all(t.is_cuda for t in tensors)


@dataclasses.dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    args: tuple   # the static inputs the graph reads
    out: Any      # the static outputs the graph writes


class CapturedCall:
    """Callable like `fn` (same arguments, same result) that runs its first EAGER_CALLS calls per
    input layout eagerly, captures the next in a CUDA graph, and replays that graph afterwards."""

    def __init__(self, fn: Callable, eager_calls: int = EAGER_CALLS):
        self.fn = fn
        self.eager_calls = eager_calls
        self._graphs: dict[tuple, _Captured] = {}
        self._eager_done: dict[tuple, int] = {}
        self._side_stream: torch.cuda.Stream | None = None

    @staticmethod
    def _key(args: tuple) -> tuple:
        # Shapes, dtypes and devices of the tensors, the other arguments' values, the backend and the
        # precision and autocast state (a graph keeps the kernels it was captured with).
        layout = map_tensors(args, lambda t: (tuple(t.shape), t.dtype, str(t.device), t.stride()))
        return repr(layout), ops.backend(), numerics_key()

    def __call__(self, *args):
        tensors = tensors_of(args)
        if not on_cuda(tensors):
            raise ValueError("a CUDA graph needs CUDA tensors; on a CPU call the function directly")
        key = self._key(args)
        captured = self._graphs.get(key)
        if captured is None:
            done = self._eager_done.get(key, 0)
            if done < self.eager_calls:
                self._eager_done[key] = done + 1
                return self._eager(args)
            captured = self._graphs[key] = self._capture(args)  # its inputs already hold this call's
        else:
            for static, new in zip(tensors_of(captured.args), tensors):
                static.copy_(new)
        captured.graph.replay()
        return map_tensors(captured.out, torch.clone)

    def _eager(self, args: tuple):
        """One call on a side stream, as capture requires of the calls before it."""
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream()
        main = torch.cuda.current_stream()
        self._side_stream.wait_stream(main)
        with torch.cuda.stream(self._side_stream):
            out = self.fn(*args)
        main.wait_stream(self._side_stream)
        for t in tensors_of(out):
            t.record_stream(main)  # made on the side stream, used on the main one: keep until then
        return out

    def _capture(self, args: tuple) -> _Captured:
        static_args = map_tensors(args, torch.clone)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.fn(*static_args)
        return _Captured(graph, static_args, out)


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Let a CUDA graph capture the optimiser's step: Adam's step counters move to the parameters'
    device (they are host tensors otherwise, read with a host sync)."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "step" in state:
                state["step"] = state["step"].to(p.device, torch.float32)
