#!/usr/bin/env bash
# bench/scale.sh — issue #7: the seed workload (bench/seed-workload.sh: GET
# /api/advanced-reports for a random tenant of 10,000, even ones on pro and
# served by the workspace service, odd ones on starter and answered 403 at
# the edge) with 1, 2 and 4 instances of the workspace service, and the
# latency CurveZMQ adds to the gateway -> workspace hop, side by side in one
# run. See docs/benchmarks.md.
#
# One gateway, tenant and flags service for the whole run; four plaintext
# workspace instances and one Curve instance are started up front. The
# gateway's KOWLOON_WORKSPACE_ENDPOINTS is "@FILE": the script rewrites the
# file and sends SIGHUP to switch between 1, 2, 4 plaintext instances and
# the Curve one (lib/kl_rpc_env.h), so the caches stay warm between
# measurements. Per configuration: wrk warm-up, then
#   throughput  wrk -t2 -c64 -d10s --latency (requests/s, p50, p99)
#   latency     wrk -t1 -c1 -d5s --latency over the pro tenants only (one
#               request at a time, every one through the workspace service)
# The CPU share of each workspace instance during the throughput run shows
# the load was spread.
#
# Then Curve against plaintext, sound enough to read a fraction of a
# millisecond: one plaintext workspace instance and the Curve one, pro
# tenants only, BENCH_ROUNDS rounds (default 5) after a discarded warm-up
# round, the order alternating from round to round (plain/curve, then
# curve/plain, ...), each mode measured with one connection and with
# BENCH_LAT_CONNECTIONS (16), wrk -t1 -dBENCH_LAT_DURATION each; the
# figures are medians over the rounds of each run's p50, p99 and req/s, and
# the difference Curve - plaintext.
#
# Builds what it needs (Release: gateway, tenant, flags, workspace,
# kowloonctl), starts private PostgreSQL and Redis, stops everything it
# started and removes its scratch dir on any exit. RESULT lines:
#   RESULT name=scale-workspace instances=<n> rps=<r> unit=req/s p50_ms= p99_ms=
#   RESULT name=scale-curve conns=<1|16> rounds=<n> plain_p50_ms= curve_p50_ms=
#          added_p50_ms= plain_p99_ms= curve_p99_ms= added_p99_ms=
#          plain_rps= curve_rps= unit=ms          (one line per connection count)
#
# Settings (environment):
#   BENCH_TENANTS=10000  BENCH_WRK_THREADS=2 BENCH_WRK_CONNECTIONS=64
#   BENCH_DURATION=10s   BENCH_LAT_DURATION=5s  BENCH_WARM_DURATION=3s
#   BENCH_ROUNDS=5 BENCH_LAT_CONNECTIONS=16 BENCH_LAT_WARM_DURATION=1s
#   BENCH_HTTP_THREADS=96 BENCH_WORKERS=4 (KOWLOON_WORKERS of every service)
#   BENCH_LOAD_CONCURRENCY=16
#   BENCH_BUILD_DIR=$KL_ROOT/build-bench2   BENCH_SKIP_BUILD=1 uses what is there
#   BENCH_KEEP_TMP=1 keeps the scratch dir (logs, wrk outputs, keys)
set -euo pipefail

. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib/common.sh"
. "$BENCH_DIR/lib/kowloon.sh"

TENANTS=${BENCH_TENANTS:-10000}
WRK_T=${BENCH_WRK_THREADS:-2}
WRK_C=${BENCH_WRK_CONNECTIONS:-64}
DURATION=${BENCH_DURATION:-10s}
LAT_DURATION=${BENCH_LAT_DURATION:-5s}
WARM=${BENCH_WARM_DURATION:-3s}
HTTP_THREADS=${BENCH_HTTP_THREADS:-96}
WORKERS=${BENCH_WORKERS:-4}
LOAD_CONC=${BENCH_LOAD_CONCURRENCY:-16}
ROUNDS=${BENCH_ROUNDS:-5}
LAT_C=${BENCH_LAT_CONNECTIONS:-16}
LAT_WARM=${BENCH_LAT_WARM_DURATION:-1s}
BUILD=${BENCH_BUILD_DIR:-$KL_ROOT/build-bench2}
BASE=$KB_BASE
PATH_=/api/advanced-reports
LUA=$BENCH_DIR/lib/seed-workload.lua

bench_init scale
bench_say "machine: $(bench_machine); load average $(cut -d' ' -f1-3 /proc/loadavg)"

# --- build -------------------------------------------------------------------
extra=()
command -v wrk >/dev/null || extra+=(wrk)
kl_install_packages "${extra[@]}"
if [ -n "${BENCH_SKIP_BUILD:-}" ]; then
    bench_say "BENCH_SKIP_BUILD set: using the binaries already in $BUILD"
else
    bench_build "$BUILD" kowloon-gateway kowloon-tenant kowloon-flags kowloon-workspace \
        kowloonctl -- -DCMAKE_BUILD_TYPE=Release -DKOWLOON_ASAN=OFF -DKOWLOON_TSAN=OFF
fi
GATEWAY_BIN=$BUILD/gateway/kowloon-gateway
TENANT_BIN=$BUILD/services/tenant/kowloon-tenant
FLAGS_BIN=$BUILD/services/flags/kowloon-flags
WORKSPACE_BIN=$BUILD/services/workspace/kowloon-workspace
CTL_BIN=$BUILD/tools/kowloonctl/kowloonctl
for b in "$GATEWAY_BIN" "$TENANT_BIN" "$FLAGS_BIN" "$WORKSPACE_BIN" "$CTL_BIN"; do
    [ -x "$b" ] || bench_die "$b was not built"
done

# --- database, keys, services ----------------------------------------------------
kb_db_start
kb_psql -c "CREATE ROLE ws_app LOGIN NOSUPERUSER NOBYPASSRLS" >/dev/null
WS_APP_URL="postgresql://ws_app@127.0.0.1:$KB_PG_PORT/kowloon"
# The workspace tables, as bench/seed-workload.sh and the integration tests
# apply them (services/workspace/migrations, schema "workspace").
kb_psql -c "CREATE SCHEMA IF NOT EXISTS workspace" >/dev/null
for f in "$KL_ROOT"/services/workspace/migrations/V*.sql; do
    { echo "SET search_path = workspace;"; cat "$f"; } | kb_psql >/dev/null ||
        bench_die "applying $f failed"
done

# One key pair for the gateway (client) and one for the Curve workspace
# instance (server); the instance allows the gateway's key only.
KEYS_DIR=$BENCH_TMP/curve
mkdir -p "$KEYS_DIR/allowed"
GW_PUB=$("$CTL_BIN" keygen --dir "$KEYS_DIR" gateway | awk '{ print $NF }')
WS_PUB=$("$CTL_BIN" keygen --dir "$KEYS_DIR" workspace | awk '{ print $NF }')
cp "$KEYS_DIR/gateway.key" "$KEYS_DIR/allowed/"
bench_say "curve keys: gateway $GW_PUB, workspace $WS_PUB"

K_TENANT_ZMQ=$(kb_endpoint) K_FLAGS_ZMQ=$(kb_endpoint)
kb_service tenant "$TENANT_BIN" KOWLOON_DATABASE_URL="$KB_DB_URL" \
    KOWLOON_WORKERS="$WORKERS" KOWLOON_TENANT_BIND="$K_TENANT_ZMQ"
kb_service flags "$FLAGS_BIN" KOWLOON_DATABASE_URL="$KB_DB_URL" \
    KOWLOON_WORKERS="$WORKERS" KOWLOON_FLAGS_BIND="$K_FLAGS_ZMQ"

WS_EPS=() WS_PIDS=()
for i in 1 2 3 4; do
    ep=$(kb_endpoint)
    kb_service "workspace-$i" "$WORKSPACE_BIN" KOWLOON_DATABASE_URL="$WS_APP_URL" \
        KOWLOON_DATA_OWNER_URL="$KB_DB_URL" KOWLOON_WORKERS="$WORKERS" \
        KOWLOON_WORKSPACE_BIND="$ep" KOWLOON_FLAGS_ENDPOINTS="$K_FLAGS_ZMQ"
    WS_EPS+=("$ep") WS_PIDS+=("$KB_LAST_PID")
done
WS_CURVE_EP=$(kb_endpoint)
kb_service workspace-curve "$WORKSPACE_BIN" KOWLOON_DATABASE_URL="$WS_APP_URL" \
    KOWLOON_DATA_OWNER_URL="$KB_DB_URL" KOWLOON_WORKERS="$WORKERS" \
    KOWLOON_WORKSPACE_BIND="$WS_CURVE_EP" KOWLOON_FLAGS_ENDPOINTS="$K_FLAGS_ZMQ" \
    KOWLOON_CURVE_SECRET_KEY_FILE="$KEYS_DIR/workspace.key_secret" \
    KOWLOON_CURVE_ALLOWED_CLIENTS_DIR="$KEYS_DIR/allowed"

# The gateway reads the workspace instances from a file, re-read on SIGHUP.
WS_FILE=$BENCH_TMP/workspace-endpoints
printf '%s\n' "${WS_EPS[0]}" >"$WS_FILE"
kb_gateway "$GATEWAY_BIN" "$HTTP_THREADS" KOWLOON_TENANT_ENDPOINTS="$K_TENANT_ZMQ" \
    KOWLOON_FLAGS_ENDPOINTS="$K_FLAGS_ZMQ" KOWLOON_WORKSPACE_ENDPOINTS="@$WS_FILE" \
    KOWLOON_CURVE_SECRET_KEY_FILE="$KEYS_DIR/gateway.key_secret"
GW_PID=$KB_GW_PID

KEYS=$BENCH_TMP/keys.txt
bench_say "loading $TENANTS tenants (even pro, odd starter) and keys through the admin API"
LOAD_JSON=$(python3 "$BENCH_DIR/lib/load_tenants.py" load --url "$KB_GW_URL" \
    --base-domain "$BASE" --admin-token "$KB_ADMIN_TOKEN" --count "$TENANTS" --plans pro,starter \
    --concurrency "$LOAD_CONC" --keys-out "$KEYS") || bench_die "loading the tenants failed"
bench_say "loaded: $LOAD_JSON"
WARM_JSON=$(python3 "$BENCH_DIR/lib/seed_warm.py" --url "$KB_GW_URL" --keys "$KEYS" \
    --base-domain "$BASE" --path "$PATH_" --concurrency "$LOAD_CONC") ||
    bench_die "a tenant got an unexpected answer in the warm pass"
bench_say "warm pass over every tenant: $WARM_JSON"
kb_alive
# Even lines: the pro tenants (load_tenants.py --plans pro,starter gives
# tenant<i> plan pro for even i), for the single-connection latency runs.
KEYS_PRO=$BENCH_TMP/keys-pro.txt
awk 'NR % 2 == 0' "$KEYS" >"$KEYS_PRO"

# use_endpoints EP...: the gateway's workspace instances become EP... (file
# rewritten, SIGHUP); checked by a request per tenant of a few pro tenants.
use_endpoints() {
    printf '%s\n' "$@" >"$WS_FILE.new"
    mv "$WS_FILE.new" "$WS_FILE"
    kill -HUP "$GW_PID"
    sleep 1
    kb_alive
    local code t
    for t in 2 4 6 8; do
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: tenant$t.$BASE" \
            -H "Authorization: Bearer $(sed -n "${t}p" "$KEYS" | awk '{ print $2 }')" \
            "$KB_GW_URL$PATH_")
        [ "$code" = 200 ] || bench_die "after switching to $*: tenant$t answered $code"
    done
}

# check_run LABEL FILE: valid only with 200 and 403 answers only, no socket
# error, every connection served.
check_run() {
    local label=$1 f=$2 total n200 n403
    total=$(awk '$1 == "status" { n += $3 } END { print n + 0 }' "$f")
    n200=$(bench_wrk_status "$f" 200)
    n403=$(bench_wrk_status "$f" 403)
    bench_say "$label: statuses $(bench_wrk_statuses "$f")"
    [ "$total" -gt 0 ] || bench_die "$label: no answer counted"
    [ $((total - n200 - n403)) = 0 ] || bench_die "$label: answers other than 200/403: the run is invalid"
    [ -z "$WRK_SOCKET_ERRORS" ] || bench_die "$label: wrk socket errors ($WRK_SOCKET_ERRORS): the run is invalid"
    [ "${WRK_STARVED:-0}" = 0 ] || bench_die "$label: $WRK_STARVED connections never served: the run is invalid"
}

# measure LABEL PIDS...: throughput and single-connection latency of the
# current configuration; PIDS are the workspace instances in use (CPU).
measure() {
    local label=$1 cpu_args=() p k=0
    shift
    for p in "$@"; do k=$((k + 1)); cpu_args+=("ws$k=$p"); done
    export KEYS_FILE=$KEYS WRK_PATH=$PATH_ BASE_DOMAIN=$BASE
    bench_wrk_warm -t"$WRK_T" -c"$WRK_C" -d"$WARM" -s "$LUA" "$KB_GW_URL/"
    kb_cpu_begin gateway="$GW_PID" "${cpu_args[@]}"
    bench_wrk_watched "$KB_GW_PORT" "$BENCH_TMP/wrk-$label" -t"$WRK_T" -c"$WRK_C" \
        -d"$DURATION" --latency -s "$LUA" "$KB_GW_URL/"
    M_CPU=$(kb_cpu_end)
    check_run "$label" "$BENCH_TMP/wrk-$label.txt"
    M_RPS=$WRK_RPS M_P50=$WRK_P50_MS M_P99=$WRK_P99_MS
    WRK_STARVED=0
    # Latency of the workspace path only: pro tenants (every answer 200).
    KEYS_FILE=$KEYS_PRO bench_wrk "$BENCH_TMP/lat-$label" -t1 -c1 -d"$LAT_DURATION" \
        --latency -s "$LUA" "$KB_GW_URL/"
    check_run "$label-latency" "$BENCH_TMP/lat-$label.txt"
    M_LP50=$WRK_P50_MS M_LP99=$WRK_P99_MS
    unset KEYS_FILE WRK_PATH
    kb_alive
    bench_say "$label: $M_RPS req/s, p50 $M_P50 ms, p99 $M_P99 ms; one connection: p50 $M_LP50 ms, p99 $M_LP99 ms; CPU: $M_CPU"
}

declare -A RPS P50 P99 LP50 LP99 CPU
for n in 1 2 4; do
    use_endpoints "${WS_EPS[@]:0:n}"
    measure "plain-$n" "${WS_PIDS[@]:0:n}"
    RPS[$n]=$M_RPS P50[$n]=$M_P50 P99[$n]=$M_P99 LP50[$n]=$M_LP50 LP99[$n]=$M_LP99 CPU[$n]=$M_CPU
done

# --- Curve against plaintext, interleaved -------------------------------------
# One plaintext instance (workspace-1) against the Curve instance, same
# settings, pro tenants only (every request crosses the gateway ->
# workspace hop). Round 0 is a warm-up and is discarded; rounds 1..ROUNDS
# alternate the order (odd: plaintext first, even: Curve first), so slow
# drift of the shared machine falls on both sides alike. Each switch is
# followed by a short discarded wrk run (new connections, Curve handshake).
# Per round and mode: wrk -t1 -c1 and wrk -t1 -c$LAT_C. The figures are the
# medians over the rounds of each run's p50, p99 and req/s.
#
# A 200 through the Curve endpoint is the proof Curve works: the
# instance's ZAP handler refuses any client but the gateway's key, and a
# plaintext client never completes the handshake.
PLAIN_SPEC=${WS_EPS[0]}
CURVE_SPEC="$WS_CURVE_EP?key=$WS_PUB"
declare -A LAT   # LAT[mode,conns,stat] = space-separated values, one per round

lat_run() { # lat_run MODE ROUND: both connection counts for MODE
    local mode=$1 round=$2 c label
    if [ "$mode" = plain ]; then use_endpoints "$PLAIN_SPEC"; else use_endpoints "$CURVE_SPEC"; fi
    KEYS_FILE=$KEYS_PRO WRK_PATH=$PATH_ BASE_DOMAIN=$BASE \
        bench_wrk_warm -t1 -c"$LAT_C" -d"$LAT_WARM" -s "$LUA" "$KB_GW_URL/"
    for c in 1 "$LAT_C"; do
        label=lat-$mode-c$c-r$round
        KEYS_FILE=$KEYS_PRO WRK_PATH=$PATH_ BASE_DOMAIN=$BASE \
            bench_wrk "$BENCH_TMP/$label" -t1 -c"$c" -d"$LAT_DURATION" --latency -s "$LUA" "$KB_GW_URL/"
        WRK_STARVED=0
        check_run "$label" "$BENCH_TMP/$label.txt"
        [ "$(bench_wrk_status "$BENCH_TMP/$label.txt" 200)" -gt 0 ] ||
            bench_die "$label: no 200 answer"
        bench_say "$label: p50 $WRK_P50_MS ms, p99 $WRK_P99_MS ms, $WRK_RPS req/s"
        if [ "$round" -gt 0 ]; then
            LAT[$mode,$c,p50]+="$WRK_P50_MS " LAT[$mode,$c,p99]+="$WRK_P99_MS " LAT[$mode,$c,rps]+="$WRK_RPS "
        fi
    done
    kb_alive
}

diff_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f", a - b }'; }

for ((r = 0; r <= ROUNDS; r++)); do
    if ((r % 2 == 1 || r == 0)); then order="plain curve"; else order="curve plain"; fi
    for mode in $order; do lat_run "$mode" "$r"; done
done

declare -A MED
for mode in plain curve; do
    for c in 1 "$LAT_C"; do
        for s in p50 p99 rps; do
            # shellcheck disable=SC2086 # word splitting wanted: one value per round
            MED[$mode,$c,$s]=$(bench_median ${LAT[$mode,$c,$s]})
        done
    done
done

# --- report ----------------------------------------------------------------------
cat <<EOT
machine:  $(bench_machine); load average $(cut -d' ' -f1-3 /proc/loadavg)
workload: GET $PATH_, random tenant of $TENANTS (even pro -> workspace, odd starter -> 403 at the edge)
          throughput: wrk -t$WRK_T -c$WRK_C -d$DURATION; latency: wrk -t1 -c1 -d$LAT_DURATION
          KOWLOON_WORKERS=$WORKERS per instance, KOWLOON_HTTP_THREADS=$HTTP_THREADS

instances  req/s      p50 ms   p99 ms   1-conn p50 ms  1-conn p99 ms  CPU (share of one core)
EOT
for n in 1 2 4; do
    printf '%-10s %-10s %-8s %-8s %-14s %-14s %s\n' "$n" "${RPS[$n]}" "${P50[$n]}" "${P99[$n]}" \
        "${LP50[$n]}" "${LP99[$n]}" "${CPU[$n]}"
done
cat <<EOT

Curve vs plaintext, one workspace instance, pro tenants only; medians of $ROUNDS
interleaved rounds (round 0 discarded), wrk -t1 -d$LAT_DURATION per run:
conns  mode       p50 ms    p99 ms    req/s      p50 values (per round)
EOT
for c in 1 "$LAT_C"; do
    for mode in plain curve; do
        printf '%-6s %-10s %-9s %-9s %-10s %s\n' "$c" "$mode" "${MED[$mode,$c,p50]}" \
            "${MED[$mode,$c,p99]}" "${MED[$mode,$c,rps]}" "${LAT[$mode,$c,p50]}"
    done
    printf '%-6s %-10s %-9s %-9s\n' "$c" "added" "$(diff_ms "${MED[curve,$c,p50]}" "${MED[plain,$c,p50]}")" \
        "$(diff_ms "${MED[curve,$c,p99]}" "${MED[plain,$c,p99]}")"
done
for n in 1 2 4; do
    echo "RESULT name=scale-workspace instances=$n rps=${RPS[$n]} unit=req/s p50_ms=${P50[$n]} p99_ms=${P99[$n]}"
done
for c in 1 "$LAT_C"; do
    echo "RESULT name=scale-curve conns=$c rounds=$ROUNDS plain_p50_ms=${MED[plain,$c,p50]} curve_p50_ms=${MED[curve,$c,p50]} added_p50_ms=$(diff_ms "${MED[curve,$c,p50]}" "${MED[plain,$c,p50]}") plain_p99_ms=${MED[plain,$c,p99]} curve_p99_ms=${MED[curve,$c,p99]} added_p99_ms=$(diff_ms "${MED[curve,$c,p99]}" "${MED[plain,$c,p99]}") plain_rps=${MED[plain,$c,rps]} curve_rps=${MED[curve,$c,rps]} unit=ms"
done
