"""A performance model from the compiled launches: bytes, FLOPs and the time at an H200's limits.

`twm_fast.compile_check` records every GPU op the library would issue on the card: each Triton
launch (its grid, constexprs and arguments, and what its dots lowered to) and each other ATen op
(its FLOPs from torch.utils.flop_counter and its tensors). Per op this model counts

- FLOPs executed, padding included (for the kernels: their tiles, not the useful work);
- bytes moved: every distinct tensor argument read or written once (compulsory DRAM traffic;
  re-reads of a tile that stay in L2 are not counted);
- the time at the card's limits, max(FLOPs / rate, bytes / bandwidth), with the rate of what the
  op computes on: the FP32 FMA units, or TF32 or bf16 tensor cores;
- a floor per kernel: a kernel replayed from a CUDA graph costs at least about 2 us (PERF.md), and
  one launched eagerly at least the host's issue time of about 5 us (PyTorch's dispatch and the
  launch; eager pieces are bound by it when their kernels are small).

and sums them per piece (imagination, the world-model and actor-critic updates, the whole step),
next to PERF.md's targets. It is an estimate, made without a GPU: it says which piece can reach its
target and why not, and shows a kernel change's effect before any card runs it. benches/gpu_report.py
measures the real times.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# H200 (PERF.md): HBM3e bandwidth and the compute rates, measured or near the datasheet's dense rates.
BANDWIDTH = 4.3e12          # bytes/s
RATES = {"fp32": 60e12, "tf32": 400e12, "bf16": 790e12}  # FLOP/s: FMA units, TF32 and bf16 tensor cores
GRAPH_KERNEL_S = 2e-6       # least time of a kernel replayed from a CUDA graph
EAGER_KERNEL_S = 5e-6       # least time of an eagerly launched kernel (the host's issue time)
# The pieces a GPU run replays from a CUDA graph by default (config.imagine_cuda_graph).
GRAPHED = ("imagination",)
# PERF.md's targets (H100/H200, paper-size model, M = 800), milliseconds.
TARGETS_MS = {"imagination_M800": 8.0, "world_model_update": 12.0, "actor_critic_update_M800": 3.0,
              "training_step_M800": 25.0}
# One training step (Agent.train_step) is these pieces.
STEP_PIECES = ("world_model_update", "restart_latents", "imagination", "actor_critic_update")


@dataclass
class OpCost:
    name: str
    flops: float
    bytes: float
    rate: str      # "fp32", "tf32", "bf16" or "" (memory only)

    @property
    def limit_s(self) -> float:
        compute = self.flops / RATES[self.rate] if self.rate else 0.0
        return max(compute, self.bytes / BANDWIDTH)


def _distinct_bytes(tensors: dict) -> int:
    """Each distinct tensor once: placeholders (an unused pointer argument passed as another tensor)
    share its address and shape."""
    seen = {}
    for t in tensors.values():
        seen[(t.data_ptr, t.shape)] = t.nbytes
    return sum(seen.values())


def _kernel_flops(name: str, c: dict, s: dict, grid: tuple) -> float:
    """FLOPs the kernel's tiles execute (padding included); 0 for the kernels without products."""
    programs = grid[0] * grid[1] * grid[2]
    if name == "_fused_linear_kernel":
        k_padded = math.ceil(s["K"] / c["BLOCK_K"]) * c["BLOCK_K"]
        return 2.0 * programs * c["BLOCK_M"] * c["BLOCK_N"] * k_padded
    if name == "_rel_attention_fwd_kernel":
        # content and output products over the keys, the position table over the distances
        return 2.0 * programs * c["BLOCK_T"] * c["BLOCK_D"] * (2 * c["BLOCK_S"] + c["BLOCK_R"])
    if name == "_rel_attention_bwd_kernel":
        # five products per block of queries: scores, dv, d(probs), dk, dq
        blocks = math.ceil(s["T"] / c["BLOCK_T"])
        return 10.0 * programs * blocks * c["BLOCK_S"] * c["BLOCK_T"] * c["BLOCK_D"]
    return 0.0


def _input_dtype(tensors: dict) -> str:
    for t in tensors.values():
        if t.dtype in ("float32", "bfloat16", "float16"):
            return t.dtype
    return ""


def op_cost(launch, compiled: list) -> OpCost:
    if launch.compiled is None:  # an ATen op
        rate = ""
        if launch.flops:
            rate = "bf16" if launch.dtype in ("bfloat16", "float16") else ("tf32" if launch.tf32 else "fp32")
        return OpCost(launch.name, float(launch.flops), float(_distinct_bytes(launch.tensors)), rate)
    kernel = compiled[launch.compiled]
    flops = _kernel_flops(kernel.kernel, kernel.constexprs, launch.scalars, launch.grid)
    rate = ""
    if flops:
        dtype = _input_dtype(launch.tensors)
        if kernel.dots in ("wgmma", "mma"):
            rate = "bf16" if dtype in ("bfloat16", "float16") else "tf32"
        else:
            rate = "fp32"
    return OpCost(f"triton:{kernel.kernel}", flops, float(_distinct_bytes(launch.tensors)), rate)


def _piece_kind(piece: str) -> str:
    """'imagination_M800' -> 'imagination', 'actor_critic_update_M400' -> 'actor_critic_update'."""
    head, _, tail = piece.rpartition("_M")
    return head if tail.isdigit() else piece


def project(survey, arch: int = 90) -> dict:
    """Per variant and piece (sm_{arch} launches): kernels, GFLOP, GB, ms at the limits, projected ms,
    and the five most expensive ops; plus the whole training step per M."""
    pieces: dict = {}
    for launch in survey.launches:
        variant, target, piece = launch.piece.split("/")
        if target != f"sm_{arch}":
            continue
        cost = op_cost(launch, survey.compiled)
        entry = pieces.setdefault(variant, {}).setdefault(piece, {"ops": {}, "kernels": 0, "flops": 0.0,
                                                                   "bytes": 0.0, "limit_s": 0.0, "floor_s": 0.0,
                                                                   "graph_s": 0.0})
        floor = GRAPH_KERNEL_S if _piece_kind(piece) in GRAPHED else EAGER_KERNEL_S
        entry["kernels"] += 1
        entry["flops"] += cost.flops
        entry["bytes"] += cost.bytes
        entry["limit_s"] += cost.limit_s
        entry["floor_s"] += max(cost.limit_s, floor)
        entry["graph_s"] += max(cost.limit_s, GRAPH_KERNEL_S)
        op = entry["ops"].setdefault(cost.name, {"count": 0, "limit_s": 0.0, "flops": 0.0, "bytes": 0.0})
        op["count"] += 1
        op["limit_s"] += cost.limit_s
        op["flops"] += cost.flops
        op["bytes"] += cost.bytes
    model = {}
    for variant, by_piece in pieces.items():
        rows = {}
        for piece, e in by_piece.items():
            top = sorted(e["ops"].items(), key=lambda kv: -kv[1]["limit_s"])[:5]
            rows[piece] = {"kernels": e["kernels"], "gflop": e["flops"] / 1e9, "gbytes": e["bytes"] / 1e9,
                           "limit_ms": e["limit_s"] * 1e3, "projected_ms": e["floor_s"] * 1e3,
                           "graph_ms": e["graph_s"] * 1e3,
                           "graphed": _piece_kind(piece) in GRAPHED,
                           "top": [(name, round(v["limit_s"] * 1e3, 3), v["count"]) for name, v in top]}
        for m in sorted({p.rpartition("_M")[2] for p in rows if p.startswith("imagination_M")}):
            parts = [p if p in rows else f"{p}_M{m}" for p in STEP_PIECES]
            if all(p in rows for p in parts):
                rows[f"training_step_M{m}"] = {
                    key: sum(rows[p][key] for p in parts) for key in ("kernels", "gflop", "gbytes", "limit_ms",
                                                                       "projected_ms", "graph_ms")}
                rows[f"training_step_M{m}"].update(graphed=False, top=[])
        model[variant] = rows
    return model


def piece_table(model: dict) -> str:
    """Markdown: per variant and piece, kernels, GFLOP, GB, ms at the limits, projected ms (as the library
    runs the piece by default; "graph" marks the pieces replayed from a CUDA graph), projected ms were
    it replayed from a graph, the target."""
    lines = ["| variant | piece | kernels | GFLOP | GB | ms at limits | projected ms | if graphed | target ms "
             "| largest ops (ms at limits) |", "|" + " --- |" * 10]
    for variant, rows in model.items():
        for piece, r in rows.items():
            target = TARGETS_MS.get(piece)
            verdict = "" if target is None else (f"{target:g}" + (" ok" if r["projected_ms"] <= target else " **over**"))
            top = ", ".join(f"{name.removeprefix('triton:_').removesuffix('_kernel')} {ms:.2f}"
                            for name, ms, _ in r["top"][:3])
            lines.append(f"| {variant} | {piece}{' (graph)' if r['graphed'] else ''} | {r['kernels']} | "
                         f"{r['gflop']:.1f} | {r['gbytes']:.2f} | {r['limit_ms']:.2f} | {r['projected_ms']:.2f} | "
                         f"{r['graph_ms']:.2f} | {verdict} | {top} |")
    return "\n".join(lines)
