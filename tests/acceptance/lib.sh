# Shared helpers for the acceptance scripts (sourced, not run).
#   HOARD_BIN=PATH   use this hoard binary instead of building target/release/hoard
#   KEEP_TMP=1       keep the scratch directory (printed at the start) for inspection

ACC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$ACC_DIR/../.." && pwd)"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# Installs the Debian packages named as arguments unless their commands already exist.
# Usage: ensure_pkgs CMD:PKG ...
ensure_pkgs() {
    local missing=() spec
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; install them (apt-get install -y ${missing[*]})"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

# Sets HOARD_BIN, building the release binary when it is not given.
hoard_bin() {
    if [ -n "${HOARD_BIN:-}" ]; then
        [ -x "$HOARD_BIN" ] || die "HOARD_BIN=$HOARD_BIN is not executable"
        return 0
    fi
    log "cargo build --release"
    (cd "$REPO_ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
    HOARD_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/hoard"
    [ -x "$HOARD_BIN" ] || die "no binary at $HOARD_BIN"
}

# Creates $SCRATCH and removes it (and stops hoards and s3s-fs) on exit.
HOARD_PIDS=()
setup_scratch() {
    SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/hoard-acceptance.XXXXXX")"
    log "scratch dir: $SCRATCH"
    trap cleanup EXIT
    set -E
    trap 'log "FAIL: command failed (status $?) at ${BASH_SOURCE[0]}:$LINENO: $BASH_COMMAND"' ERR
    trap 'exit 130' INT TERM
}
cleanup() {
    local rc=$? pid
    for pid in "${HOARD_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null && { wait "$pid" 2>/dev/null || true; }
    done
    if [ "${KEEP_TMP:-0}" = 1 ]; then
        log "kept $SCRATCH"
    else
        chmod -R u+w "$SCRATCH" 2>/dev/null || true
        rm -rf "$SCRATCH" || true
    fi
    exit $rc
}

# Prints a TCP port on 127.0.0.1 that is free right now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until 127.0.0.1:$1 accepts connections (hoard pid $2 must stay alive).
wait_port() {
    local port=$1 pid=$2 i
    for i in $(seq 1 200); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

# start_hoard NAME DATA_DIR GRPC_PORT HTTP_PORT [EXTRA FLAGS...]: starts hoard in the background,
# logging to $SCRATCH/NAME.log; sets HOARD_PID. Waits for both listeners.
start_hoard() {
    local name=$1 dir=$2 gport=$3 hport=$4
    shift 4
    NO_COLOR=1 HOARD_LOG="${HOARD_LOG:-info}" "$HOARD_BIN" serve --dir "$dir" \
        --grpc-addr "127.0.0.1:$gport" --http-addr "127.0.0.1:$hport" "$@" \
        >>"$SCRATCH/$name.log" 2>&1 &
    HOARD_PID=$!
    HOARD_PIDS+=("$HOARD_PID")
    if ! wait_port "$gport" "$HOARD_PID" || ! wait_port "$hport" "$HOARD_PID"; then
        cat "$SCRATCH/$name.log" >&2
        die "hoard ($name) did not start listening on $gport/$hport"
    fi
    log "hoard $name up (pid $HOARD_PID, grpc :$gport, http :$hport, dir $dir)"
}

# stop_hoard PID: SIGTERM, then waits (up to 30 s) for a clean exit.
stop_hoard() {
    local pid=$1 i rc
    kill -TERM "$pid" || die "hoard $pid is not running"
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && die "hoard $pid did not exit within 30 s of SIGTERM"
    rc=0
    wait "$pid" || rc=$?
    [ "$rc" = 0 ] || die "hoard $pid exited with status $rc after SIGTERM"
    local kept=()
    for p in "${HOARD_PIDS[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
    HOARD_PIDS=("${kept[@]}")
    log "hoard $pid stopped cleanly"
}

# s3s_fs_bin: sets S3S_FS to the s3s-fs binary ($HOARD_S3S_FS, else target/tools/bin/s3s-fs,
# else on PATH), as tests/object_store_s3.rs finds it. Without one it returns 1 (the caller
# skips), except under CI, where the run fails: CI must run the shared-bucket tests.
s3s_fs_bin() {
    local candidate
    for candidate in "${HOARD_S3S_FS:-}" "$REPO_ROOT/target/tools/bin/s3s-fs" "$(command -v s3s-fs || true)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            S3S_FS=$candidate
            return 0
        fi
    done
    local why="s3s-fs not found: set HOARD_S3S_FS or run \`cargo install s3s-fs --version 0.14.1 --features binary --root target/tools\`"
    [ -z "${CI:-}" ] || die "$why (CI must run the shared-bucket test)"
    log "SKIP: $why"
    return 1
}

# start_s3s_fs ROOT PORT BUCKET ACCESS_KEY SECRET_KEY: an S3 server on 127.0.0.1:PORT storing
# the bucket BUCKET as the directory ROOT/BUCKET; logs to $SCRATCH/s3s-fs.log. Stopped on exit.
start_s3s_fs() {
    local root=$1 port=$2 bucket=$3 access=$4 secret=$5 pid
    mkdir -p "$root/$bucket"
    "$S3S_FS" --host 127.0.0.1 --port "$port" --access-key "$access" --secret-key "$secret" \
        "$root" >>"$SCRATCH/s3s-fs.log" 2>&1 &
    pid=$!
    HOARD_PIDS+=("$pid")
    wait_port "$port" "$pid" || { cat "$SCRATCH/s3s-fs.log" >&2; die "s3s-fs did not start on $port"; }
    log "s3s-fs up (pid $pid, :$port, root $root)"
}

# wait_drained NAME HTTP_PORT: waits (up to 120 s) until the hoard serving HTTP on HTTP_PORT has
# uploaded everything to its bucket (`"backlog_bytes":0` in /status).
wait_drained() {
    local name=$1 port=$2 i status=""
    for i in $(seq 1 1200); do
        status=$(curl -fsS "http://127.0.0.1:$port/status" 2>/dev/null || true)
        case $status in *'"backlog_bytes":0,'*)
            log "hoard $name: upload queue drained"
            return 0 ;;
        esac
        sleep 0.1
    done
    die "hoard $name: upload queue not drained within 120 s: $status"
}

# gen_c_sources DIR N: N small, distinct C files (unit_1.c ...) that include system headers and
# one local header.
gen_c_sources() {
    local SRC=$1 N=$2
    cat >"$SRC/common.h" <<'EOF'
#ifndef COMMON_H
#define COMMON_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
uint64_t mix(uint64_t x, unsigned rounds);
#endif
EOF
    local i
    for i in $(seq 1 "$N"); do
        cat >"$SRC/unit_$i.c" <<EOF
/* generated unit $i */
#include <stdio.h>
#include <stdlib.h>
#include "common.h"

static const char name_$i[] = "unit_$i";

struct rec_$i { uint64_t key; char label[$((i % 13 + 8))]; };

uint64_t unit_${i}_hash(const char *s) {
    uint64_t h = ${i}ULL * 0x9E3779B97F4A7C15ULL;
    for (size_t k = 0; k < strlen(s); k++) {
        h = (h ^ (unsigned char)s[k]) * 0x100000001B3ULL;
        h ^= h >> $((i % 17 + 7));
    }
    return h;
}

int unit_${i}_run(int argc, char **argv) {
    struct rec_$i *r = calloc((size_t)argc + $i, sizeof *r);
    if (!r) return -1;
    for (int k = 0; k < argc; k++) {
        r[k].key = unit_${i}_hash(argv[k]) + $i;
        snprintf(r[k].label, sizeof r[k].label, "%s-%d", name_$i, k);
    }
    uint64_t acc = 0;
    for (int k = 0; k < argc; k++) acc += r[k].key * (k + $i);
    printf("%s %llu\n", name_$i, (unsigned long long)acc);
    free(r);
    return (int)(acc % $((i + 2)));
}
EOF
    done
}
