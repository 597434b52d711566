#!/usr/bin/env bash
# Real-client acceptance tests: Bazel (gRPC and HTTP caches, restart round trip, two nodes
# sharing an S3 bucket) and ccache (HTTP remote storage) against `hoard serve`. Installs the
# clients with apt-get if missing. bucket.sh needs s3s-fs ($HOARD_S3S_FS; skipped without it,
# except under CI).
#   HOARD_BIN=PATH   test this binary instead of building target/release/hoard
#   BENCH=1          also run ccache_bench.sh (latency numbers, never fails the run)
#   KEEP_TMP=1       keep each script's scratch dir
set -euo pipefail
cd "$(dirname "$0")"
source ./lib.sh

start=$(date +%s)
ensure_pkgs bazel:bazel-bootstrap ccache:ccache gcc:build-essential curl:curl python3:python3
hoard_bin
export HOARD_BIN

status=0
results=()
for t in bazel.sh bucket.sh ccache.sh; do
    printf '\n==> acceptance: %s\n' "$t"
    rc=0
    ./"$t" || rc=$?
    case $rc in
        0) results+=("PASS  $t") ;;
        77) results+=("SKIP  $t") ;; # what it needs is missing (never under CI)
        *) results+=("FAIL  $t"); status=1 ;;
    esac
done
if [ "${BENCH:-0}" = 1 ]; then
    printf '\n==> acceptance: ccache_bench.sh (benchmark)\n'
    ./ccache_bench.sh || log "ccache_bench.sh failed (not counted)"
fi

printf '\n==> acceptance summary (%ss)\n' "$(($(date +%s) - start))"
printf '  %s\n' "${results[@]}"
exit $status
