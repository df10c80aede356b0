#!/usr/bin/env bash
# The GPU check of vLLM server mode (issue 17), one prepared run: under 8 minutes (two legs of at most 230 s each; NOT RUN yet:
# no GPU was lent when it was written). It runs tests/test_vllm_server.py on CUDA, once per weight transfer:
#   - nccl (TRL's): the server on GPU 1, the trainer on GPU 0. Needs 2 GPUs: NCCL refuses two ranks on one device
#     ("Duplicate GPU detected", huggingface/trl#3487), so on a one-GPU machine this leg prints SKIP;
#   - triune_http (this project's): the server and the trainer on GPU 0 (HTTP has no such limit).
# Each leg: the 4-step tiny server-mode run over text-only / one-image / two-image prompts (vLLM's log-probs within
# 0.01 of the trainer's at every step, weights changing), the perturb -> sync -> compare check (and the encoder-cache
# reset), a 4-step async_rollouts run (staleness 1, the trainer's log-probs under the generating weights within 0.01
# of vLLM's), and a server killed mid-run ending training with one line. Output: one PASS / FAIL / SKIP line per check.
#
#   local_scripts/gpu_check.sh            # needs the GPU environment: pip install -e ".[gpu,dev]" (vLLM for CUDA)
#   PYTHON=/path/to/python GPU_CHECK_LOG=/tmp/gpu_check local_scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[[ -x "$PYTHON" ]] || PYTHON=python
LOG=${GPU_CHECK_LOG:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$LOG"
GPUS=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
CHECKS="trains_on_mixed or large_perturbation or one_step_off_policy or dies_mid_run"
status=0
echo "gpu_check: $GPUS GPU(s); logs in $LOG"
if [[ "$GPUS" -lt 1 ]]; then
  echo "FAIL no CUDA device (nvidia-smi lists none)"
  exit 1
fi

leg() {  # leg BACKEND TRAINER_GPU SERVER_GPUS
  local backend=$1 trainer_gpu=$2 server_gpus=$3 start=$SECONDS
  CUDA_VISIBLE_DEVICES=$trainer_gpu TRIUNE_CHECK_DEVICE=cuda TRIUNE_CHECK_WEIGHT_TRANSFER=$backend \
    TRIUNE_CHECK_SERVER_GPUS=$server_gpus TRIUNE_CHECK_SERVER_ARGS="--enforce_eager true" \
    timeout 230 "$PYTHON" -m pytest tests/test_vllm_server.py -k "$CHECKS" -p no:cacheprovider -rA -q \
    >"$LOG/$backend.log" 2>&1
  local code=$?
  grep -E "^(PASSED|FAILED|ERROR) " "$LOG/$backend.log" | sed -E "s/^PASSED/PASS/; s/^(FAILED|ERROR)/FAIL/; s/^(\w+) /\1 $backend /"
  if [[ $code -ne 0 ]]; then
    status=1
    grep -qE "^(PASSED|FAILED|ERROR) " "$LOG/$backend.log" || echo "FAIL $backend pytest exit $code (timeout 230 s = 124): $LOG/$backend.log"
  fi
  echo "     $backend: $((SECONDS - start)) s"
}

if [[ "$GPUS" -ge 2 ]]; then
  leg nccl 0 1
else
  echo "SKIP nccl: one GPU; NCCL refuses the trainer and the server on the same device (needs 2 GPUs)"
fi
leg triune_http 0 0
exit $status
