"""Builds and runs the C++ unit tests of the header-only replay core (csrc/tests/test_replay_core.cpp)."""

import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs the system g++")
def test_replay_core_cpp(tmp_path):
    binary = tmp_path / "test_replay_core"
    build = subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-I{CSRC}",
            str(CSRC / "tests" / "test_replay_core.cpp"),
            "-o",
            str(binary),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "OK: 0 failure(s)" in run.stdout, run.stdout + run.stderr
