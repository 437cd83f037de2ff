#!/usr/bin/env bash
# The run command: the whole Kowloon stack on this machine, in one terminal.
#
#   deploy/run.sh          # Ctrl-C stops everything
#
# Installs missing Debian packages, builds build/ (RelWithDebInfo), starts a
# private PostgreSQL and Redis under var/dev/, the tenant service and the
# gateway, creates the demo tenant "acme" and an API key, and prints how to
# call it. Data stays in var/dev/ between runs.
#
# Settings (environment):
#   KOWLOON_DEV_PG_PORT      PostgreSQL port          (default 15432)
#   KOWLOON_DEV_REDIS_PORT   Redis port               (default 16379)
#   KOWLOON_DEV_TENANT_PORT  tenant service ZeroMQ port (default 17101)
#   KOWLOON_HTTP_LISTEN      gateway address          (default 127.0.0.1:8080)
#   KOWLOON_BUILD_DIR        build directory          (default build)
# Any other KOWLOON_* variable you export reaches the processes as well.
#
# Logs: var/dev/gateway.log, var/dev/tenant.log, var/dev/pg/postgres.log,
# var/dev/redis/redis.log. To start from an empty database, stop it and
# remove var/dev/.
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
TENANT_PORT=${KOWLOON_DEV_TENANT_PORT:-17101}
HTTP_LISTEN=${KOWLOON_HTTP_LISTEN:-127.0.0.1:8080}
HTTP_PORT=${HTTP_LISTEN##*:}
HTTP_HOST=${HTTP_LISTEN%:*}
# Where our own curl calls connect ("8080" or "0.0.0.0:8080" listen on all).
case $HTTP_HOST in "$HTTP_LISTEN" | 0.0.0.0 | "") CONNECT=127.0.0.1:$HTTP_PORT ;; *) CONNECT=$HTTP_LISTEN ;; esac
BUILD=${KOWLOON_BUILD_DIR:-build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
DEV=$ROOT/var/dev
PY=/usr/bin/python3

mkdir -p "$DEV"

# One run at a time per checkout.
exec 9>"$DEV/run.lock"
flock -n 9 || kl_die "another deploy/run.sh is already running in $ROOT (lock: $DEV/run.lock)"

# Servers left running by a run that was killed (kill -9, closed terminal):
# the lock says no run.sh owns them, so stop them before starting afresh.
for name in gateway tenant; do
    pid=$(cat "$DEV/$name.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "kowloon-$name" ]; then
        kl_say "stopping a kowloon-$name left over from an earlier run (pid $pid)"
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

# Something listening on a port we need (bash's /dev/tcp: nothing to install).
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
check_port() { # PORT WHAT HOW-TO-CHANGE
    if port_taken "$1"; then
        kl_die "port $1 ($2) is already in use on 127.0.0.1; choose another: $3 deploy/run.sh"
    fi
}
check_port "$PG_PORT" PostgreSQL "KOWLOON_DEV_PG_PORT=<port>"
check_port "$REDIS_PORT" Redis "KOWLOON_DEV_REDIS_PORT=<port>"
check_port "$TENANT_PORT" "tenant service" "KOWLOON_DEV_TENANT_PORT=<port>"
check_port "$HTTP_PORT" gateway "KOWLOON_HTTP_LISTEN=127.0.0.1:<port>"

kl_say "checking the Debian packages Kowloon needs (KL_PACKAGES in deploy/local/lib.sh)"
kl_install_packages
kl_build "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo
TENANT_BIN=$BUILD/services/tenant/kowloon-tenant
GATEWAY_BIN=$BUILD/gateway/kowloon-gateway
[ -x "$TENANT_BIN" ] || kl_die "$TENANT_BIN was not built (see $BUILD.build.log)"
[ -x "$GATEWAY_BIN" ] || kl_die "$GATEWAY_BIN was not built (see $BUILD.build.log)"

TENANT_PID=
GATEWAY_PID=
STOPPING=

# Stops one process with SIGTERM and reports how it ended.
stop_proc() { # NAME PID PIDFILE-NAME
    local name=$1 pid=$2 rc=0
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            kl_say "$name did not stop within 10s of SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || rc=$?
    rm -f "$DEV/$3.pid"
    if [ "$rc" -eq 0 ]; then kl_say "$name stopped"; else kl_say "$name exited with status $rc"; fi
    return 0
}

stop_all() {
    [ -n "$STOPPING" ] && return 0
    STOPPING=1
    stop_proc gateway "$GATEWAY_PID" gateway
    stop_proc "tenant service" "$TENANT_PID" tenant
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

PG_ADMIN_URL="postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
if [ -z "$(psql -X -tA -d "$PG_ADMIN_URL" -c "SELECT 1 FROM pg_database WHERE datname = 'kowloon'")" ]; then
    psql -X -q -d "$PG_ADMIN_URL" -c 'CREATE DATABASE kowloon' || kl_die "could not create database kowloon"
    kl_say "created database kowloon"
fi

if [ ! -s "$DEV/admin-token" ]; then
    (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(24))' >"$DEV/admin-token")
    kl_say "generated an admin token in $DEV/admin-token"
fi
ADMIN_TOKEN=$(cat "$DEV/admin-token")

export KOWLOON_DATABASE_URL=${KOWLOON_DATABASE_URL:-postgresql://postgres@127.0.0.1:$PG_PORT/kowloon}
export KOWLOON_REDIS_URL=${KOWLOON_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/0}
export KOWLOON_TENANT_BIND=tcp://127.0.0.1:$TENANT_PORT
export KOWLOON_TENANT_ENDPOINTS=tcp://127.0.0.1:$TENANT_PORT
export KOWLOON_HTTP_LISTEN=$HTTP_LISTEN
export KOWLOON_ADMIN_TOKEN=$ADMIN_TOKEN
export KOWLOON_BASE_DOMAIN=localhost
export KOWLOON_PUBLIC_SCHEME=http

# Starts one process in the background with its log appended to var/dev/.
# LOG_START[log] = the first line of this run in that log.
declare -A LOG_START
start_proc() { # NAME BINARY LOG
    local name=$1 bin=$2 log=$3
    touch "$log"
    LOG_START[$log]=$(($(wc -l <"$log") + 1))
    "$bin" </dev/null >>"$log" 2>&1 9>&- &
    LAST_PID=$!
    echo "$LAST_PID" >"${log%.log}.pid"
    kl_say "$name started (pid $LAST_PID, log: $log)"
}
show_log() { # LOG: the last lines this run wrote to it
    tail -n +"${LOG_START[$1]:-1}" "$1" | tail -n 30 >&2
}
died() { # NAME PIDVAR LOG
    local rc=0 pid=${!2}
    wait "$pid" 2>/dev/null || rc=$?
    printf -v "$2" '%s' ""
    kl_say "$1 exited at start with status $rc; last lines of $3:"
    show_log "$3"
    exit 1
}

start_proc "tenant service" "$TENANT_BIN" "$DEV/tenant.log"
TENANT_PID=$LAST_PID
# The tenant service migrates its schema, then binds: wait for its port.
for _ in $(seq 1 300); do
    kill -0 "$TENANT_PID" 2>/dev/null || died "tenant service" TENANT_PID "$DEV/tenant.log"
    port_taken "$TENANT_PORT" && break
    sleep 0.1
done
start_proc gateway "$GATEWAY_BIN" "$DEV/gateway.log"
GATEWAY_PID=$LAST_PID

BASE=http://localhost:$HTTP_PORT
kl_say "waiting for $BASE/readyz"
ready=
for _ in $(seq 1 300); do
    kill -0 "$TENANT_PID" 2>/dev/null || died "tenant service" TENANT_PID "$DEV/tenant.log"
    kill -0 "$GATEWAY_PID" 2>/dev/null || died gateway GATEWAY_PID "$DEV/gateway.log"
    if curl -s -o /dev/null -w '%{http_code}' --connect-to "localhost:$HTTP_PORT:$CONNECT" \
        "$BASE/readyz" 2>/dev/null | grep -q '^200$'; then
        ready=1
        break
    fi
    sleep 0.1
done
[ -n "$ready" ] || {
    kl_say "last lines of $DEV/tenant.log:"; show_log "$DEV/tenant.log"
    kl_say "last lines of $DEV/gateway.log:"; show_log "$DEV/gateway.log"
    kl_die "the gateway was not ready within 30s (logs: $DEV/tenant.log, $DEV/gateway.log)"
}

# admin METHOD PATH [JSON]: prints "<status> <body>".
admin() {
    local args=(-s -w '\n%{http_code}' -X "$1" --connect-to "localhost:$HTTP_PORT:$CONNECT"
        -H "Authorization: Bearer $ADMIN_TOKEN")
    [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' --data "$3")
    curl "${args[@]}" "$BASE$2"
}
json_get() { # KEY: reads JSON on stdin, prints .KEY
    "$PY" -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1"
}
split_reply() { # sets BODY and CODE from an admin() reply
    CODE=${1##*$'\n'}
    BODY=${1%$'\n'*}
}

# The demo tenant: find it, or create it.
split_reply "$(admin GET '/admin/v1/tenants?page_size=500')"
[ "$CODE" = 200 ] || kl_die "listing tenants failed: HTTP $CODE $BODY"
ACME_ID=$(printf '%s' "$BODY" | "$PY" -c 'import json,sys
for t in json.load(sys.stdin).get("tenants", []):
    if t.get("subdomain") == "acme": print(t["id"]); break')
if [ -z "$ACME_ID" ]; then
    split_reply "$(admin POST /admin/v1/tenants '{"subdomain":"acme","name":"Acme Corp","status":"active"}')"
    case $CODE in 200|201) ;; *) kl_die "creating tenant acme failed: HTTP $CODE $BODY" ;; esac
    ACME_ID=$(printf '%s' "$BODY" | json_get id)
    kl_say "created demo tenant acme ($ACME_ID)"
else
    kl_say "demo tenant acme exists ($ACME_ID)"
fi

# Its API key: reuse the one kept in var/dev/ while it still works.
API_KEY=
if [ -s "$DEV/acme-api-key" ]; then
    API_KEY=$(cat "$DEV/acme-api-key")
    code=$(curl -s -o /dev/null -w '%{http_code}' --connect-to "acme.localhost:$HTTP_PORT:$CONNECT" \
        -H "Authorization: Bearer $API_KEY" "http://acme.localhost:$HTTP_PORT/api/v1/tenant")
    [ "$code" = 200 ] || API_KEY=
fi
if [ -z "$API_KEY" ]; then
    split_reply "$(admin POST "/admin/v1/tenants/$ACME_ID/api-keys" '{"name":"deploy/run.sh demo key"}')"
    case $CODE in 200|201) ;; *) kl_die "creating an API key failed: HTTP $CODE $BODY" ;; esac
    API_KEY=$(printf '%s' "$BODY" | json_get secret)
    (umask 077 && printf '%s\n' "$API_KEY" >"$DEV/acme-api-key")
    kl_say "created an API key for acme (kept in $DEV/acme-api-key)"
fi

cat <<EOF

  Kowloon is running.

  Tenant API    http://acme.localhost:$HTTP_PORT/api/v1/tenant
  Admin API     http://localhost:$HTTP_PORT/admin/v1/tenants
  Health        http://localhost:$HTTP_PORT/healthz   /readyz   /metrics

  Admin token   $ADMIN_TOKEN
                (kept in var/dev/admin-token)
  acme API key  $API_KEY
                (kept in var/dev/acme-api-key)

  Try (*.localhost resolves to 127.0.0.1 in curl):

    curl -s -w '\n' -H 'Authorization: Bearer $API_KEY' http://acme.localhost:$HTTP_PORT/api/v1/tenant

    curl -s -w '\n' -H 'Authorization: Bearer $ADMIN_TOKEN' http://localhost:$HTTP_PORT/admin/v1/tenants

    curl -s -w '\n' -X POST -H 'Authorization: Bearer $ADMIN_TOKEN' -H 'Content-Type: application/json' \\
         -d '{"subdomain":"globex","name":"Globex"}' http://localhost:$HTTP_PORT/admin/v1/tenants

  Logs          var/dev/gateway.log, var/dev/tenant.log (one JSON object a line),
                var/dev/pg/postgres.log, var/dev/redis/redis.log
  Stop          Ctrl-C (stops the gateway, the tenant service, Redis and PostgreSQL)

EOF

# Serve until a signal (on_signal) or until a process dies.
set +e
wait -n "$TENANT_PID" "$GATEWAY_PID"
rc=$?
set -e
for p in "tenant service:$TENANT_PID:$DEV/tenant.log" "gateway:$GATEWAY_PID:$DEV/gateway.log"; do
    IFS=: read -r name pid log <<<"$p"
    if ! kill -0 "$pid" 2>/dev/null; then
        kl_say "$name exited unexpectedly (status $rc); last lines of $log:"
        show_log "$log"
        [ "$name" = gateway ] && GATEWAY_PID= || TENANT_PID=
    fi
done
exit 1
