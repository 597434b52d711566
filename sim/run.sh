#!/usr/bin/env bash
# Runs the simulator in release mode (its own target dir, so the real and simulated builds do not
# rebuild each other).
#   sim/run.sh seeds N         N seeds of the standard swarm workload
#   sim/run.sh determinism N   N seeds, each run twice; traces must be identical
#   sim/run.sh planted [N]     each planted bug must be caught within N seeds (default 100)
#   sim/run.sh tests           the tests that run only under madsim
#   sim/run.sh all N           all three (what CI runs)
# Extra arguments after N go to hoard-sim (e.g. --start 5000 --jobs 2).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg madsim"
export CARGO_TARGET_DIR=target/sim
mode=${1:-seeds}
count=${2:-1000}
shift $(( $# > 2 ? 2 : $# ))
jobs=$(nproc 2>/dev/null || echo 2)

sim() { "$CARGO_TARGET_DIR/release/hoard-sim" "$@"; }

run_seeds() {
  cargo build --release --bin hoard-sim
  sim run --seeds "$count" --jobs "$jobs" "$@"
}

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
  for bug in unflushed-persist index-before-sync ack-before-index footer-before-sync incomplete-action-served ac-before-blobs watermark-past-unacked; do
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

case "$mode" in
  seeds) run_seeds "$@" ;;
  determinism) run_determinism "$@" ;;
  planted) run_planted "$count" ;;
  tests) run_sim_tests ;;
  all)
    run_sim_tests
    run_seeds "$@"
    run_determinism "$@"
    run_planted 100
    ;;
  *) echo "usage: sim/run.sh seeds|determinism|planted|tests|all [N] [hoard-sim args]" >&2; exit 2 ;;
esac
