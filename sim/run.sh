#!/usr/bin/env bash
# Runs the simulator in release mode (its own target dir, so the real and simulated builds do not
# rebuild each other).
#   sim/run.sh seeds N         N seeds of the standard swarm workload
#   sim/run.sh determinism N   N seeds, each run twice; traces must be identical
#   sim/run.sh planted [N]     each planted bug must be caught within N seeds (default 100)
#   sim/run.sh tests           the tests that run only under madsim
#   sim/run.sh all N           all three (what CI runs)
#   sim/run.sh mutants [N]     each hand-written mutation in sim/mutants/*.patch, applied to a
#                              scratch copy of the tree, must be caught within N seeds (default
#                              300); prints the caught ratio. Slow (one build per mutant): not in CI.
# Extra arguments after N go to hoard-sim (e.g. --start 5000 --jobs 2).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg madsim"
export CARGO_TARGET_DIR=target/sim
mode=${1:-seeds}
given_count=${2:-}
count=${given_count:-1000}
shift $(( $# > 2 ? 2 : $# ))
jobs=$(nproc 2>/dev/null || echo 2)

sim() { "$CARGO_TARGET_DIR/release/hoard-sim" "$@"; }

run_seeds() {
  cargo build --release --bin hoard-sim
  sim run --seeds "$count" --jobs "$jobs" "$@"
}

# Every seed run twice in one process must give the same trace both times: any failing seed
# fails the step (the seeds' other invariants are held to as well).
run_determinism() {
  cargo build --release --bin hoard-sim
  local n=$(( count / 10 > 20 ? count / 10 : 20 ))
  sim run --seeds "$n" --start 1000000 --jobs "$jobs" --check-determinism "$@"
}

# Tests that only exist in the simulated world: the simulated disk's own tests, and the HTTP,
# auth and metrics front ends on madsim sockets.
run_sim_tests() {
  cargo test --release --bin hoard-sim --test http_sim --test auth_sim --test observe_sim
}

run_planted() {
  local budget=${1:-100}
  cargo build --release --features planted-bugs --bin hoard-sim
  local failed=0
  for bug in $(sim planted-bugs); do
    echo "--- planted bug: $bug (must be caught within $budget seeds)"
    set +e
    out=$(sim run --seeds "$budget" --jobs "$jobs" --planted "$bug" --stop-at-first 2>/dev/null)
    status=$?
    set -e
    if [ "$status" -eq 0 ]; then
      echo "NOT CAUGHT: planted bug $bug survived $budget seeds"
      failed=1
    else
      echo "$out" | grep -E "^first failing seed|^replay with" || true
      echo "caught: $bug"
    fi
  done
  # Leave the ordinary simulator binary in place.
  cargo build --release --bin hoard-sim
  return "$failed"
}

# Mutation check: plausible engine and front-end bugs the simulator was not written for. Each
# patch is applied to a copy of the tree in target/mutants/tree (its own target dir, seeded once
# from target/sim so only hoard rebuilds) and must make some seed fail within the budget.
run_mutants() {
  local budget=${1:-300}
  local root=$PWD scratch=$PWD/target/mutants
  local tree=$scratch/tree build=$scratch/build
  mkdir -p "$scratch"
  if [ ! -d "$build" ] && [ -d "$CARGO_TARGET_DIR/release" ]; then
    mkdir -p "$build" && cp -r "$CARGO_TARGET_DIR/release" "$build/"
  fi
  local caught=0 total=0 survivors=()
  for patch in "$root"/sim/mutants/*.patch; do
    local name
    name=$(basename "$patch" .patch)
    total=$((total + 1))
    rm -rf "$tree" && mkdir -p "$tree"
    (cd "$root" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -xf - -C "$tree"
    (cd "$tree" && patch -s -p1 < "$patch")
    echo "--- mutant: $name (must be caught within $budget seeds)"
    if ! (cd "$tree" && CARGO_TARGET_DIR="$build" cargo build --release --bin hoard-sim 2>&1 | tail -1); then
      echo "BUILD FAILED: $name"; survivors+=("$name"); continue
    fi
    set +e
    out=$("$build/release/hoard-sim" run --seeds "$budget" --jobs "$jobs" --stop-at-first 2>/dev/null)
    status=$?
    set -e
    if [ "$status" -eq 0 ]; then
      echo "SURVIVED: $name"
      survivors+=("$name")
    else
      echo "$out" | grep -E "^first failing seed" || true
      echo "caught: $name"
      caught=$((caught + 1))
    fi
  done
  echo "mutants caught: $caught/$total${survivors:+ (survived: ${survivors[*]})}"
  [ "$caught" -eq "$total" ]
}

case "$mode" in
  seeds) run_seeds "$@" ;;
  determinism) run_determinism "$@" ;;
  planted) run_planted "$count" ;;
  mutants) run_mutants "${given_count:-300}" ;;
  tests) run_sim_tests ;;
  all)
    run_sim_tests
    run_seeds "$@"
    run_determinism "$@"
    run_planted 100
    ;;
  *) echo "usage: sim/run.sh seeds|determinism|planted|tests|mutants|all [N] [hoard-sim args]" >&2; exit 2 ;;
esac
