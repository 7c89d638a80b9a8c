#!/usr/bin/env bash
# The whole test suite: starts the services it needs, then runs every test
# (unit, integration against PostgreSQL + Redis, trybuild ui tests, doc tests).
#
# Every step runs under a timeout (GNU `timeout` where there is one, a
# watchdog in plain bash elsewhere: scripts/lib.sh), inside one budget for
# the whole run (STOREHAUS_TEST_TIMEOUT seconds, default 1200 = 20 minutes,
# builds included): a hung test fails the run, naming the step, instead of
# hanging it.
#
# Without root, the network-fault tests (a network namespace of their own)
# cannot run: they are skipped, and this script says so in a line starting
# with "SKIPPED: needs root".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

SUITE_TIMEOUT="${STOREHAUS_TEST_TIMEOUT:-1200}"
DEADLINE=$(($(date +%s) + SUITE_TIMEOUT))

# step NAME COMMAND...: runs COMMAND with the time left in the budget; on a
# timeout, says which step it was and fails the run.
step() {
  local name="$1"
  shift
  local left=$((DEADLINE - $(date +%s)))
  if ((left <= 0)); then
    echo "scripts/test.sh: TIMED OUT before step '$name': the suite's ${SUITE_TIMEOUT}s budget is spent" >&2
    exit 124
  fi
  local rc=0
  # On a timeout the whole process group (cargo, the test binaries and the
  # redis-servers they started) is signalled.
  run_with_timeout "$left" "$@" || rc=$?
  if ((rc == 124 || rc == 137)); then
    echo "scripts/test.sh: TIMED OUT in step '$name' ($*): the suite's ${SUITE_TIMEOUT}s budget ran out" >&2
    exit 124
  fi
  if ((rc != 0)); then
    echo "scripts/test.sh: step '$name' failed (exit $rc)" >&2
    exit "$rc"
  fi
}

step services bash scripts/services.sh
step tools bash scripts/tools.sh
# The behaviour suite's cluster stack: a private 6-node Redis Cluster on
# free loopback ports (never 6379), stopped when this script exits. The
# tests that kill nodes start clusters and Sentinels of their own.
CLUSTER_DIR="$(mktemp -d -t storehaus-cluster.XXXXXX)"
trap 'bash scripts/cluster.sh stop "$CLUSTER_DIR"; rm -rf "$CLUSTER_DIR"' EXIT
NODE_TIMEOUT=5000 step cluster bash scripts/cluster.sh start "$CLUSTER_DIR"
export STOREHAUS_CLUSTER_URL="${STOREHAUS_CLUSTER_URL:-$(cat "$CLUSTER_DIR/url")}"
# Reuse build artifacts across clones of this repository on one machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/storehaus/target}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
# The network-fault tests (tests/test_network.rs) build a network namespace
# with nftables rules: root only. Elsewhere they are skipped, visibly.
skipped=""
if [[ "$(id -u)" != 0 && "${STOREHAUS_SKIP_NETNS:-}" != 0 ]]; then
  export STOREHAUS_SKIP_NETNS=1
  skipped="SKIPPED: needs root: the network-fault tests (tests/test_network.rs: a network namespace of their own, nftables) did not run as $(id -un); run scripts/test.sh as root to include them"
  echo "$skipped"
fi
step "all targets" cargo test --workspace --all-targets "$@"
step "doc tests" cargo test --workspace --doc
# The web service example answers a few requests, on the embedded default.
step "axum example" env -u DATABASE_URL -u REDIS_URL cargo run --quiet --example axum_service -- --smoke
# TLS (rediss://) is an opt-in feature; its tests start their own TLS redis-server.
step "tls" cargo test --features tls --test test_security
# Invalidation from the write-ahead log is an opt-in feature (`wal`): its
# tests start private PostgreSQL clusters with wal_level = logical.
step "wal" cargo test --features wal --test test_wal
step "wal unit" cargo test -p storehaus-runtime --features wal --lib wal::
# Said again at the end, where it cannot scroll out of sight.
if [[ -n "$skipped" ]]; then
  echo "$skipped"
fi
