#!/usr/bin/env bash
# Packaging check (.ci/run): what each published crate would upload, and
# `cargo publish --dry-run` of all of them together.
#
# The published crates depend on each other by path and version
# (storehaus -> storehaus-runtime -> storehaus-limits, ...), and none is on
# crates.io yet, so a plain `cargo publish --dry-run -p storehaus` fails to
# resolve storehaus-runtime. `cargo publish --workspace --dry-run` (cargo
# >= 1.90) packages the members in dependency order and verifies each one
# against a local registry overlay holding the others: every package is
# built from its .crate file as crates.io would receive it. Members with
# `publish = false` (the testkit, the examples) are skipped.
#
#   bash scripts/publish-check.sh           list check + dry run
#   bash scripts/publish-check.sh --list    list check only (seconds)
#
# Pass --allow-dirty through CARGO_PUBLISH_FLAGS to check uncommitted work.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/storehaus/target}"
read -r -a extra <<<"${CARGO_PUBLISH_FLAGS:-}"

# No tests, benchmarks, examples, scripts, fuzz corpus, ui-test expectations
# or model files in any package.
files=$(cargo package --workspace --list --quiet "${extra[@]}" 2>/dev/null)
forbidden=$(grep -E '^(tests|benches|examples|scripts|fuzz|ui-tests|\.ci)/|\.(pml|stderr|sh)$|docker-compose|BENCHMARKS' <<<"$files" || true)
if [[ -n "$forbidden" ]]; then
  echo "publish-check: these files would be published:" >&2
  echo "$forbidden" >&2
  exit 1
fi
for file in LICENSE-MIT LICENSE-APACHE README.md; do
  count=$(grep -cx "$file" <<<"$files" || true)
  if ((count < 4)); then
    echo "publish-check: $file is in $count of the 4 published packages" >&2
    exit 1
  fi
done
echo "publish-check: package contents are clean ($(wc -l <<<"$files") files)"
[[ "${1:-}" == "--list" ]] && exit 0

# Cargo unpacks the overlay's .crate files under $CARGO_HOME/registry/src/
# in a directory named after the overlay's path, and never unpacks a
# name-version there again: an earlier dry run's copy of these crates would
# be built instead of today's. Local registries' directories start with "-".
for stale in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/storehaus-{limits,derive,runtime}-*; do
  [[ -d "$stale" ]] && rm -rf "$stale"
done
cargo publish --workspace --dry-run "${extra[@]}"
