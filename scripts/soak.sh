#!/usr/bin/env bash
# The soak run (not in CI): benches/soak.rs, a mixed workload (reads, batch
# reads, writes, queries, tags, signals; 3 managers x 2 workers) against a
# private redis-server with maxmemory 2mb + allkeys-lru, restarted every
# 60 s. Samples RSS, tokio tasks, Redis clients, keys and memory every 5 s
# and fails if any grew without bound, a store call failed, or a worker read
# an older version of its own row.
#
#   bash scripts/soak.sh [SECONDS]    # default 600
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/storehaus/target}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
SOAK_SECS="${1:-600}" cargo bench --bench soak
