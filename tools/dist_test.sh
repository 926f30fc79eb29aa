#!/usr/bin/env bash
# Test with several processes (one per GPU; on a machine without GPUs, CPU processes talking over gloo):
#   bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCESSES [tools/test.py options, e.g. --eval mIoU]
# Several machines: set NNODES, NODE_RANK, MASTER_ADDR and PORT on each. PYTHON picks the interpreter.
set -euo pipefail

if [ "$#" -lt 3 ]; then
    echo "usage: bash $0 CONFIG CHECKPOINT NUM_PROCESSES [options of tools/test.py]" >&2
    exit 2
fi
config="$1"
checkpoint="$2"
nproc="$3"
shift 3
if ! [[ "$nproc" =~ ^[1-9][0-9]*$ ]]; then
    echo "$0: NUM_PROCESSES (the 3rd argument) must be a number ≥ 1, got '$nproc'" >&2
    echo "usage: bash $0 CONFIG CHECKPOINT NUM_PROCESSES [options of tools/test.py]" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"

PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" \
    --nproc_per_node="$nproc" \
    "$here/test.py" "$config" "$checkpoint" --launcher pytorch "$@"
