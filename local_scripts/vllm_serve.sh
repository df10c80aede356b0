#!/usr/bin/env bash
# The vLLM generation server for GRPO in server mode (`use_vllm: true`, `vllm_mode: server` in the Orsta recipes),
# on GPUs that the trainer does not use. A thin wrapper of `triune vllm-serve` (src/triune_trl/generation/serve.py), which
# runs TRL 1.16's `trl vllm-serve` command (the weight-transfer engine, processed logprobs, the scale-out endpoints
# for multimodal prompts, VLLM_SERVER_DEV_MODE=1) with the weight transfer picked by platform: NCCL on GPU hosts,
# HTTP (`triune_http`) on hosts without CUDA; it waits for /health and prints a ready line.
#
#   CUDA_VISIBLE_DEVICES=7 local_scripts/vllm_serve.sh                                 # Orsta-7B, one GPU
#   MODEL=Qwen/Qwen2.5-VL-32B-Instruct VLLM_TP=4 CUDA_VISIBLE_DEVICES=4,5,6,7 local_scripts/vllm_serve.sh
#   VLLM_HOST=0.0.0.0 TRIUNE_VLLM_TOKEN_FILE=~/.triune_vllm_token local_scripts/vllm_serve.sh   # trainers elsewhere
#
# A host other than 127.0.0.1 needs a token: `triune vllm-serve` reads TRIUNE_VLLM_TOKEN_FILE (a file holding one word)
# or TRIUNE_VLLM_TOKEN from this environment, and every route but /health, /v1/models, /version and /metrics then
# requires it; trainers send it from the same variable (docs/scaling.md, "The token").
#
# Extra arguments are passed on (unknown ones to `vllm serve` unchanged), e.g. `--limit-mm-per-prompt '{"image": 4}'`.
# VLLM_WEIGHT_TRANSFER=nccl|triune_http overrides the platform's choice. TRIUNE_DRY_RUN=1 prints the command instead.
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}   # the recipe's model_name_or_path
VLLM_TP=${VLLM_TP:-1}                         # tensor parallel size (4 for 32B on 80 GB GPUs)
VLLM_HOST=${VLLM_HOST:-127.0.0.1}             # 0.0.0.0 when the trainers run on other nodes
VLLM_PORT=${VLLM_PORT:-8000}                  # the recipe's vllm_server_port
VLLM_MAX_MODEL_LEN=${VLLM_MAX_MODEL_LEN:-10240}   # max prompt 8192 + max completion 2048 (paper)
VLLM_GPU_MEMORY_UTILIZATION=${VLLM_GPU_MEMORY_UTILIZATION:-0.9}

cmd=(
  triune vllm-serve
  --model "$MODEL"
  --tensor_parallel_size "$VLLM_TP"
  --host "$VLLM_HOST"
  --port "$VLLM_PORT"
  --max_model_len "$VLLM_MAX_MODEL_LEN"
  --gpu_memory_utilization "$VLLM_GPU_MEMORY_UTILIZATION"
  --dtype bfloat16
  --enable_prefix_caching true
)
if [[ -n "${VLLM_WEIGHT_TRANSFER:-}" ]]; then
  cmd+=(--weight_transfer "$VLLM_WEIGHT_TRANSFER")
fi
cmd+=("$@")
if [[ -n "${TRIUNE_DRY_RUN:-}" ]]; then
  printf '%s\n' "${cmd[@]}"
  exit 0
fi
exec "${cmd[@]}"
