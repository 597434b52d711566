#!/usr/bin/env bash
# Acceptance test of the shared object-store tier with a real Bazel and a real S3 server
# (s3s-fs on 127.0.0.1): two hoard nodes, each with its own empty data dir, share one bucket.
#
# For gRPC and for HTTP (each under its own bucket prefix): build workspace/ against node A
# (everything executes, results are uploaded to A), wait until A's upload queue is drained
# (/status), stop A, then rebuild with a fresh output_user_root (nothing of Bazel's local state
# left) against node B, started with an empty data dir: every action must be a remote cache hit,
# with no remote-cache warnings, outputs byte-identical, and B must have filled its local store
# from the bucket (hoard_bucket_fills_total).
#
# s3s-fs comes from $HOARD_S3S_FS, target/tools/bin or PATH (.ci/run installs it); without it
# the test is skipped (exit 77), except under CI, where it fails.
#
#   HOARD_BIN=PATH   hoard binary (default: cargo build --release)
#   KEEP_TMP=1       keep the scratch dir (Bazel logs, hoard logs, the bucket)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_pkgs bazel:bazel-bootstrap gcc:gcc python3:python3 curl:curl
s3s_fs_bin || exit 77
hoard_bin
setup_scratch
source "$ACC_DIR/bazel_lib.sh"

BUCKET=cache
S3PORT=$(free_port)
start_s3s_fs "$SCRATCH/s3" "$S3PORT" "$BUCKET" hoard-acceptance hoard-acceptance-secret
# The nodes find the bucket's endpoint and credentials in the usual environment variables.
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3PORT" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=hoard-acceptance AWS_SECRET_ACCESS_KEY=hoard-acceptance-secret

# bucket_fills HTTP_PORT: how many local misses the node filled from the bucket.
bucket_fills() {
    curl -fsS "http://127.0.0.1:$1/metrics" |
        awk '/^hoard_bucket_fills_total\{result="filled"\}/ { n += $2 } END { print n + 0 }'
}

# url_of GRPC_PORT HTTP_PORT: the cache URL of the protocol under test ($proto).
url_of() { if [ "$proto" = grpc ]; then echo "grpc://127.0.0.1:$1"; else echo "http://127.0.0.1:$2"; fi; }

for proto in grpc http; do
    store="s3://$BUCKET/$proto"
    A_GRPC=$(free_port) A_HTTP=$(free_port)
    start_hoard "hoard-a-$proto" "$SCRATCH/a-$proto" "$A_GRPC" "$A_HTTP" --object-store "$store"
    A_PID=$HOARD_PID
    log "== bucket/$proto: cold build against node A"
    bazel_build "$(url_of "$A_GRPC" "$A_HTTP")"
    check_cold
    wait_drained "a-$proto" "$A_HTTP"
    stop_hoard "$A_PID"
    objects=$(find "$SCRATCH/s3/$BUCKET/$proto" -type f | wc -l)
    log "bucket prefix $proto/ holds $objects objects"
    B_GRPC=$(free_port) B_HTTP=$(free_port)
    start_hoard "hoard-b-$proto" "$SCRATCH/b-$proto" "$B_GRPC" "$B_HTTP" --object-store "$store"
    log "== bucket/$proto: rebuild against node B (empty data dir), fresh output root"
    bazel_build "$(url_of "$B_GRPC" "$B_HTTP")"
    check_warm "$proto rebuild against node B"
    fills=$(bucket_fills "$B_HTTP")
    [ "$fills" -gt 0 ] || die "node B served the rebuild without fetching anything from the bucket"
    log "node B filled $fills blobs from the bucket"
    record bucket "$proto"
    stop_hoard "$HOARD_PID"
done

show_hoard_warnings
print_results "Shared-bucket acceptance (node A builds, node B with an empty data dir serves the rebuild)"
echo "PASS: every rebuild action against node B was a remote cache hit, outputs identical, no remote warnings"
