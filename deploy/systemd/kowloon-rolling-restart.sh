#!/usr/bin/env bash
# Restarts every Kowloon instance on this host one at a time, without
# dropping a request (docs/operations/upgrade.md). For the one-host stages
# (launch, early growth), where nginx runs here too.
#
#   deploy/systemd/kowloon-rolling-restart.sh
#
# Gateways, each in turn: its line in nginx's upstream gets "down" and nginx
# reloads (gracefully: requests under way finish, new ones go to the other
# gateway), the instance restarts, /readyz answers 200, the line is restored
# and nginx reloads again. Then every service instance (tenant, flags,
# workspace, billing, migration; <service>-N.env), each in turn: restart
# (SIGTERM drains it: new calls go to the other instance), wait until its
# ZeroMQ port accepts connections and every gateway is ready.
#
# Environment (defaults for a host installed by docs/operations/install.md):
#   KL_ETC         /etc/kowloon
#   KL_UPSTREAM    /etc/nginx/conf.d/kowloon-upstream.conf
#   KL_NGINX_RELOAD  "nginx -t -q && systemctl reload nginx"
#   KL_RESTART     "systemctl restart"   (called with the unit name)
#   KL_DRAIN_SECONDS  3   (time for requests under way to finish)
set -euo pipefail

etc=${KL_ETC:-/etc/kowloon}
upstream=${KL_UPSTREAM:-/etc/nginx/conf.d/kowloon-upstream.conf}
reload=${KL_NGINX_RELOAD:-nginx -t -q && systemctl reload nginx}
restart=${KL_RESTART:-systemctl restart}
drain=${KL_DRAIN_SECONDS:-3}

say() { printf 'kowloon: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
value() { sed -n "s|^$1=||p" "$2" | tail -n 1; }
connect_addr() { # host:port as listened on -> host:port to connect to
    local a=$1
    case $a in 0.0.0.0:* | \[::\]:* | :*) echo "127.0.0.1:${a##*:}" ;; *:*) echo "$a" ;; *) echo "127.0.0.1:$a" ;; esac
}
base=$(value KOWLOON_BASE_DOMAIN "$etc/gateway.env")
[ -n "$base" ] || die "no KOWLOON_BASE_DOMAIN in $etc/gateway.env"

gateways=()
for f in "$etc"/gateway-*.env; do [ -e "$f" ] && gateways+=("$(basename "$f" .env | sed 's/^gateway-//')"); done
[ ${#gateways[@]} -ge 2 ] || die "fewer than two gateway instances in $etc: a restart would drop requests"
[ -f "$upstream" ] || die "no nginx upstream file $upstream"

ready() { # ADDR: the gateway at ADDR answers /readyz 200
    curl -fsS -o /dev/null --max-time 2 -H "Host: $base" "http://$1/readyz" 2>/dev/null
}
wait_for() { # WHAT CMD...: up to 60 s
    local what=$1 i; shift
    for i in $(seq 1 600); do "$@" && return 0; sleep 0.1; done
    die "$what not ready after 60 s"
}
all_gateways_ready() {
    local g
    for g in "${gateways[@]}"; do
        ready "$(connect_addr "$(value KOWLOON_HTTP_LISTEN "$etc/gateway-$g.env")")" || return 1
    done
}
port_open() { # host:port
    (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null
}
set_down() { # LISTEN on|off
    local addr=$1 esc
    esc=$(printf '%s' "$addr" | sed 's/[.]/\\./g') # IPv4:port
    if [ "$2" = on ]; then
        grep -Eq "^\s*server\s+$esc(\s|;)" "$upstream" || die "$upstream has no 'server $addr' line"
        sed -i -E "s/^(\s*server\s+$esc)(\s[^;]*)?;/\1\2 down;/; s/ down down;/ down;/" "$upstream"
    else
        sed -i -E "s/^(\s*server\s+$esc(\s[^;]*)?) down;/\1;/" "$upstream"
    fi
    bash -c "$reload" || die "nginx reload failed (upstream file: $upstream)"
}

for g in "${gateways[@]}"; do
    listen=$(value KOWLOON_HTTP_LISTEN "$etc/gateway-$g.env")
    say "gateway@$g ($listen): out of nginx's upstream"
    set_down "$listen" on
    sleep "$drain"
    say "gateway@$g: restarting"
    $restart "kowloon-gateway@$g"
    wait_for "gateway@$g" ready "$(connect_addr "$listen")"
    set_down "$listen" off
    say "gateway@$g: back in nginx's upstream"
    sleep 1
done
for svc in tenant flags workspace billing migration; do
    for f in "$etc/$svc"-*.env; do
        [ -e "$f" ] || continue
        i=$(basename "$f" .env | sed "s/^$svc-//")
        bind=$(value "KOWLOON_${svc^^}_BIND" "$f")
        say "$svc@$i ($bind): restarting"
        $restart "kowloon-$svc@$i"
        addr=${bind#tcp://}
        case $addr in 0.0.0.0:* | \*:*) addr=127.0.0.1:${addr##*:} ;; esac
        wait_for "$svc@$i" port_open "$addr"
        wait_for "the gateways" all_gateways_ready
        sleep "$drain"
    done
done
say "every instance restarted"
