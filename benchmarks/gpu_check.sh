#!/usr/bin/env bash
# The GPU checks in one run (at most 530 s of limits: fits one 600 s device call): CUDA tests of the fused paths, the gather
# kernels alone (Triton block sizes), the full ddp_convnext_t benchmark with and without the Triton kernel,
# a training step, and reduced-precision agreement. Needs only a python3 with a CUDA torch (+ Triton,
# numpy, OpenCV, Pillow, safetensors, pytest); the package runs from src/, nothing is installed.
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh        # logs land in $OUT (default ./gpu_check_logs)
#
# Every step has its own time limit and a failing step does not stop the next; the summary at the end
# lists each step's exit status.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_logs}
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
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    status+=("$name: exit $rc, $((SECONDS - start)) s")
}

step env 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
    $PY -c 'import torch, triton; print(\"torch\", torch.__version__, \"triton\", triton.__version__, torch.cuda.get_device_name())'"
step tests 200 "$PY" -m pytest -q -p no:cacheprovider tests/models/test_triton_msda.py tests/models/test_train_decoder.py \
    tests/models/test_fast_decoder.py tests/models/test_parity.py
step gather 45 "$PY" benchmarks/gather_kernels.py --device cuda --blocks 8 16 32 64 --repeats 20
step benchmark 120 "$PY" -m ddpseg.cli benchmark "$CONFIG" --device cuda --steps 1 3 10 --train
step benchmark_no_triton 90 env DDPSEG_TRITON=0 "$PY" -m ddpseg.cli benchmark "$CONFIG" --device cuda --steps 3 --train
step precision 45 "$PY" benchmarks/precision_agreement.py --device cuda

echo "=== summary"
printf '%s\n' "${status[@]}" | tee "$OUT/summary.log"
