# Bazel helpers shared by bazel.sh and bucket.sh (sourced after lib.sh and setup_scratch).

# Builds run in a private copy of workspace/, so nothing is written next to the sources.
WS="$SCRATCH/ws"
cp -r "$ACC_DIR/workspace" "$WS"
BUILD_NO=0
RESULTS=()   # lines: phase|protocol|first_hits|first_total|first_secs|re_hits|re_total|re_secs

# bazel_build URL: one `bazel build //...` with a fresh output root against the cache at URL.
# Sets B_HITS, B_INTERNAL, B_OTHER, B_TOTAL, B_SECS, B_MANIFEST (sha256 list of the outputs).
bazel_build() {
    local url=$1
    BUILD_NO=$((BUILD_NO + 1))
    local root="$SCRATCH/root$BUILD_NO" out="$SCRATCH/build$BUILD_NO.log"
    local start end rc=0
    start=$(date +%s.%N)
    (cd "$WS" && bazel --batch --nohome_rc --output_user_root="$root" \
        build //... \
        --remote_cache="$url" \
        --remote_upload_local_results \
        --jobs=64 \
        --symlink_prefix=/ \
        --nosandbox_debug \
        --color=no --curses=no --show_progress_rate_limit=5 \
        >"$out" 2>&1) || rc=$?
    end=$(date +%s.%N)
    B_SECS=$(python3 -c "print(f'{$end - $start:.1f}')")
    if [ "$rc" != 0 ]; then
        tail -40 "$out" >&2
        die "bazel build #$BUILD_NO ($url) failed with status $rc (log: $out)"
    fi
    # Remote-cache trouble shows up as warnings even when the build succeeds.
    local bad
    bad=$(grep -E '^(WARNING|ERROR):' "$out" | grep -iE 'remote|cache|grpc|http|upload|download|fetch' || true)
    bad+=$(grep -E 'Failed to|failed to (upload|download|store|query)' "$out" || true)
    if [ -n "$bad" ]; then
        grep -A3 -E '^(WARNING|ERROR):|Failed to' "$out" | head -30 >&2
        die "bazel build #$BUILD_NO ($url) reported remote cache problems (log: $out)"
    fi
    grep -E '^WARNING:' "$out" | sed 's/^/  bazel: /' >&2 || true
    # The last "INFO: N processes: A remote cache hit, B internal, C <strategy>." line.
    read -r B_TOTAL B_HITS B_INTERNAL B_OTHER < <(python3 - "$out" <<'EOF'
import re, sys
line = None
for l in open(sys.argv[1], errors="replace"):
    m = re.match(r"INFO: (\d+) process(?:es)?(?:: (.*?))?\.?\s*$", l)
    if m:
        line = m
if line is None:
    print("x x x x")
    sys.exit()
total, hits, internal, other = int(line.group(1)), 0, 0, 0
for part in filter(None, (line.group(2) or "").split(", ")):
    n, kind = part.split(" ", 1)
    n = int(n)
    if kind == "remote cache hit":
        hits += n
    elif kind == "internal":
        internal += n
    else:
        other += n
assert hits + internal + other == total, line.group(0)
print(total, hits, internal, other)
EOF
) || die "cannot parse the process summary of bazel build #$BUILD_NO (log: $out)"
    [ "$B_TOTAL" != x ] || die "no 'INFO: N processes' line in bazel build #$BUILD_NO (log: $out)"
    # Every output file of the build, by content.
    local bin
    bin=$(echo "$root"/*/execroot/hoard_acceptance/bazel-out/k8-fastbuild/bin)
    [ -d "$bin" ] || die "no bazel-out/k8-fastbuild/bin under $root"
    B_MANIFEST="$SCRATCH/build$BUILD_NO.sha256"
    (cd "$bin" && find . -type f ! -name '*.runfiles_manifest' -print0 | sort -z |
        xargs -0 sha256sum) >"$B_MANIFEST"
    B_FILES=$(wc -l <"$B_MANIFEST")
    log "build #$BUILD_NO $url: $B_TOTAL processes: $B_HITS remote cache hit, $B_INTERNAL internal, $B_OTHER executed; $B_FILES output files; ${B_SECS}s"
    # The output root is 100+ MB: drop it once measured.
    chmod -R u+w "$root" 2>/dev/null || true
    rm -rf "$root"
}

# check_cold: the first build against an empty cache executed everything and hit nothing.
check_cold() {
    [ "$B_HITS" = 0 ] || die "build #$BUILD_NO: $B_HITS hits against an empty cache"
    [ "$B_OTHER" -gt 0 ] || die "build #$BUILD_NO executed no actions"
    COLD_HITS=$B_HITS COLD_EXEC=$B_OTHER COLD_SECS=$B_SECS COLD_MANIFEST=$B_MANIFEST
}

# check_warm WHAT: the rebuild hit for every action the cold build executed, same outputs.
check_warm() {
    local what=$1
    [ "$B_OTHER" = 0 ] || die "$what: $B_OTHER actions executed instead of hitting the cache"
    [ "$B_HITS" = "$COLD_EXEC" ] || die "$what: $B_HITS hits, expected $COLD_EXEC"
    cmp -s "$COLD_MANIFEST" "$B_MANIFEST" || {
        diff "$COLD_MANIFEST" "$B_MANIFEST" | head -20 >&2
        die "$what: outputs differ from the first build"
    }
}

record() { RESULTS+=("$1|$2|$COLD_HITS|$COLD_EXEC|$COLD_SECS|$B_HITS|$COLD_EXEC|$B_SECS"); }

# print_results TITLE: the table of recorded builds.
print_results() {
    echo
    echo "$1 ($(bazel --version 2>/dev/null | head -1), workspace: $COLD_EXEC actions)"
    printf '%-8s %-10s | %-22s | %-22s\n' phase proto "first build hits/acts" "rebuild hits/acts"
    printf '%s\n' "--------------------------------------------------------------------"
    for r in "${RESULTS[@]}"; do
        IFS='|' read -r phase proto fh fa fs rh ra rs <<<"$r"
        printf '%-8s %-10s | %4s / %-4s %8ss | %4s / %-4s %8ss\n' \
            "$phase" "$proto" "$fh" "$fa" "$fs" "$rh" "$ra" "$rs"
    done
}

# show_hoard_warnings: hoard's own complaints, for the record (not failures by themselves).
show_hoard_warnings() {
    if grep -hE 'WARN|ERROR' "$SCRATCH"/hoard-*.log >/dev/null 2>&1; then
        log "hoard logged warnings/errors:"
        grep -hE 'WARN|ERROR' "$SCRATCH"/hoard-*.log | head -20 >&2
    fi
}
