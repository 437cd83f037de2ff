#!/usr/bin/env bash
# kowloon-tenant.sh: per-tenant backup, export, restore and verification of
# a Kowloon tenant's product data, in whichever isolation model it lives
# (docs/isolation.md, docs/operations/backup-restore.md).
#
#   kowloon-tenant.sh backup  TENANT_ID OUT      schema/database: pg_dump -Fc
#                                                (-n for a schema); row: an
#                                                export (OUT is a directory)
#   kowloon-tenant.sh export  TENANT_ID OUTDIR   COPY ... WHERE tenant_id, CSV
#   kowloon-tenant.sh restore TENANT_ID IN [--into TARGET_ID]
#                                                IN: a backup or an export;
#                                                in place, or into another
#                                                (fresh) tenant, ids rewritten
#   kowloon-tenant.sh verify  TENANT_ID IN       row counts of IN vs the live
#                                                tenant, per table
#
# Settings (environment, as the services read them):
#   KOWLOON_DATABASE_URL             control database (tenant.tenants)
#   KOWLOON_TENANT_DB_OWNER_SERVERS  name=libpq-url of the owner role per
#                                    server, "main" included (comma-separated)
#   KOWLOON_SHARED_SCHEMA            row model's schema (default workspace)
#
# Tenant ids are checked against the uuid syntax and every schema and
# database name is derived from them (t_<hex>, kowloon_t_<hex>) and checked
# again before use: no name from any other source reaches SQL. URLs (they
# hold passwords) are never printed.
#
# Export format (a directory): MANIFEST (key=value lines: format=
# kowloon-tenant-export-1, tenant_id, isolation, created_at, then one
# "table=<name> rows=<n>" line per table in load order: parents first) and
# <table>.csv per table: COPY ... (FORMAT csv, HEADER) of the tenant's rows,
# every column, tenant_id included. A restore loads each file into a
# temporary table, sets tenant_id to the target tenant, and inserts with
# app.tenant_id set to the target: the tables' forced row-level security
# refuses any row of another tenant, so two tenants' data never mix.
set -euo pipefail
umask 077

die() { printf 'kowloon-tenant: error: %s\n' "$*" >&2; exit 1; }
say() { [ -n "${KOWLOON_QUIET:-}" ] || printf 'kowloon-tenant: %s\n' "$*" >&2; }

SHARED=${KOWLOON_SHARED_SCHEMA:-workspace}
[[ $SHARED =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "KOWLOON_SHARED_SCHEMA is not a plain lowercase name"

uuid_ok() { [[ $1 =~ ^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$ ]]; }
hex_of() { printf '%s' "${1//-/}"; }

PSQL=(psql -X -q -t -A -v ON_ERROR_STOP=1)

# owner_url SERVER [DBNAME]: the owner URL of SERVER, with dbname replaced.
owner_url() {
    local server=$1 db=${2:-} entry url=""
    local IFS=,
    for entry in ${KOWLOON_TENANT_DB_OWNER_SERVERS:-}; do
        if [ "${entry%%=*}" = "$server" ]; then url=${entry#*=}; fi
    done
    [ -n "$url" ] || die "database server \"$server\" has no owner credentials (KOWLOON_TENANT_DB_OWNER_SERVERS)"
    if [ -n "$db" ]; then
        # libpq takes the last dbname given: a conninfo string appended.
        if [[ $url == postgres://* || $url == postgresql://* ]]; then
            local base=${url%%\?*} query=""
            [[ $url == *\?* ]] && query="?${url#*\?}"
            local rest=${base#*://} scheme=${base%%://*}
            local hostpart=${rest%%/*}
            url="$scheme://$hostpart/$db$query"
        else
            url="$url dbname=$db"
        fi
    fi
    printf '%s' "$url"
}

# placement TENANT_ID: sets ISO, SCHEMA, SERVER, DB, URL (owner, right db).
placement() {
    local id=$1 row
    uuid_ok "$id" || die "tenant id must be a lowercase uuid"
    [ -n "${KOWLOON_DATABASE_URL:-}" ] || die "KOWLOON_DATABASE_URL is not set"
    row=$("${PSQL[@]}" -d "$KOWLOON_DATABASE_URL" -F '|' -c \
        "SELECT isolation, db_server, db_name, status FROM tenant.tenants WHERE id = '$id'") ||
        die "reading tenant $id failed"
    [ -n "$row" ] || die "tenant $id not found"
    IFS='|' read -r ISO SERVER DB STATUS <<<"$row"
    [ "$ISO" = database ] || { SERVER=main; DB=""; }
    [ "$STATUS" != deleted ] || die "tenant $id is deleted"
    case $ISO in
    row) SCHEMA=$SHARED; URL=$(owner_url main) ;;
    schema) SCHEMA="t_$(hex_of "$id")"; URL=$(owner_url main) ;;
    database)
        SCHEMA=$SHARED
        [ "$DB" = "kowloon_t_$(hex_of "$id")" ] || die "tenant $id: database name does not match its id"
        [[ $SERVER =~ ^[a-z][a-z0-9_-]{0,62}$ ]] || die "tenant $id: bad server name"
        URL=$(owner_url "$SERVER" "$DB") ;;
    *) die "tenant $id: unknown isolation" ;;
    esac
}

# tables URL SCHEMA: the schema's tables with RLS forced, parents first.
tables() {
    "${PSQL[@]}" -d "$1" -c "
WITH RECURSIVE t AS (
  SELECT c.oid, c.relname FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname = '$2' AND c.relkind IN ('r', 'p')
    AND c.relrowsecurity AND c.relforcerowsecurity),
d(oid, depth) AS (
  SELECT oid, 0 FROM t
  UNION ALL
  SELECT k.conrelid, d.depth + 1 FROM pg_catalog.pg_constraint k
  JOIN d ON k.confrelid = d.oid
  WHERE k.contype = 'f' AND k.conrelid <> k.confrelid AND d.depth < 32)
SELECT t.relname FROM t JOIN d USING (oid)
GROUP BY t.relname ORDER BY max(d.depth), t.relname"
}

# count URL SCHEMA TABLE TENANT: the tenant's rows (scoped, RLS applies).
count() {
    "${PSQL[@]}" -d "$1" -c "BEGIN" -c "SET LOCAL app.tenant_id = '$4'" \
        -c "SELECT count(*) FROM \"$2\".\"$3\" WHERE tenant_id = '$4'" -c "COMMIT"
}

# export_from URL SCHEMA TENANT ISO OUTDIR: every table from one snapshot.
export_from() {
    local url=$1 schema=$2 id=$3 iso=$4 out=$5 t sql
    [[ $schema =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "bad schema name"
    mkdir -p "$out"
    [ -z "$(ls -A "$out")" ] || die "$out is not empty"
    out=$(cd "$out" && pwd)
    [[ $out != *"'"* ]] || die "export directory names may not contain a quote"
    {
        echo "format=kowloon-tenant-export-1"
        echo "tenant_id=$id"
        echo "isolation=$iso"
        echo "created_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } >"$out/MANIFEST"
    sql=$(mktemp)
    {
        # Scoped to the tenant: the policies and the WHERE both keep other
        # tenants' rows out. Counted by the server (a CSV value may hold
        # newlines) in the same snapshot.
        echo "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;"
        echo "SET LOCAL app.tenant_id = '$id';"
        for t in $(tables "$url" "$schema"); do
            [[ $t =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "table name \"$t\" is not plain"
            echo "\\copy (SELECT * FROM \"$schema\".\"$t\" WHERE tenant_id = '$id') TO '$out/$t.csv' WITH (FORMAT csv, HEADER true)"
            echo "SELECT 'table=$t rows=' || count(*) FROM \"$schema\".\"$t\" WHERE tenant_id = '$id';"
        done
        echo "COMMIT;"
    } >"$sql"
    "${PSQL[@]}" -d "$url" -f "$sql" >>"$out/MANIFEST" || { rm -f "$sql"; die "exporting tenant $id failed"; }
    rm -f "$sql"
    say "exported tenant $id ($iso) to $out"
}

cmd_export() {
    placement "$1"
    export_from "$URL" "$SCHEMA" "$1" "$ISO" "$2"
}

cmd_backup() {
    local id=$1 out=$2
    placement "$id"
    if [ "$ISO" = row ]; then
        export_from "$URL" "$SCHEMA" "$id" "$ISO" "$out"
        return
    fi
    [ ! -e "$out" ] || die "$out exists"
    # The owner is subject to the tables' forced row-level security:
    # pg_dump reads with it on and the tenant set, i.e. the tenant's rows.
    local args=(-Fc --enable-row-security -f "$out")
    [ "$ISO" = schema ] && args+=(-n "$SCHEMA")
    PGOPTIONS="-c app.tenant_id=$id" pg_dump "${args[@]}" -d "$URL" ||
        die "pg_dump of tenant $id failed"
    say "backed up tenant $id ($ISO) to $out"
}

# import_into URL SCHEMA TARGET DIR [replace]: loads an export.
import_into() {
    local url=$1 schema=$2 target=$3 dir=$4 replace=${5:-} t sql tables_rev=""
    grep -qx 'format=kowloon-tenant-export-1' "$dir/MANIFEST" || die "$dir is not a tenant export"
    local -a order=()
    while IFS= read -r line; do
        t=${line#table=}; t=${t%% *}
        [[ $t =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "bad table name in MANIFEST"
        order+=("$t")
        tables_rev="$t $tables_rev"
    done < <(grep '^table=' "$dir/MANIFEST")
    sql=$(mktemp)
    {
        echo "\\set ON_ERROR_STOP 1"
        echo "BEGIN;"
        echo "SET LOCAL app.tenant_id = '$target';"
        if [ -n "$replace" ]; then
            for t in $tables_rev; do echo "DELETE FROM \"$schema\".\"$t\" WHERE tenant_id = '$target';"; done
        fi
        for t in "${order[@]}"; do
            [ -f "$dir/$t.csv" ] || die "$dir/$t.csv is missing"
            echo "CREATE TEMP TABLE kl_import (LIKE \"$schema\".\"$t\") ON COMMIT DROP;"
            echo "\\copy kl_import FROM '$dir/$t.csv' WITH (FORMAT csv, HEADER true)"
            echo "UPDATE kl_import SET tenant_id = '$target';"
            echo "INSERT INTO \"$schema\".\"$t\" SELECT * FROM kl_import;"
            echo "DROP TABLE kl_import;"
        done
        echo "COMMIT;"
    } >"$sql"
    [[ $dir != *"'"* ]] || { rm -f "$sql"; die "export directory names may not contain a quote"; }
    "${PSQL[@]}" -d "$url" -f "$sql" >/dev/null || { rm -f "$sql"; die "restore into tenant $target failed (nothing changed)"; }
    rm -f "$sql"
}

cmd_restore() {
    local id=$1 in=$2 into=${3:-$1} scratch
    uuid_ok "$into" || die "target tenant id must be a lowercase uuid"
    placement "$into"
    local turl=$URL tschema=$SCHEMA tiso=$ISO
    if [ -d "$in" ]; then
        grep -qx "tenant_id=$id" "$in/MANIFEST" || die "$in is not an export of tenant $id"
        import_into "$turl" "$tschema" "$into" "$in" replace
    elif [ "$id" = "$into" ] && [ "$tiso" != row ]; then
        # In place from pg_dump: drop and recreate what the dump holds.
        local args=(--clean --if-exists --single-transaction --exit-on-error)
        [ "$tiso" = schema ] && args+=(-n "$tschema")
        pg_restore "${args[@]}" -d "$turl" "$in" || die "pg_restore into tenant $id failed"
    else
        # A pg_dump into another tenant: restore it into a scratch
        # database, export the old tenant's rows there, load them into the
        # target with the ids rewritten.
        scratch="kowloon_restore_$(hex_of "$id")_$$"
        local surl
        surl=$(owner_url main "$scratch")
        "${PSQL[@]}" -d "$(owner_url main)" -c "CREATE DATABASE \"$scratch\"" ||
            die "creating scratch database failed"
        local tmp
        tmp=$(mktemp -d)
        local ok=0
        if pg_restore --no-owner --exit-on-error -d "$surl" "$in" &&
            export_from "$surl" "$(pg_restore -l "$in" | grep -q " SCHEMA - t_" && echo "t_$(hex_of "$id")" || echo "$SHARED")" \
                "$id" restored "$tmp/x" &&
            import_into "$turl" "$tschema" "$into" "$tmp/x" replace; then
            ok=1
        fi
        "${PSQL[@]}" -d "$(owner_url main)" -c "DROP DATABASE IF EXISTS \"$scratch\" WITH (FORCE)" || true
        rm -rf "$tmp"
        [ "$ok" = 1 ] || die "restore of $in into tenant $into failed (nothing changed)"
    fi
    say "restored tenant $id into tenant $into ($tiso)"
}

# verify TENANT IN: counts in IN (export MANIFEST, or a scratch restore of
# a pg_dump) against the live tenant.
cmd_verify() {
    local id=$1 in=$2 t want got bad=0 dir=$2 tmp=""
    placement "$id"
    if [ ! -d "$in" ]; then
        tmp=$(mktemp -d)
        local scratch surl
        scratch="kowloon_verify_$(hex_of "$id")_$$"
        surl=$(owner_url main "$scratch")
        "${PSQL[@]}" -d "$(owner_url main)" -c "CREATE DATABASE \"$scratch\"" >/dev/null
        pg_restore --no-owner --exit-on-error -d "$surl" "$in" &&
            KOWLOON_QUIET=1 export_from "$surl" "$( [ "$ISO" = schema ] && echo "t_$(hex_of "$id")" || echo "$SHARED")" \
                "$id" "$ISO" "$tmp/x" || bad=1
        "${PSQL[@]}" -d "$(owner_url main)" -c "DROP DATABASE IF EXISTS \"$scratch\" WITH (FORCE)" >/dev/null || true
        dir=$tmp/x
    fi
    while IFS= read -r line; do
        t=${line#table=}; t=${t%% *}; want=${line##*rows=}
        [[ $t =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "bad table name in MANIFEST"
        got=$(count "$URL" "$SCHEMA" "$t" "$id")
        if [ "$got" = "$want" ]; then
            printf '%-20s %10s %10s ok\n' "$t" "$want" "$got"
        else
            printf '%-20s %10s %10s MISMATCH\n' "$t" "$want" "$got"
            bad=1
        fi
    done < <(grep '^table=' "$dir/MANIFEST")
    [ -z "$tmp" ] || rm -rf "$tmp"
    [ "$bad" = 0 ] || die "tenant $id does not match $in"
}

usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
}

[ $# -ge 1 ] || { usage >&2; exit 2; }
cmd=$1; shift
case $cmd in
-h | --help | help) usage; exit 0 ;;
backup) [ $# -eq 2 ] || die "usage: backup TENANT_ID OUT"; cmd_backup "$1" "$2" ;;
export) [ $# -eq 2 ] || die "usage: export TENANT_ID OUTDIR"; cmd_export "$1" "$2" ;;
restore)
    if [ $# -eq 4 ] && [ "$3" = --into ]; then cmd_restore "$1" "$2" "$4"
    elif [ $# -eq 2 ]; then cmd_restore "$1" "$2"
    else die "usage: restore TENANT_ID IN [--into TARGET_ID]"; fi ;;
verify) [ $# -eq 2 ] || die "usage: verify TENANT_ID IN"; cmd_verify "$1" "$2" ;;
*) die "unknown command \"$cmd\": want backup, export, restore or verify" ;;
esac
