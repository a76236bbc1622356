"""Compile every Triton launch of twm-fast for real GPU targets, on any machine: no GPU needed.

    python -m twm_fast.compile_check                 # the survey: sm_90 and sm_80, TF32, IEEE fp32 and bf16
    python -m twm_fast.compile_check --fast          # CI: one training step (and its rollout), the default precision
    python -m twm_fast.compile_check --json out.json # also every compile, launch and the performance model

Why: the Triton interpreter, with which CI compares each kernel with its twin, accepts code the GPU
compiler refuses (a plain global read inside a kernel), and says nothing of registers, spills or
shared memory. So this module drives the library's own code paths (the agent's world-model update,
imagination, actor-critic update, acting, pretraining) at the paper's shapes on CPU tensors, with
`twm_fast.ops` dispatching as on a CUDA device and a stand-in Triton driver whose target is
GPUTarget("cuda", 90 or 80, 32). The real launchers specialise their arguments as they would on the
card, Triton compiles each distinct launch through the ptxas bundled in its wheel to a cubin, and
the stand-in records the launch and runs nothing. Kernel outputs are therefore never written
(uninitialised memory): nothing downstream takes a shape from a value, which is all this needs.

For each distinct compile it records the kernel, its constexprs, warps and stages, shared memory,
registers, spill bytes and stack (ptxas's -v log), what its dots lower to (wgmma, mma.sync or FMA,
counted in the PTX) and the compile time. It fails (exit 1) on a compile error, shared memory above
the target's opt-in limit, or any spill in a launch the library makes by default (TF32). Every
launch and every other GPU op (recorded by a dispatch mode) feed `twm_fast.perf_model`, the
projected times at the H200's limits.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from twm_fast import ops
from twm_fast.launch_count import HOST_SYNC, NO_KERNEL

# The targets: H100/H200 (sm_90) and A100 (sm_80), with their opt-in shared memory per block.
TARGETS = {90: 232_448, 80: 166_912}
# The precisions the library runs in: the default (fp32 with TF32 products), IEEE fp32, and the bf16
# options (imagination and the world-model update in bf16, the rest TF32). Config overrides each.
VARIANTS = {
    "tf32": dict(matmul_precision="high"),
    "ieee": dict(matmul_precision="highest"),
    "bf16": dict(matmul_precision="high", imagine_dtype="bfloat16", world_model_dtype="bfloat16"),
}
DEFAULT_VARIANT = "tf32"
# The paper's model and shapes (SPEC 3, 5): B = 100 windows of 16 + 1 steps, H = 15, 6 actions (Pong).
NUM_ACTIONS = 6
IMAGINE_BATCH_SIZES = (800, 400)  # the paper's M and the published config's
# The target whose launches feed the performance model (twm_fast.perf_model: an H200).
MODEL_ARCH = 90

_PTXAS_PROPERTIES = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGISTERS = re.compile(r"Used (\d+) registers")


@dataclass(eq=False)  # compared by identity: one record per compile
class Compiled:
    """One distinct compile of a kernel for a target."""

    kernel: str
    arch: int
    variant: str
    constexprs: dict
    specialization: str  # what the arguments were specialised on: integers divisible by 16, unaligned pointers
    num_warps: int
    num_stages: int
    shared: int          # bytes of shared memory per program
    registers: int       # per thread
    spill_stores: int    # bytes per thread
    spill_loads: int
    stack: int           # bytes of stack frame per thread
    dots: str            # "wgmma", "mma", "fma" or "-" (no dot)
    compile_s: float
    error: str | None = None

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


@dataclass
class TensorInfo:
    shape: tuple
    dtype: str
    element_size: int
    data_ptr: int

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * self.element_size


@dataclass
class Launch:
    """One launch of a compiled kernel, or one other GPU op (an ATen op outside the kernels)."""

    piece: str
    name: str
    compiled: int | None = None   # index into Survey.compiled; None for an ATen op
    grid: tuple = ()
    scalars: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)   # argument name -> TensorInfo
    flops: int = 0                # ATen ops: from torch.utils.flop_counter
    dtype: str = ""               # ATen ops: the dtype of the first floating input
    tf32: bool = False            # ATen matmul/convolution in fp32 with TF32 allowed


@dataclass
class Survey:
    compiled: list[Compiled] = field(default_factory=list)
    launches: list[Launch] = field(default_factory=list)
    piece: str = ""
    variant: str = ""


def _tensor_info(t: torch.Tensor) -> TensorInfo:
    return TensorInfo(tuple(t.shape), str(t.dtype).removeprefix("torch."), t.element_size(), t.data_ptr())


def _specialization(src, names: list) -> str:
    """E.g. "M K /16, x_ptr unaligned": the integer arguments Triton specialised as multiples of 16
    (two launches of one kernel with the same constexprs can differ only here) and any pointer it
    could not assume 16-byte aligned."""
    divisible, unaligned = [], []
    for index, (name, ty) in enumerate(src.signature.items()):
        if ty == "constexpr":
            continue
        attrs = src.attrs.get((index,), [])
        aligned = any(a[0] == "tt.divisibility" for a in attrs)
        if ty.startswith("*") and not aligned:
            unaligned.append(name)
        elif ty.startswith("i") and aligned:
            divisible.append(name)
    parts = [" ".join(divisible) + " /16"] if divisible else []
    if unaligned:
        parts.append(" ".join(unaligned) + " unaligned")
    return ", ".join(parts)


def _dot_kind(ptx: str, ttir: str) -> str:
    if "tt.dot" not in ttir:
        return "-"
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if "mma.sync" in ptx:
        return "mma"
    return "fma"


class _StandInUtils:
    def __init__(self, arch: int):
        self.arch = arch

    def load_binary(self, name, kernel, shared, device):
        return 0, 0, 0, 0, 1024  # module, function, registers, spills, max threads per block

    def unload_module(self, module):
        pass

    def get_device_properties(self, device):
        return {"max_shared_mem": TARGETS[device], "multiprocessor_count": 132, "max_num_regs": 65536,
                "warpSize": 32, "sm_clock_rate": 0, "mem_clock_rate": 0, "mem_bus_width": 0}


# Every compile the stand-in has seen, by the kernel's hash: Triton keeps a compiled kernel (and the
# launcher made for it) for the life of the process, so a later survey launches it without compiling.
_COMPILED: dict[str, Compiled] = {}


class _Launcher:
    """What Triton calls to launch a compiled kernel: records the launch in the active stand-in's survey."""

    def __init__(self, src, metadata):
        self.name = metadata.name
        self.hash = metadata.hash
        self.arg_names = list(src.fn.arg_names)

    def __call__(self, grid0, grid1, grid2, stream, function, packed, launch_metadata, enter, exit_, *args):
        from triton.runtime import driver as triton_driver

        survey = triton_driver.active.survey
        compiled = _COMPILED[self.hash]
        if compiled not in survey.compiled:
            survey.compiled.append(compiled)
        scalars, tensors = {}, {}
        for name, value in zip(self.arg_names, args):
            if isinstance(value, torch.Tensor):
                tensors[name] = _tensor_info(value)
            elif isinstance(value, (int, float, bool)):
                scalars[name] = value
        survey.launches.append(Launch(survey.piece, self.name, survey.compiled.index(compiled),
                                      (grid0, grid1, grid2), scalars, tensors))


class StandInDriver:
    """A Triton driver for a GPU that is not there: its target is sm_{arch}, it compiles for real
    (triton.compiler.compile, wrapped to record each compile) and its launches only record."""

    launcher_cls = _Launcher

    def __init__(self, arch: int, survey: Survey):
        self.arch, self.survey = arch, survey
        self.utils = _StandInUtils(arch)

    @staticmethod
    def is_active():
        return True

    def map_python_to_cpp_type(self, ty: str) -> str:
        return ty

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", self.arch, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_current_device(self):
        return self.arch  # one device per target: Triton keeps its compiled kernels per device

    def get_current_stream(self, device=None):
        return 0

    def get_device_interface(self):
        return torch.cuda

    def get_benchmarker(self):
        raise RuntimeError("the stand-in driver runs no kernel")

    def record_compile(self, kernel, arch: int, seconds: float, log: str) -> None:
        m = kernel.metadata
        props = _PTXAS_PROPERTIES.search(log)
        regs = _PTXAS_REGISTERS.search(log)
        names = list(kernel.src.fn.arg_names)
        constexprs = {}
        for key, value in kernel.src.constants.items():
            index = key[0] if isinstance(key, tuple) else key
            name = names[index] if isinstance(index, int) else str(index)
            constexprs[name] = value if isinstance(value, (int, float, bool, str)) else str(value)
        compiled = Compiled(
            kernel.name, arch, self.survey.variant, constexprs, _specialization(kernel.src, names), m.num_warps,
            m.num_stages, m.shared,
            int(regs.group(1)) if regs else -1,
            int(props.group(2)) if props else -1, int(props.group(3)) if props else -1,
            int(props.group(1)) if props else -1,
            _dot_kind(kernel.asm.get("ptx", ""), kernel.asm.get("ttir", "")), seconds)
        if m.shared > TARGETS[arch]:
            compiled.error = f"{m.shared} B of shared memory exceed sm_{arch}'s {TARGETS[arch]} B"
        _COMPILED[m.hash] = compiled
        self.survey.compiled.append(compiled)


_original_compile = None  # triton.compiler.compile, once the wrapper below has replaced it


def _compile_and_record(src, target=None, options=None, **kwargs):
    """triton.compiler.compile, recording each compile in the active stand-in's survey. A kernel keeps
    the `compile` it first bound (JITFunction.create_binder), so this also serves later stand-ins and
    passes through when none is active; the target is the one Triton compiles for."""
    from triton.runtime import driver as triton_driver

    standin = triton_driver._active
    if not isinstance(standin, StandInDriver):
        return _original_compile(src, target=target, options=options, **kwargs)
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):  # ptxas's -v log (knobs.nvidia.dump_ptxas_log)
        kernel = _original_compile(src, target=target, options=options, **kwargs)
    standin.record_compile(kernel, target.arch, time.perf_counter() - start, log.getvalue())
    return kernel


@contextlib.contextmanager
def stand_in_gpu(arch: int, survey: Survey):
    """Within the block, Triton compiles for sm_{arch} and launches nothing, and `twm_fast.ops`
    dispatches CPU tensors as CUDA tensors."""
    global _original_compile
    import triton.compiler
    from triton import knobs
    from triton.runtime import driver as triton_driver

    standin = StandInDriver(arch, survey)
    dump_log = knobs.nvidia.dump_ptxas_log
    knobs.nvidia.dump_ptxas_log = True
    # JITFunction.create_binder imports `compile` from triton.compiler when it first meets a device;
    # the stand-in's devices (90, 80) are new to every kernel, so the wrapper is what they bind.
    if _original_compile is None:
        _original_compile = triton.compiler.compile
    triton.compiler.compile = _compile_and_record
    # The driver that was active (None until first asked for: without a GPU there is none to make).
    previous = triton_driver._active
    triton_driver.set_active(standin)
    try:
        with ops.dispatch_as_on_gpu():
            yield standin
    finally:
        triton_driver._active = previous
        triton.compiler.compile = _original_compile
        knobs.nvidia.dump_ptxas_log = dump_log


class _RecordOps(TorchDispatchMode):
    """Records every ATen op that launches a GPU kernel (as twm_fast.launch_count counts them) with its
    FLOPs and bytes, for the performance model."""

    def __init__(self, survey: Survey):
        super().__init__()
        self.survey = survey

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in NO_KERNEL or name in HOST_SYNC:
            return out
        tensors = {}
        flat = [*torch.utils._pytree.tree_leaves((args, kwargs)), *torch.utils._pytree.tree_leaves(out)]
        for i, t in enumerate(x for x in flat if isinstance(x, torch.Tensor)):
            tensors[str(i)] = _tensor_info(t)
        flops = 0
        counter = flop_registry.get(func.overloadpacket)
        if counter is not None:
            flops = int(counter(*args, **kwargs, out_val=out))
        floating = [x for x in flat if isinstance(x, torch.Tensor) and x.is_floating_point()]
        dtype = str(floating[0].dtype).removeprefix("torch.") if floating else ""
        conv = name.startswith("convolution")
        tf32 = dtype == "float32" and (torch.backends.cudnn.allow_tf32 if conv
                                       else torch.get_float32_matmul_precision() != "highest")
        self.survey.launches.append(Launch(self.survey.piece, f"aten.{name}", None, (), {}, tensors, flops, dtype, tf32))
        return out


# ---- The library's code paths at the paper's shapes --------------------------------------------------
def _paper_agent(variant: str, imagine_batch_size: int):
    from twm_fast.agent.agent import Agent
    from twm_fast.config import make_config

    config = make_config("paper", device="cpu", imagine_batch_size=imagine_batch_size, **VARIANTS[variant])
    torch.manual_seed(0)
    agent = Agent(config, NUM_ACTIONS)
    for optimizer in agent.optimizers().values():
        for group in optimizer.param_groups:
            group["foreach"] = True  # as on a GPU (on a CPU torch.optim loops over the parameters)
    return config, agent


def training_step_pieces(variant: str, imagine_batch_size: int):
    """(piece, thunk) pairs of one training step, in the order `Agent.train_step` runs them."""
    from twm_fast.testing import random_batch, random_z

    config, agent = _paper_agent(variant, imagine_batch_size)
    batch = random_batch(config, NUM_ACTIONS)
    restart_obs = torch.randint(0, 256, (imagine_batch_size, config.frame_stack, 64, 64), dtype=torch.uint8)
    # Latents of the right shapes, so that any piece can run without the ones before it (their
    # values do not matter here); the pieces overwrite them with their outputs.
    state = {"z": random_z(config.wm_batch_size, config.wm_sequence_length + 1, config),
             "restart_z": random_z(imagine_batch_size, 1, config)[:, 0]}

    def world_model_update():
        state["z"], _ = agent.update_world_model(batch)

    def restart_latents():
        state["restart_z"] = agent.restart_latents(restart_obs)

    def imagination():
        start = agent.imagination_starts(state["z"], batch, imagine_batch_size)
        state["rollout"] = agent.imagine(start, state["restart_z"])

    def actor_critic_update():
        r = state["rollout"]
        agent.actor_critic.train()
        agent.actor_critic.update(r.z, r.actions, r.rewards, r.discounts, r.resets, r.weights)

    def acting():
        agent.act(torch.randint(0, 256, (1, config.frame_stack, 64, 64), dtype=torch.uint8))

    return [("world_model_update", world_model_update), ("restart_latents", restart_latents),
            (f"imagination_M{imagine_batch_size}", imagination),
            (f"actor_critic_update_M{imagine_batch_size}", actor_critic_update), ("acting_batch1", acting)]


def pretraining_pieces(variant: str):
    """The pretraining updates (SPEC 7) at their batch shapes."""
    config, agent = _paper_agent(variant, IMAGINE_BATCH_SIZES[0])
    z_dim = config.z_categoricals * config.z_categories
    B, L, H = config.wm_batch_size, config.wm_sequence_length, config.imagine_horizon
    obs = torch.randint(0, 256, (config.pretrain_obs_batch_size, config.frame_stack, 64, 64), dtype=torch.uint8)

    def onehot(*shape):
        index = torch.randint(0, config.z_categories, (*shape, config.z_categoricals))
        return torch.nn.functional.one_hot(index, config.z_categories).float().reshape(*shape, z_dim)

    def pretrain_dynamics():
        agent.pretrain_dynamics(onehot(B, L + 1), torch.randint(0, NUM_ACTIONS, (B, L + 1)), torch.randn(B, L + 1),
                                torch.zeros(B, L + 1, dtype=torch.bool), torch.zeros(B, L + 1, dtype=torch.bool),
                                torch.randn(B, L, config.z_categoricals, config.z_categories))

    def pretrain_actor_critic():
        n = config.imagine_batch_size
        agent.pretrain_actor_critic(onehot(n, H + 1), torch.randn(n, H), torch.zeros(n, H, dtype=torch.bool),
                                    torch.zeros(n, H, dtype=torch.bool))

    return [("pretrain_obs", lambda: agent.pretrain_obs_model(obs)), ("pretrain_dynamics", pretrain_dynamics),
            ("pretrain_actor_critic", pretrain_actor_critic)]


def run_survey(archs=(90, 80), variants=tuple(VARIANTS), fast: bool = False, only=(), log=print) -> Survey:
    """Drive the pieces under the stand-in for each target and variant and return what was compiled
    and launched. fast: one training step at M = 800 in the default variant (what CI runs); only:
    names (or prefixes) of the pieces to run, all when empty."""
    from twm_fast.precision import apply_matmul_precision

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("the compile check needs Triton's GPU compiler: unset TRITON_INTERPRET")
    survey = Survey()
    saved_precision = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        for variant in ([DEFAULT_VARIANT] if fast else variants):
            apply_matmul_precision(VARIANTS[variant]["matmul_precision"])
            survey.variant = variant
            for arch in archs:
                pieces = training_step_pieces(variant, IMAGINE_BATCH_SIZES[0])
                if not fast:
                    pieces += training_step_pieces(variant, IMAGINE_BATCH_SIZES[1])[2:4]
                    pieces += pretraining_pieces(variant)
                if only:
                    pieces = [(name, thunk) for name, thunk in pieces if name.startswith(tuple(only))]
                with stand_in_gpu(arch, survey):
                    for piece, thunk in pieces:
                        survey.piece = f"{variant}/sm_{arch}/{piece}"
                        start, before = time.perf_counter(), len(survey.compiled)
                        try:
                            if arch == MODEL_ARCH:
                                # The performance model takes the steady state of training, as
                                # twm_fast.launch_count does: a second call, after the first has built
                                # what a run builds once (the step layouts, Adam's state).
                                launches = len(survey.launches)
                                thunk()
                                del survey.launches[launches:]
                            with _RecordOps(survey):
                                thunk()
                        except Exception as exc:  # a compile error (or a bug): record it, go on with the next piece
                            kernel = _failed_kernel(exc)
                            survey.compiled.append(Compiled(kernel if kernel != "?" else f"(in {piece})", arch, variant,
                                                            {}, "", 0, 0, 0, -1, -1, -1, -1, "-", 0.0,
                                                            error=_one_line(exc)))
                        log(f"  {survey.piece}: {len(survey.compiled) - before} new compiles, "
                            f"{time.perf_counter() - start:.0f} s")
    finally:
        torch.set_float32_matmul_precision(saved_precision[0])
        torch.backends.cudnn.allow_tf32 = saved_precision[1]
    return survey


def _failed_kernel(exc: BaseException) -> str:
    """The name of the @triton.jit function whose compile raised, from the traceback's frames."""
    tb, name = exc.__traceback__, "?"
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        fn = getattr(owner, "fn", None)
        if fn is not None and hasattr(fn, "__name__") and hasattr(owner, "arg_names"):
            name = fn.__name__
        tb = tb.tb_next
    return name


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in f"{type(exc).__name__}: {exc}".splitlines() if line.strip()]
    key = [line for line in lines if "Error" in line or "error" in line]
    return (key[-1] if key else lines[0])[:300]


# ---- Verdict and tables ------------------------------------------------------------------------------
def failures(survey: Survey) -> list[str]:
    """What makes the check fail: compile errors, shared memory over the limit, spills in default launches."""
    found = []
    for c in survey.compiled:
        where = f"{c.kernel} (sm_{c.arch}, {c.variant}, {_short_constexprs(c.constexprs)})"
        if c.error:
            found.append(f"{where}: {c.error}")
        elif c.spills > 0 and c.variant == DEFAULT_VARIANT:
            found.append(f"{where}: spills {c.spill_stores} B stores + {c.spill_loads} B loads per thread "
                         f"({c.registers} registers, {c.stack} B stack)")
    return found


_CONSTEXPR_SHOWN = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_T", "BLOCK_S", "BLOCK_R", "BLOCK_D", "BLOCK_ROWS",
                    "BLOCK_C", "BLOCK_B", "BLOCK_Z", "MODE", "N_NEW", "USE_DOT", "IEEE", "DROPOUT", "SAVE_LSE",
                    "RESIDUAL_NORM", "INPUT_SILU", "OUTPUT_SILU", "HAS_BIAS", "HAS_ONEHOT", "HAS_PROBS",
                    "HAS_LOG_PROBS", "HAS_ENTROPY", "HAS_NEW")


def _short_constexprs(constexprs: dict) -> str:
    parts = []
    for name in _CONSTEXPR_SHOWN:
        if name in constexprs and constexprs[name] is not None:
            value = constexprs[name]
            if isinstance(value, bool):
                if value:
                    parts.append(name.lower())
            else:
                parts.append(f"{name.replace('BLOCK_', 'B')}={value}")
    dtypes = [f"{k}={v}" for k, v in constexprs.items() if "DTYPE" in k]
    return " ".join(parts + dtypes)


def compile_table(survey: Survey) -> str:
    """Markdown: one row per distinct compile."""
    lines = ["| target | variant | kernel | constexprs | specialised | warps | stages | shared B | regs | spill B "
             "| stack B | dots | compile s |", "|" + " --- |" * 13]
    for c in sorted(survey.compiled, key=lambda c: (-c.arch, c.variant, c.kernel)):
        if c.error:
            lines.append(f"| sm_{c.arch} | {c.variant} | {c.kernel} | error: {c.error[:80]} | | | | | | | | | |")
            continue
        lines.append(f"| sm_{c.arch} | {c.variant} | {c.kernel.removeprefix('_').removesuffix('_kernel')} | "
                     f"{_short_constexprs(c.constexprs)} | {c.specialization} | {c.num_warps} | {c.num_stages} | {c.shared} | "
                     f"{c.registers} | {c.spills} | {c.stack} | {c.dots} | {c.compile_s:.1f} |")
    return "\n".join(lines)


def summary_table(survey: Survey) -> str:
    """Markdown: one row per kernel, target and variant (their compiles taken together)."""
    groups: dict = {}
    for c in survey.compiled:
        groups.setdefault((-c.arch, c.variant, c.kernel), []).append(c)
    lines = ["| target | variant | kernel | compiles | warps | registers (max) | shared B (max) | spill B | dots "
             "| compile s (max) |", "|" + " --- |" * 10]
    for (arch, variant, kernel), cs in sorted(groups.items()):
        ok = [c for c in cs if not c.error]
        name = kernel.removeprefix("_").removesuffix("_kernel")
        if not ok:
            lines.append(f"| sm_{-arch} | {variant} | {name} | {len(cs)} | error: {cs[0].error[:80]} | | | | | |")
            continue
        warps = "/".join(str(w) for w in sorted({c.num_warps for c in ok}))
        dots = "/".join(sorted({c.dots for c in ok}))
        lines.append(f"| sm_{-arch} | {variant} | {name} | {len(cs)} | {warps} | {max(c.registers for c in ok)} | "
                     f"{max(c.shared for c in ok)} | {sum(c.spills for c in ok)} | {dots} | "
                     f"{max(c.compile_s for c in ok):.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twm_fast.compile_check",
                                     description="Compile every Triton launch of twm-fast for sm_90 and sm_80 "
                                                 "without a GPU; report resources and the projected times.")
    parser.add_argument("--fast", action="store_true",
                        help="one training step at M = 800 in the default precision only (what CI runs)")
    parser.add_argument("--arch", type=int, action="append", choices=sorted(TARGETS),
                        help="a target (repeatable; default both)")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="a precision (repeatable)")
    parser.add_argument("--piece", action="append", default=[],
                        help="run only the pieces whose names start with this (repeatable), e.g. imagination")
    parser.add_argument("--json", help="write compiles, launches and the performance model here")
    parser.add_argument("--markdown", help="also write both tables, with the versions, to this Markdown file")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("error: the compile check needs Triton's GPU compiler; run it without TRITON_INTERPRET=1",
              file=sys.stderr)
        return 2
    try:
        import triton
    except ImportError:
        print("error: triton is not installed: pip install triton", file=sys.stderr)
        return 2
    from twm_fast import perf_model

    archs = tuple(args.arch or sorted(TARGETS, reverse=True))
    variants = tuple(args.variant or VARIANTS)
    print(f"compile check: triton {triton.__version__}, torch {torch.__version__}, targets "
          f"{', '.join(f'sm_{a}' for a in archs)}, {'fast subset' if args.fast else 'variants ' + ', '.join(variants)}",
          file=sys.stderr)
    # A fresh cache: every launch compiles here (and ptxas prints its log), nothing comes from an earlier run.
    with tempfile.TemporaryDirectory(prefix="twm-compile-check-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        started = time.perf_counter()
        survey = run_survey(archs, variants, fast=args.fast, only=args.piece, log=lambda m: print(m, file=sys.stderr))
    model = perf_model.project(survey)
    report = (f"## Compiled kernels (triton {triton.__version__}, torch {torch.__version__}; {len(survey.compiled)} "
              f"compiles in {time.perf_counter() - started:.0f} s)\n\n{summary_table(survey)}\n\n"
              f"### Every compile\n\n{compile_table(survey)}\n\n"
              "## Projected times at the H200's limits (an estimate from the compiled launches, not a "
              f"measurement)\n\n{perf_model.piece_table(model)}\n")
    print("\n" + report)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"triton": triton.__version__, "torch": torch.__version__,
                       "compiled": [asdict(c) for c in survey.compiled],
                       "launches": [asdict(x) for x in survey.launches], "model": model}, f)
    problems = failures(survey)
    if problems:
        print(f"\nFAILED: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    others = [c for c in survey.compiled if c.spills > 0]
    if others:
        print(f"\nnote: {len(others)} non-default compile(s) spill: "
              + "; ".join(f"{c.kernel} sm_{c.arch} {c.variant} {c.spills} B" for c in others), file=sys.stderr)
    print("\nok: every launch compiled; no default launch spills; shared memory within the targets' limits",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
