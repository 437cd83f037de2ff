#!/usr/bin/env bash
# bench/webhooks.sh — issue #4: webhook intake. 10,000 signed
# invoice.payment_succeeded / invoice.payment_failed events for 1,000
# tenants, each sent once (distinct ids) by wrk over 64 connections, to
# Kowloon's POST /webhooks/stripe (gateway -> billing: signature, inbox
# record with de-duplication, the subscription's state machine, an outbox
# row per change applied by TenantService.Update) and, in the same run, to
# the seed's Express anchor (stripe-node constructEvent, one UPDATE of the
# tenant, no de-duplication). Reports verified, recorded and acknowledged
# events per second and the p99 acknowledgement time, then checks that
# billing's inbox holds every event and that every tenant's status is the
# one its last event implies (the figures mean nothing otherwise).
# See docs/benchmarks.md.
#
# Builds what it needs (Release: gateway, tenant, flags, billing), starts
# private PostgreSQL and Redis for each side, stops everything it started
# and removes its scratch dir on any exit. The last stdout line is:
#   RESULT name=webhooks ratio=<k/a> kowloon=<events/s> anchor=<events/s> \
#          unit=events/s p99_kowloon_ms=<ms> p99_anchor_ms=<ms>
#
# Settings (environment):
#   BENCH_EVENTS=10000 BENCH_TENANTS=1000 (the anchor has 10,000 tenants)
#   BENCH_WARM_EVENTS=1000       a warm-up pass of other events first (each side)
#   BENCH_WRK_THREADS=2 BENCH_WRK_CONNECTIONS=64
#   BENCH_MAX_DURATION=120s      wrk's -d: the pass must end before it
#   BENCH_HTTP_THREADS=96        KOWLOON_HTTP_THREADS of the gateway
#   BENCH_WORKERS=4              KOWLOON_WORKERS of tenant and flags
#   BENCH_BILLING_WORKERS=32     KOWLOON_WORKERS of billing: concurrent
#                                deliveries it holds, so the largest batch
#                                its group commit can record (docs/billing.md)
#   BENCH_OUTBOX_WAIT=300        longest wait (s) for the outbox to drain
#   BENCH_BUILD_DIR=$KL_ROOT/build-bench2   BENCH_SKIP_BUILD=1 uses what is there
#   BENCH_KEEP_TMP=1 keeps the scratch dir (logs, wrk outputs, events)
#   BENCH_PERF=1 profiles Kowloon's pass (perf record, first 4 s; an
#                analysis run: perf's own CPU use lowers the figures)
#   BENCH_PG_STATS=1 loads pg_stat_statements into Kowloon's PostgreSQL and
#                prints its statements during the pass and during the drain
#                (calls, total and mean time; statements per event)
set -euo pipefail

. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib/common.sh"
. "$BENCH_DIR/lib/kowloon.sh"

EVENTS=${BENCH_EVENTS:-10000}
TENANTS=${BENCH_TENANTS:-1000}
WARM_EVENTS=${BENCH_WARM_EVENTS:-1000}
WRK_T=${BENCH_WRK_THREADS:-2}
WRK_C=${BENCH_WRK_CONNECTIONS:-64}
MAXD=${BENCH_MAX_DURATION:-120s}
HTTP_THREADS=${BENCH_HTTP_THREADS:-96}
WORKERS=${BENCH_WORKERS:-4}
BILLING_WORKERS=${BENCH_BILLING_WORKERS:-32}
BUILD=${BENCH_BUILD_DIR:-$KL_ROOT/build-bench2}
OUTBOX_WAIT=${BENCH_OUTBOX_WAIT:-300}
BASE=$KB_BASE
LUA=$BENCH_DIR/lib/webhooks.lua
GEN=$BENCH_DIR/lib/gen_webhooks.py
ANCHOR_SECRET=whsec_anchor
K_SECRET=whsec_$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
RUN_ID=$(date +%s)

bench_init webhooks
bench_say "machine: $(bench_machine); load average $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$TENANTS" -le 10000 ] || bench_die "the anchor has 10,000 tenants: BENCH_TENANTS must be <= 10000"

# --- build -------------------------------------------------------------------
extra=()
command -v wrk >/dev/null || extra+=(wrk)
command -v node >/dev/null || extra+=(nodejs)
command -v npm >/dev/null || extra+=(npm)
kl_install_packages "${extra[@]}"
if [ -n "${BENCH_SKIP_BUILD:-}" ]; then
    bench_say "BENCH_SKIP_BUILD set: using the binaries already in $BUILD"
else
    bench_build "$BUILD" kowloon-gateway kowloon-tenant kowloon-flags kowloon-billing -- \
        -DCMAKE_BUILD_TYPE=Release -DKOWLOON_ASAN=OFF -DKOWLOON_TSAN=OFF
fi
GATEWAY_BIN=$BUILD/gateway/kowloon-gateway
TENANT_BIN=$BUILD/services/tenant/kowloon-tenant
FLAGS_BIN=$BUILD/services/flags/kowloon-flags
BILLING_BIN=$BUILD/services/billing/kowloon-billing
for b in "$GATEWAY_BIN" "$TENANT_BIN" "$FLAGS_BIN" "$BILLING_BIN"; do
    [ -x "$b" ] || bench_die "$b was not built"
done

# gen SECRET PREFIX KIND COUNT CREATED_BASE OUT [EXPECT]: signed events, now.
gen() {
    python3 "$GEN" --secret "$1" --id-prefix "$2" --kind "$3" --count "$4" \
        --tenants "$TENANTS" --created-base "$5" --out "$6" ${7:+--expect-out "$7"} >/dev/null ||
        bench_die "generating events failed"
}

# pass LABEL URL HOST FILE N: one pass of FILE's N events (webhooks.lua),
# wrk interrupted once every thread has its last answer. Sets WRK_P50_MS,
# WRK_P99_MS, EV_RPS (N / the pass's span measured in the script) and
# EV_SPAN_S; fails unless every event was answered 200 exactly once.
pass() {
    local label=$1 url=$2 host=$3 file=$4 n=$5 f done_dir pid n200 total sent idle
    f=$BENCH_TMP/wrk-$label.txt
    done_dir=$BENCH_TMP/done-$label
    mkdir -p "$done_dir"
    bench_say "wrk -t$WRK_T -c$WRK_C -d$MAXD --timeout 10s --latency -s $LUA $url ($n events)"
    EVENTS_FILE=$file WRK_THREADS=$WRK_T WRK_HOST=$host DONE_DIR=$done_dir \
        wrk -t"$WRK_T" -c"$WRK_C" -d"$MAXD" --timeout 10s --latency -s "$LUA" "$url" >"$f" 2>&1 &
    pid=$!
    bench_on_exit "kill -INT $pid"
    for _ in $(seq 1 $(($(bench_duration_s "$MAXD") * 20))); do
        [ "$(find "$done_dir" -name 'thread-*' | wc -l)" -ge "$WRK_T" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -INT "$pid" 2>/dev/null || true
    wait "$pid" || { cat "$f" >&2; bench_die "$label: wrk failed"; }
    sed 's/^/    /' "$f" >&2
    bench_parse_wrk "$f" || bench_die "$label: could not parse the wrk output in $f"
    n200=$(bench_wrk_status "$f" 200)
    total=$(awk '$1 == "status" { n += $3 } END { print n + 0 }' "$f")
    sent=$(awk '$1 == "sent" { print $2 }' "$f")
    idle=$(awk '$1 == "idle" { print $2 }' "$f")
    EV_SPAN_S=$(awk '$1 == "span_s" { print $2 }' "$f")
    bench_say "$label: statuses $(bench_wrk_statuses "$f"), $sent sent, pass ${EV_SPAN_S:-?} s"
    [ "$sent" = "$n" ] || bench_die "$label: $sent of $n events sent (the pass did not finish within $MAXD)"
    [ "$total" = "$n" ] || bench_die "$label: $total answers to $n events (the pass did not finish within $MAXD?)"
    [ "$n200" = "$n" ] || bench_die "$label: only $n200 of $n events answered 200: the run is invalid"
    [ "${idle:-0}" = 0 ] || bench_die "$label: $idle requests found no event left (a connection reopened): the run is invalid"
    [ -z "$WRK_SOCKET_ERRORS" ] || bench_die "$label: wrk reported socket errors ($WRK_SOCKET_ERRORS): the run is invalid"
    [ "$WRK_REQUESTS" = "$n" ] || bench_die "$label: wrk counted $WRK_REQUESTS requests for $n events"
    [ -n "$EV_SPAN_S" ] || bench_die "$label: no span measured"
    EV_RPS=$(awk -v n="$n" -v s="$EV_SPAN_S" 'BEGIN { printf "%.2f", n / s }')
}

# --- 1. the anchor -------------------------------------------------------------
bench_anchor_install
bench_anchor_start
ANCHOR_URL=http://127.0.0.1:$BENCH_ANCHOR_PORT/webhooks/stripe
ANCHOR_PSQL=(psql -q -X -At -v ON_ERROR_STOP=1 -h "$BENCH_TMP/anchor-pg/run" -p "$BENCH_PG_PORT" -U postgres -d seed)
T0=$(date +%s)
gen "$ANCHOR_SECRET" "evt_warm_$RUN_ID" succeeded "$WARM_EVENTS" $((T0 - 120)) "$BENCH_TMP/anchor-warm.txt"
pass anchor-warm "$ANCHOR_URL" 127.0.0.1 "$BENCH_TMP/anchor-warm.txt" "$WARM_EVENTS"
gen "$ANCHOR_SECRET" "evt_run_$RUN_ID" cycle "$EVENTS" $((T0 - 60)) "$BENCH_TMP/anchor-events.txt" "$BENCH_TMP/anchor-expect.txt"
kb_cpu_begin node="$BENCH_ANCHOR_PID" postgres="$(kb_pg_pid "$BENCH_TMP/anchor-pg")"
pass anchor "$ANCHOR_URL" 127.0.0.1 "$BENCH_TMP/anchor-events.txt" "$EVENTS"
A_CPU=$(kb_cpu_end)
A_RPS=$EV_RPS A_SPAN=$EV_SPAN_S A_P50=$WRK_P50_MS A_P99=$WRK_P99_MS
# The anchor's effect: succeeded -> active, failed -> suspended, applied in
# arrival order (no ordering rule): count the tenants whose status is not
# the one of their last event.
"${ANCHOR_PSQL[@]}" -c "SELECT stripe_customer_id, status FROM tenants WHERE stripe_customer_id IS NOT NULL" \
    >"$BENCH_TMP/anchor-status.txt"
A_WRONG=$(awk 'NR == FNR { split($0, a, "|"); st[a[1]] = a[2]; next }
    { want = ($2 == "invoice.payment_succeeded") ? "active" : "suspended"; if (st[$1] != want) n++ }
    END { print n + 0 }' "$BENCH_TMP/anchor-status.txt" "$BENCH_TMP/anchor-expect.txt")
bench_anchor_stop
bench_say "anchor: $A_RPS events/s, p50 $A_P50 ms, p99 $A_P99 ms; $A_WRONG of $TENANTS tenants not in the status of their last event; CPU: $A_CPU"

# --- 2. Kowloon ------------------------------------------------------------------
kb_db_start
if [ -n "${BENCH_PG_STATS:-}" ]; then
    # pg_stat_statements must be preloaded: set it and restart the cluster
    # (same options: pg_ctl restart reuses them).
    kb_psql -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" ||
        bench_die "ALTER SYSTEM failed"
    _kl_as_pg "$KL_PG_BIN/pg_ctl" -D "$BENCH_TMP/kowloon-pg/data" -w restart >/dev/null ||
        bench_die "restarting PostgreSQL with pg_stat_statements failed"
    kb_psql -c "CREATE EXTENSION pg_stat_statements" || bench_die "CREATE EXTENSION pg_stat_statements failed"
fi
# pg_stats LABEL: the statements since the last call (BENCH_PG_STATS only).
pg_stats() {
    [ -n "${BENCH_PG_STATS:-}" ] || return 0
    bench_say "pg_stat_statements, $1 (calls | total ms | mean ms | per event | statement):"
    kb_psql -F ' | ' -c "SELECT calls, round(total_exec_time::numeric, 1),
        round(mean_exec_time::numeric, 3), round(calls::numeric / $EVENTS, 2),
        left(regexp_replace(query, '\s+', ' ', 'g'), 90) FROM pg_stat_statements
        WHERE query NOT LIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC LIMIT 15" |
        sed 's/^/    /' >&2
    kb_psql -c "SELECT pg_stat_statements_reset()" >/dev/null
}
K_TENANT_ZMQ=$(kb_endpoint) K_FLAGS_ZMQ=$(kb_endpoint) K_BILLING_ZMQ=$(kb_endpoint)
# Intake never calls Stripe: its API base is a private port nobody listens on
# (a call would fail and show up as an error, not go anywhere).
STRIPE_NONE=http://127.0.0.1:$(kl_free_port)
kb_service tenant "$TENANT_BIN" KOWLOON_DATABASE_URL="$KB_DB_URL" \
    KOWLOON_WORKERS="$WORKERS" KOWLOON_TENANT_BIND="$K_TENANT_ZMQ"
TENANT_PID=$KB_LAST_PID
kb_service flags "$FLAGS_BIN" KOWLOON_DATABASE_URL="$KB_DB_URL" \
    KOWLOON_WORKERS="$WORKERS" KOWLOON_FLAGS_BIND="$K_FLAGS_ZMQ"
FLAGS_PID=$KB_LAST_PID
kb_service billing "$BILLING_BIN" KOWLOON_DATABASE_URL="$KB_DB_URL" \
    KOWLOON_WORKERS="$BILLING_WORKERS" KOWLOON_BILLING_BIND="$K_BILLING_ZMQ" \
    KOWLOON_TENANT_ENDPOINTS="$K_TENANT_ZMQ" KOWLOON_FLAGS_ENDPOINTS="$K_FLAGS_ZMQ" \
    KOWLOON_STRIPE_API_BASE="$STRIPE_NONE" KOWLOON_STRIPE_SECRET_KEY=sk_test_bench_intake \
    KOWLOON_STRIPE_WEBHOOK_SECRETS="$K_SECRET"
BILLING_PID=$KB_LAST_PID
kb_gateway "$GATEWAY_BIN" "$HTTP_THREADS" KOWLOON_TENANT_ENDPOINTS="$K_TENANT_ZMQ" \
    KOWLOON_FLAGS_ENDPOINTS="$K_FLAGS_ZMQ" KOWLOON_BILLING_ENDPOINTS="$K_BILLING_ZMQ"
GW_PID=$KB_GW_PID

bench_say "loading $TENANTS tenants (plan pro) through the admin API"
LOAD_JSON=$(python3 "$BENCH_DIR/lib/load_tenants.py" load --url "$KB_GW_URL" \
    --base-domain "$BASE" --admin-token "$KB_ADMIN_TOKEN" --count "$TENANTS" --plans pro \
    --concurrency 16 --keys-out "$BENCH_TMP/keys.txt") || bench_die "loading the tenants failed"
bench_say "loaded: $LOAD_JSON"
for _ in $(seq 1 100); do
    [ "$(kb_psql -c "SELECT to_regclass('billing.subscriptions') IS NOT NULL")" = t ] && break
    kb_alive
    sleep 0.2
done
# Billing maps an invoice to its tenant through billing.subscriptions
# (subscription id) or billing.customers (customer id), rows it writes when
# StartSubscription / Checkout create them at Stripe. Here they are inserted
# directly: tenant<n> has customer cus_<n> and an active subscription
# sub_<n> on plan pro (as the anchor's setup.sql gives tenant N cus_N).
kb_psql <<SQL || bench_die "inserting the customer and subscription rows failed"
INSERT INTO billing.customers (tenant_id, customer_id)
  SELECT id, 'cus_' || substr(subdomain, 7) FROM tenant.tenants WHERE subdomain ~ '^tenant[0-9]+$';
INSERT INTO billing.subscriptions (tenant_id, subscription_id, customer_id, plan, status, tenant_status)
  SELECT id, 'sub_' || substr(subdomain, 7), 'cus_' || substr(subdomain, 7), 'pro', 'active', 'active'
  FROM tenant.tenants WHERE subdomain ~ '^tenant[0-9]+$';
SQL
[ "$(kb_psql -c "SELECT count(*) FROM billing.subscriptions")" = "$TENANTS" ] ||
    bench_die "billing.subscriptions does not hold $TENANTS rows"

K_URL=$KB_GW_URL/webhooks/stripe
T0=$(date +%s)
gen "$K_SECRET" "evt_warm_$RUN_ID" succeeded "$WARM_EVENTS" $((T0 - 120)) "$BENCH_TMP/kowloon-warm.txt"
# A forged signature must be refused before anything is measured.
code=$(head -n1 "$BENCH_TMP/kowloon-warm.txt" | cut -f2 | curl -s -o /dev/null -w '%{http_code}' \
    -H "Host: $BASE" -H "Content-Type: application/json" -H "Stripe-Signature: t=$T0,v1=$(printf '0%.0s' $(seq 64))" \
    --data-binary @- "$K_URL")
[ "$code" = 400 ] || bench_die "a forged signature was answered $code (want 400)"
pass kowloon-warm "$K_URL" "$BASE" "$BENCH_TMP/kowloon-warm.txt" "$WARM_EVENTS"
gen "$K_SECRET" "evt_run_$RUN_ID" cycle "$EVENTS" $((T0 - 60)) "$BENCH_TMP/kowloon-events.txt" "$BENCH_TMP/kowloon-expect.txt"
ob0=$(kb_psql -c "SELECT count(*) FROM billing.outbox")
[ -z "${BENCH_PG_STATS:-}" ] || kb_psql -c "SELECT pg_stat_statements_reset()" >/dev/null
kb_cpu_begin gateway="$GW_PID" billing="$BILLING_PID" tenant="$TENANT_PID" flags="$FLAGS_PID" \
    postgres="$(kb_pg_pid "$BENCH_TMP/kowloon-pg")" redis="$(cat "$BENCH_TMP/kowloon-redis/redis.pid" 2>/dev/null || echo 0)"
# shellcheck disable=SC2046 # one pid per PostgreSQL backend
kb_perf_start kowloon 4 "$GW_PID" "$BILLING_PID" "$TENANT_PID" "$(kb_pg_pid "$BENCH_TMP/kowloon-pg")" \
    $(ps -o pid= --ppid "$(kb_pg_pid "$BENCH_TMP/kowloon-pg")")
pass kowloon "$K_URL" "$BASE" "$BENCH_TMP/kowloon-events.txt" "$EVENTS"
K_CPU=$(kb_cpu_end)
kb_perf_stop
K_RPS=$EV_RPS K_SPAN=$EV_SPAN_S K_P50=$WRK_P50_MS K_P99=$WRK_P99_MS
kb_alive
PENDING_AFTER=$(kb_psql -c "SELECT count(*) FROM billing.outbox WHERE done_at IS NULL")
pg_stats "the pass"

# --- 3. Kowloon's effects ----------------------------------------------------------
# The outbox drains (TenantService.Update per row), then: every event in the
# inbox once, and every tenant's status (tenant service) and subscription
# status (billing) the ones its last event implies: succeeded -> active,
# failed -> past_due (docs/billing.md; whatever the arrival order).
t_drain0=$(date +%s.%N)
for _ in $(seq 1 $((OUTBOX_WAIT * 10))); do
    pending=$(kb_psql -c "SELECT count(*) FROM billing.outbox WHERE done_at IS NULL")
    [ "$pending" = 0 ] && break
    kb_alive
    sleep 0.1
done
[ "$pending" = 0 ] || bench_die "$pending outbox rows still pending $OUTBOX_WAIT s after the pass"
DRAIN_S=$(awk -v a="$t_drain0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
pg_stats "the drain"
INBOX=$(kb_psql -c "SELECT count(*) FROM billing.events WHERE id LIKE 'evt_run_${RUN_ID}_%'")
[ "$INBOX" = "$EVENTS" ] || bench_die "billing's inbox holds $INBOX of the $EVENTS events"
OUTBOX=$(($(kb_psql -c "SELECT count(*) FROM billing.outbox") - ob0))
OB_ERR=$(kb_psql -c "SELECT count(*) FROM billing.outbox WHERE last_error IS NOT NULL AND last_error <> ''")
[ "$OB_ERR" = 0 ] || bench_die "$OB_ERR outbox rows ended with an error"
kb_psql -F ' ' -c "SELECT c.customer_id, t.status, s.status FROM billing.customers c
    JOIN tenant.tenants t ON t.id = c.tenant_id JOIN billing.subscriptions s ON s.tenant_id = c.tenant_id" \
    >"$BENCH_TMP/kowloon-status.txt"
K_WRONG=$(awk 'NR == FNR { t[$1] = $2; s[$1] = $3; next }
    { want = ($2 == "invoice.payment_succeeded") ? "active" : "past_due"; if (t[$1] != want || s[$1] != want) n++; seen++ }
    END { print n + 0 + (seen == 0) }' "$BENCH_TMP/kowloon-status.txt" "$BENCH_TMP/kowloon-expect.txt")
[ "$K_WRONG" = 0 ] || bench_die "$K_WRONG tenants are not in the status of their last event"
K_ACTIVE=$(awk '$2 == "active"' "$BENCH_TMP/kowloon-status.txt" | wc -l)
K_PASTDUE=$(awk '$2 == "past_due"' "$BENCH_TMP/kowloon-status.txt" | wc -l)
OUTCOMES=$(kb_psql -F ' ' -c "SELECT count(*), regexp_replace(regexp_replace(outcome,
    '^invoice [^:]*: ?', ''), '(sub|in)_[A-Za-z0-9_]+', '<id>', 'g')
    FROM billing.events WHERE id LIKE 'evt_run_${RUN_ID}_%' GROUP BY 2 ORDER BY 1 DESC" | paste -sd ';')
bench_say "kowloon: inbox $INBOX events; $OUTBOX outbox rows applied ($PENDING_AFTER still pending when the pass ended, drained ${DRAIN_S} s after it); tenants active $K_ACTIVE, past_due $K_PASTDUE, all as their last event implies"
bench_say "kowloon: outcomes: $OUTCOMES"

# --- report ----------------------------------------------------------------------
RATIO=$(awk -v k="$K_RPS" -v a="$A_RPS" 'BEGIN { printf "%.2f", k / a }')
TARGET=$(awk -v r="$RATIO" -v p="$K_P99" 'BEGIN { print (r >= 3 && p < 20) ? "met" : "NOT met" }')
cat <<EOF2
machine:  $(bench_machine); load average $(cut -d' ' -f1-3 /proc/loadavg)
wrk:      -t$WRK_T -c$WRK_C, one pass of $EVENTS distinct signed invoice events for $TENANTS tenants (after $WARM_EVENTS warm-up events)
anchor:   $A_RPS events/s ($EVENTS in $A_SPAN s), p50 $A_P50 ms, p99 $A_P99 ms; $A_WRONG of $TENANTS tenants left in another status than their last event's; CPU (share of one core): $A_CPU
kowloon:  $K_RPS events/s ($EVENTS in $K_SPAN s), p50 $K_P50 ms, p99 $K_P99 ms; CPU: $K_CPU
          outcomes: $OUTCOMES
          inbox $INBOX/$EVENTS, $OUTBOX tenant changes through the outbox ($PENDING_AFTER pending at the end of the pass, drained ${DRAIN_S} s after it), every tenant as its last event implies
ratio:    $RATIO (target: >= 3x the anchor's events/s and p99 < 20 ms: $TARGET)
EOF2
echo "RESULT name=webhooks ratio=$RATIO kowloon=$K_RPS anchor=$A_RPS unit=events/s p99_kowloon_ms=$K_P99 p99_anchor_ms=$A_P99"
