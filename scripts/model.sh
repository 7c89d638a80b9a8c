#!/usr/bin/env bash
# Checks the model of the read/write/invalidate protocol
# (storehaus-runtime/src/cache/protocol.pml) and of the outbox's delivery
# (storehaus-runtime/src/outbox/outbox.pml) with spin (`apt-get install spin`
# + a C compiler), over every interleaving of its scenarios: the protocol
# must hold, and each mechanism removed must be caught breaking it.
#
#   bash scripts/model.sh          # 10 checks, about a minute: what CI runs
#   bash scripts/model.sh --full   # + the detach's share and Redis expiring the key (2-3 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="$PWD/storehaus-runtime/src/cache/protocol.pml"
OUTBOX="$PWD/storehaus-runtime/src/outbox/outbox.pml"
WORK="$(mktemp -d -t storehaus-model.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

# check EXPECT NAME FLAGS...: EXPECT is "holds" or "violated".
failed=0
check() {
  local expect="$1" name="$2"
  shift 2
  rm -f pan pan.* ./*.trail
  spin "$@" -a "${MODEL_FILE:-$MODEL}" >/dev/null
  gcc -O2 -DSAFETY -DMEMLIM=4096 -w -o pan pan.c
  local start out errors states
  start=$(date +%s)
  out="$(./pan -m200000 2>&1 || true)"
  errors="$(grep -o 'errors: [0-9]*' <<<"$out" | grep -o '[0-9]*$' || echo '?')"
  states="$(grep -o '[0-9]* states, stored' <<<"$out" | grep -o '^[0-9]*' || echo '?')"
  local got=holds
  [[ "$errors" == 0 ]] || got=violated
  if grep -q 'out of memory\|max search depth too small' <<<"$out"; then got=incomplete; fi
  printf '%-52s %-9s (expected %s; %s states, %ss)\n' "$name" "$got" "$expect" "$states" "$(($(date +%s) - start))"
  if [[ "$got" != "$expect" ]]; then
    echo "$out" | tail -20
    failed=1
  fi
}

check holds    "across processes"                         -DSCENARIO=1
check holds    "writer's own process, invalidation lost"  -DSCENARIO=2
check violated "no lease comparison on join (the hole)"   -DSCENARIO=1 -DJOIN_CHECKS_LEASE=0
check violated "a plain SET fill (stale-set race)"        -DSCENARIO=1 -DFILL_CAS=0
check holds    "early refresh guarded by the fill token"   -DSCENARIO=3
check violated "early refresh guarded by content (ABA)"   -DSCENARIO=3 -DREFRESH_TOKEN=0
# The outbox's delivery (outbox.pml): two workers of one deployment, one of
# which may stall for good, transactions committing out of xid order.
MODEL_FILE="$OUTBOX" check holds    "outbox: out-of-order commits, a stalled peer"
MODEL_FILE="$OUTBOX" check violated "outbox: position past a running transaction" -DNO_HORIZON
MODEL_FILE="$OUTBOX" check violated "outbox: what the snapshot saw running skipped" -DNO_XIP
MODEL_FILE="$OUTBOX" check violated "outbox: the row held during a pass (old design)" -DROW_LOCK
if [[ "${1:-}" == "--full" ]]; then
  # In the writer's own process the detach on write closes the hole too...
  check holds    "no lease comparison, writer's process"    -DSCENARIO=2 -DJOIN_CHECKS_LEASE=0
  check violated "neither lease comparison nor detach"      -DSCENARIO=2 -DJOIN_CHECKS_LEASE=0 -DDETACH_ON_WRITE=0
  # ... and across processes the lease comparison alone is enough.
  check holds    "no detach on write"                       -DSCENARIO=1 -DDETACH_ON_WRITE=0
  check holds    "across processes, key expires once"     -DSCENARIO=1 -DEXPIRIES=1
  check holds    "writer's process, key expires once"     -DSCENARIO=2 -DEXPIRIES=1
fi
exit "$failed"
