#!/usr/bin/env bash
# Runs every test of the crate.
#
# PgBouncer and nats-server (Debian packages `pgbouncer`, `nats-server`) are installed when
# missing and this runs as root; the tests start their own instances of them on loopback.
#
# Postgres is found the way the integration tests need it: $DATABASE_URL if set, else a server
# answering on 127.0.0.1:5432 (user postgres, trust auth), else a throwaway cluster this script
# creates in a temporary directory with initdb + pg_ctl and removes on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

find_pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin /usr/local/pgsql/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

start_throwaway_postgres() {
  local bin
  if ! bin=$(find_pg_bin); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "test.sh: installing PostgreSQL server binaries" >&2
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
      bin=$(find_pg_bin) || { echo "test.sh: no initdb after install" >&2; exit 1; }
    else
      echo "test.sh: no Postgres reachable and no initdb found; set DATABASE_URL" >&2
      exit 1
    fi
  fi
  PG_TMP=$(mktemp -d /tmp/jwt-revocation-pg.XXXXXX)
  local port=55432
  while port_open 127.0.0.1 "$port"; do port=$((port + 1)); done
  # initdb refuses to run as root: run the cluster as the postgres user when we are root.
  local run=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$PG_TMP"
    run=(runuser -u postgres --)
  fi
  "${run[@]}" "$bin/initdb" -D "$PG_TMP/data" -U postgres --auth=trust -E UTF8 >/dev/null
  "${run[@]}" "$bin/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/log" -w \
    -o "-p $port -k $PG_TMP -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >/dev/null
  PG_STOP=("${run[@]}" "$bin/pg_ctl" -D "$PG_TMP/data" -m immediate stop)
  trap 'set +e; "${PG_STOP[@]}" >/dev/null 2>&1; rm -rf "$PG_TMP"' EXIT
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "test.sh: started a throwaway Postgres on port $port" >&2
}

# PgBouncer, for the tests that run the store through a transaction pooler (tests/pooler.rs);
# without it they skip and say why.
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing pgbouncer" >&2
    if ! { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; }; then
      echo "test.sh: could not install pgbouncer; the pooler tests will skip" >&2
    fi
  else
    echo "test.sh: pgbouncer is not installed and this is not root; the pooler tests will skip" >&2
  fi
fi

# nats-server (Debian package `nats-server`), for the tests of the JetStream feed and relay
# (tests/nats.rs, tests/demo_pooler.rs); each starts its own on a free loopback port with a temp
# store. Without it they skip and say why.
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing nats-server" >&2
    if ! { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null; }; then
      echo "test.sh: could not install nats-server; the NATS tests will skip" >&2
    fi
  else
    echo "test.sh: nats-server is not installed and this is not root; the NATS tests will skip" >&2
  fi
fi

# Node (20 or later) and panva's oauth4webapi, for the DPoP interop test (tests/interop.rs): a
# client library nobody here wrote calls the demo. `npm ci` installs the locked version into
# tests/interop (again when another version is there); without npm (Debian packages nodejs, npm)
# or the registry, the test skips and says why.
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing nodejs and npm" >&2
    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; } ||
      echo "test.sh: could not install nodejs; the DPoP interop test will skip" >&2
  else
    echo "test.sh: npm is not installed and this is not root; the DPoP interop test will skip" >&2
  fi
fi
if command -v npm >/dev/null 2>&1 &&
  ! grep -qs '"version": "3.8.9"' tests/interop/node_modules/oauth4webapi/package.json; then
  echo "test.sh: installing the DPoP interop client (npm ci in tests/interop)" >&2
  (cd tests/interop && npm ci --no-audit --no-fund --loglevel=error --fetch-timeout=30000 --fetch-retries=1 >/dev/null) ||
    echo "test.sh: npm ci failed; the DPoP interop test will skip" >&2
fi

# TEST_PG=throwaway forces the throwaway cluster even when 5432 answers (to test this script).
if [ "${TEST_PG:-}" = throwaway ]; then
  unset DATABASE_URL
  start_throwaway_postgres
elif [ -z "${DATABASE_URL:-}" ]; then
  if port_open 127.0.0.1 5432; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
  else
    start_throwaway_postgres
  fi
fi
echo "test.sh: DATABASE_URL=${DATABASE_URL}" >&2

cargo test "$@"
