"""The compile check (`python -m twm_fast.compile_check`): every Triton launch of a training step built for
sm_90 and sm_80 without a GPU, and a kernel broken the way the sampler once was caught by it.

The check runs in a subprocess: the tests' process has the Triton interpreter on (tests/conftest.py),
and a kernel module imported under the interpreter cannot be compiled.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

REGISTERED_KERNELS = {"_rel_attention_fwd_kernel", "_rel_attention_bwd_kernel", "_categorical_sample_fwd_kernel",
                      "_categorical_sample_bwd_kernel", "_gae_fwd_kernel", "_discount_reset_kernel",
                      "_episode_mask_kernel", "_fused_linear_kernel"}


def _run(args, tmp_path, script=None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-c", script] if script else [sys.executable, "-m", "twm_fast.compile_check", *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def fast_check(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("compile_check")
    result = _run(["--fast", "--json", "survey.json"], tmp_path)
    survey = json.loads((tmp_path / "survey.json").read_text()) if (tmp_path / "survey.json").exists() else None
    return result, survey


def test_fast_check_compiles_every_kernel_of_a_training_step_for_both_targets(fast_check):
    result, survey = fast_check
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no default launch spills" in result.stderr
    compiled = survey["compiled"]
    for arch in (90, 80):
        names = {c["kernel"] for c in compiled if c["arch"] == arch}
        assert names == REGISTERED_KERNELS, f"sm_{arch}: {sorted(REGISTERED_KERNELS ^ names)}"
    for c in compiled:
        assert c["error"] is None and c["registers"] > 0, c
        assert c["spill_stores"] == 0 and c["spill_loads"] == 0, c
        assert c["shared"] <= {90: 232_448, 80: 166_912}[c["arch"]], c


def test_default_precision_products_run_on_tensor_cores(fast_check):
    _, survey = fast_check
    for c in survey["compiled"]:
        # TF32 by default: every tl.dot lowers to mma.sync or wgmma, none to FMA.
        if c["kernel"] in ("_fused_linear_kernel", "_rel_attention_bwd_kernel") or c["constexprs"].get("USE_DOT"):
            assert c["dots"] in ("mma", "wgmma"), c


def test_every_launch_is_in_the_performance_model(fast_check):
    result, survey = fast_check
    assert "Projected times" in result.stdout
    launches = [x for x in survey["launches"] if x["compiled"] is not None]
    assert {survey["compiled"][x["compiled"]]["kernel"] for x in launches} == REGISTERED_KERNELS
    model = survey["model"]["tf32"]
    for piece in ("world_model_update", "imagination_M800", "actor_critic_update_M800", "training_step_M800"):
        row = model[piece]
        assert row["kernels"] > 0 and row["gflop"] > 0 and row["projected_ms"] >= row["limit_ms"] > 0, (piece, row)


def test_a_plain_global_read_in_a_kernel_fails_the_check(tmp_path):
    """The sampler's bug: a module global that is not a tl.constexpr, read inside a @triton.jit kernel,
    is accepted by the interpreter and refused by the GPU compiler."""
    script = textwrap.dedent("""
        import sys
        from twm_fast import compile_check
        from twm_fast.kernels import categorical
        categorical.NOISE_MIN = 1e-20  # a plain float, no longer tl.constexpr
        sys.exit(compile_check.main(["--fast", "--arch", "90", "--piece", "acting"]))
    """)
    result = _run([], tmp_path, script)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "_categorical_sample_fwd_kernel" in result.stderr and "NOISE_MIN" in result.stderr


def test_refuses_to_run_under_the_interpreter(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-m", "twm_fast.compile_check", "--fast"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "TRITON_INTERPRET" in result.stderr and "Traceback" not in result.stderr
