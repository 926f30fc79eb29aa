#!/usr/bin/env bash
# The GPU checks in one run, inside an overall deadline (DEADLINE seconds, default 470, so a 500 s device call
# holds it): CUDA tests of the fused paths and of parity, the gather kernels alone (Triton block sizes), the
# full ddp_convnext_t benchmark with and without the Triton kernel and in bf16, a training step,
# reduced-precision agreement, then the whole test suite on the GPU machine. Needs only a python3 with a CUDA
# torch (+ Triton, numpy, OpenCV, Pillow, safetensors, matplotlib, tqdm, pytest; pytest-xdist for the suite);
# the package runs from src/, nothing is installed.
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh        # logs land in $OUT (default ./gpu_check_logs)
#
# Steps run most important first, each with its own time limit, cut to what is left of the deadline (a step
# with under 15 s left is skipped); a failing step does not stop the next. The summary at the end (also
# appended to env.log) lists each step's exit status and time. At most 8 log files.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_logs}
DEADLINE=${DEADLINE:-470}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
CONFIG=configs/cityscapes/ddp_convnext_t_4x4_512x1024_160k_cityscapes.py
status=()
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: $PY sees no CUDA device (torch without CUDA, or no GPU): nothing to check" >&2
    exit 2
fi

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    if ((left < 15)); then
        status+=("$name: skipped, ${left} s left of the ${DEADLINE} s deadline")
        return
    fi
    ((limit > left)) && limit=$left
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    status+=("$name: exit $rc, $((SECONDS - start)) s")
}

step env 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; \
    $PY -c 'import torch, triton; print(\"torch\", torch.__version__, \"triton\", triton.__version__, torch.cuda.get_device_name())'"
step tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/models/test_triton_msda.py tests/models/test_train_decoder.py \
    tests/models/test_fast_decoder.py tests/models/test_parity_cuda.py tests/models/test_parity.py \
    tests/evaluation/test_metrics.py::test_cuda_tensors_give_the_same_counts
step gather 45 "$PY" benchmarks/gather_kernels.py --device cuda --blocks 8 16 32 64 --repeats 20
step benchmark 120 "$PY" -m ddpseg.cli benchmark "$CONFIG" --device cuda --steps 1 3 10 --train
step benchmark_no_triton 75 env DDPSEG_TRITON=0 "$PY" -m ddpseg.cli benchmark "$CONFIG" --device cuda --steps 3 --train
step benchmark_bf16 60 "$PY" -m ddpseg.cli benchmark "$CONFIG" --device cuda --steps 1 3 --amp bf16
step precision 45 "$PY" benchmarks/precision_agreement.py --device cuda
step suite 200 "$PY" -m pytest -q -p no:cacheprovider --maxfail=25 -n 8 tests

echo "=== summary (deadline ${DEADLINE} s, ${SECONDS} s used)"
printf '%s\n' "${status[@]}" | tee -a "$OUT/env.log"
