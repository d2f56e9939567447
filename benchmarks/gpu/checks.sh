#!/usr/bin/env bash
# Every GPU check of issues 14 and 16 in one device call, within its 10 minutes:
#   bash benchmarks/gpu/pack.sh                                   # here, first
#   device run: command "bash benchmarks/gpu/checks.sh", carry [".gpu"], timeout_s 600
# Each step has its own time limit, most important first; $OUT/checks.log has the tail of
# each step and $OUT/<step>.log the whole of it. The GPU machine has torch, numpy, scipy,
# scikit-image and tifffile but not napari: these checks import core only. DEVICE=cpu QUICK=1
# PY=.venv/bin/python runs the same plumbing here, with short budgets.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-checks}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
mkdir -p "$OUT"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-site .gpu/whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/gpu-site SHARED_DATA=$PWD/.gpu/data PYTHONUNBUFFERED=1
log=$OUT/checks.log
step() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name, at most ${limit} s ($(date +%T))" >>"$log"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 30 "$OUT/$name.log" >>"$log"
    echo "=== $name: exit $rc" >>"$log"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; "$PY" -c "import torch; print('torch', torch.__version__)"; } >"$log"
if [ -n "$QUICK" ]; then
    step test_cuda 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
    step predict_2048 120 "$PY" benchmarks/bench_predict.py --device "$DEVICE" --quick --repeats 1
    step finetune_isbi 120 "$PY" benchmarks/bench_finetune.py --domain isbi --device "$DEVICE" --steps 2 --minutes 0.2
    step tasks_3d 180 "$PY" benchmarks/bench_tasks.py --device "$DEVICE" --minutes 0.1 --n-train 4
    exit 0
fi
step test_cuda 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
step predict_2048 90 "$PY" benchmarks/bench_predict.py --device "$DEVICE" --repeats 5 --threads 8
step finetune_isbi 100 "$PY" benchmarks/bench_finetune.py --domain isbi --device "$DEVICE" --minutes 0.33
step tasks_3d 150 "$PY" benchmarks/bench_tasks.py --device "$DEVICE" --minutes 1 --threads 8
step predict_8192 160 "$PY" benchmarks/bench_predict.py --device "$DEVICE" --size 8192 --repeats 1 --threads 8
