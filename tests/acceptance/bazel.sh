#!/usr/bin/env bash
# Acceptance test with a real Bazel (Debian bazel-bootstrap 4.2.3) against `hoard serve`.
#
# For gRPC and for HTTP, each against a fresh hoard data dir: build workspace/ with a fresh
# output_user_root (everything executes, results are uploaded), then build again with another
# fresh output_user_root: every action must be a remote cache hit, with no remote-cache warnings,
# and the outputs must be byte-identical to the first build. Then the restart round trip per
# protocol: build, SIGTERM hoard, start it again on the same data dir, rebuild: all hits; and a
# rebuild over the other protocol from that cache: all hits too (shared action keys).
#
#   HOARD_BIN=PATH   hoard binary (default: cargo build --release)
#   KEEP_TMP=1       keep the scratch dir (Bazel logs, hoard logs)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_pkgs bazel:bazel-bootstrap gcc:gcc python3:python3
hoard_bin
setup_scratch
source "$ACC_DIR/bazel_lib.sh"

# Build, then rebuild with a fresh output root, for each protocol against a fresh hoard.
for proto in grpc http; do
    GPORT=$(free_port)
    HPORT=$(free_port)
    start_hoard "hoard-$proto" "$SCRATCH/data-$proto" "$GPORT" "$HPORT"
    if [ "$proto" = grpc ]; then url="grpc://127.0.0.1:$GPORT"; else url="http://127.0.0.1:$HPORT"; fi
    log "== $proto: cold build"
    bazel_build "$url"
    check_cold
    log "== $proto: rebuild, fresh output root"
    bazel_build "$url"
    check_warm "$proto rebuild"
    record "$proto" "$proto"
    stop_hoard "$HOARD_PID"
done

# Restart round trip, per protocol on its own data dir: cold build, SIGTERM hoard, start it
# again on the same data dir, rebuild with a fresh output root. Then rebuild once more over the
# other protocol: HTTP /ac/ and gRPC share action keys, so Bazel's entries cross over.
for proto in grpc http; do
    GPORT=$(free_port)
    HPORT=$(free_port)
    DATA="$SCRATCH/data-restart-$proto"
    grpc_url="grpc://127.0.0.1:$GPORT"
    http_url="http://127.0.0.1:$HPORT"
    if [ "$proto" = grpc ]; then url=$grpc_url other=http other_url=$http_url
    else url=$http_url other=grpc other_url=$grpc_url; fi
    start_hoard "hoard-restart-$proto" "$DATA" "$GPORT" "$HPORT"
    log "== restart/$proto: cold build"
    bazel_build "$url"
    check_cold
    log "== restart/$proto: SIGTERM hoard, start it again on the same data dir"
    stop_hoard "$HOARD_PID"
    start_hoard "hoard-restart-$proto" "$DATA" "$GPORT" "$HPORT"
    log "== restart/$proto: rebuild after the restart, fresh output root"
    bazel_build "$url"
    check_warm "$proto rebuild after restart"
    record restart "$proto"
    log "== cross: $proto-filled cache, rebuild over $other"
    bazel_build "$other_url"
    check_warm "$other rebuild from a cache filled over $proto"
    record cross "$proto>$other"
    stop_hoard "$HOARD_PID"
done

show_hoard_warnings
print_results "Bazel acceptance"
echo "PASS: every rebuild action was a remote cache hit, outputs identical, no remote warnings"
