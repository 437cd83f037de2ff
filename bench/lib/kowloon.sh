# shellcheck shell=bash
# shellcheck disable=SC2034  # KB_* are read by the callers
# Kowloon's side of a bench: a private PostgreSQL (database "kowloon") and
# Redis, services started in their own process groups (stopped at exit by
# common.sh's traps), the gateway, /metrics and a process's memory. Source
# after common.sh and bench_init. Used by bench/seed-workload.sh and
# bench/webhooks.sh (bench/tenant-api.sh keeps its own copy of the start-up).
#
# Every process gets KOWLOON_LOG_LEVEL=warn and the bench's Redis; the
# endpoints of services a bench does not run point at a private port nobody
# listens on (never at another stack's service on the default ports).

KB_PIDS=()  # "name pid" of every service started, for kb_alive
KB_BASE=${KB_BASE:-yoursaas.test}

# kb_db_start: private PostgreSQL + Redis. Sets KB_PG_PORT, KB_PG_SOCK,
# KB_DB_URL (superuser, database kowloon), KB_REDIS_URL, KB_NONE.
kb_db_start() {
    bench_pg_start kowloon
    KB_PG_PORT=$BENCH_PG_PORT
    KB_PG_SOCK=$BENCH_PG_SOCK
    createdb -h "$KB_PG_SOCK" -p "$KB_PG_PORT" -U postgres kowloon || bench_die "createdb kowloon failed"
    KB_DB_URL="postgresql://postgres@127.0.0.1:$KB_PG_PORT/kowloon"
    bench_redis_start kowloon
    KB_REDIS_URL=redis://127.0.0.1:$BENCH_REDIS_PORT/0
    KB_NONE=tcp://127.0.0.1:$(kl_free_port)
}

# kb_psql SQL...: psql -At as postgres on database kowloon (ON_ERROR_STOP).
kb_psql() {
    PGOPTIONS=--client-min-messages=warning psql -q -X -At -v ON_ERROR_STOP=1 \
        -h "$KB_PG_SOCK" -p "$KB_PG_PORT" -U postgres -d kowloon "$@"
}

# kb_endpoint: a tcp:// endpoint on a free local port.
kb_endpoint() { echo "tcp://127.0.0.1:$(kl_free_port)"; }

# kb_service NAME BIN VAR=VALUE...: start a service (log $BENCH_TMP/NAME.log).
# Sets KB_LAST_PID.
kb_service() {
    local name=$1 bin=$2
    shift 2
    [ -x "$bin" ] || bench_die "$bin was not built"
    bench_start "$BENCH_TMP/$name.log" env \
        KOWLOON_LOG_LEVEL=warn KOWLOON_REDIS_URL="$KB_REDIS_URL" "$@" "$bin"
    KB_LAST_PID=$BENCH_LAST_PID
    KB_PIDS+=("$name $KB_LAST_PID")
}

# kb_alive: fail (with the log's tail) if a service started has exited.
kb_alive() {
    local e name pid
    for e in "${KB_PIDS[@]}"; do
        [ -n "$e" ] || continue
        name=${e% *} pid=${e##* }
        kill -0 "$pid" 2>/dev/null ||
            { tail -n 30 "$BENCH_TMP/$name.log" >&2; bench_die "$name exited"; }
    done
}

# kb_gateway BIN THREADS VAR=VALUE...: start the gateway on a free port with
# the admin token KB_ADMIN_TOKEN (made here), wait for /healthz and for
# /readyz (the tenant service reachable). Sets KB_GW_PID, KB_GW_PORT,
# KB_GW_URL. The VAR=VALUE pairs set the endpoints (any not given point at
# KB_NONE).
kb_gateway() {
    local bin=$1 threads=$2 code _
    shift 2
    KB_ADMIN_TOKEN=${KB_ADMIN_TOKEN:-$(head -c 24 /dev/urandom | base64 | tr -d '/+=')}
    KB_GW_PORT=$(kl_free_port)
    kb_service gateway "$bin" \
        KOWLOON_BASE_DOMAIN="$KB_BASE" \
        KOWLOON_PUBLIC_SCHEME=http \
        KOWLOON_HTTP_LISTEN="127.0.0.1:$KB_GW_PORT" \
        KOWLOON_HTTP_THREADS="$threads" \
        KOWLOON_ADMIN_TOKEN="$KB_ADMIN_TOKEN" \
        KOWLOON_TENANT_ENDPOINTS="$KB_NONE" \
        KOWLOON_FLAGS_ENDPOINTS="$KB_NONE" \
        KOWLOON_WORKSPACE_ENDPOINTS="$KB_NONE" \
        KOWLOON_BILLING_ENDPOINTS="$KB_NONE" \
        KOWLOON_MIGRATION_ENDPOINTS="$KB_NONE" \
        "$@"
    KB_GW_PID=$KB_LAST_PID
    KB_GW_URL=http://127.0.0.1:$KB_GW_PORT
    bench_wait_http "$KB_GW_URL/healthz" "$KB_GW_PID" 30 ||
        { tail -n 30 "$BENCH_TMP/gateway.log" >&2; bench_die "the gateway did not start"; }
    for _ in $(seq 1 100); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "$KB_GW_URL/readyz" || true)
        [ "$code" = 200 ] && break
        kb_alive
        sleep 0.2
    done
    [ "$code" = 200 ] || bench_die "the gateway's /readyz answered $code for 20 s"
}

# kb_metric NAME: the sum of NAME's series in the gateway's /metrics.
kb_metric() {
    curl -s --max-time 5 "$KB_GW_URL/metrics" |
        awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%.0f\n", s }'
}

# kb_rss_kb PID: VmRSS of PID in kB (/proc/PID/status).
kb_rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# kb_cpu_ticks PID: utime+stime of PID (all threads) in clock ticks.
kb_cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# kb_tree_ticks PID: CPU clock ticks (user+system) of PID and its children
# (a forking server: node's cluster, PostgreSQL's backends).
kb_tree_ticks() {
    local p t=0 v
    for p in $1 $(ps -o pid= --ppid "$1" 2>/dev/null); do
        v=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null) || continue
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

# kb_pg_pid DIR: the postmaster's pid of the cluster under DIR (kl_pg_start).
kb_pg_pid() { head -n1 "$1/data/postmaster.pid" 2>/dev/null; }

# kb_cpu_begin NAME=PID...: note CPU ticks of each tree; kb_cpu_end prints
# "NAME x% ..." (share of one core over the elapsed wall time), then the
# whole machine's busy share (wrk and everything else included).
kb_cpu_begin() {
    local e
    KB_CPU_NAMES=() KB_CPU_PIDS=() KB_CPU_T0=()
    for e in "$@"; do
        KB_CPU_NAMES+=("${e%%=*}")
        KB_CPU_PIDS+=("${e#*=}")
        KB_CPU_T0+=("$(kb_tree_ticks "${e#*=}")")
    done
    KB_CPU_WALL0=$(date +%s.%N)
    KB_CPU_MACHINE0=$(kb_machine_ticks)
}

# kb_machine_ticks: "busy total" jiffies of all cores (/proc/stat).
kb_machine_ticks() {
    awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}
kb_cpu_end() {
    local i hz wall out=''
    hz=$(getconf CLK_TCK)
    wall=$(awk -v a="$KB_CPU_WALL0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
    for i in "${!KB_CPU_NAMES[@]}"; do
        out+=$(awk -v n="${KB_CPU_NAMES[i]}" -v a="${KB_CPU_T0[i]}" -v b="$(kb_tree_ticks "${KB_CPU_PIDS[i]}")" \
            -v hz="$hz" -v w="$wall" 'BEGIN { printf "%s %.0f%% ", n, (b - a) / hz / w * 100 }')
    done
    out+=$(awk -v a="$KB_CPU_MACHINE0" -v b="$(kb_machine_ticks)" -v n="$(nproc)" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        printf "| whole machine %.0f%% of %d cores", (y[1] - x[1]) / (y[2] - x[2]) * 100 * n, n }')
    echo "$out"
}

# kb_perf_start NAME SECONDS PID...: with BENCH_PERF=1 only, sample the
# processes' on-CPU stacks for SECONDS (perf record -F 499 -g) into
# $BENCH_TMP/perf-NAME.data, in the background. perf takes CPU of its own
# on a small machine: a run with BENCH_PERF=1 is an analysis run, not a
# measurement to quote.
kb_perf_start() {
    local name=$1 secs=$2 pids
    shift 2
    KB_PERF_PID=
    [ -n "${BENCH_PERF:-}" ] || return 0
    command -v perf >/dev/null || { bench_say "BENCH_PERF set but perf is not installed: no profile"; return 0; }
    pids=$(IFS=,; echo "$*")
    perf record -q -F 499 -g -p "$pids" -o "$BENCH_TMP/perf-$name.data" -- sleep "$secs" \
        >"$BENCH_TMP/perf-$name.log" 2>&1 &
    KB_PERF_PID=$!
    KB_PERF_NAME=$name
}

# kb_perf_stop: wait for the recording, write the top of the report (by
# process and shared object, then by symbol) to $BENCH_TMP/perf-NAME.txt
# and print it on stderr.
kb_perf_stop() {
    [ -n "${KB_PERF_PID:-}" ] || return 0
    wait "$KB_PERF_PID" || true
    local d=$BENCH_TMP/perf-$KB_PERF_NAME
    {
        echo "== perf: samples by process and object =="
        perf report -i "$d.data" --stdio --no-children --sort comm,dso -g none 2>/dev/null | awk '!/^#/ && NF && n++ < 25'
        echo "== perf: top symbols =="
        perf report -i "$d.data" --stdio --no-children --sort comm,dso,sym -g none 2>/dev/null | awk '!/^#/ && NF && n++ < 40'
    } >"$d.txt" || true
    sed 's/^/    /' "$d.txt" >&2
    KB_PERF_PID=
}
