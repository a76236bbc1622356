"""One-call report on the Triton kernels: correctness and speed against their twins, at full size.

    python benches/gpu_report.py --out $OUT                      # a CUDA machine (H100 / H200)
    python benches/gpu_report.py --out DIR --device cpu --small  # tiny shapes, interpreter (CI smoke)

benches/gpu_session.sh does all of it in one call on the device machine. By hand (a copy of the tree
without .git; TRITON_INTERPRET must be 0 for the tests, which tests/conftest.py would otherwise turn
on), the GPU tests then this report:

    python3 -m pip install -q --no-build-isolation --no-deps -e . || ln -sfn ../kernels twm_fast/kernels
    TRITON_INTERPRET=0 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_kernel_*.py \
        tests/test_imagination_graph.py tests/test_cuda_graph.py > $OUT/pytest_gpu.txt 2>&1
    tail -30 $OUT/pytest_gpu.txt; TWM_COMMIT=<sha> python3 benches/gpu_report.py --out $OUT

For each kernel and dtype (fp32, and bf16 on a GPU) it checks the fast path against the reference
(fp32: max error; bf16: the kernel's error against the fp32 reference is at most twice the bf16
reference's; the sampler's one-hot exactly equal), then times both in the same process on the same
card: CUDA events around each call after a warm-up, the median of many repeats (eager, launch gaps
included, as the training loop calls them), and the replay of a CUDA graph of each where both can be
captured (GPU time alone). It also sweeps num_warps for the attention kernels. JSON details and the
environment (card, versions, commit) go to OUT/gpu_report.json; a short table is printed last.
The exit status is 1 when any check failed or any case raised (the report is written regardless).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The input builders live in bench_kernels.py beside this script (its folder is on sys.path when run).
# Targets on an H100/H200 (the issue): the imagination attention step and the sampler.
TARGETS = {"attention_step": 5.0, "attention_step+cache_write": 5.0, "categorical_sample": 3.0}
# PERF.md's targets for the whole step at M = 800 (ms on an H100/H200); the published code takes
# 52.9, 160.2, 8.3 and 221.3 ms.
TRAIN_TARGETS_MS = {"train/world_model_update": 12.0, "train/imagination": 8.0, "train/actor_critic_update": 3.0,
                    "train/whole_train_step": 25.0, "train/imagination bf16 vs fp32": 8.0,
                    "train/world_model_update bf16 vs fp32": 12.0, "train/whole_train_step bf16 vs fp32": 25.0,
                    "train/world_model_update graph fp32": 12.0, "train/world_model_update graph bf16": 12.0}


@dataclass(frozen=True)
class Numerics:
    """How a row computes: its dtype column ("tf32" = fp32 storage with TF32 products, the library's
    default on a GPU; "fp32" = IEEE fp32; "bf16"), the storage dtype, and torch's float32 matmul
    precision while it runs (which the kernels follow, as cuBLAS does: twm_fast/kernels/runtime.py)."""

    label: str
    dtype: object
    precision: str


# The tuning sweep's warps. 2 warps make the 64-wide fp32 tiles spill (the compile check's survey);
# tests/test_gpu_report.py compiles every case below for sm_90 and fails on a spill or a slow compile.
SWEEP_WARPS = (4, 8)


def sweep_cases(dtype, device) -> dict:
    """name -> a call of a kernel launcher with one tuning choice (num_warps, rows or queries per
    program), at the paper's sizes: M = 800 for imagination, B = 100 windows of 50 tokens for training."""
    import torch
    from bench_kernels import attention_inputs, linear_inputs
    from twm_fast.kernels.fused_linear import fused_linear_fwd
    from twm_fast.kernels.rel_attention import rel_attention_bwd, rel_attention_fwd

    step, dist, allowed = attention_inputs(800, 3, 53, 53, dtype, device)
    train, tdist, tallowed = attention_inputs(100, 50, 50, 53, dtype, device)
    seed = torch.tensor([1], device=device)
    step_args = (*step, dist, allowed, 1 / 16)
    train_args = (*train, tdist, tallowed, 1 / 16, 0.1, seed)
    upstream = torch.randn_like(train[0])
    out, saved = rel_attention_fwd(*train_args, save=True)
    linear2 = linear_inputs(2_400, 1024, 256, dtype, device)
    linear1 = linear_inputs(2_400, 256, 1024, dtype, device)[:3]
    cases = {}
    for w in SWEEP_WARPS:
        for rows in (16, 32):
            cases[f"fused_linear linear2+norm rows=2400 block_rows={rows} warps={w}"] = \
                lambda w=w, r=rows: fused_linear_fwd(*linear2, block_rows=r, num_warps=w)
            cases[f"fused_linear linear1+silu rows=2400 block_rows={rows} warps={w}"] = \
                lambda w=w, r=rows: fused_linear_fwd(*linear1, output_silu=True, block_rows=r, num_warps=w)
        cases[f"step_fwd M=800 (4 queries/program, CUDA cores) warps={w}"] = \
            lambda w=w: rel_attention_fwd(*step_args, num_warps=w)
        cases[f"train_fwd B=100 (16 queries/program) warps={w}"] = \
            lambda w=w: rel_attention_fwd(*train_args, num_warps=w)
        cases[f"train_bwd B=100 (32 keys/program) warps={w}"] = \
            lambda w=w: rel_attention_bwd(upstream, *train_args, out=out, saved=saved, num_warps=w)
    return cases


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_report.json")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--small", action="store_true", help="tiny shapes (implied by --device cpu)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per case (default 200 cuda, 2 cpu)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls first (default 20 cuda, 1 cpu)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    # The interpreter is chosen when triton is first imported: on for CPU tensors, off on a GPU
    # (tests/conftest.py turns it on, so a parent pytest may have exported it).
    os.environ["TRITON_INTERPRET"] = "1" if args.device == "cpu" else "0"
    small = args.small or args.device == "cpu"
    repeats = args.repeats or (200 if args.device == "cuda" else 2)
    warmup = args.warmup or (20 if args.device == "cuda" else 1)
    report = Report(args.out, args.device, small, repeats, warmup)
    report.run()
    return 0 if report.all_ok() else 1


class Report:
    def __init__(self, out: Path, device: str, small: bool, repeats: int, warmup: int):
        import torch

        self.torch = torch
        self.out = out
        self.device = device
        self.small = small
        self.repeats = repeats
        self.warmup = warmup
        if device == "cuda":
            # Kernels with products get all three rows; the others only two (precision changes nothing there).
            self.numerics = [Numerics("tf32", torch.float32, "high"), Numerics("fp32", torch.float32, "highest"),
                             Numerics("bf16", torch.bfloat16, "high")]
            self.storage_numerics = [self.numerics[0], self.numerics[2]]
        else:
            self.numerics = self.storage_numerics = [Numerics("fp32", torch.float32, "highest")]
        self.default_precision = self.numerics[0].precision  # the library's default here (config.matmul_precision)
        self.rows: list[dict] = []
        self.sweeps: list[dict] = []
        self.errors: list[dict] = []
        self.launches: dict = {}
        self.profile_summary: dict = {}
        self.env = environment(device)

    # ---- plumbing -----------------------------------------------------------------------------------
    def run(self):
        """Every section in turn, the issue's targets first; the JSON is rewritten after each, and a
        SIGTERM (a device call's time limit) still prints the table of what was measured."""
        from twm_fast.precision import apply_matmul_precision

        self.out.mkdir(parents=True, exist_ok=True)
        apply_matmul_precision(self.default_precision)

        def interrupted(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, interrupted)
        sections = (self.attention_step, self.attention_step_cache_write, self.categorical_sample,
                    self.attention_train, self.gae, self.discount_reset, self.episode_mask, self.fused_linear,
                    self.launch_count, self.train_step, self.profile, self.num_warps_sweep)
        try:
            for section in sections:
                try:
                    section()
                except Exception as error:  # one broken kernel must not hide the others' numbers
                    self.errors.append({"section": section.__name__, "error": repr(error),
                                        "traceback": traceback.format_exc()})
                self.save()
        except KeyboardInterrupt as stop:
            self.errors.append({"section": section.__name__, "error": f"interrupted ({stop}); later sections "
                                "did not run"})
            self.save()
        self.print_table()

    def all_ok(self) -> bool:
        return not self.errors and all(row.get("ok", True) for row in self.rows)

    def save(self):
        payload = {"environment": self.env, "rows": self.rows, "num_warps_sweep": self.sweeps,
                   "launches_per_rollout": self.launches, "profile": self.profile_summary,
                   "errors": self.errors, "repeats": self.repeats, "warmup": self.warmup}
        (self.out / "gpu_report.json").write_text(json.dumps(payload, indent=2, default=str))

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def time_ms(self, fn) -> dict:
        """Median and min of `repeats` calls, each timed alone (device events on a GPU)."""
        torch = self.torch
        for _ in range(self.warmup):
            fn()
        self.sync()
        times = []
        for _ in range(self.repeats):
            if self.device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return {"median_ms": statistics.median(times), "min_ms": min(times)}

    def graph_time_ms(self, fn) -> dict | None:
        """Median time of replaying a CUDA graph of fn (GPU time without Python); None if not capturable."""
        torch = self.torch
        if self.device != "cuda":
            return None
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            return self.time_ms(graph.replay)
        except Exception as error:
            torch.cuda.synchronize()
            return {"error": repr(error)}

    @contextmanager
    def precision(self, name: str):
        """torch's float32 matmul precision (cuBLAS, cuDNN and the kernels) within the block."""
        from twm_fast.precision import apply_matmul_precision

        apply_matmul_precision(name)
        try:
            yield
        finally:
            apply_matmul_precision(self.default_precision)

    def add(self, op, shape, numerics, ref_fn, fast_fn, check: dict, graphs=True):
        """Time ref_fn and fast_fn (and their graph replays) in the row's numerics (a Numerics, or a
        dtype for rows whose precision is the default)."""
        label = numerics.label if isinstance(numerics, Numerics) else str(numerics).replace("torch.", "")
        with self.precision(numerics.precision if isinstance(numerics, Numerics) else self.default_precision):
            self._add(op, shape, label, ref_fn, fast_fn, check, graphs)

    def _add(self, op, shape, label, ref_fn, fast_fn, check: dict, graphs):
        ref, fast = self.time_ms(ref_fn), self.time_ms(fast_fn)
        row = {"op": op, "shape": shape, "dtype": label, "check": check,
               "ok": bool(check.get("ok", True)), "ref": ref, "fast": fast,
               "speedup": ref["median_ms"] / fast["median_ms"]}
        if graphs:
            row["ref_graph"], row["fast_graph"] = self.graph_time_ms(ref_fn), self.graph_time_ms(fast_fn)
            if row["ref_graph"] and row["fast_graph"] and "median_ms" in row["ref_graph"] \
                    and "median_ms" in row["fast_graph"]:
                row["graph_speedup"] = row["ref_graph"]["median_ms"] / row["fast_graph"]["median_ms"]
        self.rows.append(row)

    @staticmethod
    def max_error(a, b) -> float:
        return (a.float() - b.float()).abs().max().item()

    def bound_check(self, fast, ref_lowp, ref_fp32, numerics) -> dict:
        """IEEE fp32: within 1e-4 of the largest magnitude. TF32 and bf16: the fast error against the
        IEEE fp32 reference at most twice that of the reference computed in the same numerics
        (ref_lowp: the twin in TF32 or in bf16)."""
        error = self.max_error(fast, ref_fp32)
        if numerics.label == "fp32":
            scale = max(ref_fp32.abs().max().item(), 1.0)
            return {"max_error": error, "ok": error <= 1e-4 * scale}
        ref_error = self.max_error(ref_lowp, ref_fp32)
        return {"max_error": error, f"{numerics.label}_ref_error": ref_error, "ok": error <= 2 * ref_error}

    def three_ways(self, fast_fn, ref_fn, args, numerics):
        """fast_fn(*args) and ref_fn(*args) in the row's numerics, and ref_fn in IEEE fp32 on fp32 copies."""
        torch = self.torch
        with torch.no_grad(), self.precision(numerics.precision):
            fast, ref_lowp = fast_fn(*args), ref_fn(*args)
        with torch.no_grad(), self.precision("highest"):
            ref_fp32 = ref_fn(*(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args))
        return fast, ref_lowp, ref_fp32

    # ---- attention ------------------------------------------------------------------------------------
    def attention_step(self):
        from bench_kernels import attention_inputs
        from twm_fast.kernels.rel_attention import rel_attention_fwd

        from twm_fast.reference import rel_attention_ref

        torch = self.torch
        scale = 1 / 16
        for M in ((4,) if self.small else (800, 400)):
            for numerics in self.numerics:
                tensors, dist, allowed = attention_inputs(M, 3, 53, 53, numerics.dtype, self.device)
                out = torch.empty_like(tensors[0])
                fast, ref_lowp, ref_fp32 = self.three_ways(
                    lambda *a: rel_attention_fwd(*a, out=out).clone(), rel_attention_ref,
                    (*tensors, dist, allowed, scale), numerics)
                check = self.bound_check(fast, ref_lowp, ref_fp32, numerics)
                self.add("attention_step", f"M={M} T=3 S=53 H=4 D=64", numerics,
                         lambda: rel_attention_ref(*tensors, dist, allowed, scale),
                         lambda: rel_attention_fwd(*tensors, dist, allowed, scale, out=out), check)

    def attention_step_cache_write(self):
        """The step as the model runs it: the new keys and values written into the ring, then attended."""
        from bench_kernels import attention_inputs
        from twm_fast.kernels.rel_attention import rel_attention_step

        from twm_fast.reference import rel_attention_step_ref

        torch = self.torch
        for M in ((4,) if self.small else (800, 400)):
            for numerics in self.numerics:
                dtype = numerics.dtype
                (q, _, _, *pos), dist, allowed = attention_inputs(M, 3, 53, 53, dtype, self.device)
                qkv = torch.randn(M, 3, 3, 4, 64, device=self.device, dtype=dtype)
                ring = torch.randn(M, 53, 2, 4, 64, device=self.device, dtype=dtype)
                slots = torch.tensor([51, 52, 0], device=self.device)

                def call(fn, ring):
                    return fn(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], ring[:, :, 0], ring[:, :, 1], slots, *pos,
                              dist, allowed, 1 / 16)
                rings = {"fast": ring.clone(), "lowp": ring.clone(), "fp32": ring.float()}
                with torch.no_grad(), self.precision(numerics.precision):
                    fast = call(rel_attention_step, rings["fast"])
                    ref_lowp = call(rel_attention_step_ref, rings["lowp"])
                with torch.no_grad(), self.precision("highest"):
                    ref_fp32 = rel_attention_step_ref(*(t.float() for t in (qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])),
                                                      rings["fp32"][:, :, 0], rings["fp32"][:, :, 1], slots,
                                                      *(t.float() for t in pos), dist, allowed, 1 / 16)
                check = self.bound_check(fast, ref_lowp, ref_fp32, numerics)
                check["cache_equal"] = bool(torch.equal(rings["fast"], rings["lowp"]))
                check["ok"] = check["ok"] and check["cache_equal"]
                self.add("attention_step+cache_write", f"M={M} n=3 S=53 H=4 D=64", numerics,
                         lambda: call(rel_attention_step_ref, rings["lowp"]),
                         lambda: call(rel_attention_step, rings["fast"]), check)

    def attention_train(self):
        from bench_kernels import attention_inputs
        from twm_fast.kernels import rel_attention as kernel

        from twm_fast.reference import rel_attention_ref

        torch = self.torch
        scale, dropout_p = 1 / 16, 0.1
        B = 2 if self.small else 100
        for numerics in self.numerics:
            tensors, dist, allowed = attention_inputs(B, 50, 50, 53, numerics.dtype, self.device)
            leaves = [t.clone().requires_grad_() for t in tensors]
            upstream = torch.randn_like(tensors[0])

            def grads(fn, inputs, grad_out, p=0.0):
                for t in inputs:
                    t.grad = None
                fn(*inputs, dist, allowed, scale, p).backward(grad_out)
                return [t.grad for t in inputs]

            fp32_leaves = [t.detach().float().requires_grad_() for t in tensors]
            with self.precision("highest"):
                ref_fp32 = grads(rel_attention_ref, fp32_leaves, upstream.float())
            with self.precision(numerics.precision):
                ref_lowp = grads(rel_attention_ref, leaves, upstream)
                fast = grads(kernel.rel_attention, leaves, upstream)
            names = ("dq", "dk", "dv", "drel_pos", "du", "dv_bias")
            checks = {name: self.bound_check(a, b, c, numerics)
                      for name, a, b, c in zip(names, fast, ref_lowp, ref_fp32)}
            check = {"grads": checks, "ok": all(c["ok"] for c in checks.values())}
            shape = f"B={B} T=S=50 H=4 D=64 dropout={dropout_p}"
            with torch.no_grad():
                self.add("attention_train_fwd", shape, numerics,
                         lambda: rel_attention_ref(*tensors, dist, allowed, scale, dropout_p),
                         lambda: kernel.rel_attention(*tensors, dist, allowed, scale, dropout_p),
                         {"ok": True}, graphs=False)
            self.add("attention_train_fwd_bwd", shape, numerics,
                     lambda: grads(rel_attention_ref, leaves, upstream, dropout_p),
                     lambda: grads(kernel.rel_attention, leaves, upstream, dropout_p), check, graphs=False)

    # ---- sampler and GAE ------------------------------------------------------------------------------
    def categorical_sample(self):
        from bench_kernels import sampler_inputs
        from twm_fast.kernels.categorical import CategoricalSample, categorical_sample_fwd

        from twm_fast.reference import categorical_sample_ref

        torch = self.torch
        for N in ((64,) if self.small else (12_000, 6_000, 800)):
            for numerics in self.storage_numerics:
                dtype = numerics.dtype
                logits, noise = sampler_inputs(N, dtype, self.device)
                fast = categorical_sample_fwd(logits, noise, "sample")
                ref_lowp = categorical_sample_ref(logits, noise, "sample")
                ref_fp32 = categorical_sample_ref(logits.float(), noise, "sample")
                mismatches = int((fast[0] != ref_lowp[0]).any(-1).sum().item())
                checks = {name: self.bound_check(a, b, c, numerics)
                          for name, a, b, c in zip(("probs", "log_probs", "entropy"), fast[1:], ref_lowp[1:],
                                                   ref_fp32[1:])}
                check = {"onehot_mismatches": mismatches, **checks,
                         "ok": mismatches == 0 and all(c["ok"] for c in checks.values())}
                out = tuple(torch.empty_like(t) for t in fast)
                shape = f"N={N} V=32 C=32"
                self.add("categorical_sample", shape, numerics,
                         lambda: categorical_sample_ref(logits, noise, "sample"),
                         lambda: categorical_sample_fwd(logits, noise, "sample", out=out), check)
                leaf = logits.clone().requires_grad_()
                upstream = torch.randn_like(logits)

                def straight_through(fn):
                    leaf.grad = None
                    onehot, _, _, entropy = fn(leaf, noise, "straight_through")
                    ((onehot * upstream).sum() + entropy.sum()).backward()

                self.add("categorical_straight_through_fwd_bwd", shape, numerics,
                         lambda: straight_through(categorical_sample_ref),
                         lambda: straight_through(CategoricalSample.apply), {"ok": True}, graphs=False)

    def gae(self):
        from bench_kernels import rollout_inputs
        from twm_fast.kernels.gae import gae_fwd

        from twm_fast.reference import gae_ref

        torch = self.torch
        for N, numerics in ((N, n) for N in ((37,) if self.small else (800, 400)) for n in self.storage_numerics):
            rewards, discounts, values = rollout_inputs(N, 15, numerics.dtype, self.device)
            fast = gae_fwd(rewards, discounts, values, 0.95)
            ref_fp32 = gae_ref(rewards.float(), discounts.float(), values.float(), 0.95)
            check = self.bound_check(fast, gae_ref(rewards, discounts, values, 0.95), ref_fp32, numerics)
            out = torch.empty_like(fast)
            self.add("gae", f"N={N} H=15", numerics, lambda: gae_ref(rewards, discounts, values, 0.95),
                     lambda: gae_fwd(rewards, discounts, values, 0.95, out=out), check)

    def discount_reset(self):
        """The discount-threshold reset of an imagination step (the discount head's tail and restarts)."""
        from twm_fast.kernels.discount_reset import discount_reset

        from twm_fast.reference import discount_reset_ref

        torch = self.torch
        M = 37 if self.small else 800
        index = torch.randint(0, 32, (M, 32), device=self.device)
        next_z = torch.nn.functional.one_hot(index, 32).float().flatten(1)
        args = (3 * torch.randn(M, device=self.device), torch.rand(M, device=self.device) < 0.3,
                torch.rand(M, device=self.device), next_z, next_z.roll(1, 0).contiguous(),
                torch.randint(0, M, (M,), device=self.device), 0.1)
        fast, ref = discount_reset(*args), discount_reset_ref(*args)
        errors = [self.max_error(a, b) for a, b in zip(fast, ref)]
        check = {"max_error": max(errors), "ok": max(errors) <= 1e-5}
        self.add("discount_reset", f"M={M} Z=1024", torch.float32, lambda: discount_reset_ref(*args),
                 lambda: discount_reset(*args), check)

    def episode_mask(self):
        """The episode-boundary mask of the last step of a rollout (token 47 of the 53-slot ring)."""
        from twm_fast.kernels.episode_mask import episode_mask

        from twm_fast.models.dynamics import DynamicsModel
        from twm_fast.reference import episode_mask_ref
        from twm_fast.testing import tiny_config

        torch = self.torch
        B = 37 if self.small else 800
        dynamics = DynamicsModel(tiny_config(memory_length=16), num_actions=3).to(self.device)
        _, key_token, _, in_window = dynamics._step_layout(47, dynamics.step_windows)
        args = (torch.randint(0, 48, (B,), device=self.device), torch.rand(B, device=self.device) < 0.3, key_token,
                in_window, 48, 1)
        fast, ref = episode_mask(*args), episode_mask_ref(*args)
        check = {"ok": all(bool(torch.equal(a, b)) for a, b in zip(fast, ref))}
        self.add("episode_mask", f"B={B} n=3 S=53", torch.int64, lambda: episode_mask_ref(*args),
                 lambda: episode_mask(*args), check)

    def fused_linear(self):
        """The three fused layers of a transformer layer in an imagination step and a head layer."""
        from bench_kernels import linear_inputs
        from twm_fast.kernels.fused_linear import fused_linear_fwd

        from twm_fast.reference import fused_linear_ref

        torch = self.torch
        cases = {}  # name: (rows, K, N, bias, residual norm, input_silu, output_silu); 3 token rows per trajectory
        for rows in ((48,) if self.small else (2_400, 1_200)):  # M = 800 and 400
            cases.update({
                f"out_proj+residual+norm M={rows // 3}": (rows, 256, 256, False, True, False, False),
                f"linear1+silu M={rows // 3}": (rows, 256, 1024, True, False, False, True),
                f"linear2+residual+norm M={rows // 3}": (rows, 1024, 256, True, True, False, False),
                f"head (silu in+out) M={rows // 3}": (rows // 3, 256, 512, True, False, True, True),
            })
        if self.small:
            cases = {name: (r, k // 8, n // 8, *rest) for name, (r, k, n, *rest) in cases.items()}
        for name, (r, K, N, bias, norm, input_silu, output_silu) in cases.items():
            for numerics in self.numerics:
                x, weight, b, residual, gamma, beta = linear_inputs(r, K, N, numerics.dtype, self.device)
                args = (x, weight, b if bias else None, *((residual, gamma, beta) if norm else (None,) * 3), 1e-5,
                        input_silu, output_silu)
                fast, ref_lowp, ref_fp32 = self.three_ways(fused_linear_fwd, fused_linear_ref, args, numerics)
                check = self.bound_check(fast, ref_lowp, ref_fp32, numerics)
                out = torch.empty_like(fast)
                with torch.no_grad():
                    self.add(f"fused_linear {name}", f"rows={r} {K}->{N}", numerics, lambda: fused_linear_ref(*args),
                             lambda: fused_linear_fwd(*args, out=out), check)

    def launch_count(self):
        """Kernels per imagination rollout (counted, not timed): PERF.md's 8 ms needs <= ~1,500."""
        from twm_fast.config import make_config
        from twm_fast.launch_count import rollout_counts
        from twm_fast.testing import tiny_config

        config = tiny_config() if self.small else make_config("paper", device="cpu")
        counts = rollout_counts(config)
        self.launches = {name: {"total": c.total, "syncs": sum(c.syncs.values()), "kernels": dict(c.kernels)}
                         for name, c in counts.items()}

    # ---- tuning data ----------------------------------------------------------------------------------
    def num_warps_sweep(self):
        """Kernel time per tuning case (the constants in kernels/ were set without a GPU): SWEEP_CASES,
        in the default numerics (TF32) and bf16."""
        if self.device != "cuda":
            return
        self.repeats, repeats = min(self.repeats, 50), self.repeats  # tuning data, not the targets
        try:
            for numerics in (self.numerics[0], self.numerics[2]):
                with self.precision(numerics.precision):
                    for name, fn in sweep_cases(numerics.dtype, self.device).items():
                        try:
                            timing = self.time_ms(fn)
                        except Exception as error:
                            self.torch.cuda.synchronize()
                            timing = {"error": repr(error)}
                        self.sweeps.append({"case": name, "dtype": numerics.label, **timing})
        finally:
            self.repeats = repeats

    # ---- output ---------------------------------------------------------------------------------------
    # ---- the whole training step (PERF.md's pieces) ------------------------------------------------------
    def training_setup(self, imagine_batch_size: int = 800):
        """A paper-size agent (tiny on a CPU) with a random replay batch and restart observations."""
        from twm_fast.agent.agent import Agent
        from twm_fast.config import make_config
        from twm_fast.testing import random_batch, tiny_config

        torch = self.torch
        config = tiny_config() if self.small else make_config("paper", device=self.device,
                                                              imagine_batch_size=imagine_batch_size)
        torch.manual_seed(0)
        agent = Agent(config, num_actions=6).to(self.device)
        batch = {k: v.to(self.device) for k, v in random_batch(config, 6).items()}
        restart_obs = torch.randint(0, 256, (config.imagine_batch_size, 4, 64, 64), dtype=torch.uint8,
                                    device=self.device)
        return config, agent, batch, restart_obs

    def train_step(self):
        """World-model update, imagination, actor-critic update and the whole step of the agent at
        paper size (B = 100, L = 16, M = 800, H = 15; tiny on a CPU): the reference path (all ops on
        the plain-PyTorch twins, imagination eager) against the fast path (the dispatch default, i.e.
        the kernels on a GPU, and imagination replayed from a CUDA graph), in the default numerics
        (TF32). M = 400 (the published config) after M = 800; the bf16 and graphed-update comparisons
        at M = 800 only. Timing only: correctness is checked in the kernel rows above and in the tests."""
        self._train_step(800, comparisons=True)
        if not self.small:
            self._train_step(400, comparisons=False)

    def _train_step(self, imagine_batch_size: int, comparisons: bool):
        from twm_fast.agent.agent import Agent

        torch = self.torch
        config, agent, batch, restart_obs = self.training_setup(imagine_batch_size)
        z, _ = agent.update_world_model(batch)
        start = agent.imagination_starts(z, batch, config.imagine_batch_size)
        restart_z = agent.restart_latents(restart_obs)
        rollout = agent.imagine(start, restart_z)
        ac = agent.actor_critic
        pieces = {
            "world_model_update": lambda: agent.update_world_model(batch),
            "imagination": lambda: agent.imagine(start, restart_z),
            "actor_critic_update": lambda: ac.update(rollout.z, rollout.actions, rollout.rewards,
                                                     rollout.discounts, rollout.resets, rollout.weights),
            "whole_train_step": lambda: agent.train_step(batch, restart_obs),
        }
        shape = (f"B={config.wm_batch_size} L={config.wm_sequence_length} M={config.imagine_batch_size} "
                 f"H={config.imagine_horizon}")
        previous = os.environ.get("TWM_FAST_BACKEND")

        def with_backend(name, graphs, fn):
            """Run fn on backend `name`, with imagination eager or replayed from a CUDA graph."""
            def run():
                os.environ["TWM_FAST_BACKEND"] = name
                config.imagine_cuda_graph = graphs
                try:
                    return fn()
                finally:
                    if previous is None:
                        os.environ.pop("TWM_FAST_BACKEND", None)
                    else:
                        os.environ["TWM_FAST_BACKEND"] = previous
            return run

        # A whole step is ~100 ms, not us: fewer repeats and warm-ups keep the report within one device call.
        (repeats, warmup), (self.repeats, self.warmup) = (self.repeats, self.warmup), (min(self.repeats, 20),
                                                                                      min(self.warmup, 3))
        if not comparisons:  # M = 400: the world-model update does not depend on M
            pieces.pop("world_model_update")
        try:
            for piece, fn in pieces.items():
                self.add(f"train/{piece}", shape, self.numerics[0], with_backend("torch", False, fn),
                         with_backend("auto", True, fn), {"ok": True, "note": "timing only"}, graphs=False)
            if not comparisons:
                return
            # config.imagine_dtype = "bfloat16" against the fast fp32 path (both on the kernels, graphed
            # on a GPU); the bf16 side includes refreshing the weight copies.
            def in_dtype(dtype, fn):
                def run():
                    config.imagine_dtype = dtype
                    try:
                        return with_backend("auto", True, fn)()
                    finally:
                        config.imagine_dtype = "float32"
                return run
            imagination = pieces["imagination"]
            self.add("train/imagination bf16 vs fp32", shape, torch.bfloat16, in_dtype("float32", imagination),
                     in_dtype("bfloat16", imagination), {"ok": True, "note": "timing only"}, graphs=False)
            # world_model_dtype is fixed at construction (channels-last convolutions): a second agent.
            torch.manual_seed(0)
            agent16 = Agent(replace(config, world_model_dtype="bfloat16", imagine_dtype="bfloat16"), 6).to(self.device)
            agent16.load_state_dict(agent.state_dict())
            for piece, fp32, bf16 in (
                ("world_model_update", pieces["world_model_update"], lambda: agent16.update_world_model(batch)),
                ("whole_train_step", pieces["whole_train_step"], lambda: agent16.train_step(batch, restart_obs)),
            ):
                self.add(f"train/{piece} bf16 vs fp32", shape, torch.bfloat16, with_backend("auto", True, fp32),
                         with_backend("auto", True, bf16), {"ok": True, "note": "timing only"}, graphs=False)
            # config.world_model_cuda_graph: the update replayed from a graph (after its eager warm-up
            # calls, which the timing's warm-up absorbs) against the eager fast path ("ref" column),
            # fp32 and bf16.
            if self.device == "cuda":
                for dtype, short, base in (("float32", "fp32", agent), ("bfloat16", "bf16", agent16)):
                    torch.manual_seed(0)
                    graphed = Agent(replace(base.config, world_model_cuda_graph=True), 6).to(self.device)
                    graphed.load_state_dict(base.state_dict())
                    self.add(f"train/world_model_update graph {short}", shape, getattr(torch, dtype),
                             with_backend("auto", True, lambda b=base: b.update_world_model(batch)),
                             with_backend("auto", True, lambda g=graphed: g.update_world_model(batch)),
                             {"ok": True, "note": "timing only"}, graphs=False)
        finally:
            self.repeats, self.warmup = repeats, warmup

    def profile(self):
        """Where one whole training step spends its time, fast path (graphs on, fp32): torch.profiler's
        table, sorted by device time, to OUT/profile_train_step.txt, and the kernel count per piece
        (on a GPU: CUDA kernels the profiler saw, graph replays included where CUPTI reports them)."""
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        torch = self.torch
        _, agent, batch, restart_obs = self.training_setup()
        for _ in range(4):  # past the eager calls and the capture of the imagination graph
            agent.train_step(batch, restart_obs)
        self.sync()
        cuda = self.device == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch_profile(activities=activities) as prof:
            agent.train_step(batch, restart_obs)
            self.sync()
        averages = prof.key_averages()

        def total_us(e):
            return getattr(e, "device_time_total", 0) if cuda else e.cpu_time_total

        table = averages.table(sort_by="device_time_total" if cuda else "cpu_time_total", row_limit=40)
        (self.out / "profile_train_step.txt").write_text(table)
        kernels = [e for e in prof.events() if cuda and e.device_type == torch.autograd.DeviceType.CUDA]
        self.profile_summary = {
            "file": "profile_train_step.txt",
            "cuda_kernels": len(kernels),
            "cuda_time_ms": sum(e.time_range.elapsed_us() for e in kernels) / 1e3,
            "top": [{"name": e.key[:80], "count": e.count, "time_ms": total_us(e) / 1e3}
                    for e in sorted(averages, key=total_us, reverse=True)[:10]],
        }

    def print_table(self):
        env = self.env
        print(f"\n{env['device_name']} | torch {env['torch']} | triton {env['triton']} | "
              f"commit {env['commit']}{' (dirty)' if env.get('dirty') else ''} | "
              f"median of {self.repeats} after {self.warmup} warm-up")
        for sweep in self.sweeps_best():
            print(f"best num_warps: {sweep}")
        for name, launches in self.launches.items():
            print(f"kernels per imagination rollout, {name}: {launches['total']} ({launches['syncs']} host syncs)")
        if self.profile_summary:
            summary = self.profile_summary
            print(f"profile of one training step: {summary['cuda_kernels']} CUDA kernels, "
                  f"{summary['cuda_time_ms']:.1f} ms of kernel time; table in {summary['file']}")
        for error in self.errors:
            print(f"ERROR in {error['section']}: {error['error']}")
        header = f"{'op':<38} {'shape':<34} {'dtype':<8} {'ref ms':>8} {'fast ms':>8} {'speedup':>8} " \
                 f"{'graph x':>8} {'target':>7} check"
        print(header)
        print("-" * len(header))
        for row in self.rows:
            target = TARGETS.get(row["op"]) if self.device == "cuda" else None  # targets are for an H100/H200
            target_text = "" if target is None else \
                ("ok" if row["speedup"] >= target else "MISS") + f" {target:g}x"
            # PERF.md's targets are for M = 800.
            limit = TRAIN_TARGETS_MS.get(row["op"]) if self.device == "cuda" and "M=800" in row["shape"] else None
            if limit is not None:
                target_text = ("ok" if row["fast"]["median_ms"] <= limit else "MISS") + f" {limit:g}ms"
            graph = f"{row['graph_speedup']:.1f}x" if "graph_speedup" in row else "-"
            check = "ok" if row["ok"] else "FAIL"
            details = row["check"].get("max_error")
            if details is not None:
                check += f" err {details:.1e}"
            print(f"{row['op']:<38} {row['shape']:<34} {row['dtype']:<8} {row['ref']['median_ms']:>8.3f} "
                  f"{row['fast']['median_ms']:>8.3f} {row['speedup']:>7.1f}x {graph:>8} {target_text:>7} "
                  f"{check}")
        verdict = "ALL CHECKS PASSED" if self.all_ok() else "SOME CHECKS FAILED"
        print(f"{verdict}; details in {self.out / 'gpu_report.json'}")

    def sweeps_best(self):
        best = {}
        for sweep in self.sweeps:
            if "median_ms" not in sweep:
                continue
            key = (sweep["case"], sweep["dtype"])
            if key not in best or sweep["median_ms"] < best[key]["median_ms"]:
                best[key] = sweep
        return [f"{case} {dtype}: {s['num_warps']} ({s['median_ms']:.3f} ms)"
                for (case, dtype), s in best.items()]


def environment(device: str) -> dict:
    import torch
    import triton

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    env = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "triton_interpret": os.environ.get("TRITON_INTERPRET"),
        # The device machine gets a copy of the working tree without .git: pass TWM_COMMIT there.
        "commit": os.environ.get("TWM_COMMIT") or git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain")),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1))
    return env


if __name__ == "__main__":
    sys.exit(main())
