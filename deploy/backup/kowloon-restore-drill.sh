#!/usr/bin/env bash
# kowloon-restore-drill.sh BACKUPDIR: the restore drill. For every entry of
# BACKUPDIR/INDEX (made by kowloon-backup-all.sh), restores the backup into
# a scratch database (dumps) or reads it (exports) and compares its row
# counts, table by table, with the live tenant (kowloon-tenant.sh verify).
# Nothing live is changed. Run it right after a backup (or on a quiet
# system: writes since the backup show up as mismatches), monthly at least.
# Exit status 1 if any tenant's backup cannot be restored or differs.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOL=$HERE/kowloon-tenant.sh
die() { printf 'kowloon-restore-drill: error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: kowloon-restore-drill.sh BACKUPDIR"
DIR=$1
[ -f "$DIR/INDEX" ] || die "$DIR/INDEX not found"
bad=0
n=0
while read -r id iso entry; do
    [ -n "$id" ] || continue
    n=$((n + 1))
    echo "== $id ($iso) $entry"
    if ! KOWLOON_QUIET=1 "$TOOL" verify "$id" "$DIR/$entry"; then
        bad=$((bad + 1))
    fi
done <"$DIR/INDEX"
echo "kowloon-restore-drill: $((n - bad)) of $n tenants restored and matched" >&2
[ "$bad" -eq 0 ]
