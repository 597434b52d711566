#!/usr/bin/env bash
# Acceptance test with a real ccache (Debian ccache 4.7.5) using hoard as its HTTP remote storage
# (`layout=bazel`: GET/PUT /ac/<64 hex>, values are ccache entries, not ActionResults).
#
# 1. Default hoard (no flags): compile ~50 generated C files cold with remote_only, wipe the local
#    ccache dir, compile again: every compilation must be a remote hit, no remote errors, and the
#    objects byte-identical to the cold ones. Plus a curl round trip of an opaque /ac/ value.
# 2. hoard --http-ac-strict: a non-ActionResult PUT gets 400 and nothing is stored (GET 404), both
#    from curl and from ccache (whose compilations still succeed, with remote errors); a real
#    ActionResult is still accepted.
#
#   HOARD_BIN=PATH   hoard binary (default: cargo build --release)
#   CCACHE_FILES=N   number of generated C files (default 50)
#   KEEP_TMP=1       keep the scratch dir
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_pkgs ccache:ccache gcc:gcc curl:curl python3:python3
hoard_bin
setup_scratch

N=${CCACHE_FILES:-50}
JOBS=$(nproc)
SRC="$SCRATCH/src"
mkdir -p "$SRC"

# compile_all CCACHE_DIR: `ccache gcc -c` every unit in parallel; clears CCACHE_DIR first.
compile_all() {
    export CCACHE_DIR=$1
    rm -rf "$CCACHE_DIR" "$SRC"/*.o
    mkdir -p "$CCACHE_DIR"
    (cd "$SRC" && ls unit_*.c | xargs -P "$JOBS" -I{} sh -c 'ccache gcc -O2 -c "$1" -o "${1%.c}.o"' _ {}) ||
        die "compilation failed under ccache (log: $CCACHE_LOGFILE)"
}

# ccstat NAME: one counter from `ccache --print-stats` for the current CCACHE_DIR.
ccstat() { ccache --print-stats | awk -v k="$1" '$1 == k { print $2 }'; }

# The remote storage counters, as "hit miss error timeout".
remote_stats() { echo "$(ccstat remote_storage_hit) $(ccstat remote_storage_miss) $(ccstat remote_storage_error) $(ccstat remote_storage_timeout)"; }

export CCACHE_REMOTE_ONLY=true
export CCACHE_NOHASHDIR=1
unset CCACHE_PREFIX CCACHE_DISABLE CCACHE_RECACHE CCACHE_READONLY CCACHE_CONFIGPATH 2>/dev/null || true
export CCACHE_CONFIGPATH="$SCRATCH/ccache.conf"   # ignore any user/system ccache.conf
: >"$CCACHE_CONFIGPATH"

gen_c_sources "$SRC" "$N"
log "generated $N C files in $SRC"

# ---- 1. default hoard: ccache entries are stored as opaque values ----
GPORT=$(free_port)
HPORT=$(free_port)
start_hoard hoard-default "$SCRATCH/data-default" "$GPORT" "$HPORT"
export CCACHE_REMOTE_STORAGE="http://127.0.0.1:$HPORT/cache|layout=bazel"

export CCACHE_LOGFILE="$SCRATCH/ccache-cold.log"
t0=$(date +%s.%N)
compile_all "$SCRATCH/ccache-cold"
t1=$(date +%s.%N)
read -r c_hit c_miss c_err c_to <<<"$(remote_stats)"
log "cold: remote hit=$c_hit miss=$c_miss error=$c_err timeout=$c_to"
mkdir -p "$SCRATCH/objs-cold"
cp "$SRC"/*.o "$SCRATCH/objs-cold/"
[ "$c_err" = 0 ] && [ "$c_to" = 0 ] || {
    grep -E 'Failed|failed|error' "$CCACHE_LOGFILE" | head -10 >&2
    die "cold run: $c_err remote errors, $c_to timeouts (is /ac/ storing opaque values?)"
}
[ "$c_miss" = "$N" ] || die "cold run: $c_miss remote misses, expected $N"

export CCACHE_LOGFILE="$SCRATCH/ccache-warm.log"
t2=$(date +%s.%N)
compile_all "$SCRATCH/ccache-warm"   # a fresh, empty local dir: only the remote can hit
t3=$(date +%s.%N)
read -r w_hit w_miss w_err w_to <<<"$(remote_stats)"
log "warm: remote hit=$w_hit miss=$w_miss error=$w_err timeout=$w_to"
[ "$w_hit" = "$N" ] && [ "$w_miss" = 0 ] && [ "$w_err" = 0 ] && [ "$w_to" = 0 ] ||
    die "warm run: expected $N remote hits and no misses/errors/timeouts"
for o in "$SCRATCH"/objs-cold/*.o; do
    cmp -s "$o" "$SRC/$(basename "$o")" || die "$(basename "$o") differs between the cold and warm runs"
done
log "all $N objects byte-identical between the cold and warm runs"

# An opaque value round-trips byte for byte over plain HTTP too.
KEY=$(printf 'opaque-key' | sha256sum | cut -d' ' -f1)
printf '\xcc\xac\x00\x01 ccache-like entry, not protobuf' >"$SCRATCH/opaque.bin"
code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary @"$SCRATCH/opaque.bin" "http://127.0.0.1:$HPORT/ac/$KEY")
[ "$code" = 200 ] || die "default hoard: PUT of an opaque /ac/ value gave $code, expected 200"
code=$(curl -s -o "$SCRATCH/opaque.got" -w '%{http_code}' "http://127.0.0.1:$HPORT/ac/$KEY")
[ "$code" = 200 ] && cmp -s "$SCRATCH/opaque.bin" "$SCRATCH/opaque.got" ||
    die "default hoard: GET of the opaque value gave $code or different bytes"
log "default hoard: opaque /ac/ value PUT 200, GET 200 with identical bytes"
stop_hoard "$HOARD_PID"

# ---- 2. hoard --http-ac-strict: non-ActionResult values are refused ----
GPORT=$(free_port)
HPORT=$(free_port)
start_hoard hoard-strict "$SCRATCH/data-strict" "$GPORT" "$HPORT" --http-ac-strict
code=$(curl -s -o "$SCRATCH/strict-put.txt" -w '%{http_code}' -X PUT --data-binary @"$SCRATCH/opaque.bin" "http://127.0.0.1:$HPORT/ac/$KEY")
[ "$code" = 400 ] || die "strict hoard: PUT of an opaque /ac/ value gave $code, expected 400"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HPORT/ac/$KEY")
[ "$code" = 404 ] || die "strict hoard: GET after the refused PUT gave $code, expected 404"
log "strict hoard: opaque PUT 400 ($(head -c 300 "$SCRATCH/strict-put.txt")), then GET 404"
# Positive control: an encoded ActionResult {exit_code: 1} (field 4, varint 1) is accepted.
KEY2=$(printf 'action-result-key' | sha256sum | cut -d' ' -f1)
printf '\x20\x01' >"$SCRATCH/ar.bin"
code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary @"$SCRATCH/ar.bin" "http://127.0.0.1:$HPORT/ac/$KEY2")
[ "$code" = 200 ] || die "strict hoard: PUT of a real ActionResult gave $code, expected 200"
code=$(curl -s -o "$SCRATCH/ar.got" -w '%{http_code}' "http://127.0.0.1:$HPORT/ac/$KEY2")
[ "$code" = 200 ] && cmp -s "$SCRATCH/ar.bin" "$SCRATCH/ar.got" ||
    die "strict hoard: GET of the ActionResult gave $code or different bytes"
log "strict hoard: a real ActionResult PUT 200, GET 200 with identical bytes"

# ccache against the strict hoard: compilations succeed, every PUT is refused, nothing is stored.
export CCACHE_REMOTE_STORAGE="http://127.0.0.1:$HPORT/cache|layout=bazel"
export CCACHE_LOGFILE="$SCRATCH/ccache-strict-cold.log"
compile_all "$SCRATCH/ccache-strict-cold"
read -r s_hit s_miss s_err s_to <<<"$(remote_stats)"
log "strict cold: remote hit=$s_hit miss=$s_miss error=$s_err timeout=$s_to"
[ "$s_err" -gt 0 ] || die "strict cold: ccache saw no remote errors; were its PUTs accepted?"
refused=$(grep -c 'to http storage: status code: 400' "$CCACHE_LOGFILE" || true)
[ "$refused" -gt 0 ] || die "strict cold: no 'status code: 400' PUT failures in the ccache log"
path=$(grep -m1 -o 'Failed to put [^ ]* to http storage: status code: 400' "$CCACHE_LOGFILE" | cut -d' ' -f4)
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HPORT$path")
[ "$code" = 404 ] || die "strict hoard: GET $path (refused ccache PUT) gave $code, expected 404"
export CCACHE_LOGFILE="$SCRATCH/ccache-strict-warm.log"
compile_all "$SCRATCH/ccache-strict-warm"
read -r sw_hit sw_miss sw_err sw_to <<<"$(remote_stats)"
log "strict warm: remote hit=$sw_hit miss=$sw_miss error=$sw_err timeout=$sw_to"
[ "$sw_hit" = 0 ] && [ "$sw_miss" = "$N" ] || die "strict warm: expected 0 remote hits and $N misses"
stop_hoard "$HOARD_PID"

secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }
echo
echo "ccache acceptance ($(ccache --version | head -1), $N files, remote_only, layout=bazel)"
printf '%-22s | %5s %5s %5s %7s | %s\n' run hit miss error timeout time
printf '%s\n' "-------------------------------------------------------------"
printf '%-22s | %5s %5s %5s %7s | %ss\n' "default cold" "$c_hit" "$c_miss" "$c_err" "$c_to" "$(secs "$t0" "$t1")"
printf '%-22s | %5s %5s %5s %7s | %ss\n' "default warm (wiped)" "$w_hit" "$w_miss" "$w_err" "$w_to" "$(secs "$t2" "$t3")"
printf '%-22s | %5s %5s %5s %7s |\n' "strict cold" "$s_hit" "$s_miss" "$s_err" "$s_to"
printf '%-22s | %5s %5s %5s %7s |\n' "strict warm (wiped)" "$sw_hit" "$sw_miss" "$sw_err" "$sw_to"
echo "PASS: 100% remote hits after wiping the local cache, identical objects; --http-ac-strict refuses (400) and stores nothing"
