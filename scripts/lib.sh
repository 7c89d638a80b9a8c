# Shell helpers the scripts share; `source "$(dirname "$0")/lib.sh"`.
# Portable across GNU/Linux (any distribution, BusyBox included) and macOS:
# nothing here needs GNU coreutils.

# cpu_count: the number of online CPUs (nproc, getconf or sysctl), or "?".
cpu_count() {
  nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo "?"
}

# run_with_timeout SECONDS COMMAND...: runs COMMAND; if it is still running
# after SECONDS, its whole process group gets SIGTERM, and SIGKILL 15 s later;
# returns 124 then (GNU timeout's status), else COMMAND's status. Uses GNU
# `timeout` (or Homebrew's `gtimeout`) where there is one, and a watchdog in
# plain bash where there is not (macOS, BusyBox).
run_with_timeout() {
  local limit="$1"
  shift
  if timeout --version >/dev/null 2>&1; then
    timeout --kill-after=15 "$limit" "$@"
    return
  fi
  if gtimeout --version >/dev/null 2>&1; then
    gtimeout --kill-after=15 "$limit" "$@"
    return
  fi
  local fired
  fired="$(mktemp "${TMPDIR:-/tmp}/storehaus-timeout.XXXXXX")"
  rm -f "$fired"
  # A process group of its own (job control), so that its children are
  # signalled with it.
  set -m
  "$@" &
  local pid=$!
  set +m
  (
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep "$limit" &
    sleeper=$!
    wait "$sleeper"
    : >"$fired"
    kill -TERM -- "-$pid" 2>/dev/null
    sleep 15 &
    sleeper=$!
    wait "$sleeper"
    kill -KILL -- "-$pid" 2>/dev/null
  ) &
  local watchdog=$!
  local rc=0
  wait "$pid" || rc=$?
  kill -TERM "$watchdog" 2>/dev/null
  wait "$watchdog" 2>/dev/null || true
  if [[ -e "$fired" ]]; then
    rm -f "$fired"
    return 124
  fi
  return "$rc"
}
