#!/usr/bin/env bash
# Starts a private Redis Cluster on loopback: 3 primaries and 3 replicas
# (`redis-server --cluster-enabled yes` + `cli --cluster create`),
# and waits until every node says `cluster_state:ok` and every primary has
# its replica attached. Never touches the
# shared Redis on 6379.
#
#   scripts/cluster.sh start DIR [PORT...]   6 ports, or 6 free ones
#   scripts/cluster.sh stop DIR              kills the nodes it started
#   scripts/cluster.sh restart DIR PORT      starts a killed node again (it
#                                            rejoins, as a replica once its
#                                            slots were taken over)
#
# DIR receives the nodes' files, `ports` (the 6 ports, primaries first as
# created) and `url` (redis://127.0.0.1:<first port>). Each node's pid is
# in DIR/<port>/pid; `stop` kills exactly those. NODE_TIMEOUT (ms, default
# 1000) is the cluster-node-timeout: how soon a replica replaces a dead
# primary. PASSWORD, when set, is every node's requirepass (and masterauth).
# TLS_DIR, when set, holds ca.crt, server.crt and server.key: the nodes then
# speak TLS only (clients, cluster bus, replication), and `url` is rediss://.
set -euo pipefail
# run_with_timeout (GNU timeout where there is one, a bash watchdog elsewhere).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cmd="${1:-}"
dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR [PORT...]" >&2; exit 2; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_ports() {
  local picked=()
  # Below the ephemeral range (32768+), where outgoing connections'
  # ports could make a bind fail; the bus port (+10000) too.
  while [ "${#picked[@]}" -lt 6 ]; do
    local p=$((10000 + RANDOM % 12000))
    # The cluster bus listens on port + 10000 too.
    if port_free "$p" && port_free $((p + 10000)) && [[ ! " ${picked[*]} " =~ " $p " ]]; then
      picked+=("$p")
    fi
  done
  echo "${picked[@]}"
}

stop() {
  for pidfile in "$dir"/*/pid; do
    [ -f "$pidfile" ] || continue
    kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

case "$cmd" in
  stop) stop; exit 0 ;;
  start | restart) ;;
  *) echo "usage: $0 start|stop|restart DIR [PORT...]" >&2; exit 2 ;;
esac

shift 2
ports=("$@")
if [ "$cmd" = start ] && [ "${#ports[@]}" -eq 0 ]; then
  read -r -a ports <<<"$(pick_ports)"
fi
if [ "$cmd" = restart ]; then
  [ "${#ports[@]}" -eq 1 ] || { echo "cluster.sh: restart needs one port" >&2; exit 2; }
else
  [ "${#ports[@]}" -eq 6 ] || { echo "cluster.sh: need 6 ports, got ${#ports[@]}" >&2; exit 2; }
fi

tls_node=()
tls_cli=()
scheme=redis
if [ -n "${TLS_DIR:-}" ]; then
  tls_node=(--tls-cluster yes --tls-replication yes --tls-auth-clients no
    --tls-cert-file "$TLS_DIR/server.crt" --tls-key-file "$TLS_DIR/server.key"
    --tls-ca-cert-file "$TLS_DIR/ca.crt")
  tls_cli=(--tls --cacert "$TLS_DIR/ca.crt")
  scheme=rediss
fi

# start_node PORT: one node, its files (and nodes.conf, its identity) in DIR/PORT.
start_node() {
  local p="$1" listen
  mkdir -p "$dir/$p"
  # The cluster bus listens on port + 10000 (said explicitly: with TLS only,
  # the plain port is 0).
  if [ -n "${TLS_DIR:-}" ]; then listen=(--port 0 --tls-port "$p"); else listen=(--port "$p"); fi
  listen+=(--cluster-port $((p + 10000)))
  redis-server --bind 127.0.0.1 "${listen[@]}" "${tls_node[@]}" --daemonize yes \
    --dir "$dir/$p" --pidfile "$dir/$p/pid" --logfile "$dir/$p/log" \
    --cluster-enabled yes --cluster-config-file nodes.conf \
    --cluster-node-timeout "${NODE_TIMEOUT:-1000}" \
    --save "" --appendonly no ${PASSWORD:+--requirepass "$PASSWORD" --masterauth "$PASSWORD"}
}

mkdir -p "$dir"
for p in "${ports[@]}"; do start_node "$p"; done
if [ -n "${PASSWORD:-}" ]; then export REDISCLI_AUTH="$PASSWORD"; fi
cli() { redis-cli "${tls_cli[@]}" "$@"; }
for p in "${ports[@]}"; do
  up=0
  for _ in $(seq 1 100); do
    if [ "$(cli -h 127.0.0.1 -p "$p" ping 2>/dev/null)" = "PONG" ]; then up=1; break; fi
    sleep 0.05
  done
  if [ "$up" = 0 ]; then
    echo "cluster.sh: node $p did not start (port taken?): $(tail -3 "$dir/$p/log" 2>/dev/null)" >&2
    [ "$cmd" = start ] && stop
    exit 1
  fi
done
# A restarted node finds the others through its nodes.conf; the caller
# waits for the cluster to settle (RedisCluster::wait_until_healthy).
[ "$cmd" = restart ] && exit 0
nodes=()
for p in "${ports[@]}"; do nodes+=("127.0.0.1:$p"); done
run_with_timeout 60 redis-cli "${tls_cli[@]}" --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 || {
  cat "$dir/create.log" >&2
  stop
  exit 1
}
for _ in $(seq 1 200); do
  ok=1
  for p in "${ports[@]}"; do
    cli -h 127.0.0.1 -p "$p" cluster info 2>/dev/null | grep -q "cluster_state:ok" || ok=0
    # Every node knows the 3 replicas, and each node's replication is up:
    # a primary with its replica attached, a replica with its link up;
    # CLUSTER SLOTS lists a replica only once it has synced: 3 ranges of
    # 10 lines (start, end, and 4 fields per node).
    [ "$(cli -h 127.0.0.1 -p "$p" cluster nodes 2>/dev/null | grep -c slave)" = 3 ] || ok=0
    [ "$(cli -h 127.0.0.1 -p "$p" cluster slots 2>/dev/null | wc -l)" = 30 ] || ok=0
    repl=$(cli -h 127.0.0.1 -p "$p" info replication 2>/dev/null)
    grep -q "connected_slaves:1" <<<"$repl" || grep -q "master_link_status:up" <<<"$repl" || ok=0
  done
  if [ "$ok" = 1 ]; then
    echo "${ports[@]}" >"$dir/ports"
    echo "$scheme://127.0.0.1:${ports[0]}" >"$dir/url"
    echo "cluster.sh: cluster ok on ports ${ports[*]}"
    exit 0
  fi
  sleep 0.1
done
echo "cluster.sh: the cluster did not reach cluster_state:ok" >&2
stop
exit 1
