#!/usr/bin/env bash
# Everything a GPU session owes, in one device call (a few minutes on an H100/H200):
#
#     run(command="bash benches/gpu_session.sh 1a2b3c4", timeout_s=600)
#
# The commit is a literal (git rev-parse --short HEAD, run here first): the device machine gets a copy
# of the working tree without .git, so a $(git ...) inside the command would expand to nothing there.
#
# A second argument, `tests` or `report`, runs only that half (each then has the whole call's time:
# two calls if one is not enough).
#
# Installs the package (its C++ replay core and twm_fast.kernels), runs the GPU tests (full size,
# fp32 and bf16, CUDA graphs), then benches/gpu_report.py (correctness and fast-vs-reference
# timings of every kernel and of the training step). Logs and gpu_report.json go to $OUT; the
# report's table is printed last. Record it in README.md with the card, dtype, shapes and commit.
set -u -o pipefail
OUT=${OUT:?OUT must name the folder for the logs (the device tool sets it)}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)  # absolute: the script changes folders
COMMIT=${1:?pass the commit as a literal: bash benches/gpu_session.sh <sha> [tests|report]}
MODE=${2:-all}
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 TWM_COMMIT=$COMMIT

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
cd "$REPO"
if ! python3 -m pip install -q --no-build-isolation --no-deps . > "$OUT/install.txt" 2>&1; then
    echo "pip install failed (tail of $OUT/install.txt):"; tail -20 "$OUT/install.txt"; exit 1
fi
# From another folder, so that Python imports the installed package, not the source tree.
cd /tmp
# Time limits that fit one 600-second call with the install; a half alone gets more.
if [ "$MODE" = all ]; then TESTS_S=220; REPORT_S=320; else TESTS_S=540; REPORT_S=540; fi
if [ "$MODE" != report ]; then
    # -rA: a run stopped by the time limit still names every test that passed or failed before it.
    timeout $TESTS_S python3 -m pytest -q -rA -m gpu -p no:cacheprovider "$REPO"/tests/test_kernel_*.py \
        "$REPO"/tests/test_imagination_graph.py "$REPO"/tests/test_cuda_graph.py > "$OUT/pytest_gpu.txt" 2>&1
    echo "GPU tests: exit $? (124: stopped at ${TESTS_S} s; last lines of $OUT/pytest_gpu.txt)"
    tail -25 "$OUT/pytest_gpu.txt"
fi
if [ "$MODE" != tests ]; then
    # SIGTERM at the limit: the report still prints the table of what it measured.
    timeout $REPORT_S python3 "$REPO/benches/gpu_report.py" --out "$OUT" 2>&1 | tee "$OUT/gpu_report.txt"
fi
