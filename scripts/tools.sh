#!/usr/bin/env bash
# Installs the system tools the test command and CI use beyond PostgreSQL
# and Redis (scripts/services.sh starts those), when they are missing and
# this machine can install them (root with apt-get, Debian's packages):
#   nft    nftables: tests/test_network.rs drops packets in a network
#          namespace of its own (a silent partition, 5 % loss)
#   spin   the model checker behind scripts/model.sh (.ci/run)
#   wrk    the HTTP load generator of scripts/load.sh (bench.sh full run)
#   python3-msgpack, psql   tests/test_format.rs: a Python reader and writer
#          of the cache format (docs/FORMAT.md), writing with psql
# The `wal` feature builds aws-lc-rs (through pg_walstream's rustls) with
# the C compiler alone (aws-lc-sys 0.47 needs no cmake); its tests run
# initdb/pg_ctl from the PostgreSQL server packages, as PgServer does.
# Elsewhere it says what to install and exits 0: the tests that need a
# missing tool fail and name it.
#
# And, on any system, cargo-hack (`cargo install --locked cargo-hack`):
# .ci/run builds every feature set with `cargo hack --each-feature`.
set -uo pipefail

if ! cargo hack --version >/dev/null 2>&1; then
  echo "tools: installing cargo-hack (cargo install --locked cargo-hack)" >&2
  cargo install --locked --quiet cargo-hack >/dev/null 2>&1 ||
    echo "tools: could not install cargo-hack; run: cargo install --locked cargo-hack" >&2
fi

missing=()
for pair in nft:nftables spin:spin wrk:wrk psql:postgresql-client; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
# Debian's python3-msgpack is for Debian's python3 (/usr/bin/python3), which
# the test uses when the python3 on the PATH has no msgpack.
if ! { python3 -c 'import msgpack' || /usr/bin/python3 -c 'import msgpack'; } >/dev/null 2>&1; then
  missing+=(python3-msgpack)
fi
if ((${#missing[@]} == 0)); then
  exit 0
fi
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "tools: installing ${missing[*]} (apt-get)" >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
      echo "tools: could not install ${missing[*]}; install them by hand" >&2
  fi
else
  echo "tools: missing ${missing[*]}: install them (Debian/Ubuntu: apt-get install ${missing[*]}; macOS: brew install ${missing[*]})" >&2
fi
exit 0
