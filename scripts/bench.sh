#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: criterion benches, then end-to-end load on the demo server.
# Postgres is found like scripts/test.sh does (DATABASE_URL, else 127.0.0.1:5432); without it the
# Postgres benches are skipped and the demo runs in memory. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
if [ -z "${DATABASE_URL:-}" ] && port_open 127.0.0.1 5432; then
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
fi

cargo bench --bench check

cargo build --release --example server --example loadgen
mkdir -p target/bench
rm -f target/bench/loadgen-*.jsonl
PORT=39871
if [ -n "${DATABASE_URL:-}" ]; then
  echo "MokaCache<PgStore>, lookup mode" > target/bench/store.txt
  SERVER_DB_URL="${DATABASE_URL%/*}/tower_jwt_revocation_bench"
  # The demo migrates its database but does not create it.
  if command -v psql >/dev/null 2>&1; then
    psql "$DATABASE_URL" -qtc "SELECT 1 FROM pg_database WHERE datname = 'tower_jwt_revocation_bench'" | grep -q 1 \
      || psql "$DATABASE_URL" -qc "CREATE DATABASE tower_jwt_revocation_bench"
  fi
else
  echo "MemoryStore" > target/bench/store.txt
  SERVER_DB_URL=""
fi
BENCH_SECRET=bench-secret-bench-secret-bench
DATABASE_URL="$SERVER_DB_URL" BIND_ADDR="127.0.0.1:$PORT" RUST_LOG=warn JWT_SECRET="$BENCH_SECRET" \
  target/release/examples/server &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do port_open 127.0.0.1 $PORT && break; sleep 0.1; done
for round in 1 2 3 4 5; do
  for route in layer baseline; do
    path=/me; [ "$route" = baseline ] && path=/baseline/me
    # One hot token, then 10 000 subjects each reusing its own token, Zipf-distributed.
    target/release/examples/loadgen --url "http://127.0.0.1:$PORT$path" --login bench-user \
      --connections 16 --duration "${LOADGEN_SECONDS:-8}" --json >> "target/bench/loadgen-$route.jsonl"
    target/release/examples/loadgen --url "http://127.0.0.1:$PORT$path" --mint-secret "$BENCH_SECRET" \
      --subjects 10000 --connections 16 --duration "${LOADGEN_SECONDS:-8}" --json \
      >> "target/bench/loadgen-$route-zipf.jsonl"
  done
done
kill $SERVER; trap - EXIT
cargo run --release --example bench_report
