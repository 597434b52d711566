#!/usr/bin/env bash
# Benchmark (not a pass/fail test): latency of ccache's remote GETs and PUTs against hoard.
#
# ccache 4.7.5's log gives every remote request's duration as ccache measured it:
#   "No KEY in http://... (0.51 ms)"        GET, miss (404)
#   "Retrieved KEY from http://... (0.58 ms)"  GET, hit
#   "Stored KEY in http://... (0.82 ms)"    PUT
# Each compilation is its own ccache process with its own connection, so its first request also
# pays the TCP connect; those are reported separately. Compilations run one at a time so the
# 2-core machine measures latency rather than contention. Each round's sources declare a variable
# of their own, so every round has fresh keys (a -D flag would only change the direct-mode
# manifest key): the cold pass misses twice and PUTs twice per file, the warm pass (empty local
# dir) hits twice.
#
#   HOARD_BIN=PATH   hoard binary (default: cargo build --release)
#   CCACHE_FILES=N   generated C files (default 50)
#   ROUNDS=N         rounds of cold + warm passes (default 3)
#   HOARD_FLAGS=...  extra `hoard serve` flags
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_pkgs ccache:ccache gcc:gcc python3:python3
hoard_bin
setup_scratch

N=${CCACHE_FILES:-50}
ROUNDS=${ROUNDS:-3}

export CCACHE_REMOTE_ONLY=true
export CCACHE_CONFIGPATH="$SCRATCH/ccache.conf"
: >"$CCACHE_CONFIGPATH"
unset CCACHE_PREFIX CCACHE_DISABLE CCACHE_RECACHE CCACHE_READONLY 2>/dev/null || true

GPORT=$(free_port)
HPORT=$(free_port)
# shellcheck disable=SC2086
start_hoard hoard-bench "$SCRATCH/data" "$GPORT" "$HPORT" ${HOARD_FLAGS:-}
export CCACHE_REMOTE_STORAGE="http://127.0.0.1:$HPORT/cache|layout=bazel"

# pass ROUND NAME: compiles round ROUND's units one by one with a fresh local dir, logging to
# NAME.log.
pass() {
    local src="$SCRATCH/src$1"
    if [ ! -d "$src" ]; then
        mkdir -p "$src"
        gen_c_sources "$src" "$N"
        for f in "$src"/unit_*.c; do echo "int bench_round_$1 = $1;" >>"$f"; done
    fi
    export CCACHE_DIR="$SCRATCH/ccache-$2"
    export CCACHE_LOGFILE="$SCRATCH/$2.log"
    rm -rf "$CCACHE_DIR"
    local f
    for f in "$src"/unit_*.c; do
        ccache gcc -O2 -c "$f" -o "${f%.c}.o" || die "ccache gcc $f failed"
    done
}

LOGS=()
for r in $(seq 1 "$ROUNDS"); do
    t0=$(date +%s.%N)
    pass "$r" "cold$r"
    t1=$(date +%s.%N)
    pass "$r" "warm$r"
    t2=$(date +%s.%N)
    log "round $r: cold pass $(python3 -c "print(f'{$t1 - $t0:.2f}')")s, warm pass $(python3 -c "print(f'{$t2 - $t1:.2f}')")s ($N compilations each)"
    LOGS+=("$SCRATCH/cold$r.log" "$SCRATCH/warm$r.log")
done
stop_hoard "$HOARD_PID"

echo
echo "ccache remote latency against hoard ($(ccache --version | head -1); $N files x $ROUNDS rounds; as logged by ccache)"
python3 - "${LOGS[@]}" <<'EOF'
import re, statistics, sys

pat = re.compile(r"^\[\S+ (\d+)\] (No \S+ in|Retrieved \S+ from|Stored \S+ in|Failed to \S+ .*) http\S* \(([\d.]+) ms\)")
kinds = {"No": "GET miss", "Retrieved": "GET hit", "Stored": "PUT"}
samples = {}   # (kind, first-request-of-process?) -> [ms]
seen_pids = set()
failures = 0
for path in sys.argv[1:]:
    for line in open(path, errors="replace"):
        if "to http storage" in line and line.split("] ", 1)[-1].startswith("Failed"):
            failures += 1
        m = pat.match(line)
        if not m:
            continue
        pid, what, ms = m.group(1), m.group(2), float(m.group(3))
        kind = kinds.get(what.split(" ", 1)[0])
        if kind is None:
            continue
        first = (path, pid) not in seen_pids
        seen_pids.add((path, pid))
        samples.setdefault((kind, first), []).append(ms)

def row(label, xs):
    if not xs:
        print(f"{label:<38} {'-':>5}")
        return
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(0.9 * len(xs)))]
    print(f"{label:<38} {len(xs):>5} {statistics.median(xs):>9.3f} {p90:>9.3f} {xs[-1]:>9.3f}")

print(f"{'request':<38} {'n':>5} {'median':>9} {'p90':>9} {'max':>9}   (ms)")
print("-" * 76)
for kind in ("GET miss", "GET hit", "PUT"):
    both = samples.get((kind, True), []) + samples.get((kind, False), [])
    row(kind + " (all)", both)
    row("  " + kind + ", reusing the connection", samples.get((kind, False), []))
    row("  " + kind + ", first (includes connect)", samples.get((kind, True), []))

def med(kind):
    xs = samples.get((kind, True), []) + samples.get((kind, False), [])
    return statistics.median(xs) if xs else float("nan")

get_all = sorted(samples.get(("GET miss", True), []) + samples.get(("GET miss", False), [])
                 + samples.get(("GET hit", True), []) + samples.get(("GET hit", False), []))
g = statistics.median(get_all) if get_all else float("nan")
p = med("PUT")
print("-" * 76)
print(f"median GET (hit+miss) {g:.3f} ms, median PUT {p:.3f} ms, PUT/GET ratio {p / g:.2f}")
if failures:
    print(f"note: {failures} remote requests failed (see the ccache logs)")
EOF
