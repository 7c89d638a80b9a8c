#!/usr/bin/env bash
# Fuzzes every target in fuzz/ for a bounded time (nightly + cargo-fuzz:
# `cargo install cargo-fuzz`), then prints the executions per target.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Default: 60 s for each of codec_decode, key_escaping, glob, delete_pattern,
# config_url. Each run starts from the committed seeds (fuzz/corpus/<target>/)
# in a scratch copy, so the seeds change only on purpose (set
# STOREHAUS_FUZZ_KEEP=1 to merge what the run found into them). A crash fails
# the script; its input is in fuzz/artifacts/<target>/ and reproduces with
# `cargo +nightly fuzz run <target> <file>`. Fixed crashes go into the corpus,
# which tests/test_fuzz_corpus.rs runs on stable under `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-60}"
shift || true
if (($# > 0)); then
  TARGETS=("$@")
else
  TARGETS=(codec_decode key_escaping glob delete_pattern config_url)
fi
# Its own target directory: the sanitizer build shares nothing with the workspace's.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/storehaus/target}/fuzz"

cargo +nightly fuzz build -O

summary=()
for target in "${TARGETS[@]}"; do
  scratch="$(mktemp -d -t "storehaus-fuzz-$target.XXXXXX")"
  cp fuzz/corpus/"$target"/* "$scratch"/
  log="$scratch.log"
  rc=0
  # -malloc_limit_mb: any single allocation above 64 MB is a crash too.
  cargo +nightly fuzz run -O "$target" "$scratch" -- \
    -max_total_time="$SECS" -max_len=4096 -rss_limit_mb=2048 -malloc_limit_mb=64 \
    -print_final_stats=1 >"$log" 2>&1 || rc=$?
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
  corpus="$(find "$scratch" -type f | wc -l)"
  if ((rc != 0)); then
    tail -40 "$log" >&2
    echo "scripts/fuzz.sh: $target FAILED after $execs executions (log: $log; input in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  if [[ "${STOREHAUS_FUZZ_KEEP:-0}" == 1 ]]; then
    cargo +nightly fuzz cmin -O "$target" "$scratch" >/dev/null 2>&1 || true
    cp -n "$scratch"/* fuzz/corpus/"$target"/ || true
  fi
  summary+=("$target: $execs executions in ${SECS}s, corpus $(ls fuzz/corpus/"$target" | wc -l) seeds -> $corpus inputs, no crash")
  echo "${summary[-1]}"
  rm -rf "$scratch" "$log"
done
echo "scripts/fuzz.sh: every target ran ${SECS}s without a crash:"
printf '  %s\n' "${summary[@]}"
