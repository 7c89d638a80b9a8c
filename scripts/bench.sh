#!/usr/bin/env bash
# Benchmarks: StoreHaus against raw redis-rs, raw sqlx and the `cached` crate
# (benches/scenarios.rs, replay.rs and faults.rs, release build). Starts the
# services it needs.
#
#   bash scripts/bench.sh             full run (about three minutes after the
#                                     build): prints the tables and writes
#                                     BENCHMARKS.md
#   bash scripts/bench.sh --quick     CI smoke run (seconds after the build):
#                                     prints the table, writes it only under the
#                                     cargo target dir, never in the work tree
#   bash scripts/bench.sh --diagnose  where the time goes: each StoreHaus
#                                     operation rebuilt step by step by hand
#   bash scripts/bench.sh --replay    a million pending invalidations replayed
#                                     after an outage (about a minute)
#   bash scripts/bench.sh --outbox    invalidation from the database: delay,
#                                     trigger cost, drain rate (about a minute)
#   bash scripts/bench.sh --wal       the trigger outbox against the write-ahead
#                                     log (feature wal) on a private logical
#                                     cluster: update cost, delay, drain rate
#   bash scripts/bench.sh --faults    the fault matrix: a cached read's latency
#                                     under each Redis fault (about a minute;
#                                     BENCHMARKS.md, "What a fault costs")
#   bash scripts/bench.sh --network   the network-fault rows (added latency,
#                                     5 % loss, a silent partition) from
#                                     tests/test_network.rs; needs root
#   bash scripts/bench.sh --cluster   Redis Cluster against raw redis-rs, and
#                                     the single-node hot path built with and
#                                     without the `cluster` feature
#   bash scripts/bench.sh --near      the near cache: L1 hits against Redis
#                                     hits, its cost on write-heavy rows, the
#                                     delivery delay of another process's write
#   bash scripts/bench.sh --early     early refresh: database loads of a hot
#                                     key across its expiries, with and without
#   bash scripts/bench.sh --rollout   rolling deploys: hit rates of two versions
#                                     side by side, the cost on a hit and per write
#   bash scripts/bench.sh --replica   read replicas on a private primary and
#                                     standby: marker costs, the standby's share
#                                     of misses, the primary's load with and without
#
# Exits 0 whatever the numbers are: nothing here is a timed assertion.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
for arg in "$@"; do
  case "$arg" in
    --quick) mode=quick ;;
    --diagnose) mode=diagnose ;;
    --replay) mode=replay ;;
    --outbox) mode=outbox ;;
    --wal) mode=wal ;;
    --faults) mode=faults ;;
    --cluster) mode=cluster ;;
    --near) mode=near ;;
    --early) mode=early ;;
    --rollout) mode=rollout ;;
    --network) mode=network ;;
    --replica) mode=replica ;;
    -h|--help)
      sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "bench.sh: unknown argument '$arg' (use --quick, --diagnose, --replay, --outbox, --wal, --faults, --cluster, --near, --early, --rollout, --replica, --network or nothing)" >&2
      exit 2
      ;;
  esac
done

bash scripts/services.sh
# Reuse build artifacts across clones of this repository on one machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/storehaus/target}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

# The "Network faults" section: the rows tests/test_network.rs prints
# (`network-row: | ... |`) while it proves each row's behaviour. Needs root
# (a network namespace of its own, nftables); elsewhere the section says it
# was not measured.
network_section() {
  echo
  echo "## Network faults"
  echo
  if [[ "$(id -u)" != 0 ]]; then
    echo "Not measured in this run: \`bash scripts/bench.sh --network\` needs root (a network namespace, nftables)."
    echo "SKIPPED: needs root: the network-fault rows were not measured" >&2
    return 0
  fi
  local log
  log="$(mktemp)"
  cargo test --release --test test_network -- --nocapture --test-threads=1 >"$log" 2>&1 || {
    cat "$log" >&2
    rm -f "$log"
    echo "bench: tests/test_network.rs failed: no network rows" >&2
    return 1
  }
  echo "Written by \`bash scripts/bench.sh\` (or alone: \`--network\`) on $(date -u '+%Y-%m-%d %H:%M UTC'), from the measurements \`tests/test_network.rs\` (release build) makes while it proves each row: a private redis-server in a network namespace of its own behind a veth pair, packets dropped by nftables there, the fault tests' managers. The added latency comes from an in-process TCP proxy that holds every request for 20 ms (no \`tc netem\` needed)."
  echo
  echo "| fault | what the user sees | p50 | p99 | counters |"
  echo "|---|---|---|---|---|"
  sed -n 's/^network-row: //p' "$log"
  rm -f "$log"
}

case "$mode" in
  full)
    cargo bench --bench scenarios -- --out "$PWD/BENCHMARKS.md"
    cargo bench --bench replay -- --append "$PWD/BENCHMARKS.md"
    cargo bench --bench outbox -- --append "$PWD/BENCHMARKS.md"
    cargo bench --bench wal --features wal -- --append "$PWD/BENCHMARKS.md"
    cargo bench --bench near -- --append "$PWD/BENCHMARKS.md"
    cargo bench --bench early_refresh -- --append "$PWD/BENCHMARKS.md"
    cargo bench --bench rollout -- --append "$PWD/BENCHMARKS.md"
    cargo bench --bench faults -- --append "$PWD/BENCHMARKS.md"
    network_section >>"$PWD/BENCHMARKS.md"
    cargo bench --bench replica -- --append "$PWD/BENCHMARKS.md"
    cargo bench --bench cluster -- --append "$PWD/BENCHMARKS.md"
    cargo bench --bench cluster --no-default-features --features sqlite -- --append "$PWD/BENCHMARKS.md"
    if command -v wrk >/dev/null 2>&1; then
      bash scripts/load.sh --append "$PWD/BENCHMARKS.md"
      bash scripts/load.sh --compare --append "$PWD/BENCHMARKS.md"
    else
      echo "bench: wrk is not installed: the web service section is left out (apt-get install wrk)" >&2
    fi
    ;;
  quick) cargo bench --bench scenarios -- --quick --out "$CARGO_TARGET_DIR/bench/BENCHMARKS.quick.md" ;;
  diagnose) cargo bench --bench scenarios -- --diagnose ;;
  replay) cargo bench --bench replay ;;
  outbox) cargo bench --bench outbox ;;
  wal) cargo bench --bench wal --features wal ;;
  near) cargo bench --bench near ;;
  early) cargo bench --bench early_refresh ;;
  rollout) cargo bench --bench rollout ;;
  replica) cargo bench --bench replica ;;
  faults) cargo bench --bench faults ;;
  network) network_section ;;
  cluster)
    cargo bench --bench cluster
    cargo bench --bench cluster --no-default-features --features sqlite
    ;;
esac
