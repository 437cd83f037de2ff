#!/bin/sh
# certbot deploy hook: runs after every successful issue or renewal, and
# makes nginx load the new certificate without dropping connections.
#   install -m 0755 deploy/certbot/renewal-hooks/deploy/kowloon-reload-nginx.sh \
#       /etc/letsencrypt/renewal-hooks/deploy/
# certbot sets RENEWED_LINEAGE (e.g. /etc/letsencrypt/live/yoursaas.com).
set -eu
echo "kowloon: certificate renewed for ${RENEWED_LINEAGE:-?}; reloading nginx" >&2
nginx -t -q
systemctl reload nginx
