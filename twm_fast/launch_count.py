"""Count the GPU kernels and host syncs of an imagination rollout, on any machine.

    python -m twm_fast.launch_count                  # paper-size model (M does not change the count)
    python -m twm_fast.launch_count --updates        # also the world-model and actor-critic updates
    python -m twm_fast.launch_count --json out.json  # also the per-op breakdown

PERF.md: a graphed plain-PyTorch rollout spends its 34 ms in about 6,000 small kernels; the 8 ms
target needs at most about 1,000 - 1,500. A kernel count does not need a GPU: every ATen op that
is not a view or an allocation launches (about) one kernel, and every op registered in
`twm_fast.ops` launches exactly one when it runs on its Triton kernel. So this runs the rollout on
the CPU under a dispatch mode that counts ATen ops, with the ops' choice made as it would be on
a CUDA device: an op that would run its kernel counts once (its reference twin computes the
values, uncounted); one whose kernel would decline the arguments runs, and is counted, as the
reference. Host syncs (`.item()`, `F.one_hot`'s check, ...) are counted apart: a CUDA graph
cannot capture them, so the rollout must have none.

An estimate: cuBLAS may split a GEMM in two, and a few ATen ops launch none. Measure on the card
with benches/gpu_report.py.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from twm_fast import ops

# ATen ops that launch no kernel: views, metadata, allocation without initialisation.
NO_KERNEL = frozenset({
    "view", "_unsafe_view", "unsqueeze", "squeeze", "expand", "select", "slice", "t", "transpose", "permute",
    "unbind", "split", "split_with_sizes", "alias", "detach", "as_strided", "unflatten", "flatten",
    "_reshape_alias", "reshape", "diagonal", "lift_fresh", "empty", "empty_like", "new_empty", "empty_strided",
    "resolve_conj", "resolve_neg", "_to_copy_noop", "promote_types",
})
# ATen ops that copy a value to the host and wait for the device.
HOST_SYNC = frozenset({"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "_assert_async"})


@dataclass
class LaunchCount:
    kernels: collections.Counter = field(default_factory=collections.Counter)  # op name -> kernels
    syncs: collections.Counter = field(default_factory=collections.Counter)    # op name -> host syncs

    @property
    def total(self) -> int:
        return sum(self.kernels.values())


class _Counter(TorchDispatchMode):
    def __init__(self, count: LaunchCount):
        super().__init__()
        self.count = count
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused:
            name = func.overloadpacket.__name__
            if name in HOST_SYNC:
                self.count.syncs[name] += 1
            elif name not in NO_KERNEL:
                self.count.kernels[name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_launches(fast: bool):
    """Count the kernels of the code in the block, as a GPU would launch them.

    fast: the ops of `twm_fast.ops` as `TWM_FAST_BACKEND=auto` picks them on a CUDA device (their
    kernels, one launch each, where they accept the arguments); else all on the reference twins.
    Yields a LaunchCount filled when the block ends.
    """
    count = LaunchCount()
    mode = _Counter(count)
    original = ops.implementation

    def as_on_a_gpu(name, device, args=()):
        entry = ops.REGISTRY[name]
        if not fast or entry.fast is None or ops.backend() == "torch":
            return entry.reference
        if entry.unsupported and args and ops._load(entry.unsupported)(*args) is not None:
            return entry.reference

        def one_kernel(*call_args):
            count.kernels[f"triton:{name}"] += 1
            mode.paused += 1
            try:
                # The kernels write contiguous outputs; the twin's may be permuted views (einsum).
                out = entry.reference(*call_args)
                if isinstance(out, tuple):
                    return tuple(t.contiguous() for t in out)
                return out.contiguous()
            finally:
                mode.paused -= 1
        return one_kernel

    ops.implementation = as_on_a_gpu
    try:
        with mode:
            yield count
    finally:
        ops.implementation = original


def rollout_counts(config, num_actions: int = 6, trajectories: int = 8) -> dict[str, LaunchCount]:
    """Kernels of one imagination rollout (H steps) of a freshly initialised agent, both paths, in the
    steady state of training (after a first rollout)."""
    from twm_fast.agent.agent import Agent
    from twm_fast.imagination.rollout import ImaginationStart, imagine

    torch.manual_seed(0)
    agent = Agent(config, num_actions)
    z_dim = config.z_categoricals * config.z_categories
    index = torch.randint(0, config.z_categories, (trajectories, 2, config.z_categoricals))
    z = torch.nn.functional.one_hot(index, config.z_categories).float().reshape(trajectories, 2, z_dim)
    start = ImaginationStart(z, torch.randint(0, num_actions, (trajectories,)), torch.randn(trajectories),
                             torch.zeros(trajectories, dtype=torch.bool))

    def rollout():
        imagine(agent.obs_model, agent.dynamics, agent.actor_critic, start, z[:, 0], config.imagine_horizon,
                config.imagine_discount_threshold)

    rollout()  # steady state: the first rollout of a run also builds the step layouts, once
    counts = {}
    for name, fast in (("reference", False), ("fast", True)):
        with count_launches(fast) as count:
            rollout()
        counts[name] = count
    return counts


def update_counts(config, num_actions: int = 6) -> dict[str, dict[str, LaunchCount]]:
    """Kernels of a world-model update and an actor-critic update (forward, backward, clipping, Adam),
    both paths, in the steady state (after a first update). The optimisers are fused Adam, as on a
    GPU (twm_fast.models.nets.adam). Batch sizes do not change the counts; B = 2 and M = 8 keep it quick."""
    from dataclasses import replace

    from twm_fast.agent.agent import Agent
    from twm_fast.testing import random_batch

    config = replace(config, wm_batch_size=2, imagine_batch_size=8)
    torch.manual_seed(0)
    agent = Agent(config, num_actions)
    batch = random_batch(config, num_actions)
    z, _ = agent.update_world_model(batch)
    rollout = agent.imagine(agent.imagination_starts(z, batch, config.imagine_batch_size), z[:, 0])
    ac = agent.actor_critic
    pieces = {
        "world_model_update": lambda: agent.update_world_model(batch),
        "actor_critic_update": lambda: ac.update(rollout.z, rollout.actions, rollout.rewards, rollout.discounts,
                                                 rollout.resets, rollout.weights),
    }
    counts = {}
    for piece, fn in pieces.items():
        fn()
        counts[piece] = {}
        for name, fast in (("reference", False), ("fast", True)):
            with count_launches(fast) as count:
                fn()
            counts[piece][name] = count
    return counts


def main(argv=None) -> int:
    from twm_fast.config import PRESETS, make_config

    parser = argparse.ArgumentParser(description="Kernels and host syncs of one imagination rollout "
                                     "(and of the training updates with --updates).")
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--updates", action="store_true", help="also the world-model and actor-critic updates")
    parser.add_argument("--json", help="write the per-op counts here")
    args = parser.parse_args(argv)
    config = make_config(args.preset, device="cpu")
    pieces = {"imagination": rollout_counts(config)}
    print(f"preset {args.preset!r}: {config.dyn_num_layers} layers, H = {config.imagine_horizon} (batch sizes do "
          "not change the counts)")
    if args.updates:
        pieces.update(update_counts(config))
    for piece, counts in pieces.items():
        print(piece)
        for name, count in counts.items():
            top = ", ".join(f"{op} {n}" for op, n in count.kernels.most_common(6))
            print(f"  {name:>9}: {count.total:5d} kernels, {sum(count.syncs.values())} host syncs  ({top}, ...)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({piece: {name: {"kernels": dict(c.kernels), "syncs": dict(c.syncs), "total": c.total}
                               for name, c in counts.items()} for piece, counts in pieces.items()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
