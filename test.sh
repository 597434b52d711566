#!/usr/bin/env bash
# The one test command (README and CI run exactly this): lint, unit + integration tests on the
# real filesystem, then the simulator (seeds, determinism, planted bugs) in release mode.
#   SIM_SEEDS=N    seeds for the standard simulation run (default 10000)
#   SKIP_SIM=1     skip the simulator
#   SKIP_ACCEPTANCE=1  skip the real-client runs (Bazel, ccache; they install packages as root)
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (real world)"
cargo clippy --all-targets -- -D warnings

step "cargo clippy (simulated world: every target)"
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim cargo clippy --release --all-targets -- -D warnings

step "cargo test (real filesystem, real network on 127.0.0.1)"
cargo test --all-targets

if [ "${SKIP_SIM:-0}" != 1 ]; then
  step "simulator: ${SIM_SEEDS:-10000} seeds, determinism check, planted bugs"
  ./sim/run.sh all "${SIM_SEEDS:-10000}"
fi

if [ "${SKIP_ACCEPTANCE:-0}" != 1 ]; then
  step "acceptance: real Bazel (gRPC, HTTP, restart) and ccache against hoard serve"
  ./tests/acceptance/run.sh
fi
