#!/usr/bin/env bash
# Starts PostgreSQL and Redis on 127.0.0.1 where they are not already running,
# then waits until both answer. Safe to run repeatedly; never stops anything.
set -euo pipefail

PGHOST_ADDR=127.0.0.1
PGPORT_NUM=5432
REDIS_PORT_NUM=6379

pg_up() { pg_isready -q -h "$PGHOST_ADDR" -p "$PGPORT_NUM" >/dev/null 2>&1; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT_NUM" ping 2>/dev/null)" = "PONG" ]; }

if ! pg_up; then
  echo "services: starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    for version in $(ls /etc/postgresql 2>/dev/null); do
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
  else
    echo "services: pg_ctlcluster not found; install PostgreSQL (apt-get install postgresql)" >&2
  fi
fi

if ! redis_up; then
  echo "services: starting Redis"
  if command -v redis-server >/dev/null 2>&1; then
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT_NUM" --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/storehaus.log
  else
    echo "services: redis-server not found; install Redis (apt-get install redis-server)" >&2
  fi
fi

for _ in $(seq 1 60); do
  if pg_up && redis_up; then
    echo "services: PostgreSQL and Redis are up"
    exit 0
  fi
  sleep 0.5
done
pg_up || echo "services: PostgreSQL did not answer on $PGHOST_ADDR:$PGPORT_NUM" >&2
redis_up || echo "services: Redis did not answer on 127.0.0.1:$REDIS_PORT_NUM" >&2
exit 1
