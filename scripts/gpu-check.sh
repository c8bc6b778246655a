#!/usr/bin/env bash
# The GPU checks (tests/test_gpu.py, marker `gpu`) and their report: which device they ran on, then per check PASS or
# FAIL, its numbers against its stated tolerance, its wall time and the peak GPU memory of its stage.
#
#   bash scripts/gpu-check.sh                                  # on a machine with CUDA (a CUDA build of torch)
#   DAAMFLOW_GPU_CHECK_DEVICE=cpu bash scripts/gpu-check.sh    # the same code paths on the CPU
#   DAAMFLOW_GPU_CHECK_DEVICE=cuda:1 bash scripts/gpu-check.sh # another GPU
#
# Extra arguments go to pytest (e.g. -k extraction). Exit status 0 only when every check ran and passed. Environment:
# PYTHON (default .venv/bin/python), GPU_CHECK_BUDGET_S (the wall-time budget on one GPU, default 480 s),
# GPU_CHECK_TIMEOUT_S (stops the checks; default 900 s, so that a slow device still reports what it finished).
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
timeout_s=${GPU_CHECK_TIMEOUT_S:-900}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== daamflow GPU checks (tests/test_gpu.py) =="
DAAMFLOW_GPU_REPORT="$work/report.json" timeout "$timeout_s" "$python" -m pytest -q -m gpu -rs -p no:cacheprovider \
    tests/test_gpu.py "$@" >"$work/pytest.log" 2>&1
status=$?
"$python" benchmarks/gpu_report.py "$work/report.json" --budget-s "${GPU_CHECK_BUDGET_S:-480}" || status=${status/#0/1}
echo "script wall time ${SECONDS} s (pytest start-up and the CPU float32 references included)"
if [ "$status" -ne 0 ]; then
    [ "$status" -eq 124 ] && echo "stopped after ${timeout_s} s (GPU_CHECK_TIMEOUT_S): the report lists what finished"
    echo "-- pytest's output (last 60 lines) --"
    tail -n 60 "$work/pytest.log"
fi
exit "$status"
