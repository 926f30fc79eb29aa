#!/usr/bin/env bash
# Train with several processes, one per GPU (on a machine without GPUs: CPU processes talking over gloo):
#   bash tools/dist_train.sh CONFIG GPUS [tools/train.py options, e.g. --work-dir DIR --cfg-options k=v]
# Several machines: run it on each with NNODES, NODE_RANK, MASTER_ADDR and PORT set (torchrun's rendezvous).
# As the original script, it passes --deterministic. PYTHON picks the interpreter.
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

if [ "$#" -lt 2 ]; then
    echo "usage: bash $0 CONFIG GPUS [options of tools/train.py]" >&2
    exit 2
fi
if ! [[ "$GPUS" =~ ^[1-9][0-9]*$ ]]; then
    echo "$0: GPUS (the 2nd argument) must be a number of processes ≥ 1, got '$GPUS'" >&2
    echo "usage: bash $0 CONFIG GPUS [options of tools/train.py]" >&2
    exit 2
fi

PYTHONPATH="$(dirname "$0")/../src${PYTHONPATH:+:$PYTHONPATH}" \
"${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$(dirname "$0")/train.py" \
    "$CONFIG" \
    --deterministic \
    --launcher pytorch "${@:3}"
