#!/usr/bin/env bash
# The whole test suite: starts the services it needs, then runs every test
# (unit, integration against PostgreSQL + Redis, trybuild ui tests, doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
# Reuse build artifacts across clones of this repository on one machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/storehaus/target}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
# TLS (rediss://) is an opt-in feature; its tests start their own TLS redis-server.
cargo test --features tls --test test_security
