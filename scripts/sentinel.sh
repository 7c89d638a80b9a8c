#!/usr/bin/env bash
# Starts, on loopback, a Redis primary, one replica of it and 3 Sentinels
# watching them as service `mymaster`, and waits until every Sentinel
# knows the primary and its replica. Never touches the shared Redis.
#
#   scripts/sentinel.sh start DIR [PRIMARY REPLICA S1 S2 S3]
#   scripts/sentinel.sh stop DIR
#   scripts/sentinel.sh restart DIR PORT   starts a killed server again, as a
#                                          replica of the primary the
#                                          Sentinels name now
#
# DIR receives `ports` (primary replica s1 s2 s3) and `url`
# (redis+sentinel://127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/mymaster).
# DOWN_AFTER (ms, default 500) is how soon Sentinels call a silent primary
# down; a failover follows within about a second after that.
set -euo pipefail

cmd="${1:-}"
dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR [PORT...]" >&2; exit 2; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop() {
  for pidfile in "$dir"/*/pid; do
    [ -f "$pidfile" ] || continue
    kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

up() {
  for _ in $(seq 1 100); do
    [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = "PONG" ] && return 0
    sleep 0.05
  done
  return 1
}

# start_server PORT [--replicaof HOST PORT]: a data server, files in DIR/PORT.
start_server() {
  local p="$1"
  shift
  mkdir -p "$dir/$p"
  redis-server --bind 127.0.0.1 --port "$p" --daemonize yes \
    --dir "$dir/$p" --pidfile "$dir/$p/pid" --logfile "$dir/$p/log" \
    --save "" --appendonly no "$@"
  up "$p"
}

restart() {
  local p="$1" s primary
  read -r -a all <"$dir/ports"
  for s in "${all[@]:2:3}"; do
    primary=$(redis-cli -h 127.0.0.1 -p "$s" sentinel get-master-addr-by-name mymaster 2>/dev/null | sed -n 2p)
    [ -n "$primary" ] && break
  done
  [ -n "${primary:-}" ] || { echo "sentinel.sh: no Sentinel names a primary" >&2; exit 1; }
  [ "$primary" != "$p" ] || { echo "sentinel.sh: $p is still the primary" >&2; exit 1; }
  start_server "$p" --replicaof 127.0.0.1 "$primary" || { echo "sentinel.sh: $p did not start" >&2; exit 1; }
}

case "$cmd" in
  stop) stop; exit 0 ;;
  restart) restart "${3:?restart needs a port}"; exit 0 ;;
  start) ;;
  *) echo "usage: $0 start|stop|restart DIR [PORT...]" >&2; exit 2 ;;
esac

shift 2
ports=("$@")
while [ "${#ports[@]}" -lt 5 ]; do
  p=$((10000 + RANDOM % 22000))
  if port_free "$p" && [[ ! " ${ports[*]} " =~ " $p " ]]; then ports+=("$p"); fi
done
primary=${ports[0]}
replica=${ports[1]}

mkdir -p "$dir"
for p in "$primary" "$replica"; do
  extra=()
  [ "$p" = "$replica" ] && extra=(--replicaof 127.0.0.1 "$primary")
  start_server "$p" "${extra[@]}" || { echo "sentinel.sh: $p did not start (port taken?)" >&2; stop; exit 1; }
done
for s in "${ports[@]:2:3}"; do
  mkdir -p "$dir/$s"
  cat >"$dir/$s/sentinel.conf" <<CONF
bind 127.0.0.1
port $s
daemonize yes
pidfile $dir/$s/pid
logfile $dir/$s/log
dir $dir/$s
sentinel monitor mymaster 127.0.0.1 $primary 2
sentinel down-after-milliseconds mymaster ${DOWN_AFTER:-500}
sentinel failover-timeout mymaster 2000
sentinel parallel-syncs mymaster 1
CONF
  redis-server "$dir/$s/sentinel.conf" --sentinel
  up "$s" || { echo "sentinel.sh: sentinel $s did not start (port taken?)" >&2; stop; exit 1; }
done
for _ in $(seq 1 200); do
  ok=1
  for s in "${ports[@]:2:3}"; do
    redis-cli -h 127.0.0.1 -p "$s" sentinel replicas mymaster 2>/dev/null | grep -q "^$replica\$" || ok=0
  done
  linked=$(redis-cli -h 127.0.0.1 -p "$replica" info replication 2>/dev/null | grep -c "master_link_status:up" || true)
  if [ "$ok" = 1 ] && [ "$linked" = 1 ]; then
    echo "${ports[@]}" >"$dir/ports"
    s=("${ports[@]:2:3}")
    echo "redis+sentinel://127.0.0.1:${s[0]},127.0.0.1:${s[1]},127.0.0.1:${s[2]}/mymaster" >"$dir/url"
    echo "sentinel.sh: primary $primary, replica $replica, sentinels ${s[*]}"
    exit 0
  fi
  sleep 0.1
done
echo "sentinel.sh: the Sentinels did not see the replica" >&2
stop
exit 1
