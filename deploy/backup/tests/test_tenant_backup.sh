#!/usr/bin/env bash
# Backup, export, restore and verify round trips of kowloon-tenant.sh and
# kowloon-backup-all.sh against a real PostgreSQL (KLTEST_PG_URL, a
# superuser URL): tenants in all three models, restores in place and into
# fresh tenants (ids rewritten, never mixed), row counts compared, hostile
# input refused. Makes its own database and roles and drops them at the end.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
TOOL=$ROOT/deploy/backup/kowloon-tenant.sh
ALL=$ROOT/deploy/backup/kowloon-backup-all.sh
DRILL=$ROOT/deploy/backup/kowloon-restore-drill.sh
MIGRATIONS=$ROOT/services/workspace/migrations

if [ -z "${KLTEST_PG_URL:-}" ]; then
    echo "test_tenant_backup needs PostgreSQL: set KLTEST_PG_URL=postgresql://postgres@127.0.0.1:PORT/postgres (a superuser; see deploy/local/lib.sh kl_pg_start)" >&2
    exit 1
fi

PSQL=(psql -X -q -t -A -v ON_ERROR_STOP=1)
N=$$
DB=kltest_backup_$N
OWNER=kltest_bk_owner_$N
APP=kltest_bk_app_$N
WORK=$(mktemp -d)
FAILS=0

# url_for DB USER: KLTEST_PG_URL with database and user replaced.
url_for() {
    python3 - "$KLTEST_PG_URL" "$1" "$2" <<'PY'
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
host = p.netloc.split("@", 1)[-1]
print(u.urlunsplit((p.scheme, "%s@%s" % (sys.argv[3], host), "/" + sys.argv[2], p.query, "")))
PY
}

cleanup() {
    set +e
    for d in $("${PSQL[@]}" -d "$KLTEST_PG_URL" -c "SELECT datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE r.rolname = '$OWNER'"); do
        "${PSQL[@]}" -d "$KLTEST_PG_URL" -c "DROP DATABASE IF EXISTS \"$d\" WITH (FORCE)"
    done
    "${PSQL[@]}" -d "$KLTEST_PG_URL" -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
    "${PSQL[@]}" -d "$KLTEST_PG_URL" -c "DROP ROLE IF EXISTS $APP" -c "DROP ROLE IF EXISTS $OWNER"
    rm -rf "$WORK"
}
trap cleanup EXIT

check() { # check NAME WANT GOT
    if [ "$2" = "$3" ]; then
        echo "ok   $1"
    else
        echo "FAIL $1: want [$2] got [$3]"
        FAILS=$((FAILS + 1))
    fi
}

expect_fail() { # expect_fail NAME CMD...
    local name=$1
    shift
    if "$@" >"$WORK/out" 2>&1; then
        echo "FAIL $name: succeeded"
        FAILS=$((FAILS + 1))
    else
        echo "ok   $name ($(tail -n 1 "$WORK/out"))"
    fi
}

"${PSQL[@]}" -d "$KLTEST_PG_URL" \
    -c "CREATE ROLE $OWNER LOGIN NOSUPERUSER NOBYPASSRLS CREATEDB" \
    -c "CREATE ROLE $APP LOGIN NOSUPERUSER NOBYPASSRLS" \
    -c "CREATE DATABASE $DB OWNER $OWNER"
SUPER=$(url_for "$DB" postgres)
OWN=$(url_for "$DB" "$OWNER")

export KOWLOON_DATABASE_URL=$SUPER
export KOWLOON_TENANT_DB_OWNER_SERVERS="main=$OWN"
export KOWLOON_QUIET=1

# --- fixture: the tenant registry's columns the tool reads, the shared
# schema, a schema tenant and a database tenant (what the tenant service
# provisions), all migrated with the product's migration files.
"${PSQL[@]}" -d "$SUPER" -c "CREATE SCHEMA tenant" -c "CREATE TABLE tenant.tenants (
    id uuid PRIMARY KEY, isolation text NOT NULL, db_server text NOT NULL DEFAULT '',
    db_name text NOT NULL DEFAULT '', status text NOT NULL DEFAULT 'active')"

migrate() { # migrate URL SCHEMA
    local f
    "${PSQL[@]}" -d "$1" -c "CREATE SCHEMA IF NOT EXISTS \"$2\"" -c "GRANT USAGE ON SCHEMA \"$2\" TO $APP"
    for f in "$MIGRATIONS"/V*.sql; do
        "${PSQL[@]}" -d "$1" -c "SET search_path = \"$2\"" -f "$f" >/dev/null
    done
    "${PSQL[@]}" -d "$1" -c "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"$2\" TO $APP"
}

uuid() { python3 -c 'import uuid; print(uuid.uuid4())'; }
hex() { printf '%s' "${1//-/}"; }

add_tenant() { # add_tenant ISO -> id
    local id iso=$1
    id=$(uuid)
    case $iso in
    row) "${PSQL[@]}" -d "$SUPER" -c "INSERT INTO tenant.tenants (id, isolation) VALUES ('$id', 'row')" ;;
    schema)
        migrate "$OWN" "t_$(hex "$id")"
        "${PSQL[@]}" -d "$SUPER" -c "INSERT INTO tenant.tenants (id, isolation) VALUES ('$id', 'schema')" ;;
    database)
        "${PSQL[@]}" -d "$OWN" -c "CREATE DATABASE kowloon_t_$(hex "$id")"
        migrate "$(url_for "kowloon_t_$(hex "$id")" "$OWNER")" workspace
        "${PSQL[@]}" -d "$SUPER" -c "INSERT INTO tenant.tenants (id, isolation, db_server, db_name) VALUES ('$id', 'database', 'main', 'kowloon_t_$(hex "$id")')" ;;
    esac
    printf '%s' "$id"
}

# where ID -> "URL SCHEMA" (as the owner)
where() {
    local row iso db
    row=$("${PSQL[@]}" -d "$SUPER" -F '|' -c "SELECT isolation, db_name FROM tenant.tenants WHERE id = '$1'")
    IFS='|' read -r iso db <<<"$row"
    case $iso in
    row) echo "$OWN workspace" ;;
    schema) echo "$OWN t_$(hex "$1")" ;;
    database) echo "$(url_for "$db" "$OWNER") workspace" ;;
    esac
}

seed() { # seed ID PROJECTS TASKS_EACH: names with quotes, commas, newlines
    local url schema
    read -r url schema <<<"$(where "$1")"
    "${PSQL[@]}" -d "$url" -c "BEGIN" -c "SET LOCAL app.tenant_id = '$1'" \
        -c "INSERT INTO \"$schema\".projects (name, description) SELECT 'p' || g || ' \"q\", ''s''', E'line1\nline2, ' || g FROM generate_series(1, $2) g" \
        -c "INSERT INTO \"$schema\".tasks (project_id, title, notes) SELECT p.id, 't' || g, E'a\\\\b\n' FROM \"$schema\".projects p, generate_series(1, $3) g" \
        -c "COMMIT"
}

rows() { # rows ID TABLE: as the superuser, in the tenant's place
    local url schema
    read -r url schema <<<"$(where "$1")"
    url=${url/$OWNER@/postgres@}
    "${PSQL[@]}" -d "$url" -c "SELECT count(*) FROM \"$schema\".\"$2\" WHERE tenant_id = '$1'"
}

digest() { # digest ID: a fingerprint of the tenant's data, ids aside
    local url schema
    read -r url schema <<<"$(where "$1")"
    url=${url/$OWNER@/postgres@}
    "${PSQL[@]}" -d "$url" -c "SELECT md5(string_agg(name || description, '|' ORDER BY name)) FROM \"$schema\".projects WHERE tenant_id = '$1'"
}

migrate "$OWN" workspace
A=$(add_tenant row)
B=$(add_tenant row)
S=$(add_tenant schema)
D=$(add_tenant database)
seed "$A" 5 3
seed "$B" 2 2
seed "$S" 4 4
seed "$D" 6 1

# --- row tenant: export, restore into a fresh tenant and in place --------
"$TOOL" export "$A" "$WORK/a"
grep -q '^table=projects rows=5$' "$WORK/a/MANIFEST" && echo "ok   manifest counts" || { echo "FAIL manifest"; FAILS=$((FAILS + 1)); }
check "export lists parents first" "projects tasks" "$(grep '^table=' "$WORK/a/MANIFEST" | sed 's/table=//; s/ .*//' | tr '\n' ' ' | sed 's/ $//')"
"$TOOL" verify "$A" "$WORK/a" >/dev/null && echo "ok   verify row export" || { echo "FAIL verify row export"; FAILS=$((FAILS + 1)); }

C=$(add_tenant row)
"$TOOL" restore "$A" "$WORK/a" --into "$C"
check "fresh row tenant: projects" 5 "$(rows "$C" projects)"
check "fresh row tenant: tasks" 15 "$(rows "$C" tasks)"
check "fresh row tenant: same data" "$(digest "$A")" "$(digest "$C")"
check "source untouched" 5 "$(rows "$A" projects)"
check "neighbour untouched" 2 "$(rows "$B" projects)"
"$TOOL" verify "$C" "$WORK/a" >/dev/null && echo "ok   verify restored" || { echo "FAIL verify restored"; FAILS=$((FAILS + 1)); }

# Restoring A's export into B replaces B's rows with A's, rewritten to B:
# nothing of A appears under B's id twice, nothing of B survives, A intact.
"$TOOL" restore "$A" "$WORK/a" --into "$B"
check "into B: projects" 5 "$(rows "$B" projects)"
check "into B: A intact" 5 "$(rows "$A" projects)"
check "no row of A under another id" 0 "$("${PSQL[@]}" -d "$SUPER" -c "SELECT count(*) FROM workspace.projects a JOIN workspace.projects b ON a.id = b.id AND a.tenant_id <> b.tenant_id WHERE a.tenant_id = '$A' AND b.tenant_id NOT IN ('$A', '$B', '$C')")"

# In place after a loss.
"${PSQL[@]}" -d "$SUPER" -c "DELETE FROM workspace.projects WHERE tenant_id = '$A' AND name LIKE 'p1%'"
check "loss" 4 "$(rows "$A" projects)"
expect_fail "verify notices the loss" "$TOOL" verify "$A" "$WORK/a"
"$TOOL" restore "$A" "$WORK/a"
check "in place: projects" 5 "$(rows "$A" projects)"
check "in place: tasks" 15 "$(rows "$A" tasks)"

# --- schema tenant: pg_dump -n, in place and into a fresh tenant ---------
"$TOOL" backup "$S" "$WORK/s.dump"
pg_restore -l "$WORK/s.dump" | grep -q "SCHEMA - t_$(hex "$S")" && echo "ok   schema dump holds t_<hex>" || { echo "FAIL schema dump"; FAILS=$((FAILS + 1)); }
"$TOOL" verify "$S" "$WORK/s.dump" >/dev/null && echo "ok   verify schema dump" || { echo "FAIL verify schema dump"; FAILS=$((FAILS + 1)); }
"${PSQL[@]}" -d "$SUPER" -c "DELETE FROM t_$(hex "$S").tasks WHERE tenant_id = '$S'"
check "schema loss" 0 "$(rows "$S" tasks)"
"$TOOL" restore "$S" "$WORK/s.dump"
check "schema in place: projects" 4 "$(rows "$S" projects)"
check "schema in place: tasks" 16 "$(rows "$S" tasks)"
check "schema in place: app role still granted" t "$("${PSQL[@]}" -d "$SUPER" -c "SELECT has_table_privilege('$APP', 't_$(hex "$S").tasks', 'INSERT')")"
check "schema in place: RLS still forced" t "$("${PSQL[@]}" -d "$SUPER" -c "SELECT relforcerowsecurity FROM pg_class WHERE oid = 't_$(hex "$S").tasks'::regclass")"
S2=$(add_tenant schema)
"$TOOL" restore "$S" "$WORK/s.dump" --into "$S2"
check "fresh schema tenant: projects" 4 "$(rows "$S2" projects)"
check "fresh schema tenant: tasks" 16 "$(rows "$S2" tasks)"
check "fresh schema tenant: no old id" 0 "$("${PSQL[@]}" -d "$SUPER" -c "SELECT count(*) FROM t_$(hex "$S2").projects WHERE tenant_id <> '$S2'")"

# --- database tenant: whole-database pg_dump ------------------------------
"$TOOL" backup "$D" "$WORK/d.dump"
"$TOOL" verify "$D" "$WORK/d.dump" >/dev/null && echo "ok   verify database dump" || { echo "FAIL verify database dump"; FAILS=$((FAILS + 1)); }
DURL=$(url_for "kowloon_t_$(hex "$D")" postgres)
"${PSQL[@]}" -d "$DURL" -c "DELETE FROM workspace.projects"
"$TOOL" restore "$D" "$WORK/d.dump"
check "database in place: projects" 6 "$(rows "$D" projects)"
check "database in place: tasks" 6 "$(rows "$D" tasks)"
E=$(add_tenant row)
"$TOOL" restore "$D" "$WORK/d.dump" --into "$E"
check "database dump into a row tenant: projects" 6 "$(rows "$E" projects)"
check "database dump into a row tenant: same data" "$(digest "$D")" "$(digest "$E")"

# --- hostile input ---------------------------------------------------------
expect_fail "hostile tenant id" "$TOOL" export "x'; DROP SCHEMA workspace CASCADE; --" "$WORK/h1"
expect_fail "uppercase id" "$TOOL" export "${A^^}" "$WORK/h2"
expect_fail "unknown tenant" "$TOOL" export "$(uuid)" "$WORK/h3"
mkdir -p "$WORK/evil"
cp "$WORK/a/"* "$WORK/evil/"
sed -i 's/^table=tasks /table=tasks";DROP TABLE workspace.projects;-- /' "$WORK/evil/MANIFEST"
expect_fail "hostile table name in a manifest" "$TOOL" restore "$A" "$WORK/evil"
"${PSQL[@]}" -d "$SUPER" -c "UPDATE tenant.tenants SET db_name = 'x\"; DROP DATABASE postgres; --' WHERE id = '$D'"
expect_fail "hostile database name in the record" "$TOOL" backup "$D" "$WORK/h4.dump"
"${PSQL[@]}" -d "$SUPER" -c "UPDATE tenant.tenants SET db_name = 'kowloon_t_$(hex "$D")' WHERE id = '$D'"
check "shared tables survived" 2 "$("${PSQL[@]}" -d "$SUPER" -c "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'workspace' AND relname IN ('projects', 'tasks')")"

# --- every tenant, then the restore drill ----------------------------------
"$ALL" "$WORK/daily" >/dev/null
check "backup-all: one entry per tenant" 7 "$(wc -l <"$WORK/daily"/*/INDEX)"
dumps=("$WORK/daily"/*/*.dump)
exports=("$WORK/daily"/*/*.export)
check "backup-all: 3 dumps (schema, database), 4 exports (row)" "3 4" "${#dumps[@]} ${#exports[@]}"
"$DRILL" "$WORK/daily/$(ls "$WORK/daily" | tail -n 1)" >"$WORK/drill.out" 2>&1 && echo "ok   restore drill" || { echo "FAIL restore drill"; cat "$WORK/drill.out"; FAILS=$((FAILS + 1)); }

if [ "$FAILS" -ne 0 ]; then
    echo "$FAILS check(s) failed"
    exit 1
fi
echo "all checks passed"
