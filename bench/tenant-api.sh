#!/usr/bin/env bash
# bench/tenant-api.sh — issue #2: GET /api/v1/tenant over 10,000 tenants, each
# request for a random tenant with that tenant's API key, against the seed's
# Express anchor (GET /api/whoami, tenant looked up in PostgreSQL on every
# request) run in the same run on the same machine. See docs/benchmarks.md.
#
# Builds what it needs (build-bench, Release: gateway, tenant and flags
# services), starts private PostgreSQL and Redis for each side, stops
# everything it started and removes its scratch dir on any exit. The last
# stdout line is:
#   RESULT name=tenant-api ratio=<k/a> kowloon=<rps> anchor=<rps> unit=req/s \
#          p99_kowloon_ms=<ms> p99_anchor_ms=<ms>
#
# Settings (environment):
#   BENCH_TENANTS=10000        tenants on each side (the anchor's setup.sql has 10,000)
#   BENCH_WRK_THREADS=2 BENCH_WRK_CONNECTIONS=64 BENCH_DURATION=10s
#   BENCH_WARM_DURATION=3s     wrk warm-up before each measured run (both sides)
#   BENCH_HTTP_THREADS=96      KOWLOON_HTTP_THREADS of the gateway (>= connections)
#   BENCH_SWEEP_THREADS=""     e.g. "16 32 64": measure each, then use the best
#   BENCH_TENANT_WORKERS=4     KOWLOON_WORKERS of the tenant and flags services
#   BENCH_LOAD_CONCURRENCY=16  admin-API client threads loading the tenants
#   BENCH_BUILD_DIR=$KL_ROOT/build-bench   BENCH_SKIP_BUILD=1 uses what is there
#   BENCH_KEEP_TMP=1 keeps the scratch dir (logs, wrk outputs, keys)
set -euo pipefail

. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib/common.sh"

TENANTS=${BENCH_TENANTS:-10000}
WRK_T=${BENCH_WRK_THREADS:-2}
WRK_C=${BENCH_WRK_CONNECTIONS:-64}
DURATION=${BENCH_DURATION:-10s}
WARM=${BENCH_WARM_DURATION:-3s}
HTTP_THREADS=${BENCH_HTTP_THREADS:-96}
SWEEP=${BENCH_SWEEP_THREADS:-}
TENANT_WORKERS=${BENCH_TENANT_WORKERS:-4}
LOAD_CONC=${BENCH_LOAD_CONCURRENCY:-16}
BUILD=${BENCH_BUILD_DIR:-$KL_ROOT/build-bench}
BASE=yoursaas.test
WRK_ARGS=(-t"$WRK_T" -c"$WRK_C" -d"$DURATION" --latency)

bench_init tenant-api
bench_say "machine: $(bench_machine)"

# --- build -------------------------------------------------------------------
# Node 20 may come from outside Debian (NodeSource ships npm inside its
# nodejs package): ask apt only for the commands that are missing.
extra=()
command -v wrk >/dev/null || extra+=(wrk)
command -v node >/dev/null || extra+=(nodejs)
command -v npm >/dev/null || extra+=(npm)
kl_install_packages "${extra[@]}"
if [ -n "${BENCH_SKIP_BUILD:-}" ]; then
    bench_say "BENCH_SKIP_BUILD set: using the binaries already in $BUILD"
else
    bench_build "$BUILD" kowloon-gateway kowloon-tenant kowloon-flags -- \
        -DCMAKE_BUILD_TYPE=Release -DKOWLOON_ASAN=OFF -DKOWLOON_TSAN=OFF
fi
GATEWAY_BIN=$BUILD/gateway/kowloon-gateway
TENANT_BIN=$BUILD/services/tenant/kowloon-tenant
FLAGS_BIN=$BUILD/services/flags/kowloon-flags
for b in "$GATEWAY_BIN" "$TENANT_BIN" "$FLAGS_BIN"; do
    [ -x "$b" ] || bench_die "$b was not built"
done

# --- the anchor --------------------------------------------------------------
bench_anchor_install
bench_anchor_start
ANCHOR_URL=http://127.0.0.1:$BENCH_ANCHOR_PORT/
[ "$TENANTS" = 10000 ] || bench_say "note: the anchor always has setup.sql's 10,000 tenants"
export TENANTS WRK_PATH=/api/whoami
bench_wrk_warm -t"$WRK_T" -c"$WRK_C" -d"$WARM" -s "$BENCH_TMP/tenants.lua" "$ANCHOR_URL"
bench_wrk_watched "$BENCH_ANCHOR_PORT" "$BENCH_TMP/wrk-anchor" "${WRK_ARGS[@]}" -s "$BENCH_TMP/tenants.lua" "$ANCHOR_URL"
bench_wrk_check anchor
A_RPS=$WRK_RPS A_P50=$WRK_P50_MS A_P99=$WRK_P99_MS
unset WRK_PATH
bench_anchor_stop
bench_say "anchor: $A_RPS req/s, p50 ${A_P50} ms, p99 ${A_P99} ms"

# --- Kowloon -----------------------------------------------------------------
bench_pg_start kowloon
K_PG_PORT=$BENCH_PG_PORT
createdb -h "$BENCH_PG_SOCK" -p "$K_PG_PORT" -U postgres kowloon || bench_die "createdb kowloon failed"
bench_redis_start kowloon
K_REDIS_URL=redis://127.0.0.1:$BENCH_REDIS_PORT/0
K_ZMQ=tcp://127.0.0.1:$(kl_free_port)
K_FLAGS_ZMQ=tcp://127.0.0.1:$(kl_free_port)
# Services this bench does not run: private ports nobody listens on, so the
# gateway never reaches another stack's service on the default ports.
K_NONE=tcp://127.0.0.1:$(kl_free_port)
ADMIN_TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')

bench_start "$BENCH_TMP/tenant.log" env \
    KOWLOON_LOG_LEVEL=warn \
    KOWLOON_DATABASE_URL="postgresql://postgres@127.0.0.1:$K_PG_PORT/kowloon" \
    KOWLOON_REDIS_URL="$K_REDIS_URL" \
    KOWLOON_WORKERS="$TENANT_WORKERS" \
    KOWLOON_TENANT_BIND="$K_ZMQ" \
    "$TENANT_BIN"
TENANT_PID=$BENCH_LAST_PID

# The flags service: the gateway asks it for each tenant's entitlements
# (features, rate limit) once, then caches them.
bench_start "$BENCH_TMP/flags.log" env \
    KOWLOON_LOG_LEVEL=warn \
    KOWLOON_DATABASE_URL="postgresql://postgres@127.0.0.1:$K_PG_PORT/kowloon" \
    KOWLOON_REDIS_URL="$K_REDIS_URL" \
    KOWLOON_WORKERS="$TENANT_WORKERS" \
    KOWLOON_FLAGS_BIND="$K_FLAGS_ZMQ" \
    "$FLAGS_BIN"
FLAGS_PID=$BENCH_LAST_PID

GATEWAY_PID=
GATEWAY_PORT=
# gateway_start THREADS: (re)start the gateway with that many HTTP threads.
gateway_start() {
    local threads=$1
    if [ -n "$GATEWAY_PID" ]; then bench_stop "$GATEWAY_PID"; fi
    GATEWAY_PORT=$(kl_free_port)
    bench_start "$BENCH_TMP/gateway-$threads.log" env \
        KOWLOON_LOG_LEVEL=warn \
        KOWLOON_BASE_DOMAIN=$BASE \
        KOWLOON_PUBLIC_SCHEME=http \
        KOWLOON_HTTP_LISTEN="127.0.0.1:$GATEWAY_PORT" \
        KOWLOON_HTTP_THREADS="$threads" \
        KOWLOON_ADMIN_TOKEN="$ADMIN_TOKEN" \
        KOWLOON_TENANT_ENDPOINTS="$K_ZMQ" \
        KOWLOON_FLAGS_ENDPOINTS="$K_FLAGS_ZMQ" \
        KOWLOON_WORKSPACE_ENDPOINTS="$K_NONE" \
        KOWLOON_BILLING_ENDPOINTS="$K_NONE" \
        KOWLOON_MIGRATION_ENDPOINTS="$K_NONE" \
        KOWLOON_REDIS_URL="$K_REDIS_URL" \
        "$GATEWAY_BIN"
    GATEWAY_PID=$BENCH_LAST_PID
    bench_wait_http "http://127.0.0.1:$GATEWAY_PORT/healthz" "$GATEWAY_PID" 30 ||
        { tail -n 30 "$BENCH_TMP/gateway-$threads.log" >&2; bench_die "the gateway did not start"; }
    services_alive
}

services_alive() {
    kill -0 "$TENANT_PID" 2>/dev/null ||
        { tail -n 30 "$BENCH_TMP/tenant.log" >&2; bench_die "the tenant service exited"; }
    kill -0 "$FLAGS_PID" 2>/dev/null ||
        { tail -n 30 "$BENCH_TMP/flags.log" >&2; bench_die "the flags service exited"; }
}

# wait until the tenant service answers through the gateway (readyz)
gateway_start "$HTTP_THREADS"
for _ in $(seq 1 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GATEWAY_PORT/readyz" || true)
    [ "$code" = 200 ] && break
    services_alive
    sleep 0.2
done
[ "$code" = 200 ] || bench_die "the gateway's /readyz answered $code for 20 s"

KEYS=$BENCH_TMP/keys.txt
bench_say "loading $TENANTS tenants and $TENANTS API keys through the admin API ($LOAD_CONC clients)"
LOAD_JSON=$(python3 "$BENCH_DIR/lib/load_tenants.py" load --url "http://127.0.0.1:$GATEWAY_PORT" \
    --base-domain $BASE --admin-token "$ADMIN_TOKEN" --count "$TENANTS" --plans pro \
    --concurrency "$LOAD_CONC" --keys-out "$KEYS") || bench_die "loading the tenants failed"
LOAD_SECS=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["seconds"])' "$LOAD_JSON")
bench_say "loaded: $LOAD_JSON"

# The figures mean something only if the gateway really checks the key:
# tenant1 without a key, and with tenant2's key, must be refused.
read -r _ KEY2 < <(sed -n 2p "$KEYS")
for hdr in "X-No-Key: 1" "Authorization: Bearer $KEY2"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: tenant1.$BASE" -H "$hdr" \
        "http://127.0.0.1:$GATEWAY_PORT/api/v1/tenant")
    [ "$code" = 401 ] ||
        bench_die "tenant1's /api/v1/tenant answered $code to ${hdr%%:*} (want 401): auth is not enforced"
done

# metric NAME: the sum of NAME's series in the gateway's /metrics (0 if absent).
metric() {
    curl -s --max-time 5 "http://127.0.0.1:$GATEWAY_PORT/metrics" |
        awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%.0f\n", s }'
}

# kowloon_measure LABEL [starved-ok]: warm (every tenant once, checked; then
# wrk warm-up), measure, check every answer was 2xx (and every connection
# served, unless starved-ok).
kowloon_measure() {
    local label=$1 starved_ok=${2:-} v
    v=$(python3 "$BENCH_DIR/lib/load_tenants.py" verify --url "http://127.0.0.1:$GATEWAY_PORT" \
        --base-domain $BASE --keys "$KEYS" --concurrency "$LOAD_CONC") ||
        bench_die "$label: a tenant did not get its own tenant back"
    bench_say "$label: warm pass over every tenant: $v"
    KEYS_FILE=$KEYS BASE_DOMAIN=$BASE bench_wrk_warm -t"$WRK_T" -c"$WRK_C" -d"$WARM" \
        -s "$BENCH_DIR/lib/tenant-keys.lua" "http://127.0.0.1:$GATEWAY_PORT/"
    local miss0 rpc0
    miss0=$(metric kowloon_tenant_cache_misses_total)
    rpc0=$(metric kowloon_rpc_calls_total)
    KEYS_FILE=$KEYS BASE_DOMAIN=$BASE bench_wrk_watched "$GATEWAY_PORT" "$BENCH_TMP/wrk-$label" \
        "${WRK_ARGS[@]}" -s "$BENCH_DIR/lib/tenant-keys.lua" "http://127.0.0.1:$GATEWAY_PORT/"
    K_MISSES=$(($(metric kowloon_tenant_cache_misses_total) - miss0))
    K_RPCS=$(($(metric kowloon_rpc_calls_total) - rpc0))
    bench_say "$label: during the measured run the gateway had $K_MISSES cache misses and made $K_RPCS rpc calls"
    bench_wrk_check "$label" "$starved_ok"
}

if [ -n "$SWEEP" ]; then
    best='' best_rps=0
    for th in $SWEEP; do
        gateway_start "$th"
        kowloon_measure "sweep-threads-$th" starved-ok
        bench_say "sweep: KOWLOON_HTTP_THREADS=$th: $WRK_RPS req/s, p50 $WRK_P50_MS ms, p99 $WRK_P99_MS ms, $WRK_STARVED of $WRK_C connections never served"
        printf 'sweep threads=%s rps=%s p50_ms=%s p99_ms=%s starved_connections=%s\n' \
            "$th" "$WRK_RPS" "$WRK_P50_MS" "$WRK_P99_MS" "$WRK_STARVED"
        [ "$WRK_STARVED" = 0 ] || continue # not a measurement of 64 connections
        if awk -v a="$WRK_RPS" -v b="$best_rps" 'BEGIN { exit !(a > b) }'; then
            best=$th best_rps=$WRK_RPS
        fi
    done
    [ -n "$best" ] || bench_die "sweep: every thread count left connections unserved"
    HTTP_THREADS=$best
    bench_say "sweep: using KOWLOON_HTTP_THREADS=$HTTP_THREADS"
    gateway_start "$HTTP_THREADS"
fi
kowloon_measure kowloon
K_RPS=$WRK_RPS K_P50=$WRK_P50_MS K_P99=$WRK_P99_MS

# --- report ------------------------------------------------------------------
RATIO=$(awk -v k="$K_RPS" -v a="$A_RPS" 'BEGIN { printf "%.2f", k / a }')
TARGET=$(awk -v r="$RATIO" -v kp="$K_P99" -v ap="$A_P99" \
    'BEGIN { print (r >= 5 && kp < ap) ? "met" : "NOT met" }')
cat <<EOF
machine:  $(bench_machine)
wrk:      ${WRK_ARGS[*]} (same for both; random tenant of $TENANTS per request)
anchor:   seed-express GET /api/whoami: $A_RPS req/s, p50 $A_P50 ms, p99 $A_P99 ms
kowloon:  GET /api/v1/tenant with API key, KOWLOON_HTTP_THREADS=$HTTP_THREADS, KOWLOON_WORKERS=$TENANT_WORKERS: $K_RPS req/s, p50 $K_P50 ms, p99 $K_P99 ms
cache:    $K_MISSES tenant/key cache misses and $K_RPCS rpc calls during the measured run
load:     $TENANTS tenants + $TENANTS API keys through the admin API in $LOAD_SECS s
ratio:    $RATIO (target: >= 5x the anchor's req/s with a lower p99: $TARGET)
EOF
echo "RESULT name=tenant-api ratio=$RATIO kowloon=$K_RPS anchor=$A_RPS unit=req/s p99_kowloon_ms=$K_P99 p99_anchor_ms=$A_P99"
