#!/usr/bin/env bash
# Mutation testing of the modules that decide (issue 26): cargo-mutants changes one expression
# at a time and runs the tests that cover that module; a mutant no test notices ("missed") is a
# decision no test pins down. TESTING.md records the last run's score and every survivor.
#
#   scripts/mutants.sh            every group, one after the other
#   scripts/mutants.sh decide     one group: decide | token_cache | compact-a | compact-b |
#                                 dpop-proof-a | dpop-proof-b | dpop-window-a | dpop-window-b |
#                                 dpop-check-a | dpop-check-b
#   MUTANTS_ITERATE=1 scripts/mutants.sh   only the mutants the last run did not catch
#
# Each group runs the tests that can see its module, not the whole suite, which is what keeps
# each group under 30 minutes on the 2-core CI machine (the whole set takes about an hour and
# a half; the fingerprint table has so many mutants that it runs as two halves): the mirror's fingerprint table
# (backend/moka/compact) is specified by its unit tests; the verified-token cache by its unit
# tests and tests/token_cache.rs; the per-request decision, `Revocation` and the subject-cutoff
# rule by the unit tests and the layer and cache suites over MemoryStore and Postgres.
# Builds use a target directory of their own without debug info (faster links), so the run
# neither waits for nor disturbs target/. Output: target/mutants/<group>/mutants.out.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-mutants >/dev/null 2>&1; then
  echo "mutants.sh: installing cargo-mutants" >&2
  cargo install cargo-mutants --locked --version 27.1.0
fi
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export CARGO_PROFILE_DEV_DEBUG=0
export CARGO_TARGET_DIR="${MUTANTS_TARGET_DIR:-$PWD/target/mutants-build}"

run() {
  local group=$1
  shift
  echo "mutants.sh: group $group" >&2
  mkdir -p "target/mutants/$group"
  local status=0
  cargo mutants --no-shuffle --jobs 1 --baseline skip --all-features \
    --timeout 30 --build-timeout 600 ${MUTANTS_ITERATE:+--iterate} --output "target/mutants/$group" \
    --exclude-re 'impl .*Debug for' "$@" || status=$?
  # 0: every mutant caught; 2: some missed (listed in missed.txt); 3: some timed out (caught).
  case $status in
    0 | 2 | 3) ;;
    *) echo "mutants.sh: cargo mutants failed ($status)" >&2; exit "$status" ;;
  esac
  local out="target/mutants/$group/mutants.out"
  echo "mutants.sh: $group: $(wc -l <"$out/caught.txt") caught, $(wc -l <"$out/missed.txt") missed, $(wc -l <"$out/timeout.txt") timeout, $(wc -l <"$out/unviable.txt") unviable" >&2
}

groups=("${@:-decide token_cache compact-a compact-b dpop-proof-a dpop-proof-b dpop-window-a dpop-window-b dpop-check-a dpop-check-b}")
for group in ${groups[*]}; do
  case $group in
    compact-a | compact-b)
      local_shard=$([ "$group" = compact-a ] && echo 0/2 || echo 1/2)
      run "$group" --file src/backend/moka/compact/mod.rs --shard "$local_shard" --cargo-test-arg=--lib ;;
    token_cache)
      run token_cache --file src/verify/token_cache.rs \
        --cargo-test-arg=--lib --cargo-test-arg=--test=token_cache ;;
    decide)
      run decide --file src/decision.rs --file src/backend/revocation.rs \
        --file src/backend/mod.rs --re 'decision\.rs|revocation\.rs|subject_cutoff_covers' \
        --cargo-test-arg=--lib --cargo-test-arg=--test=axum_layer \
        --cargo-test-arg=--test=cache --cargo-test-arg=--test=issuers ;;
    dpop-proof-a | dpop-proof-b | dpop-window-a | dpop-window-b | dpop-check-a | dpop-check-b)
      # DPoP (issue 27) against its unit tests and tests/dpop.rs, each part in two shards of
      # about 40 mutants (a mutant takes about 40 s here: a build of the library and two test
      # binaries): the proof, the replay window and nonces, and the binding check and settings.
      local_shard=$([ "${group##*-}" = a ] && echo 0/2 || echo 1/2)
      case $group in
        dpop-proof-*) files=(--file src/dpop/proof.rs --file src/dpop/htu.rs) ;;
        dpop-window-*) files=(--file src/dpop/replay.rs --file src/dpop/nonce.rs) ;;
        *) files=(--file src/dpop/mod.rs) ;;
      esac
      run "$group" "${files[@]}" --shard "$local_shard" --cargo-test-arg=--lib --cargo-test-arg=--test=dpop ;;
    *) echo "mutants.sh: unknown group $group (decide, token_cache, compact-a, compact-b, dpop-*)" >&2; exit 2 ;;
  esac
done
