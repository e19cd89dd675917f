#!/usr/bin/env bash
# /predict of an earlier revision next to this checkout's, with the bare ceiling alongside, in one
# run: the same wrk load as the issues quote (one uvicorn worker, `wrk -t1 -c16 -d10s`, a Lua POST
# over the five default symbols, L1 hits), telemetry off, repetitions interleaved.
#
#   benchmarks/compare_revisions.sh REV [sqlite|postgresql] [REPETITIONS]
#
# REV is checked out into a temporary git worktree and served with this checkout's virtualenv
# (PYTHONPATH puts its `service` package first). Each server gets its own data directory,
# bootstrapped by its own code. postgresql: a throwaway PostgreSQL and Redis from tests/harness.
# Prints one line per run and the medians; writes nothing into the repository.
set -euo pipefail

rev="${1:?usage: $0 REV [sqlite|postgresql] [REPETITIONS]}"
backend="${2:-sqlite}"
reps="${3:-3}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${repo}/.venv/bin/python"
work="$(mktemp -d /tmp/compare-revisions.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "${pid}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  git -C "${repo}" worktree remove --force "${work}/before" 2>/dev/null || true
  rm -rf "${work}"
}
trap cleanup EXIT

git -C "${repo}" worktree add --detach "${work}/before" "${rev}" >/dev/null 2>&1
cat >"${work}/predict.lua" <<'LUA'
local symbols = {"AAPL", "MSFT", "GOOGL", "AMZN", "NVDA"}
local i = 0
request = function()
  i = i + 1
  local body = '{"symbol": "' .. symbols[(i % 5) + 1] .. '"}'
  return wrk.format("POST", "/predict", {["Content-Type"] = "application/json"}, body)
end
LUA

# Shared servers for the PostgreSQL set-up (compose's: PostgreSQL + Redis), one database each.
declare -A database_url
redis_url=""
if [[ "${backend}" == "postgresql" ]]; then
  "${python}" - "${work}" >"${work}/servers.env" <<'PY' &
import signal, sys, time
from pathlib import Path
sys.path.insert(0, ".")
from tests.harness import create_database, start_postgres, start_redis
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so the servers are stopped below
work = Path(sys.argv[1])
(work / "pg").mkdir(); (work / "redis").mkdir()
postgres, redis = start_postgres(work / "pg"), start_redis(work / "redis")
try:
    print(f"before={create_database(postgres, 'before')}")
    print(f"after={create_database(postgres, 'after')}")
    print(f"redis={redis.url}", flush=True)
    while True:
        time.sleep(3600)
finally:
    redis.stop()
    postgres.stop()
PY
  pids+=("$!")
  for _ in $(seq 120); do [[ $(wc -l <"${work}/servers.env") -ge 3 ]] && break; sleep 0.5; done
  database_url[before]="$(sed -n 's/^before=//p' "${work}/servers.env")"
  database_url[after]="$(sed -n 's/^after=//p' "${work}/servers.env")"
  redis_url="$(sed -n 's/^redis=//p' "${work}/servers.env")"
fi

start() {  # name port -> starts the server in the background, waits until it answers
  local name="$1" port="$2"
  local -a env=(OTEL_SDK_DISABLED=true FEATURE_L1_TTL_SECONDS=86400 LOG_LEVEL=WARNING MARKET_FEED=off
                DATA_DIR="${work}/data-${name}")
  if [[ "${backend}" == "postgresql" && "${name}" != "bare" ]]; then
    env+=(DATABASE_URL="${database_url[${name}]}" REDIS_URL="${redis_url}")
  fi
  if curl -s -o /dev/null "http://127.0.0.1:${port}/"; then  # would measure someone else's server
    echo "port ${port} is already taken; stop what listens there first" >&2; exit 1
  fi
  # Each server is its own background job (a redirect on the whole `case` would make $! a
  # subshell around it, and killing that left the server running).
  local log="${work}/${name}.log"
  case "${name}" in
    bare)   (cd "${repo}" && exec env "${env[@]}" "${python}" -m benchmarks.bare_app --port "${port}") \
              >"${log}" 2>&1 & ;;
    before) (cd "${work}" && exec env "${env[@]}" PYTHONPATH="${work}/before" "${python}" -m service.cli \
               serve --host 127.0.0.1 --port "${port}") >"${log}" 2>&1 & ;;
    after)  (cd "${work}" && exec env "${env[@]}" PYTHONPATH="${repo}" "${python}" -m service.cli \
               serve --host 127.0.0.1 --port "${port}") >"${log}" 2>&1 & ;;
  esac
  pids+=("$!")
  for _ in $(seq 240); do
    curl -sf -X POST "http://127.0.0.1:${port}/predict" -H 'content-type: application/json' \
      -d '{"symbol": "AAPL"}' >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "${name} did not start; log:" >&2; tail -20 "${work}/${name}.log" >&2; exit 1
}

declare -A port=([bare]=18001 [before]=18002 [after]=18003)
for name in bare before after; do start "${name}" "${port[${name}]}"; done
for name in bare before after; do  # warm-up: L1 filled, code paths hot
  wrk -t1 -c16 -d3s -s "${work}/predict.lua" "http://127.0.0.1:${port[${name}]}/" >/dev/null
done

echo "revision ${rev} vs $(git -C "${repo}" rev-parse --short HEAD), backend ${backend}, ${reps} interleaved repetitions"
for rep in $(seq "${reps}"); do
  for name in bare before after; do
    out="$(wrk -t1 -c16 -d10s --latency -s "${work}/predict.lua" "http://127.0.0.1:${port[${name}]}/")"
    rps="$(awk '/Requests\/sec/ {print $2}' <<<"${out}")"
    p50="$(awk '$1 == "50%" {print $2}' <<<"${out}")"
    p99="$(awk '$1 == "99%" {print $2}' <<<"${out}")"
    printf '%s\t%s\t%s\t%s\t%s\n' "${rep}" "${name}" "${rps}" "${p50}" "${p99}" | tee -a "${work}/runs.tsv"
  done
done
echo "medians (req/s, p50, p99):"
for name in bare before after; do
  awk -F'\t' -v n="${name}" '$2 == n {print $3}' "${work}/runs.tsv" | sort -n | awk -v n="${name}" \
    '{v[NR]=$1} END {printf "  %-7s %s req/s\n", n, v[int((NR+1)/2)]}'
done
