#!/usr/bin/env bash
# Drives the web service example (examples/axum_service.rs) with wrk on
# loopback and prints requests per second and latency percentiles for:
#   - cache on:  PostgreSQL + a private redis-server,
#   - cache off: the same service on the database alone (--no-cache),
#   - Redis stopped mid-run: the private redis-server is killed halfway.
# Each round is GET /users/{random id of 1000} with wrk -t1 -c16 for
# LOAD_SECONDS (default 5) after a 2 s warm-up.
#
#   bash scripts/load.sh                  print the Markdown section
#   bash scripts/load.sh --append FILE    and append it to FILE
#   bash scripts/load.sh --compare [--append FILE]
#       the same route served six ways (examples/web/user_service.rs):
#       StoreHaus on Redis, with the near cache, the `cached` crate with and
#       without its client-side caching, the database alone and a HashMap
#       (the ceiling of the web stack), in interleaved rounds (ROUNDS,
#       default 3); medians and same-run ratios.
#
# Needs wrk (apt-get install wrk / brew install wrk). Not run by CI: the
# machine's load decides the figures; bash scripts/bench.sh runs it in the
# full benchmark when wrk is installed. Never touches the shared Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

append=""
compare=""
while [ $# -gt 0 ]; do
  case "$1" in
    --append) append="$2"; shift 2 ;;
    --compare) compare=1; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "load.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
if ! command -v wrk >/dev/null 2>&1; then
  echo "load.sh: wrk is not installed (apt-get install -y wrk, or brew install wrk)" >&2
  exit 1
fi

bash scripts/services.sh >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/storehaus/target}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
SECONDS_PER_ROUND="${LOAD_SECONDS:-5}"
if [ -n "$compare" ]; then
  cargo build --release --quiet -p storehaus-example-web --features csc --example user_service
  service="$CARGO_TARGET_DIR/release/examples/user_service"
else
  cargo build --release --quiet --example axum_service
  service="$CARGO_TARGET_DIR/release/examples/axum_service"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
redis_pid=""
service_pid=""
cleanup() {
  [ -n "$service_pid" ] && kill "$service_pid" 2>/dev/null || true
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/random.lua" <<'LUA'
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/users/" .. math.random(1, 1000))
end
LUA

start_redis() {
  redis_port=$(free_port)
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --daemonize no \
    >"$work/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 1 50); do
    [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = "PONG" ] && return 0
    sleep 0.1
  done
  echo "load.sh: the private redis-server did not start" >&2
  exit 1
}

start_service() {
  port=$(free_port)
  "$service" --addr "127.0.0.1:$port" "$@" >"$work/service.log" 2>&1 &
  service_pid=$!
  for _ in $(seq 1 300); do
    grep -q "listening on" "$work/service.log" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "load.sh: the service did not start:" >&2
  cat "$work/service.log" >&2
  exit 1
}

stop_service() {
  kill "$service_pid" 2>/dev/null || true
  wait "$service_pid" 2>/dev/null || true
  service_pid=""
}

# Runs wrk against the service; prints "rps p50 p90 p99 errors".
measure() {
  wrk -t1 -c16 -d2s -s "$work/random.lua" "http://127.0.0.1:$port" >/dev/null 2>&1 || true
  wrk -t1 -c16 -d"${SECONDS_PER_ROUND}s" --latency -s "$work/random.lua" "http://127.0.0.1:$port" >"$work/wrk.txt" 2>&1
  python3 - "$work/wrk.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)
def pct(p):
    m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % p, text, re.M)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
errors = 0
m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if m:
    errors += int(m.group(1))
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
if m:
    errors += sum(int(x) for x in m.groups())
print(f"{float(rps):.0f} {pct(50):.2f} {pct(90):.2f} {pct(99):.2f} {errors}")
PY
}

row() {
  read -r rps p50 p90 p99 errors <<<"$2"
  printf '| %s | %s | %s ms | %s ms | %s ms | %s |\n' "$1" "$rps" "$p50" "$p90" "$p99" "$errors"
}

finish() {
  cat "$out"
  if [ -n "$append" ]; then
    { echo; cat "$out"; } >>"$append"
    echo "load.sh: appended to $append" >&2
  fi
}

out="$work/section.md"
if [ -n "$compare" ]; then
  rounds="${ROUNDS:-3}"
  modes="storehaus near cached cached-csc db memory"
  start_redis
  : >"$work/results"
  for round in $(seq 1 "$rounds"); do
    for mode in $modes; do
      REDIS_URL="redis://127.0.0.1:$redis_port" start_service --mode "$mode"
      echo "$round $mode $(measure)" >>"$work/results"
      stop_service
      echo "load.sh: round $round, $mode: $(tail -1 "$work/results" | cut -d' ' -f3-)" >&2
    done
  done
  python3 - "$work/results" "$rounds" "$SECONDS_PER_ROUND" "$(cpu_count)" >"$out" <<'PY'
import statistics, sys
path, rounds, seconds, cpus = sys.argv[1:5]
runs = {}
for line in open(path):
    r, mode, rps, p50, p90, p99, errors = line.split()
    runs.setdefault(mode, []).append((int(r), float(rps), float(p99), int(errors)))
def med(mode, i):
    return statistics.median(x[i] for x in runs[mode])
def ratio(a, b):
    # The median of the per-round ratios, as the scenario bench reports.
    by_round = {r: rps for r, rps, _, _ in runs[b]}
    return statistics.median(rps / by_round[r] for r, rps, _, _ in runs[a] if r in by_round)
names = {
    "storehaus": "StoreHaus on Redis",
    "near": "StoreHaus with the near cache",
    "cached": "`cached` crate AsyncRedisCache (cache-aside by hand)",
    "cached-csc": "`cached` crate with `client_side_caching(true)`",
    "db": "the database alone",
    "memory": "a HashMap filled at start (the ceiling of the web stack)",
}
print("## The web service against other caches")
print()
print("Written by `bash scripts/load.sh --compare`: examples/web/user_service.rs (release), GET /users/{random id of 1000},")
print(f"wrk -t1 -c16 for {seconds} s after a 2 s warm-up, {rounds} interleaved rounds, loopback, on {cpus} cores shared")
print("with wrk, PostgreSQL and a private redis-server. Medians over the rounds; ratios are medians of per-round ratios.")
print()
print("| service | requests/s | p99 | errors |")
print("|---|---:|---:|---:|")
for mode in runs:
    errors = sum(x[3] for x in runs[mode])
    print(f"| {names.get(mode, mode)} | {med(mode, 1):.0f} | {med(mode, 2):.2f} ms | {errors} |")
print()
print("| comparison | ratio (requests/s) | target |")
print("|---|---:|---:|")
for a, b, target in [
    ("storehaus", "cached", "≥ 1.1×"),
    ("near", "memory", "≥ 0.95×"),
    ("near", "cached-csc", "≥ 1.1×"),
    ("storehaus", "db", ""),
]:
    if a in runs and b in runs:
        print(f"| {names[a]} / {names[b]} | {ratio(a, b):.2f}× | {target} |")
PY
  finish
  exit 0
fi

{
  echo "## A web service under load"
  echo
  echo "Written by \`bash scripts/load.sh\`: examples/axum_service.rs (release) on PostgreSQL, 1000 users,"
  echo "GET /users/{random id}, wrk -t1 -c16 for ${SECONDS_PER_ROUND} s after a 2 s warm-up, loopback, on $(cpu_count) cores"
  echo "shared with wrk, PostgreSQL and Redis. Errors: non-2xx answers and socket errors."
  echo
  echo "| service | requests/s | p50 | p90 | p99 | errors |"
  echo "|---|---:|---:|---:|---:|---:|"
} >"$out"

start_redis
REDIS_URL="redis://127.0.0.1:$redis_port" start_service
row "cache on (private redis-server)" "$(measure)" >>"$out"
stop_service

start_service --no-cache
row "cache off (database only)" "$(measure)" >>"$out"
stop_service

REDIS_URL="redis://127.0.0.1:$redis_port" start_service
( sleep "$(( (SECONDS_PER_ROUND + 2) / 2 + 2 ))"; kill "$redis_pid" 2>/dev/null ) &
row "Redis killed halfway through the round" "$(measure)" >>"$out"
stop_service
redis_pid=""

finish
