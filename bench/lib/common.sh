# shellcheck shell=bash
# shellcheck disable=SC2034  # WRK_* and BENCH_* are read by the callers
# Shared by every bench/*.sh: a scratch directory, a cleanup stack run on any
# exit (normal, error, Ctrl-C), background processes started in their own
# process group (so a forking server is stopped whole), wrk output parsing,
# and the seed-express anchor (npm ci cached under var/bench-cache/).
#
# Source it, then call bench_init NAME. Everything prints on stderr except the
# RESULT line the caller prints itself.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KL_ROOT=${KL_ROOT:-$(cd "$BENCH_DIR/.." && pwd)}
# shellcheck source=../../deploy/local/lib.sh
. "$KL_ROOT/deploy/local/lib.sh"

BENCH_ANCHORS=${BENCH_ANCHORS:-$KL_ROOT/../shared/anchors}
BENCH_CACHE=${BENCH_CACHE:-$KL_ROOT/var/bench-cache}
BENCH_NAME=bench
BENCH_TMP=
_BENCH_CLEANUPS=()
_BENCH_PGIDS=()

bench_say() { printf '%s\n' "bench[$BENCH_NAME]: $*" >&2; }
bench_die() { printf '%s\n' "bench[$BENCH_NAME]: FAILED: $*" >&2; exit 1; }

# bench_on_exit CMD...: run CMD (eval'd) at exit, last registered first.
bench_on_exit() { _BENCH_CLEANUPS+=("$*"); }

_bench_cleanup() {
    local rc=$? i pgid
    trap - EXIT INT TERM HUP
    set +e
    # Stop our process groups first (they may hold the databases open).
    for ((i = ${#_BENCH_PGIDS[@]} - 1; i >= 0; i--)); do
        pgid=${_BENCH_PGIDS[i]}
        bench_stop_group "$pgid"
    done
    for ((i = ${#_BENCH_CLEANUPS[@]} - 1; i >= 0; i--)); do
        eval "${_BENCH_CLEANUPS[i]}" >/dev/null 2>&1
    done
    if [ -n "$BENCH_TMP" ] && [ -d "$BENCH_TMP" ]; then
        if [ -n "${BENCH_KEEP_TMP:-}" ]; then
            bench_say "keeping $BENCH_TMP (BENCH_KEEP_TMP set)"
        else
            rm -rf "$BENCH_TMP"
        fi
    fi
    [ "$rc" -ne 0 ] && bench_say "exit status $rc (everything started was stopped)"
    exit "$rc"
}

# bench_init NAME: scratch dir in $BENCH_TMP, traps installed.
bench_init() {
    BENCH_NAME=$1
    trap _bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
    BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/kowloon-bench-$BENCH_NAME.XXXXXX") ||
        bench_die "mktemp -d failed"
    chmod 755 "$BENCH_TMP" # the postgres user keeps its data under it
    mkdir -p "$BENCH_CACHE"
}

# bench_start LOG CMD...: CMD in the background in a new process group (its
# pid is the group id), output to LOG. Sets BENCH_LAST_PID. Stopped at exit.
bench_start() {
    local log=$1; shift
    setsid "$@" >"$log" 2>&1 </dev/null &
    BENCH_LAST_PID=$!
    _BENCH_PGIDS+=("$BENCH_LAST_PID")
}

# bench_stop_group PGID: SIGTERM the group, SIGKILL what is left after 10 s.
bench_stop_group() {
    local pgid=$1 i
    kill -0 -- "-$pgid" 2>/dev/null || return 0
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 -- "-$pgid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 -- "-$pgid" 2>/dev/null; then
        bench_say "process group $pgid still alive 10 s after SIGTERM: SIGKILL"
        kill -KILL -- "-$pgid" 2>/dev/null || true
    fi
    wait "$pgid" 2>/dev/null || true
    return 0
}

# bench_stop PID: stop a group started by bench_start now (not only at exit).
bench_stop() {
    local pid=$1 i
    bench_stop_group "$pid"
    for i in "${!_BENCH_PGIDS[@]}"; do
        if [ "${_BENCH_PGIDS[i]}" = "$pid" ]; then unset '_BENCH_PGIDS[i]'; fi
    done
    _BENCH_PGIDS=("${_BENCH_PGIDS[@]}")
    return 0
}

# bench_wait_http URL PID [SECONDS] [CURL_ARGS...]: wait until URL answers
# (any HTTP status), failing if PID dies first.
bench_wait_http() {
    local url=$1 pid=$2 secs=${3:-30} i
    shift 3 2>/dev/null || shift $#
    for i in $(seq 1 $((secs * 10))); do
        kill -0 "$pid" 2>/dev/null || return 1
        curl -s -o /dev/null --max-time 1 "$@" "$url" && return 0
        sleep 0.1
    done
    return 1
}

# bench_median VALUES...: the median (mean of the middle two for an even
# count), 3 decimals.
bench_median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) exit 1
        if (NR % 2) printf "%.3f", v[(NR + 1) / 2]
        else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# bench_pg_start NAME -> BENCH_PG_DIR, BENCH_PG_PORT, BENCH_PG_SOCK: a private
# PostgreSQL under the scratch dir, stopped at exit.
bench_pg_start() {
    local name=$1
    BENCH_PG_DIR=$BENCH_TMP/$name-pg
    BENCH_PG_PORT=$(kl_free_port)
    bench_on_exit "kl_pg_stop '$BENCH_PG_DIR'"
    kl_pg_start "$BENCH_PG_DIR" "$BENCH_PG_PORT"
    BENCH_PG_SOCK=$BENCH_PG_DIR/run
}

# bench_redis_start NAME -> BENCH_REDIS_DIR, BENCH_REDIS_PORT.
bench_redis_start() {
    local name=$1
    BENCH_REDIS_DIR=$BENCH_TMP/$name-redis
    BENCH_REDIS_PORT=$(kl_free_port)
    bench_on_exit "kl_redis_stop '$BENCH_REDIS_DIR'"
    kl_redis_start "$BENCH_REDIS_DIR" "$BENCH_REDIS_PORT"
}

# bench_wrk OUT_PREFIX WRK_ARGS...: run wrk, keep its output in
# OUT_PREFIX.txt and parse it into WRK_RPS, WRK_P50_MS, WRK_P99_MS,
# WRK_NON2XX, WRK_SOCKET_ERRORS, WRK_REQUESTS. Fails if wrk fails or
# its output lacks the figures.
bench_wrk() {
    local out=$1.txt; shift
    bench_say "wrk $*"
    wrk "$@" >"$out" 2>&1 || { cat "$out" >&2; bench_die "wrk failed"; }
    sed 's/^/    /' "$out" >&2
    bench_parse_wrk "$out" || bench_die "could not parse the wrk output in $out"
}

# bench_wrk_warm WRK_ARGS...: a warm-up run; its figures are not kept.
bench_wrk_warm() {
    local out
    out=$(wrk "$@" 2>&1) || { printf '%s\n' "$out" >&2; bench_die "warm-up wrk failed"; }
    bench_say "warm-up: $(printf '%s\n' "$out" | awk '/requests in/ { printf "%s", $0 } /Non-2xx/ { printf ",%s", $0 }')"
}

# bench_duration_s "10s"|"2m"|"30": a wrk duration in whole seconds.
bench_duration_s() {
    case $1 in
    *s) echo "${1%s}" ;;
    *m) echo $((${1%m} * 60)) ;;
    *h) echo $((${1%h} * 3600)) ;;
    *) echo "$1" ;;
    esac
}

# bench_wrk_watched PORT OUT_PREFIX WRK_ARGS...: bench_wrk, plus a look at
# the server's sockets at about 70% of the run. A server that serves fewer
# keep-alive connections at once than wrk opens (civetweb gives each
# connection a thread until it closes) leaves the others unanswered, and wrk
# reports neither errors nor their latency: it just measures fewer
# connections. Sets WRK_STARVED: established connections to PORT that had
# received at most 5 segments (they sent their first request and were
# never served) out of WRK_CONNS_SEEN.
bench_wrk_watched() {
    local port=$1 prefix=$2 secs snap
    shift 2
    secs=$(bench_duration_s "$(printf '%s\n' "$@" | sed -n 's/^-d//p' | head -n1)")
    snap=$prefix.ss
    (sleep "$(awk -v s="${secs:-10}" 'BEGIN { print s * 0.7 }')" &&
        ss -tni state established "( sport = :$port )" >"$snap" 2>&1) &
    local watcher=$!
    bench_wrk "$prefix" "$@"
    wait "$watcher" || true
    WRK_CONNS_SEEN=$(grep -cE '(^|[[:space:]])segs_in:' "$snap" || true)
    WRK_STARVED=$(grep -oE '(^|[[:space:]])segs_in:[0-9]+' "$snap" | tr -d '[:blank:]' | awk -F: '$2 <= 5 { n++ } END { print n + 0 }')
    bench_say "sockets at 70% of the run: $WRK_CONNS_SEEN established, $WRK_STARVED never served"
}

# bench_wrk_time_ms VALUE: a wrk time ("850.00us", "12.34ms", "1.02s",
# "1.50m", "2.00h") in milliseconds.
bench_wrk_time_ms() {
    awk -v v="$1" 'BEGIN {
        if (match(v, /^[0-9.]+/) == 0) exit 1
        n = substr(v, 1, RLENGTH); u = substr(v, RLENGTH + 1)
        if (u == "us") f = 0.001; else if (u == "ms") f = 1; else if (u == "s") f = 1000;
        else if (u == "m") f = 60000; else if (u == "h") f = 3600000; else exit 1
        printf "%.3f\n", n * f }'
}

bench_parse_wrk() {
    local f=$1 p50 p99
    WRK_RPS=$(awk '/^Requests\/sec:/ { print $2 }' "$f")
    WRK_REQUESTS=$(awk '/ requests in / { print $1 }' "$f")
    p50=$(awk '$1 == "50%" { print $2 }' "$f")
    p99=$(awk '$1 == "99%" { print $2 }' "$f")
    WRK_NON2XX=$(awk -F: '/Non-2xx or 3xx responses/ { gsub(/ /, "", $2); print $2 }' "$f")
    WRK_NON2XX=${WRK_NON2XX:-0}
    WRK_SOCKET_ERRORS=$(sed -n 's/^ *Socket errors: *//p' "$f")
    [ -n "$WRK_RPS" ] && [ -n "$p50" ] && [ -n "$p99" ] && [ -n "$WRK_REQUESTS" ] || return 1
    WRK_P50_MS=$(bench_wrk_time_ms "$p50") || return 1
    WRK_P99_MS=$(bench_wrk_time_ms "$p99") || return 1
}

# bench_wrk_check LABEL [starved-ok]: the last parsed run is invalid unless
# every response was 2xx/3xx, no socket error occurred and (unless
# starved-ok) every connection was served (bench_wrk_watched).
bench_wrk_check() {
    local label=$1 starved_ok=${2:-}
    [ "$WRK_NON2XX" = 0 ] ||
        bench_die "$label: $WRK_NON2XX of $WRK_REQUESTS responses were not 2xx/3xx: the run is invalid"
    [ -z "$WRK_SOCKET_ERRORS" ] ||
        bench_die "$label: wrk reported socket errors ($WRK_SOCKET_ERRORS): the run is invalid"
    [ "${WRK_REQUESTS:-0}" -gt 0 ] || bench_die "$label: wrk completed no request"
    [ "${WRK_STARVED:-0}" = 0 ] || [ -n "$starved_ok" ] ||
        bench_die "$label: $WRK_STARVED of wrk's connections were never served (the server serves fewer connections at once than wrk opens): the run is invalid"
}

# bench_anchor_install -> BENCH_ANCHOR_DIR: seed-express and tenants.lua
# copied to the scratch dir, node_modules from var/bench-cache/ (keyed by
# package-lock.json's sha256), npm ci on a miss.
bench_anchor_install() {
    local src=$BENCH_ANCHORS hash cache staging
    [ -f "$src/seed-express/package-lock.json" ] || bench_die "no anchor at $src (set BENCH_ANCHORS)"
    cp -r "$src/seed-express" "$src/tenants.lua" "$BENCH_TMP"/
    chmod -R u+w "$BENCH_TMP/seed-express" "$BENCH_TMP/tenants.lua"
    BENCH_ANCHOR_DIR=$BENCH_TMP/seed-express
    hash=$(sha256sum "$src/seed-express/package-lock.json" | cut -c1-16)
    cache=$BENCH_CACHE/seed-express-$hash
    if [ ! -d "$cache/node_modules" ]; then
        bench_say "npm ci for the anchor (cache miss: $cache)"
        (cd "$BENCH_ANCHOR_DIR" && npm ci --no-audit --no-fund --loglevel=error) >&2 ||
            bench_die "npm ci failed"
        staging=$(mktemp -d "$BENCH_CACHE/.staging.XXXXXX")
        bench_on_exit "rm -rf '$staging'"
        cp -a "$BENCH_ANCHOR_DIR/node_modules" "$staging/" &&
            mv -T "$staging" "$cache" 2>/dev/null
    else
        bench_say "anchor node_modules from cache $cache"
        ln -s "$cache/node_modules" "$BENCH_ANCHOR_DIR/node_modules"
    fi
}

# bench_anchor_start: private PostgreSQL + Redis with the anchor's 10,000
# tenants and plan features, then `node app.js` (one worker per core).
# Sets BENCH_ANCHOR_PORT, BENCH_ANCHOR_PID.
bench_anchor_start() {
    local sock body
    bench_pg_start anchor
    bench_redis_start anchor
    sock=$BENCH_PG_SOCK
    createdb -h "$sock" -p "$BENCH_PG_PORT" -U postgres seed || bench_die "createdb seed failed"
    PGOPTIONS=--client-min-messages=warning psql -q -X -v ON_ERROR_STOP=1 -h "$sock" -p "$BENCH_PG_PORT" -U postgres -d seed \
        -f "$BENCH_ANCHOR_DIR/setup.sql" >&2 || bench_die "setup.sql failed"
    redis-cli -p "$BENCH_REDIS_PORT" set plan:pro:features '["data_export","advanced_reports"]' >/dev/null
    redis-cli -p "$BENCH_REDIS_PORT" set plan:starter:features '["basic"]' >/dev/null
    BENCH_ANCHOR_PORT=$(kl_free_port)
    bench_start "$BENCH_TMP/anchor.log" env -C "$BENCH_ANCHOR_DIR" \
        PGHOST="$sock" PGPORT="$BENCH_PG_PORT" PGUSER=postgres PGDATABASE=seed \
        REDIS_PORT="$BENCH_REDIS_PORT" PORT="$BENCH_ANCHOR_PORT" node app.js
    BENCH_ANCHOR_PID=$BENCH_LAST_PID
    bench_wait_http "http://127.0.0.1:$BENCH_ANCHOR_PORT/api/whoami" "$BENCH_ANCHOR_PID" 30 \
        -H "Host: tenant1.yoursaas.test" ||
        { cat "$BENCH_TMP/anchor.log" >&2; bench_die "the anchor did not start"; }
    body=$(curl -s -H "Host: tenant2.yoursaas.test" "http://127.0.0.1:$BENCH_ANCHOR_PORT/api/whoami")
    [ "$body" = '{"tenant":"tenant2","plan":"pro"}' ] ||
        bench_die "the anchor answered $body to tenant2's /api/whoami"
    bench_say "anchor (node app.js, $(nproc) workers) on 127.0.0.1:$BENCH_ANCHOR_PORT"
}

# bench_anchor_stop: stop node and the anchor's databases now.
bench_anchor_stop() {
    bench_stop "$BENCH_ANCHOR_PID"
    kl_redis_stop "$BENCH_TMP/anchor-redis"
    kl_pg_stop "$BENCH_TMP/anchor-pg"
}

# bench_build DIR TARGETS -- CMAKE_ARGS...: like kl_build (configure once,
# same logs), but builds only the targets a bench needs, so it neither waits
# for nor trips over unrelated parts of the tree.
bench_build() {
    local dir=$1; shift
    local targets=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do targets+=(--target "$1"); shift; done
    [ $# -gt 0 ] && shift
    if [ ! -f "$dir/CMakeCache.txt" ]; then
        bench_say "configuring $dir"
        cmake -S "$KL_ROOT" -B "$dir" "$@" >"$dir.configure.log" 2>&1 ||
            { cat "$dir.configure.log" >&2; bench_die "cmake configure failed"; }
    fi
    bench_say "building ${targets[*]} in $dir"
    cmake --build "$dir" -j"$(nproc)" "${targets[@]}" >"$dir.build.log" 2>&1 ||
        { tail -n 40 "$dir.build.log" >&2; bench_die "build failed (log: $dir.build.log)"; }
}

# bench_machine: one line describing the machine.
bench_machine() {
    printf '%s cores, %s, %s MB RAM, %s\n' "$(nproc)" \
        "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
        "$(awk '/^MemTotal/ { print int($2 / 1024) }' /proc/meminfo)" "$(uname -r)"
}

# bench_wrk_status FILE CODE: answers with HTTP status CODE in a wrk output
# FILE made with a script that prints "status <code> <count>" lines in done()
# (bench/lib/seed-workload.lua, webhooks.lua). CODE may be a class: 2xx...
bench_wrk_status() {
    awk -v c="$2" '$1 == "status" && ($2 == c || (c ~ /xx$/ && substr($2, 1, 1) == substr(c, 1, 1))) { n += $3 }
        END { print n + 0 }' "$1"
}

# bench_wrk_statuses FILE: "200=n 403=m ..." from such a file.
bench_wrk_statuses() {
    awk '$1 == "status" { printf "%s%s=%s", sep, $2, $3; sep = " " } END { print "" }' "$1"
}
