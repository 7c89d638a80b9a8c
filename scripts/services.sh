#!/usr/bin/env bash
# Starts PostgreSQL and Redis on this machine where they are not already
# running, creates the test database if it is missing, then waits until both
# answer. Safe to run repeatedly; never stops anything.
#
# Where the services come from: Debian/Ubuntu packages (pg_ctlcluster),
# Homebrew (brew services), or any PostgreSQL whose `pg_ctl` is on PATH with
# PGDATA set; redis-server from PATH. Without Docker-free services, use
# `docker compose up -d` (docker-compose.yml) instead.
#
# Targets DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test) and
# REDIS_URL (default redis://127.0.0.1:6379): only services on this machine
# (127.0.0.1 / localhost) are started; remote ones are only waited for.
set -euo pipefail

DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

# postgres://user[:pw]@host[:port]/db -> parts (no password handling needed
# for the trust-auth test setup; psql reads PGPASSWORD if set).
url_rest="${DATABASE_URL#*://}"
pg_userinfo="${url_rest%%@*}"
[ "$pg_userinfo" = "$url_rest" ] && pg_userinfo=""
pg_user="${pg_userinfo%%:*}"
pg_hostport="${url_rest#*@}"
pg_hostport="${pg_hostport%%/*}"
pg_db="${url_rest##*/}"
pg_db="${pg_db%%\?*}"
pg_host="${pg_hostport%%:*}"
pg_port="${pg_hostport##*:}"
[ "$pg_port" = "$pg_hostport" ] && pg_port=5432
pg_user="${pg_user:-postgres}"

redis_rest="${REDIS_URL#*://}"
redis_rest="${redis_rest#*@}"
redis_hostport="${redis_rest%%/*}"
redis_host="${redis_hostport%%:*}"
redis_port="${redis_hostport##*:}"
[ "$redis_port" = "$redis_hostport" ] && redis_port=6379

is_local() { [ "$1" = "127.0.0.1" ] || [ "$1" = "localhost" ] || [ "$1" = "::1" ]; }
have() { command -v "$1" >/dev/null 2>&1; }

missing() {
  # What to install, for the package managers this script knows.
  echo "services: $1 is not installed. Install it with one of:" >&2
  echo "  Debian/Ubuntu: sudo apt-get install -y $2" >&2
  echo "  Fedora/RHEL:   sudo dnf install -y $3" >&2
  echo "  macOS:         brew install $4" >&2
  echo "  or run both services in Docker: docker compose up -d" >&2
}

pg_up() { pg_isready -q -h "$pg_host" -p "$pg_port" >/dev/null 2>&1; }
redis_up() { [ "$(redis-cli -h "$redis_host" -p "$redis_port" ping 2>/dev/null)" = "PONG" ]; }

if ! have pg_isready; then
  missing "PostgreSQL (pg_isready, psql)" "postgresql postgresql-client" "postgresql-server postgresql" "postgresql@16"
  exit 1
fi
if ! have redis-cli; then
  missing "Redis (redis-server, redis-cli)" "redis-server" "redis" "redis"
  exit 1
fi

if ! pg_up && is_local "$pg_host"; then
  echo "services: starting PostgreSQL"
  if have pg_ctlcluster && [ -d /etc/postgresql ]; then
    for version in $(ls /etc/postgresql); do
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
  elif have brew && brew list --formula 2>/dev/null | grep -q '^postgresql'; then
    brew services start "$(brew list --formula | grep '^postgresql' | head -1)" || true
  elif have pg_ctl && [ -n "${PGDATA:-}" ]; then
    pg_ctl -D "$PGDATA" -l "${PGDATA}/storehaus.log" -o "-p $pg_port" start || true
  else
    echo "services: PostgreSQL is installed but not running, and this script does not know how to start it here:" >&2
    echo "  start it yourself, or set PGDATA to its data directory so that pg_ctl can start it" >&2
  fi
fi

if ! redis_up && is_local "$redis_host"; then
  echo "services: starting Redis"
  if have redis-server; then
    log_dir="${TMPDIR:-/tmp}"
    [ -w /var/log/redis ] && log_dir=/var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
      --dir "${TMPDIR:-/tmp}" --logfile "$log_dir/storehaus-redis.log"
  elif have brew; then
    brew services start redis || true
  fi
fi

for _ in $(seq 1 60); do
  if pg_up && redis_up; then
    break
  fi
  sleep 0.5
done
pg_up || { echo "services: PostgreSQL did not answer on $pg_host:$pg_port" >&2; exit 1; }
redis_up || { echo "services: Redis did not answer on $redis_host:$redis_port" >&2; exit 1; }

# The test database, created when missing (trust auth, as the test setup
# assumes; with a password, export PGPASSWORD).
if ! psql -h "$pg_host" -p "$pg_port" -U "$pg_user" -d "$pg_db" -c 'SELECT 1' >/dev/null 2>&1; then
  if psql -h "$pg_host" -p "$pg_port" -U "$pg_user" -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
    echo "services: creating database $pg_db"
    psql -h "$pg_host" -p "$pg_port" -U "$pg_user" -d postgres -q -c "CREATE DATABASE \"$pg_db\""
  else
    echo "services: cannot connect to PostgreSQL as '$pg_user' on $pg_host:$pg_port." >&2
    echo "  The tests expect trust auth for that user (DATABASE_URL=$DATABASE_URL)." >&2
    echo "  Homebrew's PostgreSQL creates a superuser named after you: createuser -s postgres" >&2
    exit 1
  fi
fi
echo "services: PostgreSQL and Redis are up"
