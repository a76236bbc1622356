"""The GPU report script runs end to end on the CPU (tiny shapes, interpreter) and writes its JSON."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_report_runs_on_the_cpu(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "benches" / "gpu_report.py"), "--out", str(tmp_path), "--device", "cpu",
         "--repeats", "1", "--warmup", "1"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("ALL CHECKS PASSED")                          # the table comes last
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert not report["errors"]
    ops = {row["op"] for row in report["rows"]}
    assert {"attention_step", "attention_train_fwd_bwd", "categorical_sample", "gae"} <= ops
    assert {"train/world_model_update", "train/imagination", "train/whole_train_step"} <= ops
    assert {"fused_linear out_proj+residual+norm", "fused_linear linear1+silu"} <= ops
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
