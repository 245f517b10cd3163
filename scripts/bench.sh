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
# DPoP: a cached token with a fresh proof, next to bearer, decode-only and the proof alone.
cargo bench --bench dpop
# This crate next to jwt-authorizer, in a bench crate of its own (the main build never compiles
# jwt-authorizer); it writes target/bench/peer.jsonl.
CARGO_TARGET_DIR="$PWD/target" cargo bench --manifest-path benches/peer/Cargo.toml

cargo build --release --example server --example loadgen
mkdir -p target/bench
rm -f target/bench/loadgen-*.jsonl
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
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
wait_port() { for _ in $(seq 1 100); do port_open 127.0.0.1 "$1" && return 0; sleep 0.1; done; return 1; }

# HS256: the demo's own tokens.
BENCH_SECRET=bench-secret-bench-secret-bench
HS_PORT=39871
DATABASE_URL="$SERVER_DB_URL" BIND_ADDR="127.0.0.1:$HS_PORT" RUST_LOG=warn JWT_SECRET="$BENCH_SECRET" \
  target/release/examples/server &
PIDS+=($!)
# ES256, as identity providers sign: the demo verifies with a JWKS served on loopback holding the
# public half of tests/keys/jwk/p256.pem, with which loadgen mints.
JWKS_PORT=39873
ES_PORT=39872
mkdir -p target/bench/jwks
python3 -c 'import json,sys; k=json.load(open("tests/keys/jwk/p256.json")); k.update(kid="loadgen", alg="ES256", use="sig"); json.dump({"keys":[k]}, sys.stdout)' \
  > target/bench/jwks/jwks.json
python3 -m http.server "$JWKS_PORT" --bind 127.0.0.1 --directory target/bench/jwks >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$JWKS_PORT"
DATABASE_URL="$SERVER_DB_URL" BIND_ADDR="127.0.0.1:$ES_PORT" RUST_LOG=warn \
  JWKS_URL="http://127.0.0.1:$JWKS_PORT/jwks.json" JWKS_ALLOW_HTTP=1 BASELINE_ROUTE=1 target/release/examples/server &
PIDS+=($!)
wait_port "$HS_PORT"
wait_port "$ES_PORT"

load() { target/release/examples/loadgen --connections 16 --duration "${LOADGEN_SECONDS:-8}" --json "$@"; }
# One hot token, then 10 000 subjects each reusing its own token, Zipf-distributed; the routes
# alternate, five rounds.
for round in 1 2 3 4 5; do
  for route in layer baseline; do
    path=/me; [ "$route" = baseline ] && path=/baseline/me
    load --url "http://127.0.0.1:$HS_PORT$path" --login bench-user >> "target/bench/loadgen-$route.jsonl"
    load --url "http://127.0.0.1:$HS_PORT$path" --mint-secret "$BENCH_SECRET" --subjects 10000 \
      >> "target/bench/loadgen-$route-zipf.jsonl"
    load --url "http://127.0.0.1:$ES_PORT$path" --mint-es256 tests/keys/jwk/p256.pem --subjects 1 \
      >> "target/bench/loadgen-$route-es256.jsonl"
    load --url "http://127.0.0.1:$ES_PORT$path" --mint-es256 tests/keys/jwk/p256.pem --subjects 10000 \
      >> "target/bench/loadgen-$route-es256-zipf.jsonl"
  done
done
kill "${PIDS[@]}"; trap - EXIT
# Mirror mode at 0, 1 M and 10 M live revocations (needs Postgres and psql; about 5 min).
if [ -n "${DATABASE_URL:-}" ] && command -v psql >/dev/null 2>&1; then
  python3 scripts/mirror_scale.py
else
  rm -f target/bench/mirror.jsonl
fi
# Fleets (issue 25): 1 000 instances on the NATS feed, and the Postgres feed at 40 instances and
# past what the database admits, in one process; then 40 demo processes (about 4 min; needs
# Postgres and nats-server).
rm -f target/bench/fleet-*.jsonl
if [ -n "${DATABASE_URL:-}" ] && { command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; }; then
  cargo build --release --example fleet
  target/release/examples/fleet nats 1000 10000 || true
  target/release/examples/fleet postgres 40 10000 || true
  target/release/examples/fleet postgres 60 1000 || true
  # 40 demo processes and 2 relay processes (about 1 min).
  rm -f target/bench/fleet_demo-*.jsonl
  cargo build --release --example server --example relay --example fleet_demo
  target/release/examples/fleet_demo 40 || true
fi
cargo run --release --example bench_report
