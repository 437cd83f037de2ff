#!/usr/bin/env bash
# bench/seed-workload.sh — issue #3: the seed workload. 10,000 tenants, even
# ones on plan pro, odd ones on starter (the anchor's setup.sql); wrk sends
# GET /api/advanced-reports for a random tenant per request: starter
# tenants are answered 403 at the edge, pro tenants are served by the
# workspace service (a tenant-scoped PostgreSQL transaction per request).
# Side by side, in the same run, with the seed's Express anchor's
# /api/advanced-reports (tenant from PostgreSQL and plan features from Redis
# on every request). Also measures the gateway's entitlements cache in
# process (lookups + feature check per second, 1 and 2 threads) and the
# gateway's resident memory with 10,000 and 100,000 tenants cached.
# See docs/benchmarks.md.
#
# Builds what it needs (Release, -DKOWLOON_BENCH=ON: gateway, tenant, flags,
# workspace, bench/micro/gw_entitlements_bench), starts private PostgreSQL
# and Redis for each side, stops everything it started and removes its
# scratch dir on any exit. The last stdout line is:
#   RESULT name=seed-workload ratio=<k/a> kowloon=<rps> anchor=<rps> \
#          unit=req/s p99_kowloon_ms=<ms> p99_anchor_ms=<ms>
#
# Settings (environment):
#   BENCH_TENANTS=10000          tenants of the measured run (the anchor has 10,000)
#   BENCH_LARGE_TENANTS=100000   tenants cached for the second memory figure
#                                ("" or 0 skips it)
#   BENCH_WRK_THREADS=2 BENCH_WRK_CONNECTIONS=64 BENCH_DURATION=10s
#   BENCH_WARM_DURATION=3s       wrk warm-up before each measured run
#   BENCH_HTTP_THREADS=96        KOWLOON_HTTP_THREADS of the gateway
#   BENCH_WORKERS=4              KOWLOON_WORKERS of tenant, flags, workspace
#   BENCH_LOAD_CONCURRENCY=16    admin-API client threads loading tenants
#   BENCH_MICRO_SECONDS=2        length of each micro-benchmark measurement
#   BENCH_BUILD_DIR=$KL_ROOT/build-bench2   BENCH_SKIP_BUILD=1 uses what is there
#   BENCH_KEEP_TMP=1 keeps the scratch dir (logs, wrk outputs, keys)
#   BENCH_SPLIT=1 also runs Kowloon with the keys of one plan at a time
#                (all 403 at the edge, then all through the workspace)
#   BENCH_PERF=1 profiles Kowloon's measured run (perf record; an analysis
#                run: perf's own CPU use lowers the figures)
set -euo pipefail

. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib/common.sh"
. "$BENCH_DIR/lib/kowloon.sh"

TENANTS=${BENCH_TENANTS:-10000}
LARGE=${BENCH_LARGE_TENANTS-100000}
[ "$LARGE" = 0 ] && LARGE=
WRK_T=${BENCH_WRK_THREADS:-2}
WRK_C=${BENCH_WRK_CONNECTIONS:-64}
DURATION=${BENCH_DURATION:-10s}
WARM=${BENCH_WARM_DURATION:-3s}
HTTP_THREADS=${BENCH_HTTP_THREADS:-96}
WORKERS=${BENCH_WORKERS:-4}
LOAD_CONC=${BENCH_LOAD_CONCURRENCY:-16}
MICRO_S=${BENCH_MICRO_SECONDS:-2}
BUILD=${BENCH_BUILD_DIR:-$KL_ROOT/build-bench2}
BASE=$KB_BASE
PATH_=/api/advanced-reports
WRK_ARGS=(-t"$WRK_T" -c"$WRK_C" -d"$DURATION" --latency)
LUA=$BENCH_DIR/lib/seed-workload.lua

bench_init seed-workload
bench_say "machine: $(bench_machine); load average $(cut -d' ' -f1-3 /proc/loadavg)"

# --- build -------------------------------------------------------------------
extra=()
command -v wrk >/dev/null || extra+=(wrk)
command -v node >/dev/null || extra+=(nodejs)
command -v npm >/dev/null || extra+=(npm)
kl_install_packages "${extra[@]}"
if [ -n "${BENCH_SKIP_BUILD:-}" ]; then
    bench_say "BENCH_SKIP_BUILD set: using the binaries already in $BUILD"
else
    # An existing build dir configured without the micro-benchmarks: turn
    # them on (bench_build configures only a new directory).
    if [ -f "$BUILD/CMakeCache.txt" ] && ! grep -q '^KOWLOON_BENCH:BOOL=ON' "$BUILD/CMakeCache.txt"; then
        cmake -S "$KL_ROOT" -B "$BUILD" -DKOWLOON_BENCH=ON >"$BUILD.configure.log" 2>&1 ||
            { cat "$BUILD.configure.log" >&2; bench_die "cmake -DKOWLOON_BENCH=ON failed"; }
    fi
    bench_build "$BUILD" kowloon-gateway kowloon-tenant kowloon-flags kowloon-workspace \
        gw_entitlements_bench -- \
        -DCMAKE_BUILD_TYPE=Release -DKOWLOON_ASAN=OFF -DKOWLOON_TSAN=OFF -DKOWLOON_BENCH=ON
fi
GATEWAY_BIN=$BUILD/gateway/kowloon-gateway
TENANT_BIN=$BUILD/services/tenant/kowloon-tenant
FLAGS_BIN=$BUILD/services/flags/kowloon-flags
WORKSPACE_BIN=$BUILD/services/workspace/kowloon-workspace
MICRO_BIN=$BUILD/bench/micro/gw_entitlements_bench
for b in "$GATEWAY_BIN" "$TENANT_BIN" "$FLAGS_BIN" "$WORKSPACE_BIN" "$MICRO_BIN"; do
    [ -x "$b" ] || bench_die "$b was not built"
done

# check_split LABEL FILE: the run is valid only if every answer was 200 or
# 403, none 429 or 5xx, each of 200 and 403 is 45-55% of the answers, no
# socket error and every connection was served.
check_split() {
    local label=$1 f=$2 n200 n403 total other
    n200=$(bench_wrk_status "$f" 200)
    n403=$(bench_wrk_status "$f" 403)
    total=$(awk '$1 == "status" { n += $3 } END { print n + 0 }' "$f")
    other=$((total - n200 - n403))
    bench_say "$label: statuses $(bench_wrk_statuses "$f") (of $WRK_REQUESTS requests)"
    [ "$total" -gt 0 ] || bench_die "$label: no answer counted"
    [ "$(bench_wrk_status "$f" 429)" = 0 ] || bench_die "$label: 429 answers (rate limit): the run is invalid"
    [ "$(bench_wrk_status "$f" 5xx)" = 0 ] || bench_die "$label: 5xx answers: the run is invalid"
    [ "$other" = 0 ] || bench_die "$label: $other answers neither 200 nor 403: the run is invalid"
    awk -v a="$n200" -v b="$n403" -v t="$total" 'BEGIN { exit !(a >= 0.45 * t && b >= 0.45 * t) }' ||
        bench_die "$label: 200/403 split $n200/$n403 is not about half and half"
    [ -z "$WRK_SOCKET_ERRORS" ] || bench_die "$label: wrk reported socket errors ($WRK_SOCKET_ERRORS): the run is invalid"
    [ "${WRK_STARVED:-0}" = 0 ] ||
        bench_die "$label: $WRK_STARVED of wrk's connections were never served: the run is invalid"
    SPLIT="200=$n200 403=$n403"
}

# --- 1. the entitlements cache in process (before any server runs) -----------
bench_say "micro-benchmark: gw_entitlements_get + gw_ent_allows, $TENANTS tenants, ${MICRO_S} s per measurement"
MICRO_OUT=$("$MICRO_BIN" "$TENANTS" "$MICRO_S" 1 2) || { printf '%s\n' "$MICRO_OUT" >&2; bench_die "the micro-benchmark failed"; }
printf '%s\n' "$MICRO_OUT" | sed 's/^/    /' >&2
micro() { printf '%s\n' "$MICRO_OUT" | awk -v m="$1" -v t="$2" '$2 == "mode=" m && $3 == "threads=" t { sub("lookups_per_s=", "", $7); print $7 }'; }
M_GET1=$(micro get 1) M_GET2=$(micro get 2) M_BKT1=$(micro get+bucket 1) M_BKT2=$(micro get+bucket 2)

# --- 2. the anchor -------------------------------------------------------------
bench_anchor_install
bench_anchor_start
ANCHOR_URL=http://127.0.0.1:$BENCH_ANCHOR_PORT/
for t in 1 2; do # tenant1 starter: 403; tenant2 pro: 200
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: tenant$t.$BASE" "${ANCHOR_URL%/}$PATH_")
    [ "$code" = $((t == 1 ? 403 : 200)) ] || bench_die "the anchor answered $code to tenant$t's $PATH_"
done
export TENANTS WRK_PATH=$PATH_ BASE_DOMAIN=$BASE
bench_wrk_warm -t"$WRK_T" -c"$WRK_C" -d"$WARM" -s "$LUA" "$ANCHOR_URL"
A_NODE_PGID=$BENCH_ANCHOR_PID
kb_cpu_begin node="$A_NODE_PGID" postgres="$(kb_pg_pid "$BENCH_TMP/anchor-pg")" \
    redis="$(cat "$BENCH_TMP/anchor-redis/redis.pid" 2>/dev/null || echo 0)"
bench_wrk_watched "$BENCH_ANCHOR_PORT" "$BENCH_TMP/wrk-anchor" "${WRK_ARGS[@]}" -s "$LUA" "$ANCHOR_URL"
A_CPU=$(kb_cpu_end)
check_split anchor "$BENCH_TMP/wrk-anchor.txt"
A_RPS=$WRK_RPS A_P50=$WRK_P50_MS A_P99=$WRK_P99_MS A_SPLIT=$SPLIT
unset WRK_PATH
bench_anchor_stop
bench_say "anchor: $A_RPS req/s, p50 $A_P50 ms, p99 $A_P99 ms ($A_SPLIT); CPU: $A_CPU"

# --- 3. Kowloon ----------------------------------------------------------------
kb_db_start
# Two roles for the workspace service (docs/workspace-service.md): the owner
# (here the superuser postgres, as in integration-tests/harness.py) and an
# application role that owns nothing and is subject to row-level security.
kb_psql -c "CREATE ROLE ws_app LOGIN NOSUPERUSER NOBYPASSRLS" >/dev/null
WS_APP_URL="postgresql://ws_app@127.0.0.1:$KB_PG_PORT/kowloon"
# The workspace tables: services/workspace/migrations/V*.sql applied to the
# row model's shared schema "workspace" as the owner, as
# integration-tests/harness.py apply_product_migrations does (the workspace
# binary no longer creates them and refuses to start without them).
kb_psql -c "CREATE SCHEMA IF NOT EXISTS workspace" >/dev/null
for f in "$KL_ROOT"/services/workspace/migrations/V*.sql; do
    { echo "SET search_path = workspace;"; cat "$f"; } | kb_psql >/dev/null ||
        bench_die "applying $f failed"
done

K_TENANT_ZMQ=$(kb_endpoint) K_FLAGS_ZMQ=$(kb_endpoint) K_WS_ZMQ=$(kb_endpoint)
kb_service tenant "$TENANT_BIN" KOWLOON_DATABASE_URL="$KB_DB_URL" \
    KOWLOON_WORKERS="$WORKERS" KOWLOON_TENANT_BIND="$K_TENANT_ZMQ"
TENANT_PID=$KB_LAST_PID
kb_service flags "$FLAGS_BIN" KOWLOON_DATABASE_URL="$KB_DB_URL" \
    KOWLOON_WORKERS="$WORKERS" KOWLOON_FLAGS_BIND="$K_FLAGS_ZMQ"
FLAGS_PID=$KB_LAST_PID
kb_service workspace "$WORKSPACE_BIN" KOWLOON_DATABASE_URL="$WS_APP_URL" \
    KOWLOON_DATA_OWNER_URL="$KB_DB_URL" KOWLOON_WORKERS="$WORKERS" \
    KOWLOON_WORKSPACE_BIND="$K_WS_ZMQ" KOWLOON_FLAGS_ENDPOINTS="$K_FLAGS_ZMQ"
WS_PID=$KB_LAST_PID
kb_gateway "$GATEWAY_BIN" "$HTTP_THREADS" KOWLOON_TENANT_ENDPOINTS="$K_TENANT_ZMQ" \
    KOWLOON_FLAGS_ENDPOINTS="$K_FLAGS_ZMQ" KOWLOON_WORKSPACE_ENDPOINTS="$K_WS_ZMQ"
GW_PID=$KB_GW_PID
RSS_EMPTY=$(kb_rss_kb "$GW_PID")

KEYS=$BENCH_TMP/keys.txt
bench_say "loading $TENANTS tenants (even pro, odd starter) and $TENANTS API keys through the admin API ($LOAD_CONC clients)"
LOAD_JSON=$(python3 "$BENCH_DIR/lib/load_tenants.py" load --url "$KB_GW_URL" \
    --base-domain "$BASE" --admin-token "$KB_ADMIN_TOKEN" --count "$TENANTS" --plans pro,starter \
    --concurrency "$LOAD_CONC" --keys-out "$KEYS") || bench_die "loading the tenants failed"
LOAD_SECS=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["seconds"])' "$LOAD_JSON")
bench_say "loaded: $LOAD_JSON"
kb_alive

# The key is checked: tenant2 (pro) without a key, and with tenant4's key,
# must be refused.
read -r _ KEY4 < <(sed -n 4p "$KEYS")
for hdr in "X-No-Key: 1" "Authorization: Bearer $KEY4"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: tenant2.$BASE" -H "$hdr" "$KB_GW_URL$PATH_")
    [ "$code" = 401 ] || bench_die "tenant2's $PATH_ answered $code to ${hdr%%:*} (want 401): auth is not enforced"
done

# Warm pass: every tenant once with its key (200 for pro, 403 for starter,
# checked), which fills the tenant, key and entitlements caches.
WARM_JSON=$(python3 "$BENCH_DIR/lib/seed_warm.py" --url "$KB_GW_URL" --keys "$KEYS" \
    --base-domain "$BASE" --path "$PATH_" --concurrency "$LOAD_CONC") ||
    bench_die "a tenant got an unexpected answer in the warm pass"
bench_say "warm pass over every tenant: $WARM_JSON"
RSS_10K=$(kb_rss_kb "$GW_PID")
ENTRIES_10K="tenants+keys=$(kb_metric kowloon_tenant_cache_entries) entitlements=$(kb_metric kowloon_entitlements_cache_entries)"
bench_say "gateway VmRSS: $RSS_EMPTY kB at start, $RSS_10K kB with $TENANTS tenants cached ($ENTRIES_10K)"

export KEYS_FILE=$KEYS WRK_PATH=$PATH_
bench_wrk_warm -t"$WRK_T" -c"$WRK_C" -d"$WARM" -s "$LUA" "$KB_GW_URL/"
miss0=$(kb_metric kowloon_tenant_cache_misses_total)
emiss0=$(kb_metric kowloon_entitlements_cache_misses_total)
rpc0=$(kb_metric kowloon_rpc_calls_total)
kb_cpu_begin gateway="$GW_PID" workspace="$WS_PID" tenant="$TENANT_PID" flags="$FLAGS_PID" \
    postgres="$(kb_pg_pid "$BENCH_TMP/kowloon-pg")" redis="$(cat "$BENCH_TMP/kowloon-redis/redis.pid" 2>/dev/null || echo 0)"
# shellcheck disable=SC2046 # one pid per PostgreSQL backend
kb_perf_start kowloon "$(awk -v s="$(bench_duration_s "$DURATION")" 'BEGIN { print s * 0.8 }')" \
    "$GW_PID" "$WS_PID" "$(kb_pg_pid "$BENCH_TMP/kowloon-pg")" $(ps -o pid= --ppid "$(kb_pg_pid "$BENCH_TMP/kowloon-pg")")
bench_wrk_watched "$KB_GW_PORT" "$BENCH_TMP/wrk-kowloon" "${WRK_ARGS[@]}" -s "$LUA" "$KB_GW_URL/"
K_CPU=$(kb_cpu_end)
kb_perf_stop
unset KEYS_FILE WRK_PATH
K_MISSES=$(($(kb_metric kowloon_tenant_cache_misses_total) - miss0))
K_EMISSES=$(($(kb_metric kowloon_entitlements_cache_misses_total) - emiss0))
K_RPCS=$(($(kb_metric kowloon_rpc_calls_total) - rpc0))
kb_alive
check_split kowloon "$BENCH_TMP/wrk-kowloon.txt"
K_RPS=$WRK_RPS K_P50=$WRK_P50_MS K_P99=$WRK_P99_MS K_SPLIT=$SPLIT
bench_say "kowloon: $K_RPS req/s, p50 $K_P50 ms, p99 $K_P99 ms ($K_SPLIT); CPU: $K_CPU"
bench_say "kowloon: during the measured run $K_MISSES tenant/key cache misses, $K_EMISSES entitlements misses, $K_RPCS rpc calls (workspace calls included)"

# --- 3b. each half alone (BENCH_SPLIT=1) -----------------------------------------
# Kowloon again, with the keys of one plan only: every request a 403 at the
# edge (starter), or every one through the workspace service and PostgreSQL
# (pro). Shows where the mixed run's time goes; analysis, not the target.
SPLIT_LINES=''
if [ -n "${BENCH_SPLIT:-}" ]; then
    awk 'NR % 2 == 0' "$KEYS" >"$BENCH_TMP/keys-pro.txt"
    awk 'NR % 2 == 1' "$KEYS" >"$BENCH_TMP/keys-starter.txt"
    for half in starter pro; do
        want=$([ "$half" = pro ] && echo 200 || echo 403)
        export KEYS_FILE=$BENCH_TMP/keys-$half.txt WRK_PATH=$PATH_
        bench_wrk_warm -t"$WRK_T" -c"$WRK_C" -d"$WARM" -s "$LUA" "$KB_GW_URL/"
        kb_cpu_begin gateway="$GW_PID" workspace="$WS_PID" postgres="$(kb_pg_pid "$BENCH_TMP/kowloon-pg")"
        bench_wrk_watched "$KB_GW_PORT" "$BENCH_TMP/wrk-$half" "${WRK_ARGS[@]}" -s "$LUA" "$KB_GW_URL/"
        cpu=$(kb_cpu_end)
        unset KEYS_FILE WRK_PATH
        # Alone, the edge answers the starter half fast enough to pass 600
        # requests a minute per tenant: its 429s are answers of the edge
        # too (token bucket, no I/O) and are counted with the 403s.
        n=$(bench_wrk_status "$BENCH_TMP/wrk-$half.txt" "$want")
        [ "$half" = starter ] && n=$((n + $(bench_wrk_status "$BENCH_TMP/wrk-$half.txt" 429)))
        total=$(awk '$1 == "status" { n += $3 } END { print n + 0 }' "$BENCH_TMP/wrk-$half.txt")
        [ "$total" -gt 0 ] && [ "$n" = "$total" ] && [ -z "$WRK_SOCKET_ERRORS" ] ||
            bench_die "$half only: statuses $(bench_wrk_statuses "$BENCH_TMP/wrk-$half.txt"), want all $want"
        line="$half only: $WRK_RPS req/s, p50 $WRK_P50_MS ms, p99 $WRK_P99_MS ms, statuses $(bench_wrk_statuses "$BENCH_TMP/wrk-$half.txt"); CPU: $cpu"
        bench_say "kowloon, $line"
        SPLIT_LINES+="          $line"$'\n'
    done
    kb_alive
fi

# --- 4. memory with LARGE tenants cached ----------------------------------------
# A second gateway on the same services, whose caches hold every entry for
# the whole load (TTLs of 15 min, room for LARGE tenants + LARGE keys): with
# the default 30 s TTLs, entries of the first tenants would lapse while the
# last ones load, and VmRSS would not be that of LARGE tenants cached.
RSS_LARGE='' LARGE_LOAD_SECS='' LARGE_WARM_SECS='' ENTRIES_LARGE='' RSS_LARGE_EMPTY=''
if [ -n "$LARGE" ] && [ "$LARGE" -gt "$TENANTS" ]; then
    more=$((LARGE - TENANTS))
    KEYS_L=$BENCH_TMP/keys-large.txt
    bench_say "loading $more more tenants and keys through the admin API (prefix big)"
    LJSON=$(python3 "$BENCH_DIR/lib/load_tenants.py" load --url "$KB_GW_URL" \
        --base-domain "$BASE" --admin-token "$KB_ADMIN_TOKEN" --count "$more" --prefix big \
        --plans pro,starter --concurrency "$LOAD_CONC" --keys-out "$KEYS_L") ||
        bench_die "loading the large tenant set failed"
    LARGE_LOAD_SECS=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["seconds"])' "$LJSON")
    bench_say "loaded: $LJSON"
    bench_stop "$GW_PID"
    KB_PIDS=("${KB_PIDS[@]/gateway $GW_PID/}")
    kb_gateway "$GATEWAY_BIN" "$HTTP_THREADS" KOWLOON_TENANT_ENDPOINTS="$K_TENANT_ZMQ" \
        KOWLOON_FLAGS_ENDPOINTS="$K_FLAGS_ZMQ" KOWLOON_WORKSPACE_ENDPOINTS="$K_WS_ZMQ" \
        KOWLOON_TENANT_CACHE_TTL_MS=900000 KOWLOON_ENTITLEMENTS_TTL_MS=900000 \
        KOWLOON_TENANT_CACHE_MAX_ENTRIES=$((LARGE * 4))
    GW_PID=$KB_GW_PID
    RSS_LARGE_EMPTY=$(kb_rss_kb "$GW_PID")
    # Every tenant, old and new, once with its key (GET /api/v1/tenant: the
    # tenant, its key and its entitlements cached; the answer checked).
    cat "$KEYS" "$KEYS_L" >"$BENCH_TMP/keys-all.txt"
    VJSON=$(python3 "$BENCH_DIR/lib/load_tenants.py" verify --url "$KB_GW_URL" \
        --base-domain "$BASE" --keys "$BENCH_TMP/keys-all.txt" --concurrency "$LOAD_CONC") ||
        bench_die "a tenant of the large set did not get its own tenant back"
    LARGE_WARM_SECS=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["seconds"])' "$VJSON")
    RSS_LARGE=$(kb_rss_kb "$GW_PID")
    ENTRIES_LARGE="tenants+keys=$(kb_metric kowloon_tenant_cache_entries) entitlements=$(kb_metric kowloon_entitlements_cache_entries) evictions=$(kb_metric kowloon_tenant_cache_evictions_total)"
    bench_say "warm pass over $LARGE tenants: $VJSON"
    bench_say "second gateway VmRSS: $RSS_LARGE_EMPTY kB at start, $RSS_LARGE kB with $LARGE tenants cached ($ENTRIES_LARGE)"
    kb_alive
fi

# --- report ----------------------------------------------------------------------
RATIO=$(awk -v k="$K_RPS" -v a="$A_RPS" 'BEGIN { printf "%.2f", k / a }')
P99_RATIO=$(awk -v k="$K_P99" -v a="$A_P99" 'BEGIN { printf "%.3f", k / a }')
TARGET=$(awk -v r="$RATIO" -v p="$P99_RATIO" 'BEGIN { print (r >= 8 && p < 0.25) ? "met" : "NOT met" }')
mb() { awk -v k="$1" 'BEGIN { printf "%.1f MB", k / 1024 }'; }
cat <<EOF2
machine:  $(bench_machine); load average $(cut -d' ' -f1-3 /proc/loadavg)
wrk:      ${WRK_ARGS[*]} (same for both) GET $PATH_, random tenant of $TENANTS (even pro, odd starter)
anchor:   $A_RPS req/s, p50 $A_P50 ms, p99 $A_P99 ms, $A_SPLIT; CPU (share of one core): $A_CPU
kowloon:  $K_RPS req/s, p50 $K_P50 ms, p99 $K_P99 ms, $K_SPLIT; CPU: $K_CPU
          KOWLOON_HTTP_THREADS=$HTTP_THREADS, KOWLOON_WORKERS=$WORKERS; $K_MISSES tenant/key and $K_EMISSES entitlements cache misses, $K_RPCS rpc calls during the run
EOF2
printf '%s' "$SPLIT_LINES"
cat <<EOF2
micro:    entitlements cache lookup + feature check: $M_GET1/s (1 thread), $M_GET2/s (2 threads); with the rate-limit bucket: $M_BKT1/s, $M_BKT2/s
memory:   gateway VmRSS $(mb "$RSS_EMPTY") empty, $(mb "$RSS_10K") with $TENANTS tenants ($ENTRIES_10K)${RSS_LARGE:+, $(mb "$RSS_LARGE") with $LARGE tenants ($ENTRIES_LARGE)} cached
load:     $TENANTS tenants + keys via the admin API in $LOAD_SECS s${LARGE_LOAD_SECS:+; $((LARGE - TENANTS)) more in $LARGE_LOAD_SECS s, warm pass over $LARGE in $LARGE_WARM_SECS s}
ratio:    $RATIO, p99 ratio $P99_RATIO (target: >= 8x the anchor's req/s and p99 < 1/4 of the anchor's: $TARGET)
EOF2
echo "RESULT name=seed-workload ratio=$RATIO kowloon=$K_RPS anchor=$A_RPS unit=req/s p99_kowloon_ms=$K_P99 p99_anchor_ms=$A_P99"
