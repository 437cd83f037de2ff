#!/usr/bin/env bash
# Installs one scaling stage's env files into /etc/kowloon (or --etc DIR),
# filling in the secrets the shipped files leave as placeholders:
#   KOWLOON_ADMIN_TOKEN=CHANGE_ME        -> 64 random hex characters
#   ...:CHANGE_ME_DB_PASSWORD@...        -> 48 random hex characters
#   ...:CHANGE_ME_REDIS_PASSWORD@...     -> 48 random hex characters
# and, with --domain, replacing yoursaas.com by your domain.
#
#   deploy/stages/install.sh launch --domain example.com
#   deploy/stages/install.sh early-growth --keep-secrets   # stage move
#   deploy/stages/install.sh scaling/app --keep-secrets
#
# Without --keep-secrets it refuses to overwrite existing files. With it,
# the secrets already in DIR (admin token, database and Redis passwords)
# and the domain (unless --domain is given) are carried into the new files,
# the old files are moved to DIR/previous-<time>/, and nothing else of the
# old files is kept (compare with diff -r if you had edited them).
# Says where the secrets are, never prints them.
set -euo pipefail

usage() {
    echo "usage: $0 STAGE [--etc DIR] [--domain DOMAIN] [--keep-secrets]" >&2
    echo "  STAGE: one of: $(cd "$(dirname "$0")" && find . -name common.env -printf '%h\n' | sed 's|^\./||' | sort | tr '\n' ' ')" >&2
    exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
stage=${1:-}
[ -n "$stage" ] || usage
shift
etc=/etc/kowloon domain="" keep=0
while [ $# -gt 0 ]; do
    case $1 in
    --etc) etc=${2:?--etc needs a directory}; shift 2 ;;
    --domain) domain=${2:?--domain needs a name}; shift 2 ;;
    --keep-secrets) keep=1; shift ;;
    *) usage ;;
    esac
done
src=$here/$stage
[ -f "$src/common.env" ] || { echo "$0: no stage '$stage' (no $src/common.env)" >&2; usage; }
if [ -n "$domain" ] && ! printf '%s' "$domain" | grep -Eq '^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$'; then
    echo "$0: --domain '$domain' is not a lowercase DNS name such as example.com" >&2
    exit 2
fi

# value KEY FILE: the value of KEY=... in FILE, empty when absent.
value() { [ -f "$2" ] && sed -n "s|^$1=||p" "$2" | tail -n 1 || true; }
# url_password URL: the password of scheme://user:password@host/...
url_password() { printf '%s' "$1" | sed -n 's|^[a-z]*://[^:/@]*:\([^@]*\)@.*|\1|p'; }
secret() { openssl rand -hex "$1"; }

admin_token="" db_password="" redis_password=""
existing=$(find "$etc" -maxdepth 1 -name '*.env' 2>/dev/null | head -n 1 || true)
if [ -n "$existing" ]; then
    [ "$keep" -eq 1 ] || {
        echo "$0: $etc already holds env files; use --keep-secrets to replace them and keep their secrets" >&2
        exit 1
    }
    admin_token=$(value KOWLOON_ADMIN_TOKEN "$etc/gateway.env")
    db_password=$(url_password "$(value KOWLOON_DATABASE_URL "$etc/tenant.env")")
    redis_password=$(url_password "$(value KOWLOON_REDIS_URL "$etc/common.env")")
    [ -n "$domain" ] || domain=$(value KOWLOON_BASE_DOMAIN "$etc/gateway.env")
    backup=$etc/previous-$(date -u +%Y%m%dT%H%M%SZ)
    mkdir -p "$backup"
    chmod 0700 "$backup"
    mv "$etc"/*.env "$backup"/
    echo "kowloon: previous env files moved to $backup" >&2
fi
[ -n "$admin_token" ] && [ "$admin_token" != CHANGE_ME ] || admin_token=$(secret 32)
[ -n "$db_password" ] && [ "$db_password" != CHANGE_ME_DB_PASSWORD ] || db_password=$(secret 24)
[ -n "$redis_password" ] && [ "$redis_password" != CHANGE_ME_REDIS_PASSWORD ] || redis_password=$(secret 24)

mkdir -p "$etc"
chmod 0750 "$etc"
umask 077
for f in "$src"/*.env; do
    out=$etc/$(basename "$f")
    sed -e "s|^KOWLOON_ADMIN_TOKEN=CHANGE_ME\$|KOWLOON_ADMIN_TOKEN=$admin_token|" \
        -e "s|:CHANGE_ME_DB_PASSWORD@|:$db_password@|" \
        -e "s|:CHANGE_ME_REDIS_PASSWORD@|:$redis_password@|" \
        "$f" >"$out.tmp"
    if [ -n "$domain" ]; then
        sed -i "s|yoursaas\.com|$domain|g" "$out.tmp"
    fi
    chmod 0600 "$out.tmp"
    mv "$out.tmp" "$out"
    echo "kowloon: wrote $out" >&2
done
if grep -l 'CHANGE_ME' "$etc"/*.env >/dev/null 2>&1; then
    echo "$0: placeholders left in: $(grep -l CHANGE_ME "$etc"/*.env | tr '\n' ' ')" >&2
    exit 1
fi
echo "kowloon: stage $stage installed in $etc (secrets: KOWLOON_ADMIN_TOKEN in gateway.env," \
    "database password in KOWLOON_DATABASE_URL of tenant.env$(grep -q '^KOWLOON_REDIS_URL=redis://:' "$etc/common.env" && echo ', Redis password in KOWLOON_REDIS_URL of common.env'))" >&2
