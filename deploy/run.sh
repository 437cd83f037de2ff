#!/usr/bin/env bash
# The run command: the whole Kowloon product on this machine, in one terminal.
#
#   deploy/run.sh          # Ctrl-C stops everything
#
# Installs missing Debian packages, builds build/ (RelWithDebInfo), starts a
# private PostgreSQL and Redis under var/dev/, a local Stripe stand-in, and
# every service: tenant, flags, migration, billing, workspace, then the
# gateway. It creates the database roles (an owner role that runs the DDL
# and an application role without SUPERUSER or BYPASSRLS, the one the
# workspace service serves with), applies the product's migrations
# (services/workspace/migrations, through kowloon-migration), and the demo:
# tenant "acme" on plan pro with two projects, tenant "globex" on plan
# starter, an API key each. Then it writes var/dev/kowloonctl (the
# operator's CLI pointed at this stack: var/dev/kowloonctl tenants list),
# prints curl commands to try and the line "ready: ...". Data stays in
# var/dev/ between runs.
#
# Stripe is SIMULATED: integration-tests/stripe_standin/standin.py speaks
# the Stripe API on a private port and signs webhooks with a secret
# generated in var/dev/. To use your Stripe test account instead, export
#   KOWLOON_STRIPE_SECRET_KEY=sk_test_...
#   KOWLOON_STRIPE_WEBHOOK_SECRETS=whsec_...   (from `stripe listen
#                               --forward-to localhost:8080/webhooks/stripe`)
# and set each plan's Stripe price ids (PATCH /admin/v1/plans/pro).
#
# Settings (environment):
#   KOWLOON_DEV_DIR             data, logs, pid files    (default var/dev)
#   KOWLOON_DEV_PG_PORT         PostgreSQL port          (default 15432)
#   KOWLOON_DEV_REDIS_PORT      Redis port               (default 16379)
#   KOWLOON_DEV_TENANT_PORT     tenant service port      (default 17101)
#   KOWLOON_DEV_FLAGS_PORT      flags service port       (default 17102)
#   KOWLOON_DEV_WORKSPACE_PORT  workspace service port   (default 17103)
#   KOWLOON_DEV_BILLING_PORT    billing service port     (default 17104)
#   KOWLOON_DEV_MIGRATION_PORT  migration service port   (default 17105)
#   KOWLOON_DEV_STRIPE_PORT     Stripe stand-in port     (default 17106)
#   KOWLOON_HTTP_LISTEN         gateway address          (default 127.0.0.1:8080)
#   KOWLOON_BUILD_DIR           build directory          (default build)
#   KOWLOON_DEV_SKIP_BUILD=1    use the binaries already in the build
#                               directory (no install, no build)
# Any other KOWLOON_* variable you export reaches the processes as well.
#
# Logs: var/dev/<service>.log (gateway, tenant, flags, migration, billing,
# workspace: one JSON object a line), var/dev/stripe-standin.log,
# var/dev/pg/postgres.log, var/dev/redis/redis.log. To start from an empty
# database, stop it and remove var/dev/.
set -euo pipefail

case ${1:-} in
    "") ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: deploy/run.sh (no arguments; settings are environment variables, see --help)" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=deploy/local/lib.sh
. deploy/local/lib.sh

PG_PORT=${KOWLOON_DEV_PG_PORT:-15432}
REDIS_PORT=${KOWLOON_DEV_REDIS_PORT:-16379}
declare -A PORT=(
    [tenant]=${KOWLOON_DEV_TENANT_PORT:-17101}
    [flags]=${KOWLOON_DEV_FLAGS_PORT:-17102}
    [workspace]=${KOWLOON_DEV_WORKSPACE_PORT:-17103}
    [billing]=${KOWLOON_DEV_BILLING_PORT:-17104}
    [migration]=${KOWLOON_DEV_MIGRATION_PORT:-17105}
)
STRIPE_PORT=${KOWLOON_DEV_STRIPE_PORT:-17106}
HTTP_LISTEN=${KOWLOON_HTTP_LISTEN:-127.0.0.1:8080}
HTTP_PORT=${HTTP_LISTEN##*:}
HTTP_HOST=${HTTP_LISTEN%:*}
# Where our own curl calls connect ("8080" or "0.0.0.0:8080" listen on all).
case $HTTP_HOST in "$HTTP_LISTEN" | 0.0.0.0 | "") CONNECT=127.0.0.1:$HTTP_PORT ;; *) CONNECT=$HTTP_LISTEN ;; esac
BUILD=${KOWLOON_BUILD_DIR:-build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
DEV=${KOWLOON_DEV_DIR:-$ROOT/var/dev}
case $DEV in /*) ;; *) DEV=$ROOT/$DEV ;; esac
PY=/usr/bin/python3
STANDIN=$ROOT/integration-tests/stripe_standin/standin.py
MIGRATIONS=$ROOT/services/workspace/migrations
# Start order; they stop in the reverse order.
SERVICES=(tenant flags migration billing workspace)

mkdir -p "$DEV"

# One run at a time per data directory.
exec 9>"$DEV/run.lock"
flock -n 9 || kl_die "another deploy/run.sh is already running with $DEV (lock: $DEV/run.lock)"

# Servers left running by a run that was killed (kill -9, closed terminal):
# the lock says no run.sh owns them, so stop them before starting afresh.
for name in gateway "${SERVICES[@]}" stripe-standin; do
    pid=$(cat "$DEV/$name.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && { [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$(printf %.15s "kowloon-$name")" ] ||
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'stripe_standin/standin.py'; }; then
        kl_say "stopping a $name left over from an earlier run (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$DEV/$name.pid"
done
if [ -f "$DEV/pg/data/postmaster.pid" ]; then
    kl_say "stopping a PostgreSQL left over from an earlier run"
    kl_pg_stop "$DEV/pg"
fi
if [ -f "$DEV/redis/redis.pid" ]; then
    kl_say "stopping a Redis left over from an earlier run"
    kl_redis_stop "$DEV/redis"
    sleep 0.3
fi

# Real Stripe (test mode) when the operator gave a key, else the stand-in.
if [ -n "${KOWLOON_STRIPE_SECRET_KEY:-}" ]; then
    STRIPE_SIMULATED=
    [ -n "${KOWLOON_STRIPE_WEBHOOK_SECRETS:-}" ] ||
        kl_die "KOWLOON_STRIPE_SECRET_KEY is set but KOWLOON_STRIPE_WEBHOOK_SECRETS is not: give the whsec_... that 'stripe listen --forward-to localhost:$HTTP_PORT/webhooks/stripe' prints"
else
    STRIPE_SIMULATED=1
fi

# Something listening on a port we need (bash's /dev/tcp: nothing to install).
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
check_port() { # PORT WHAT HOW-TO-CHANGE
    if port_taken "$1"; then
        kl_die "port $1 ($2) is already in use on 127.0.0.1; choose another: $3 deploy/run.sh"
    fi
}
check_port "$PG_PORT" PostgreSQL "KOWLOON_DEV_PG_PORT=<port>"
check_port "$REDIS_PORT" Redis "KOWLOON_DEV_REDIS_PORT=<port>"
for s in "${SERVICES[@]}"; do
    check_port "${PORT[$s]}" "$s service" "KOWLOON_DEV_${s^^}_PORT=<port>"
done
[ -n "$STRIPE_SIMULATED" ] && check_port "$STRIPE_PORT" "Stripe stand-in" "KOWLOON_DEV_STRIPE_PORT=<port>"
check_port "$HTTP_PORT" gateway "KOWLOON_HTTP_LISTEN=127.0.0.1:<port>"

if [ "${KOWLOON_DEV_SKIP_BUILD:-}" = 1 ]; then
    kl_say "KOWLOON_DEV_SKIP_BUILD=1: using the binaries in $BUILD as they are"
else
    kl_say "checking the Debian packages Kowloon needs (KL_PACKAGES in deploy/local/lib.sh)"
    kl_install_packages
    kl_build "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
declare -A BIN=(
    [tenant]=$BUILD/services/tenant/kowloon-tenant
    [flags]=$BUILD/services/flags/kowloon-flags
    [workspace]=$BUILD/services/workspace/kowloon-workspace
    [billing]=$BUILD/services/billing/kowloon-billing
    [migration]=$BUILD/services/migration/kowloon-migration
    [gateway]=$BUILD/gateway/kowloon-gateway
)
for name in "${!BIN[@]}"; do
    [ -x "${BIN[$name]}" ] || kl_die "${BIN[$name]} was not built (see $BUILD.build.log)"
done
KOWLOONCTL=$BUILD/tools/kowloonctl/kowloonctl
[ -x "$KOWLOONCTL" ] || KOWLOONCTL=

declare -A PID=()
STOPPING=

# Stops one process with SIGTERM and reports how it ended.
stop_proc() { # NAME
    local name=$1 pid=${PID[$1]:-} rc=0
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            kl_say "$name did not stop within 15s of SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || rc=$?
    PID[$name]=
    rm -f "$DEV/$name.pid"
    # The stand-in is Python: SIGTERM is its normal end.
    if [ "$rc" -eq 0 ] || { [ "$name" = stripe-standin ] && [ "$rc" -eq 143 ]; }; then
        kl_say "$name stopped"
    else
        kl_say "$name exited with status $rc"
    fi
    return 0
}

stop_all() {
    [ -n "$STOPPING" ] && return 0
    STOPPING=1
    local i
    stop_proc gateway
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do stop_proc "${SERVICES[$i]}"; done
    stop_proc stripe-standin
    kl_redis_stop "$DEV/redis" && kl_say "Redis stopped"
    kl_pg_stop "$DEV/pg" && kl_say "PostgreSQL stopped"
}
on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    exit "$rc"
}
on_signal() {
    trap - EXIT INT TERM
    echo >&2
    kl_say "stopping (signal received)"
    stop_all
    exit 0
}
trap on_exit EXIT
trap on_signal INT TERM

# 9>&-: the daemons must not inherit the run lock.
kl_pg_start "$DEV/pg" "$PG_PORT" 9>&-
kl_redis_start "$DEV/redis" "$REDIS_PORT" 9>&-

# Two roles, as in production (docs/workspace-service.md, "Two database
# roles"): "kowloon" owns the database and every schema and runs the DDL;
# "kowloon_app" owns nothing and has neither SUPERUSER nor BYPASSRLS, so
# row-level security holds for the workspace service, which serves with it.
PG_ADMIN_URL="postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
OWNER_URL="postgresql://kowloon@127.0.0.1:$PG_PORT/kowloon"
APP_URL="postgresql://kowloon_app@127.0.0.1:$PG_PORT/kowloon"
owner=$(psql -X -tA -d "$PG_ADMIN_URL" -c "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'kowloon'")
if [ -n "$owner" ] && [ "$owner" != kowloon ]; then
    kl_die "database kowloon in $DEV/pg is owned by $owner: it was made by an older deploy/run.sh; remove $DEV to start again"
fi
psql -X -q -v ON_ERROR_STOP=1 -d "$PG_ADMIN_URL" <<'SQL' || kl_die "could not create the database roles"
SELECT 'CREATE ROLE kowloon LOGIN CREATEDB NOSUPERUSER NOBYPASSRLS NOCREATEROLE'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kowloon') \gexec
SELECT 'CREATE ROLE kowloon_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kowloon_app') \gexec
GRANT pg_signal_backend TO kowloon;
SQL
if [ -z "$owner" ]; then
    psql -X -q -d "$PG_ADMIN_URL" -c 'CREATE DATABASE kowloon OWNER kowloon' ||
        kl_die "could not create database kowloon"
    kl_say "created database kowloon (owner role kowloon, application role kowloon_app)"
fi

if [ ! -s "$DEV/admin-token" ]; then
    (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(24))' >"$DEV/admin-token")
    kl_say "generated an admin token in $DEV/admin-token"
fi
ADMIN_TOKEN=$(cat "$DEV/admin-token")

ep() { echo "tcp://127.0.0.1:${PORT[$1]}"; }
# Settings every process reads; the rest is given per process below.
export KOWLOON_REDIS_URL=${KOWLOON_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/0}
export KOWLOON_TENANT_ENDPOINTS KOWLOON_FLAGS_ENDPOINTS KOWLOON_WORKSPACE_ENDPOINTS \
    KOWLOON_BILLING_ENDPOINTS KOWLOON_MIGRATION_ENDPOINTS
KOWLOON_TENANT_ENDPOINTS=$(ep tenant)
KOWLOON_FLAGS_ENDPOINTS=$(ep flags)
KOWLOON_WORKSPACE_ENDPOINTS=$(ep workspace)
KOWLOON_BILLING_ENDPOINTS=$(ep billing)
KOWLOON_MIGRATION_ENDPOINTS=$(ep migration)

# The operator's CLI, pointed at this stack (its ports: the KOWLOON_DEV_*_PORT of this run).
CTL_TEXT=
if [ -n "$KOWLOONCTL" ]; then
    cat >"$DEV/kowloonctl" <<EOF
#!/bin/sh
# Written by deploy/run.sh for the stack it runs now: kowloonctl with its
# service endpoints. Rewritten at every start.
export KOWLOON_TENANT_ENDPOINTS=$KOWLOON_TENANT_ENDPOINTS
export KOWLOON_FLAGS_ENDPOINTS=$KOWLOON_FLAGS_ENDPOINTS
export KOWLOON_WORKSPACE_ENDPOINTS=$KOWLOON_WORKSPACE_ENDPOINTS
export KOWLOON_BILLING_ENDPOINTS=$KOWLOON_BILLING_ENDPOINTS
export KOWLOON_MIGRATION_ENDPOINTS=$KOWLOON_MIGRATION_ENDPOINTS
# tenant backup|export|restore|verify: the owner role, as the services use it.
export KOWLOON_DATABASE_URL=\${KOWLOON_DATABASE_URL:-$OWNER_URL}
export KOWLOON_TENANT_DB_OWNER_SERVERS=\${KOWLOON_TENANT_DB_OWNER_SERVERS:-main=$OWNER_URL}
exec "$KOWLOONCTL" "\$@"
EOF
    chmod 755 "$DEV/kowloonctl"
    CTL_TEXT="  Operator CLI  $DEV/kowloonctl tenants list   (kowloonctl pointed at this stack;
                also migrate status, plans list, tenant backup ...; --help on every command)
"
fi

# The environment of each process (NAME=VALUE words for env(1)).
declare -A ENV=(
    [tenant]="KOWLOON_DATABASE_URL=$OWNER_URL KOWLOON_TENANT_BIND=$(ep tenant)
        KOWLOON_TENANT_DB_OWNER_SERVERS=main=$OWNER_URL KOWLOON_DATA_APP_ROLE=kowloon_app"
    [flags]="KOWLOON_DATABASE_URL=$OWNER_URL KOWLOON_FLAGS_BIND=$(ep flags)"
    [migration]="KOWLOON_DATABASE_URL=$OWNER_URL KOWLOON_DATA_OWNER_URL=$OWNER_URL
        KOWLOON_MIGRATION_BIND=$(ep migration) KOWLOON_MIGRATIONS_DIR=$MIGRATIONS
        KOWLOON_TENANT_DB_OWNER_SERVERS=main=$OWNER_URL"
    [billing]="KOWLOON_DATABASE_URL=$OWNER_URL KOWLOON_BILLING_BIND=$(ep billing)"
    [workspace]="KOWLOON_DATABASE_URL=$APP_URL KOWLOON_DATA_OWNER_URL=$OWNER_URL
        KOWLOON_WORKSPACE_BIND=$(ep workspace) KOWLOON_PLACEMENT_ENDPOINTS=$(ep tenant)"
    [gateway]="KOWLOON_HTTP_LISTEN=$HTTP_LISTEN KOWLOON_ADMIN_TOKEN=$ADMIN_TOKEN
        KOWLOON_BASE_DOMAIN=localhost KOWLOON_PUBLIC_SCHEME=http"
)

if [ -n "$STRIPE_SIMULATED" ]; then
    for f in stripe-secret-key stripe-webhook-secret; do
        if [ ! -s "$DEV/$f" ]; then
            prefix=sk_test_kowloon_dev_
            [ $f = stripe-webhook-secret ] && prefix=whsec_kowloon_dev_
            (umask 077 && "$PY" -c 'import secrets,sys; print(sys.argv[1] + secrets.token_hex(16))' \
                "$prefix" >"$DEV/$f")
        fi
    done
    STRIPE_KEY=$(cat "$DEV/stripe-secret-key")
    WEBHOOK_SECRET=$(cat "$DEV/stripe-webhook-secret")
    STRIPE_BASE=http://127.0.0.1:$STRIPE_PORT
    ENV[billing]+=" KOWLOON_STRIPE_API_BASE=$STRIPE_BASE KOWLOON_STRIPE_SECRET_KEY=$STRIPE_KEY
        KOWLOON_STRIPE_WEBHOOK_SECRETS=$WEBHOOK_SECRET"
fi

# Starts one process in the background with its log appended to $DEV.
# LOG_START[name] = the first line of this run in its log.
declare -A LOG_START
start_proc() { # NAME COMMAND...
    local name=$1 log=$DEV/$1.log
    shift
    touch "$log"
    LOG_START[$name]=$(($(wc -l <"$log") + 1))
    # Its own session (setsid execs in place: the pid stays): Ctrl-C in the
    # terminal reaches run.sh alone, which stops everything in order.
    setsid "$@" </dev/null >>"$log" 2>&1 9>&- &
    PID[$name]=$!
    echo "${PID[$name]}" >"$DEV/$name.pid"
    kl_say "$name started (pid ${PID[$name]}, log: $log)"
}
show_log() { # NAME: the last lines this run wrote to its log
    tail -n +"${LOG_START[$1]:-1}" "$DEV/$1.log" | tail -n 30 >&2
}
died() { # NAME
    local rc=0 pid=${PID[$1]}
    wait "$pid" 2>/dev/null || rc=$?
    PID[$1]=
    kl_say "$1 exited at start with status $rc; last lines of $DEV/$1.log:"
    show_log "$1"
    exit 1
}
# Every process started so far is still running.
check_alive() {
    local name
    for name in "${!PID[@]}"; do
        [ -z "${PID[$name]}" ] || kill -0 "${PID[$name]}" 2>/dev/null || died "$name"
    done
}
start_service() { # NAME: starts it and waits until its ZeroMQ port is bound
    local name=$1
    # shellcheck disable=SC2086  # ENV holds NAME=VALUE words
    start_proc "$name" env ${ENV[$name]} "${BIN[$name]}"
    for _ in $(seq 1 300); do
        check_alive
        port_taken "${PORT[$name]}" && return 0
        sleep 0.1
    done
    kl_say "last lines of $DEV/$name.log:"
    show_log "$name"
    kl_die "the $name service did not bind port ${PORT[$name]} within 30s"
}

if [ -n "$STRIPE_SIMULATED" ]; then
    start_proc stripe-standin "$PY" -u "$STANDIN" --port "$STRIPE_PORT" --secret-key "$STRIPE_KEY"
    for _ in $(seq 1 100); do
        check_alive
        tail -n +"${LOG_START[stripe-standin]}" "$DEV/stripe-standin.log" | grep -q '^listening on' && break
        sleep 0.1
    done
    port_taken "$STRIPE_PORT" || kl_die "the Stripe stand-in did not listen on $STRIPE_PORT (log: $DEV/stripe-standin.log)"
fi

start_service tenant
start_service flags
start_service migration
start_service billing
# shellcheck disable=SC2086  # ENV holds NAME=VALUE words
start_proc gateway env ${ENV[gateway]} "${BIN[gateway]}"

BASE=http://localhost:$HTTP_PORT
kl_say "waiting for $BASE/readyz"
ready=
for _ in $(seq 1 300); do
    check_alive
    if curl -s -o /dev/null -w '%{http_code}' --connect-to "localhost:$HTTP_PORT:$CONNECT" \
        "$BASE/readyz" 2>/dev/null | grep -q '^200$'; then
        ready=1
        break
    fi
    sleep 0.1
done
[ -n "$ready" ] || {
    kl_say "last lines of $DEV/gateway.log:"; show_log gateway
    kl_die "the gateway was not ready within 30s (logs: $DEV/*.log)"
}

# admin METHOD PATH [JSON]: prints "<body>\n<status>".
admin() {
    local args=(-s -w '\n%{http_code}' -X "$1" --connect-to "localhost:$HTTP_PORT:$CONNECT"
        -H "Authorization: Bearer $ADMIN_TOKEN")
    [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' --data "$3")
    curl "${args[@]}" "$BASE$2"
}
# api SUBDOMAIN KEY METHOD PATH [JSON]: the same on a tenant host.
api() {
    local args=(-s -w '\n%{http_code}' -X "$3" --connect-to "$1.localhost:$HTTP_PORT:$CONNECT"
        -H "Authorization: Bearer $2")
    [ $# -ge 5 ] && args+=(-H 'Content-Type: application/json' --data "$5")
    curl "${args[@]}" "http://$1.localhost:$HTTP_PORT$4"
}
json_get() { # KEY: reads JSON on stdin, prints .KEY
    "$PY" -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1"
}
split_reply() { # sets BODY and CODE from an admin() or api() reply
    CODE=${1##*$'\n'}
    BODY=${1%$'\n'*}
}
ok_code() { case $CODE in 200 | 201) return 0 ;; *) return 1 ;; esac; }

# In simulated mode the plans are sold at the stand-in's prices (a plan
# without a Stripe price cannot be bought). With a real key, set your own.
if [ -n "$STRIPE_SIMULATED" ]; then
    for plan in starter pro; do
        split_reply "$(admin GET "/admin/v1/plans/$plan")"
        [ "$CODE" = 200 ] || kl_die "reading plan $plan failed: HTTP $CODE $BODY"
        patch=$(printf '%s' "$BODY" | "$PY" -c 'import json,sys
p = json.load(sys.stdin)
if p.get("stripePriceIds"): sys.exit(0)
p["stripePriceIds"] = ["price_dev_" + p["name"]]
for k in ("createdAt", "updatedAt", "builtin"): p.pop(k, None)
print(json.dumps(p))')
        if [ -n "$patch" ]; then
            split_reply "$(admin PATCH "/admin/v1/plans/$plan" "$patch")"
            [ "$CODE" = 200 ] || kl_die "setting the Stripe price of plan $plan failed: HTTP $CODE $BODY"
            kl_say "plan $plan is sold at the stand-in's price price_dev_$plan"
        fi
    done
fi

# demo_tenant SUBDOMAIN NAME PLAN: finds or creates it, active on PLAN
# (a plan changed by an earlier run's demo webhook is put back); sets TID.
demo_tenant() {
    local sub=$1 name=$2 plan=$3 found
    split_reply "$(admin GET '/admin/v1/tenants?page_size=500')"
    [ "$CODE" = 200 ] || kl_die "listing tenants failed: HTTP $CODE $BODY"
    found=$(printf '%s' "$BODY" | "$PY" -c 'import json,sys
for t in json.load(sys.stdin).get("tenants", []):
    if t.get("subdomain") == sys.argv[1]: print(t["id"], t.get("plan", ""), t.get("status", "")); break' "$sub")
    if [ -z "$found" ]; then
        split_reply "$(admin POST /admin/v1/tenants "{\"subdomain\":\"$sub\",\"name\":\"$name\",\"plan\":\"$plan\",\"status\":\"active\"}")"
        ok_code || kl_die "creating tenant $sub failed: HTTP $CODE $BODY"
        TID=$(printf '%s' "$BODY" | json_get id)
        kl_say "created demo tenant $sub ($TID) on plan $plan"
        return 0
    fi
    read -r TID cur_plan cur_status <<<"$found"
    if [ "$cur_plan" != "$plan" ] || [ "$cur_status" != active ]; then
        split_reply "$(admin PATCH "/admin/v1/tenants/$TID" "{\"plan\":\"$plan\",\"status\":\"active\"}")"
        [ "$CODE" = 200 ] || kl_die "resetting tenant $sub failed: HTTP $CODE $BODY"
        kl_say "demo tenant $sub ($TID) put back on plan $plan, active (it was $cur_plan, $cur_status)"
    else
        kl_say "demo tenant $sub exists ($TID, plan $plan)"
    fi
}
# demo_key SUBDOMAIN TENANT_ID: an API key kept in $DEV/<sub>-api-key; sets KEY.
demo_key() {
    local sub=$1 tid=$2 file=$DEV/$1-api-key
    KEY=
    if [ -s "$file" ]; then
        KEY=$(cat "$file")
        split_reply "$(api "$sub" "$KEY" GET /api/v1/tenant)"
        [ "$CODE" = 200 ] || KEY=
    fi
    if [ -z "$KEY" ]; then
        split_reply "$(admin POST "/admin/v1/tenants/$tid/api-keys" '{"name":"deploy/run.sh demo key"}')"
        ok_code || kl_die "creating an API key for $sub failed: HTTP $CODE $BODY"
        KEY=$(printf '%s' "$BODY" | json_get secret)
        (umask 077 && printf '%s\n' "$KEY" >"$file")
        kl_say "created an API key for $sub (kept in $file)"
    fi
}

demo_tenant acme "Acme Corp" pro
ACME_ID=$TID
demo_tenant globex "Globex" starter
GLOBEX_ID=$TID

# The product's tables (services/workspace/migrations), applied by
# kowloon-migration to every tenant's target (the row model's shared schema
# "workspace" here) before the workspace service starts: it refuses to run
# without them. A run that finds them applied does nothing.
if [ -n "$KOWLOONCTL" ]; then
    kl_say "applying the product's migrations (kowloonctl migrate run --wait)"
    "$KOWLOONCTL" --quiet migrate run --wait >"$DEV/migrate.out" 2>&1 || {
        cat "$DEV/migrate.out" >&2
        kl_die "the migrations failed (kowloonctl migrate status shows the failures; log: $DEV/migration.log)"
    }
else
    # No kowloonctl in this build: the files, in order, as the owner role.
    kl_say "kowloonctl is not built: applying $MIGRATIONS with psql"
    if [ "$(psql -X -tA -d "$OWNER_URL" -c "SELECT to_regclass('workspace.projects') IS NOT NULL")" != t ]; then
        psql -X -q -v ON_ERROR_STOP=1 -d "$OWNER_URL" -c 'CREATE SCHEMA IF NOT EXISTS workspace'
        for f in "$MIGRATIONS"/V*__*.sql; do
            { echo 'SET search_path = workspace;'; cat "$f"; } |
                psql -X -q -v ON_ERROR_STOP=1 -1 -d "$OWNER_URL" || kl_die "applying $f failed"
        done
    fi
fi
start_service workspace

demo_key acme "$ACME_ID"
ACME_KEY=$KEY
demo_key globex "$GLOBEX_ID"
GLOBEX_KEY=$KEY

# acme's projects: two, with a few tasks, made once.
split_reply "$(api acme "$ACME_KEY" GET /api/v1/projects)"
[ "$CODE" = 200 ] || kl_die "listing acme's projects failed: HTTP $CODE $BODY (log: $DEV/workspace.log)"
if [ "$(printf '%s' "$BODY" | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin).get("projects", [])))')" = 0 ]; then
    for p in "Website relaunch|New landing page and pricing|Draft copy:1,Pick a theme:1,Launch:0" \
             "Mobile app|iOS and Android|Wireframes:1,API client:0"; do
        IFS='|' read -r pname pdesc ptasks <<<"$p"
        split_reply "$(api acme "$ACME_KEY" POST /api/v1/projects "{\"name\":\"$pname\",\"description\":\"$pdesc\"}")"
        ok_code || kl_die "creating a project for acme failed: HTTP $CODE $BODY"
        pid=$(printf '%s' "$BODY" | json_get id)
        IFS=, read -r -a tasks <<<"$ptasks"
        for t in "${tasks[@]}"; do
            split_reply "$(api acme "$ACME_KEY" POST "/api/v1/projects/$pid/tasks" "{\"title\":\"${t%:*}\"}")"
            ok_code || kl_die "creating a task for acme failed: HTTP $CODE $BODY"
            if [ "${t##*:}" = 1 ]; then
                tid=$(printf '%s' "$BODY" | json_get id)
                split_reply "$(api acme "$ACME_KEY" PATCH "/api/v1/projects/$pid/tasks/$tid" '{"done":true}')"
                [ "$CODE" = 200 ] || kl_die "updating a task of acme failed: HTTP $CODE $BODY"
            fi
        done
    done
    kl_say "created acme's demo projects"
fi

A="http://acme.localhost:$HTTP_PORT"
G="http://globex.localhost:$HTTP_PORT"
H="http://localhost:$HTTP_PORT"
if [ -n "$STRIPE_SIMULATED" ]; then
    # A unique subscription per run: the checkout of this run replaces the
    # one an earlier run's demo made.
    stamp=$(date +%s)
    WEBHOOK_JSON="{\"type\":\"checkout.session.completed\",\"secret\":\"$WEBHOOK_SECRET\",\"url\":\"$H/webhooks/stripe\",\"data\":{\"object\":{\"id\":\"cs_test_dev_$stamp\",\"object\":\"checkout.session\",\"mode\":\"subscription\",\"client_reference_id\":\"$GLOBEX_ID\",\"customer\":\"cus_dev_globex\",\"subscription\":\"sub_dev_globex_$stamp\",\"payment_status\":\"paid\",\"metadata\":{\"tenant_id\":\"$GLOBEX_ID\",\"plan\":\"pro\"}}}}"
    STRIPE_TEXT="  Stripe        SIMULATED: a local stand-in of the Stripe API on 127.0.0.1:$STRIPE_PORT
                (integration-tests/stripe_standin/standin.py; log: $DEV/stripe-standin.log).
                No real payment, no call leaves this machine. Its webhooks are signed
                with the generated secret in $DEV/stripe-webhook-secret.
                To use your Stripe test account instead, stop this and run:
                  KOWLOON_STRIPE_SECRET_KEY=sk_test_... KOWLOON_STRIPE_WEBHOOK_SECRETS=whsec_... deploy/run.sh
                (the whsec_ from: stripe listen --forward-to localhost:$HTTP_PORT/webhooks/stripe)"
    WEBHOOK_TEXT="  # A simulated Stripe webhook: globex pays for pro at Checkout. The stand-in signs
  # checkout.session.completed as Stripe does and POSTs it to $H/webhooks/stripe;
  # billing records it once and moves globex to plan pro, active:
    curl -s -w '\\n' -H 'Content-Type: application/json' -d '$WEBHOOK_JSON' http://127.0.0.1:$STRIPE_PORT/_standin/deliver

  # globex on pro now has the feature (within a second of the webhook):
    curl -s -w '\\n' -H 'Authorization: Bearer $GLOBEX_KEY' $G/api/advanced-reports
"
else
    STRIPE_TEXT="  Stripe        your Stripe account in TEST mode (KOWLOON_STRIPE_SECRET_KEY); webhooks reach
                $H/webhooks/stripe through 'stripe listen'. Give plans their price ids:
                PATCH /admin/v1/plans/pro {\"stripePriceIds\":[\"price_...\"], ...}"
    WEBHOOK_TEXT="  # Stripe webhooks: 'stripe trigger checkout.session.completed' (Stripe CLI) sends one
  # through 'stripe listen' to $H/webhooks/stripe.
"
fi

cat <<EOF

  Kowloon is running: gateway, tenant, flags, migration, billing and workspace services.

  Tenant API    $A/api/v1/...   (acme: plan pro)
                $G/api/v1/...   (globex: plan starter)
  Admin API     $H/admin/v1/tenants
  Health        $H/healthz   /readyz   /metrics
$STRIPE_TEXT

  Admin token   $ADMIN_TOKEN   (kept in $DEV/admin-token)
  acme API key  $ACME_KEY   (kept in $DEV/acme-api-key)
  globex key    $GLOBEX_KEY   (kept in $DEV/globex-api-key)

  Try (*.localhost resolves to 127.0.0.1 in curl):

  # The tenant acme, resolved from its subdomain:
    curl -s -w '\\n' -H 'Authorization: Bearer $ACME_KEY' $A/api/v1/tenant

  # acme's entitlements (plan pro: features and limits, cached in the gateway):
    curl -s -w '\\n' -H 'Authorization: Bearer $ACME_KEY' $A/api/v1/entitlements

  # acme's projects, then a new one (workspace service, row-level security per tenant):
    curl -s -w '\\n' -H 'Authorization: Bearer $ACME_KEY' $A/api/v1/projects
    curl -s -w '\\n' -X POST -H 'Authorization: Bearer $ACME_KEY' -H 'Content-Type: application/json' -d '{"name":"Q3 roadmap"}' $A/api/v1/projects

  # Advanced reports (feature advanced_reports, plan pro):
    curl -s -w '\\n' -H 'Authorization: Bearer $ACME_KEY' $A/api/advanced-reports

  # The same as globex, on plan starter: 403, with the feature and an upgrade link:
    curl -s -w '\\n' -H 'Authorization: Bearer $GLOBEX_KEY' $G/api/advanced-reports

$WEBHOOK_TEXT
  # Every tenant (admin API), and a new one:
    curl -s -w '\\n' -H 'Authorization: Bearer $ADMIN_TOKEN' $H/admin/v1/tenants
    curl -s -w '\\n' -X POST -H 'Authorization: Bearer $ADMIN_TOKEN' -H 'Content-Type: application/json' -d '{"subdomain":"initech","name":"Initech"}' $H/admin/v1/tenants

$CTL_TEXT  Logs          $DEV/<service>.log (one JSON object a line), $DEV/stripe-standin.log,
                $DEV/pg/postgres.log, $DEV/redis/redis.log
  Stop          Ctrl-C (stops every service, the stand-in, Redis and PostgreSQL)

ready: $H (Ctrl-C stops everything)
EOF

# Serve until a signal (on_signal) or until a process dies.
set +e
wait -n "${PID[@]}"
rc=$?
set -e
for name in "${!PID[@]}"; do
    pid=${PID[$name]}
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
        kl_say "$name exited unexpectedly (status $rc); last lines of $DEV/$name.log:"
        show_log "$name"
        PID[$name]=
    fi
done
exit 1
