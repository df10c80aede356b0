#!/usr/bin/env bash
# The reward server (`triune serve-rewards`), started the way the V-Triune release's scripts/reward_server.sh is:
# it writes an empty file named `<host>:<port>` under `.reward_server/<JOB_ID>/` while it runs (removed when it
# stops), and the trainer finds it with `--reward_server_job_ids <JOB_ID>` ("j-a|j-b" for several servers).
#
#   local_scripts/reward_server.sh                                   # this machine only (127.0.0.1:8192)
#   HOST=0.0.0.0 TOKEN_FILE=~/.triune_reward_token WORKERS=32 local_scripts/reward_server.sh   # for other nodes
#   JOB_ID=j-rewards-a PORT=8193 local_scripts/reward_server.sh
#
# HOST defaults to 127.0.0.1: a server other nodes can reach needs HOST=0.0.0.0 and, unless the network is
# private, a TOKEN_FILE (the trainer then passes --reward_server_token_file with the same file). WORKERS is the
# number of scoring processes (one per core is right for a dedicated machine). DET_IOU_THRESHOLD ('dynamic',
# 'average' or a number) is the threshold for items that do not carry their own, as in the release; the trainer's
# client always sends its own. Extra arguments go to `triune serve-rewards` unchanged (see its --help).
# TRIUNE_DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8192}
WORKERS=${WORKERS:-$(nproc)}
TIME_LIMIT=${TIME_LIMIT:-10}
DET_IOU_THRESHOLD=${DET_IOU_THRESHOLD:-dynamic}
JOB_ID=${JOB_ID:-j-$(date +%Y%m%d%H%M%S)-$RANDOM}
DISCOVERY_DIR=${DISCOVERY_DIR:-$REPO_ROOT/.reward_server}
TRIUNE=${TRIUNE:-triune}

cmd=(
  "$TRIUNE" serve-rewards
  --host "$HOST"
  --port "$PORT"
  --workers "$WORKERS"
  --time-limit "$TIME_LIMIT"
  --iou-threshold "$DET_IOU_THRESHOLD"
  --job-id "$JOB_ID"
  --discovery-dir "$DISCOVERY_DIR"
)
if [[ -n "${TOKEN_FILE:-}" ]]; then
  cmd+=(--token-file "$TOKEN_FILE")
fi
cmd+=("$@")

echo "reward server JOB_ID=$JOB_ID (train with --reward_server_job_ids $JOB_ID --reward_server_dir $DISCOVERY_DIR)" >&2
if [[ "${TRIUNE_DRY_RUN:-0}" == "1" ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
