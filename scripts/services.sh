#!/usr/bin/env bash
# The external services Herald's scale-out tests need: PostgreSQL and Redis (or Valkey),
# installed from Debian's packages when missing and run as throwaway instances on loopback,
# with their data under target/services/ (deleted by `stop`).
#
#   eval "$(scripts/services.sh start)"   # starts them, prints `export *_TEST_URL=...` lines
#   scripts/services.sh stop              # stops them and deletes their data
#
# `start` is idempotent: services already running from this checkout are reused. Ports can be
# changed with POSTGRES_TEST_PORT and REDIS_TEST_PORT (not HERALD_*: the server reads every
# HERALD_* variable as configuration). Progress goes to stderr, so only the export lines reach
# stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_PORT="${POSTGRES_TEST_PORT:-54329}"
REDIS_PORT="${REDIS_TEST_PORT:-63790}"
DIR="$PWD/target/services"
PG_DATA="$DIR/pg"
REDIS_DIR="$DIR/redis"

say() { printf '%s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  say "installing $* (Debian packages)"
  as_root apt-get update -qq >&2
  # The packages' own init scripts would start system-wide instances on the default ports;
  # the tests use their own, so keep the package scripts from starting anything.
  as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq "$@" >&2
}

pg_bin() {
  local found
  found="$(command -v pg_ctl 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n1 || true)"
  [ -n "$found" ] && dirname "$found"
}

redis_bin() { command -v redis-server 2>/dev/null || command -v valkey-server 2>/dev/null || true; }
redis_cli() { command -v redis-cli 2>/dev/null || command -v valkey-cli 2>/dev/null; }

# PostgreSQL refuses to run as root, so a root caller runs it as the `postgres` user the
# Debian package creates.
as_pg_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start_postgres() {
  local bin
  bin="$(pg_bin)"
  if [ -z "$bin" ]; then
    apt_install postgresql
    bin="$(pg_bin)"
  fi
  mkdir -p "$DIR"
  if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
    # Another checkout's instance (or a developer's) already serves this port: share it
    # rather than fail to bind; the tests use their own database and schemas in it.
    say "PostgreSQL already serving 127.0.0.1:$PG_PORT: using it"
  else
    start_own_postgres "$bin"
  fi
  create_test_database "$bin"
}

start_own_postgres() {
  local bin=$1
  if [ "$(id -u)" = 0 ]; then
    # The data directory belongs to the server's user; it must be able to reach it.
    mkdir -p "$PG_DATA"
    chown postgres: "$PG_DATA"
    chmod 700 "$PG_DATA"
  fi
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    say "initialising PostgreSQL in $PG_DATA"
    # trust on loopback only: a throwaway instance for tests, reachable from this machine.
    as_pg_owner "$bin/initdb" -D "$PG_DATA" -U herald --auth=trust -E UTF8 >/dev/null
  fi
  if as_pg_owner "$bin/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    say "PostgreSQL already running on port $PG_PORT"
  else
    say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    # No Unix socket (it would need a directory the server may write to); TCP on loopback.
    as_pg_owner "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -t 60 \
      -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" start >/dev/null
  fi
}

create_test_database() {
  local bin=$1
  # The tests' database sorts text linguistically (ICU, en-US), as production databases often
  # do, so that the tests prove Herald's queries do not depend on the database's collation.
  local psql=("$(command -v psql || echo "$bin/psql")" -q -v ON_ERROR_STOP=1 "postgres://herald@127.0.0.1:$PG_PORT/postgres")
  if [ -z "$("${psql[@]}" -Atc "SELECT 1 FROM pg_database WHERE datname = 'herald_test'")" ]; then
    "${psql[@]}" -c "CREATE DATABASE herald_test LOCALE_PROVIDER icu ICU_LOCALE 'en-US' \
      LOCALE 'C.UTF-8' TEMPLATE template0" >/dev/null 2>&1 || {
      say "this PostgreSQL cannot create an ICU database (before 15?): using its default locale"
      "${psql[@]}" -c "CREATE DATABASE herald_test" >/dev/null
    }
  fi
}

start_redis() {
  local bin
  bin="$(redis_bin)"
  if [ -z "$bin" ]; then
    apt_install redis-server
    bin="$(redis_bin)"
  fi
  mkdir -p "$REDIS_DIR"
  if "$(redis_cli)" -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    say "Redis already running on port $REDIS_PORT"
  else
    say "starting $(basename "$bin") on 127.0.0.1:$REDIS_PORT"
    # No snapshots: the tests' data is throwaway, and a snapshot would only cost time.
    "$bin" --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --dir "$REDIS_DIR" \
      --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" --save '' --appendonly no
    for _ in $(seq 50); do
      "$(redis_cli)" -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
    "$(redis_cli)" -p "$REDIS_PORT" ping >/dev/null
  fi
}

stop_all() {
  local bin
  bin="$(pg_bin)"
  if [ -n "$bin" ] && [ -f "$PG_DATA/PG_VERSION" ]; then
    as_pg_owner "$bin/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1 || true
  fi
  if [ -f "$REDIS_DIR/redis.pid" ]; then
    kill "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null || true
  fi
  rm -rf "$DIR"
  say "services stopped"
}

case "${1:-}" in
  start)
    start_postgres
    start_redis
    echo "export POSTGRES_TEST_URL=postgres://herald@127.0.0.1:$PG_PORT/herald_test"
    echo "export REDIS_TEST_URL=redis://127.0.0.1:$REDIS_PORT"
    ;;
  stop) stop_all ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
