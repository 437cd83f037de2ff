#!/usr/bin/env bash
# kowloon-backup-all.sh DIR [--keep-days N]: backs up every tenant that is
# not deleted into DIR/<UTC date-time>/ with kowloon-tenant.sh (schema and
# database tenants: <id>.dump from pg_dump; row tenants: <id>.export/, COPY
# of their rows), and writes DIR/<date-time>/INDEX ("id isolation entry").
# One tenant's failure does not stop the others; the exit status is 1 if
# any failed. --keep-days removes backup directories older than N days.
#
# Daily, from cron on the DB host (docs/operations/backup-restore.md):
#   15 3 * * * kowloon . /etc/kowloon/backup.env && \
#       /opt/kowloon/deploy/backup/kowloon-backup-all.sh /var/backups/kowloon/tenants --keep-days 14
# and off the machine with restic (S3-compatible storage), see the doc.
#
# Reads KOWLOON_DATABASE_URL and KOWLOON_TENANT_DB_OWNER_SERVERS as
# kowloon-tenant.sh does.
set -euo pipefail
umask 077

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOL=$HERE/kowloon-tenant.sh
die() { printf 'kowloon-backup-all: error: %s\n' "$*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: kowloon-backup-all.sh DIR [--keep-days N]"
ROOT=$1
KEEP=""
if [ $# -eq 3 ] && [ "$2" = --keep-days ]; then
    [[ $3 =~ ^[0-9]+$ ]] || die "--keep-days wants a number"
    KEEP=$3
elif [ $# -ne 1 ]; then
    die "usage: kowloon-backup-all.sh DIR [--keep-days N]"
fi
[ -n "${KOWLOON_DATABASE_URL:-}" ] || die "KOWLOON_DATABASE_URL is not set"

OUT=$ROOT/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
failed=0
total=0
while IFS='|' read -r id iso; do
    [ -n "$id" ] || continue
    total=$((total + 1))
    if [ "$iso" = row ]; then entry=$id.export; else entry=$id.dump; fi
    if KOWLOON_QUIET=1 "$TOOL" backup "$id" "$OUT/$entry"; then
        echo "$id $iso $entry" >>"$OUT/INDEX"
    else
        echo "kowloon-backup-all: tenant $id ($iso) failed, continuing" >&2
        failed=$((failed + 1))
    fi
done < <(psql -X -q -t -A -F '|' -v ON_ERROR_STOP=1 -d "$KOWLOON_DATABASE_URL" \
    -c "SELECT id, isolation FROM tenant.tenants WHERE status <> 'deleted' ORDER BY created_at, id" 2>/dev/null ||
    psql -X -q -t -A -F '|' -v ON_ERROR_STOP=1 -d "$KOWLOON_DATABASE_URL" \
        -c "SELECT id, isolation FROM tenant.tenants WHERE status <> 'deleted' ORDER BY id")
touch "$OUT/INDEX"
echo "kowloon-backup-all: $((total - failed)) of $total tenants backed up to $OUT" >&2
if [ -n "$KEEP" ]; then
    find "$ROOT" -mindepth 1 -maxdepth 1 -type d -name '20*Z' -mtime +"$KEEP" -exec rm -rf {} +
fi
[ "$failed" -eq 0 ]
