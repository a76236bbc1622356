"""The GPU report script runs end to end on the CPU (tiny shapes, interpreter) and writes its JSON; its tuning
sweep compiles for sm_90 without spills."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_report_runs_on_the_cpu(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "benches" / "gpu_report.py"), "--out", str(tmp_path), "--device", "cpu",
         "--repeats", "1", "--warmup", "1"],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("ALL CHECKS PASSED")                          # the table comes last
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert not report["errors"]
    ops = {row["op"] for row in report["rows"]}
    assert {"attention_step", "attention_train_fwd_bwd", "categorical_sample", "gae"} <= ops
    assert {"train/world_model_update", "train/imagination", "train/whole_train_step"} <= ops
    assert {"fused_linear out_proj+residual+norm M=16", "fused_linear linear1+silu M=16"} <= ops
    assert report["profile"]["top"] and (tmp_path / "profile_train_step.txt").read_text().strip()
    launches = report["launches_per_rollout"]
    assert launches["fast"]["total"] < launches["reference"]["total"]
    assert launches["fast"]["syncs"] == 0
    for row in report["rows"]:
        assert row["ok"] and row["ref"]["median_ms"] > 0 and row["fast"]["median_ms"] > 0
    assert {"device_name", "torch", "triton", "commit"} <= set(report["environment"])


def test_gpu_session_script_parses():
    """benches/gpu_session.sh is what a GPU session runs in its one device call; bash must accept it."""
    script = REPO / "benches" / "gpu_session.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    assert "gpu_report.py" in text and "-m gpu" in text and "TRITON_INTERPRET=0" in text


def test_every_tuning_case_compiles_for_sm90_without_spills(tmp_path):
    """The report's tuning sweep spends GPU time only on configurations worth timing: each case
    compiles for sm_90 (through the compile check's stand-in driver) without a spill and quickly."""
    script = f"""
import json, sys, torch
sys.path.insert(0, {str(REPO / "benches")!r})
from gpu_report import sweep_cases
from twm_fast.compile_check import Survey, stand_in_gpu
from twm_fast.precision import apply_matmul_precision
survey = Survey()
for label, dtype in (("tf32", torch.float32), ("bf16", torch.bfloat16)):
    apply_matmul_precision("high")
    survey.variant = label
    with stand_in_gpu(90, survey):
        cases = sweep_cases(dtype, "cpu")
        for fn in cases.values():
            fn()
print(json.dumps([dict(kernel=c.kernel, variant=c.variant, spills=c.spills, seconds=c.compile_s,
                       error=c.error, warps=c.num_warps) for c in survey.compiled]))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    compiled = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(compiled) >= 10
    for c in compiled:
        assert c["error"] is None and c["spills"] == 0 and c["seconds"] < 60, c
