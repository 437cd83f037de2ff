#!/usr/bin/env bash
# A self-signed wildcard certificate for DOMAIN and *.DOMAIN, laid out like
# certbot's live directory (fullchain.pem, privkey.pem), for local
# development (docker-compose profile "tls") and the nginx integration test.
# Never for production: use deploy/certbot/ there.
#   deploy/nginx/make-self-signed.sh DIR [DOMAIN]   (DOMAIN: yoursaas.com)
set -euo pipefail
dir=${1:?usage: $0 DIR [DOMAIN]}
domain=${2:-yoursaas.com}
mkdir -p "$dir"
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days 30 \
    -keyout "$dir/privkey.pem" -out "$dir/fullchain.pem" \
    -subj "/CN=$domain" \
    -addext "subjectAltName=DNS:$domain,DNS:*.$domain" \
    -addext "basicConstraints=critical,CA:TRUE" 2>/dev/null
chmod 0644 "$dir/fullchain.pem"
echo "kowloon: self-signed certificate for $domain and *.$domain in $dir" >&2
