#!/usr/bin/env bash
# V-Triune training across nodes. Run the same command on every node; only NODE_RANK differs.
#
#   # 2 nodes x 8 GPUs, DeepSpeed ZeRO-3 through accelerate (default):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=29500 local_scripts/train_multinode.sh   # on node0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 MASTER_PORT=29500 local_scripts/train_multinode.sh   # on node1
#
#   # the same with torchrun and the DeepSpeed JSON (or DEEPSPEED_JSON=none for plain DDP):
#   LAUNCHER=torchrun NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 local_scripts/train_multinode.sh
#
# Environment (defaults in brackets): NNODES [1], NODE_RANK [0], MASTER_ADDR [127.0.0.1], MASTER_PORT [29500],
# GPUS_PER_NODE [8], LAUNCHER [accelerate | torchrun], ACCELERATE_CONFIG [local_scripts/zero3.yaml],
# DEEPSPEED_JSON [local_scripts/ds_zero3.json, torchrun only; none = DDP], RECIPE [recipes/configs/orsta_7b.yaml],
# VLLM_SERVER_HOST / VLLM_SERVER_PORT [unset / 8000]: where local_scripts/vllm_serve.sh runs (recipes in vLLM
# server mode). DDP_TIMEOUT [the recipe's ddp_timeout]: seconds a rank may wait in a collective, which in server mode
# must cover a whole rollout (ranks wait while the server generates; the Orsta recipes set 7200 / 14400).
# Arguments after the script's name are recipe overrides, e.g. --data_root /data/Orsta-Data-47k.
# The recipe's per_device_train_batch_size x gradient_accumulation_steps x NNODES x GPUS_PER_NODE must equal the
# completions per optimizer step: see the table in the recipe's comments.
# TRIUNE_DRY_RUN=1 prints the launch command (one argument per line) instead of running it.
set -euo pipefail
cd "$(dirname "$0")/.."

NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
LAUNCHER=${LAUNCHER:-accelerate}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-local_scripts/zero3.yaml}
DEEPSPEED_JSON=${DEEPSPEED_JSON:-local_scripts/ds_zero3.json}
RECIPE=${RECIPE:-recipes/configs/orsta_7b.yaml}
WORLD_SIZE=$((NNODES * GPUS_PER_NODE))

recipe_args=(--config "$RECIPE")
if [[ -n "${VLLM_SERVER_HOST:-}" ]]; then
  recipe_args+=(--vllm_server_host "$VLLM_SERVER_HOST" --vllm_server_port "${VLLM_SERVER_PORT:-8000}")
fi
if [[ -n "${DDP_TIMEOUT:-}" ]]; then
  recipe_args+=(--ddp_timeout "$DDP_TIMEOUT")
fi

case "$LAUNCHER" in
  accelerate)
    cmd=(accelerate launch --config_file "$ACCELERATE_CONFIG"
         --num_machines "$NNODES" --num_processes "$WORLD_SIZE" --machine_rank "$NODE_RANK"
         --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT"
         recipes/grpo_triune.py "${recipe_args[@]}")
    ;;
  torchrun)
    cmd=(torchrun --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" --node_rank "$NODE_RANK"
         --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
         recipes/grpo_triune.py "${recipe_args[@]}")
    if [[ "$DEEPSPEED_JSON" != "none" ]]; then
      cmd+=(--deepspeed "$DEEPSPEED_JSON")
    fi
    ;;
  *)
    echo "train_multinode.sh: LAUNCHER must be accelerate or torchrun, got '$LAUNCHER'" >&2
    exit 2
    ;;
esac
cmd+=("$@")

if [[ -n "${TRIUNE_DRY_RUN:-}" ]]; then
  printf '%s\n' "${cmd[@]}"
  exit 0
fi
echo "node $NODE_RANK/$NNODES, $WORLD_SIZE processes in all: ${cmd[*]}" >&2
exec "${cmd[@]}"
