#!/usr/bin/env bash
# The offline local recipe: Prefect server on 127.0.0.1, a process work pool, the deployments of prefect.yaml,
# a worker, one `prefect deployment run emi/full` watched to its final state, then a clean shutdown.
# The flow reproduces this checkout's DVC pipeline (--profile / --set values are written into params.yaml first,
# as `emi params use` / `emi params set` write them). A server already answering at PREFECT_API_URL is used instead of starting one.
# --runs N submits N runs at once (they share this checkout: the second waits for the first, see docs/orchestration.md).
# --worker makes this checkout a worker of EMI_WORK_POOL for orchestration.pools: it deploys emi-stage/$EMI_WORK_POOL
# alone and runs the worker until stopped (no flow run of its own; the server must be up at PREFECT_API_URL).
#   scripts/prefect-local.sh [--profile NAME] [--stage NAME ...] [--runs N] [--timeout SECONDS] [--set key=value ...]
#   EMI_WORK_POOL=emi-gpu scripts/prefect-local.sh --worker
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" EMI_REPO="$PWD" EMI_WORK_POOL="${EMI_WORK_POOL:-emi-local}"
PORT="${EMI_PREFECT_PORT:-4242}"
export PREFECT_API_URL="${PREFECT_API_URL:-http://127.0.0.1:$PORT/api}" PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 PREFECT_UI_ENABLED=false
timeout=1200 runs=1 params=() stages=() worker_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) params+=("profile=$2"); shift 2 ;;
    --stage) stages+=("$2"); shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --set) overrides+=("$2"); shift 2 ;;
    --worker) worker_only=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
logs="$PREFECT_HOME/logs"; mkdir -p "$logs"
pids=()
# A script's background jobs start with SIGINT ignored, and Prefect stops a worker on SIGTERM by sending itself SIGINT:
# without `env --default-signal=INT` the worker never stopped and was killed after cleanup's 10 s
cleanup() {  # worker first, then the server; anything still up after 10 s is killed
  local i alive
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM -- "-${pids[i]}" 2>/dev/null || true; done
  for _ in $(seq 10); do
    alive=0; for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0; sleep 1
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

if [ "$worker_only" = 1 ] && ! curl -sf "$PREFECT_API_URL/health" >/dev/null; then
  echo "--worker joins a running Prefect server; none answers at $PREFECT_API_URL" >&2; exit 1
fi
if ! curl -sf "$PREFECT_API_URL/health" >/dev/null; then
  setsid env --default-signal=INT prefect server start --host 127.0.0.1 --port "$PORT" >"$logs/server.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 120); do curl -sf "$PREFECT_API_URL/health" >/dev/null && break; sleep 1; done
  curl -sf "$PREFECT_API_URL/health" >/dev/null || { echo "server did not start; see $logs/server.log" >&2; exit 1; }
fi

prefect work-pool create "$EMI_WORK_POOL" --type process --overwrite >/dev/null
if [ "$worker_only" = 1 ]; then
  prefect --no-prompt deploy flows/emi_flow.py:emi_stage --name "$EMI_WORK_POOL" --pool "$EMI_WORK_POOL" \
    >"$logs/deploy.log" 2>&1 || { cat "$logs/deploy.log" >&2; exit 1; }
  echo "worker of pool $EMI_WORK_POOL in $PWD (deployment emi-stage/$EMI_WORK_POOL); log: $logs/worker.log"
  trap - EXIT INT TERM
  exec prefect worker start --pool "$EMI_WORK_POOL" --type process >"$logs/worker.log" 2>&1
fi
prefect --no-prompt deploy --all >"$logs/deploy.log" 2>&1 || { cat "$logs/deploy.log" >&2; exit 1; }
setsid env --default-signal=INT prefect worker start --pool "$EMI_WORK_POOL" --type process >"$logs/worker.log" 2>&1 &
pids+=($!)

args=()
for p in "${params[@]}"; do args+=(--param "$p"); done
json_list() { python -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "$@"; }
[ -n "${overrides+x}" ] && args+=(--param "overrides=$(json_list "${overrides[@]}")")
[ "${#stages[@]}" -gt 0 ] && args+=(--param "stages=$(json_list "${stages[@]}")")
watchers=()
for i in $(seq "$runs"); do
  prefect deployment run emi/full "${args[@]}" --watch --watch-timeout "$timeout" >"$logs/run-$i.log" 2>&1 &
  watchers+=($!)
done
failed=0
for i in $(seq "$runs"); do
  wait "${watchers[i-1]}" || failed=1
  cat "$logs/run-$i.log"
  grep -q "finished successfully in 'Completed'" "$logs/run-$i.log" || failed=1
done
exit "$failed"
