# Shared by the Go build scripts of the tests (sourced, not run): logging, one Go build on
# the machine at a time, and progress on stderr while a long build or a wait goes on.
#
# The caller sets `build_name` (the prefix of every line) before sourcing.
#
# Environment knobs:
#   MODELROUTE_CONTROLPLANE_CACHE  where the control plane's cache, and the shared build lock, live
#   MODELROUTE_PROGRESS_SECONDS    seconds between two progress lines (default 30)

log() { printf '%s: %s\n' "${build_name:-build}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# One lock for every Go build of the project (control plane, node, Prometheus): two of them
# at once on 2 cores only make both slower, and they share the Go build cache.
build_lock_path() {
    echo "${MODELROUTE_CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelroute/controlplane}/.build.lock"
}

duration() {
    local s="$1"
    if ((s >= 60)); then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

# progress_ticker START MESSAGE [PACKAGE_LOG]: in the background, every
# MODELROUTE_PROGRESS_SECONDS print MESSAGE, the time since START ($SECONDS) and, with
# PACKAGE_LOG (the output of `go build -v`), how many packages were compiled and the last one.
# Sets ticker_pid; stop it with stop_ticker. It also stops by itself once this script is gone.
progress_ticker() {
    local start="$1" message="$2" packages="${3:-}" interval="${MODELROUTE_PROGRESS_SECONDS:-30}"
    (
        sleeper=""
        # `wait` (unlike a foreground sleep) returns at once when the TERM arrives.
        trap '[[ -n "$sleeper" ]] && kill "$sleeper" 2>/dev/null; exit 0' TERM
        while :; do
            sleep "$interval" &
            sleeper=$!
            wait "$sleeper"
            kill -0 $$ 2>/dev/null || exit 0
            line="$message: $(duration $((SECONDS - start))) elapsed"
            if [[ -n "$packages" && -s "$packages" ]]; then
                # `go build -v` prints one import path per compiled package; errors look otherwise.
                n=$(grep -c '^[a-zA-Z0-9._~/-]*$' "$packages" || true)
                last=$(grep '^[a-zA-Z0-9._~/-]*$' "$packages" | tail -n1 || true)
                line="$line, $n packages compiled (last: $last)"
            fi
            log "$line"
        done
    ) >&2 &
    ticker_pid=$!
}

stop_ticker() {
    kill "$ticker_pid" 2>/dev/null || true
    wait "$ticker_pid" 2>/dev/null || true
}

# take_build_lock WHAT: hold the shared build lock on fd 9 until this script exits, saying
# who waits for whom meanwhile.
take_build_lock() {
    local what="$1" lock
    lock="$(build_lock_path)"
    mkdir -p "$(dirname "$lock")"
    exec 9>"$lock"
    if ! flock -n 9; then
        local start=$SECONDS
        log "waiting for another Go build to finish: $(cat "$lock.owner" 2>/dev/null || echo unknown)"
        progress_ticker "$start" "still waiting for the build lock ($lock)"
        flock 9
        stop_ticker
        log "waited $(duration $((SECONDS - start))) for the build lock"
    fi
    printf '%s (pid %s, since %s)\n' "$what" "$$" "$(date -u +%H:%M:%SZ)" >"$lock.owner"
}

# go_build_with_progress WHAT DIR GO_BUILD_ARGS...: `go build -v GO_BUILD_ARGS` in DIR, with a
# progress line every so often; on failure, the tail of go's output and a non-zero return.
go_build_with_progress() {
    local what="$1" dir="$2"
    shift 2
    local out times start=$SECONDS rc=0 TIMEFORMAT='%0U %0S'
    out="$(mktemp)"
    times="$(mktemp)"
    log "building $what (progress every ${MODELROUTE_PROGRESS_SECONDS:-30}s)"
    progress_ticker "$start" "building $what" "$out"
    { time (cd "$dir" && go build -v "$@" 2>"$out"); } 2>"$times" || rc=$?
    stop_ticker
    # CPU time tells what the build costs on a quiet machine (wall time ~ CPU / cores).
    local cpu
    cpu=$(awk '{ print $1 + $2 }' "$times" 2>/dev/null || true)
    rm -f "$times"
    if ((rc != 0)); then
        log "go build failed (exit $rc) after $(duration $((SECONDS - start))); its last lines:"
        grep -v '^[a-zA-Z0-9._~/-]*$' "$out" | tail -n 60 >&2
        rm -f "$out"
        return "$rc"
    fi
    rm -f "$out"
    log "built $what in $(duration $((SECONDS - start))) (${cpu:-?} CPU-seconds)"
}
