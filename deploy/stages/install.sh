#!/usr/bin/env bash
# Installs one scaling stage's env files into /etc/kowloon (or --etc DIR),
# filling in the secrets the shipped files leave as placeholders:
#   KOWLOON_ADMIN_TOKEN=CHANGE_ME        -> 64 random hex characters
#   ...:CHANGE_ME_DB_PASSWORD@...        -> 48 random hex characters (owner role)
#   ...:CHANGE_ME_APP_DB_PASSWORD@...    -> 48 random hex characters (application role)
#   ...:CHANGE_ME_REDIS_PASSWORD@...     -> 48 random hex characters
# and, with --domain, replacing yoursaas.com by your domain. Stripe's keys
# cannot be made up: --stripe-key sk_... and --stripe-webhook-secret
# whsec_... fill KOWLOON_STRIPE_SECRET_KEY / KOWLOON_STRIPE_WEBHOOK_SECRETS
# of billing.env; without them the placeholders stay (billing starts, and
# every Stripe call fails "Stripe rejected the API key") and a warning says so.
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
    echo "usage: $0 STAGE [--etc DIR] [--domain DOMAIN] [--keep-secrets] [--stripe-key SK] [--stripe-webhook-secret WHSEC]" >&2
    echo "  STAGE: one of: $(cd "$(dirname "$0")" && find . -name common.env -printf '%h\n' | sed 's|^\./||' | sort | tr '\n' ' ')" >&2
    exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
stage=${1:-}
[ -n "$stage" ] || usage
shift
etc=/etc/kowloon domain="" keep=0 stripe_key="" stripe_whsec=""
while [ $# -gt 0 ]; do
    case $1 in
    --etc) etc=${2:?--etc needs a directory}; shift 2 ;;
    --domain) domain=${2:?--domain needs a name}; shift 2 ;;
    --keep-secrets) keep=1; shift ;;
    --stripe-key) stripe_key=${2:?--stripe-key needs a key}; shift 2 ;;
    --stripe-webhook-secret) stripe_whsec=${2:?--stripe-webhook-secret needs a secret}; shift 2 ;;
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

admin_token="" db_password="" app_password="" redis_password=""
existing=$(find "$etc" -maxdepth 1 -name '*.env' 2>/dev/null | head -n 1 || true)
if [ -n "$existing" ]; then
    [ "$keep" -eq 1 ] || {
        echo "$0: $etc already holds env files; use --keep-secrets to replace them and keep their secrets" >&2
        exit 1
    }
    admin_token=$(value KOWLOON_ADMIN_TOKEN "$etc/gateway.env")
    db_password=$(url_password "$(value KOWLOON_DATABASE_URL "$etc/tenant.env")")
    app_password=$(url_password "$(value KOWLOON_DATABASE_URL "$etc/workspace.env")")
    [ -n "$stripe_key" ] || stripe_key=$(value KOWLOON_STRIPE_SECRET_KEY "$etc/billing.env")
    [ -n "$stripe_whsec" ] || stripe_whsec=$(value KOWLOON_STRIPE_WEBHOOK_SECRETS "$etc/billing.env")
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
[ -n "$app_password" ] && [ "$app_password" != CHANGE_ME_APP_DB_PASSWORD ] || app_password=$(secret 24)
[ -n "$redis_password" ] && [ "$redis_password" != CHANGE_ME_REDIS_PASSWORD ] || redis_password=$(secret 24)
case $stripe_key in CHANGE_ME*) stripe_key="" ;; esac
case $stripe_whsec in CHANGE_ME*) stripe_whsec="" ;; esac
for v in "$stripe_key" "$stripe_whsec"; do
    case $v in *[!A-Za-z0-9_,]*) echo "$0: a Stripe key or secret holds characters other than A-Z a-z 0-9 _ ," >&2; exit 2 ;; esac
done

mkdir -p "$etc"
chmod 0750 "$etc"
umask 077
for f in "$src"/*.env; do
    out=$etc/$(basename "$f")
    sed -e "s|^KOWLOON_ADMIN_TOKEN=CHANGE_ME\$|KOWLOON_ADMIN_TOKEN=$admin_token|" \
        -e "s|:CHANGE_ME_DB_PASSWORD@|:$db_password@|g" \
        -e "s|:CHANGE_ME_APP_DB_PASSWORD@|:$app_password@|g" \
        -e "s|:CHANGE_ME_REDIS_PASSWORD@|:$redis_password@|" \
        "$f" >"$out.tmp"
    if [ -n "$domain" ]; then
        sed -i "s|yoursaas\.com|$domain|g" "$out.tmp"
    fi
    [ -n "$stripe_key" ] && sed -i "s|^KOWLOON_STRIPE_SECRET_KEY=CHANGE_ME_STRIPE_SECRET_KEY\$|KOWLOON_STRIPE_SECRET_KEY=$stripe_key|" "$out.tmp"
    [ -n "$stripe_whsec" ] && sed -i "s|^KOWLOON_STRIPE_WEBHOOK_SECRETS=CHANGE_ME_STRIPE_WEBHOOK_SECRET\$|KOWLOON_STRIPE_WEBHOOK_SECRETS=$stripe_whsec|" "$out.tmp"
    chmod 0600 "$out.tmp"
    mv "$out.tmp" "$out"
    echo "kowloon: wrote $out" >&2
done
# The Stripe placeholders may stay (see above); no other may.
left=$(grep -H CHANGE_ME "$etc"/*.env | grep -v '^[^:]*:KOWLOON_STRIPE_' | cut -d: -f1 | sort -u | tr '\n' ' ' || true)
if [ -n "$left" ]; then
    echo "$0: placeholders left in: $left" >&2
    exit 1
fi
if grep -q '^KOWLOON_STRIPE_.*=CHANGE_ME' "$etc"/*.env 2>/dev/null; then
    echo "kowloon: warning: no Stripe key yet: write yours into KOWLOON_STRIPE_SECRET_KEY and KOWLOON_STRIPE_WEBHOOK_SECRETS of $etc/billing.env (or run again with --keep-secrets --stripe-key sk_... --stripe-webhook-secret whsec_...); until then every Stripe call fails" >&2
fi
echo "kowloon: stage $stage installed in $etc (secrets: KOWLOON_ADMIN_TOKEN in gateway.env," \
    "database passwords in KOWLOON_DATABASE_URL of tenant.env and workspace.env$(grep -q '^KOWLOON_REDIS_URL=redis://:' "$etc/common.env" && echo ', Redis password in KOWLOON_REDIS_URL of common.env'))" >&2
