#!/usr/bin/env bash
# Issues the wildcard certificate for DOMAIN and *.DOMAIN with Let's
# Encrypt's DNS-01 challenge (the only challenge that can issue wildcards).
#
#   deploy/certbot/issue-wildcard.sh manual     DOMAIN EMAIL
#   deploy/certbot/issue-wildcard.sh cloudflare DOMAIN EMAIL [CREDENTIALS_INI]
#   deploy/certbot/issue-wildcard.sh route53    DOMAIN EMAIL
#
# manual: certbot prints two TXT records for _acme-challenge.DOMAIN; add
#   both at your DNS provider, check with
#   `dig +short TXT _acme-challenge.DOMAIN @1.1.1.1`, then press Enter.
#   A manual certificate does NOT renew by itself: repeat this before the
#   90 days are over (certbot emails EMAIL), or use a DNS plugin.
# cloudflare / route53: certbot creates and removes the TXT records through
#   the provider's API, and `certbot renew` (Debian's certbot.timer, twice a
#   day) renews without you. Credentials: deploy/certbot/cloudflare.ini.example;
#   route53 reads the usual AWS credentials (/root/.aws/credentials).
#
# The deploy hook (renewal-hooks/deploy/kowloon-reload-nginx.sh) reloads
# nginx after every issue and renewal. Set STAGING=1 to try against Let's
# Encrypt's staging server first (no rate limits, untrusted certificate).
set -euo pipefail
mode=${1:-} domain=${2:-} email=${3:-}
[ -n "$mode" ] && [ -n "$domain" ] && [ -n "$email" ] || {
    sed -n '2,22p' "$0" >&2
    exit 2
}
here=$(cd "$(dirname "$0")" && pwd)
hook=/etc/letsencrypt/renewal-hooks/deploy/kowloon-reload-nginx.sh
install -d -m 0755 /etc/letsencrypt/renewal-hooks/deploy
install -m 0755 "$here/renewal-hooks/deploy/kowloon-reload-nginx.sh" "$hook"

common=(certonly --agree-tos --email "$email"
    --cert-name "$domain" -d "$domain" -d "*.$domain")
[ "${STAGING:-0}" = 1 ] && common+=(--staging)

case $mode in
manual)
    # Interactive by nature: certbot waits for you to publish the records.
    certbot "${common[@]}" --manual --preferred-challenges dns
    ;;
cloudflare)
    creds=${4:-/root/.secrets/certbot/cloudflare.ini}
    [ -f "$creds" ] || { echo "$0: no $creds (see $here/cloudflare.ini.example)" >&2; exit 1; }
    chmod 0600 "$creds"
    certbot "${common[@]}" --non-interactive --dns-cloudflare --dns-cloudflare-credentials "$creds" \
        --dns-cloudflare-propagation-seconds 30
    ;;
route53)
    certbot "${common[@]}" --non-interactive --dns-route53
    ;;
*)
    echo "$0: mode must be manual, cloudflare or route53" >&2
    exit 2
    ;;
esac
echo "kowloon: certificate in /etc/letsencrypt/live/$domain/ (fullchain.pem, privkey.pem)" >&2
