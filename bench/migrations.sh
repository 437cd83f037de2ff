#!/usr/bin/env bash
# bench/migrations.sh — issue #5: the anchor's exact migrations (projects,
# tasks, an index and a column; ../shared/anchors/seed-express/migrations)
# written as SQL files, applied to N schema-model tenants by
# kowloon-migration (`kowloonctl migrate run --wait`), side by side with the
# seed's `node migrate-all.js N` (Knex, one tenant after another) in the same
# run, on the same private PostgreSQL. Also reports 10,000 tenants and one
# versus two migration-service instances. See docs/migrations.md.
#
# Each Kowloon measurement gets a fresh control database, its own
# kowloon-tenant, N schema tenants (rows inserted with SQL and their schemas
# created up front, as the anchor creates its schemas before its clock
# starts), then the clock runs from `migrate run` to the finished run. Every
# measured run must finish with 0 failed targets and the tables in place, or
# the bench fails. Stops everything it started and removes its scratch dir on
# any exit.
#
# The side-by-side figure is measured in BENCH_ROUNDS rounds, each the
# anchor then Kowloon (one instance), each side on its own fresh database
# after a CHECKPOINT and a `sync` (so neither pays for writing back what the
# previous step or the set-up left dirty); each side's figure is its median
# over the rounds. The time PostgreSQL takes to create files swings with the
# disk's recent history (see below), so one round is one sample of that
# weather, not the machine's answer. The last stdout line is:
#   RESULT name=migrations ratio=<anchor s / kowloon s> kowloon=<median s> \
#          anchor=<median s> unit=s rounds=<n>
#
# Settings (environment):
#   BENCH_TENANTS=1000           tenants of the side-by-side measurement
#   BENCH_ROUNDS=3               rounds of it (anchor, then Kowloon)
#   BENCH_SETTLE_S               seconds to wait, after a `sync`, before the
#                                first round: default 360 on an ext4 without a
#                                journal, else 0 (see "settling" below)
#   BENCH_LARGE_TENANTS=10000    Kowloon alone at this size, one and two
#                                instances ("" or 0 skips it)
#   BENCH_ANCHOR_LARGE=1         also time the anchor at the large size
#                                (about 30 s per 1,000 tenants)
#   BENCH_MIGRATION_WORKERS=nproc KOWLOON_MIGRATION_WORKERS per instance (DDL is
#                                CPU-bound in PostgreSQL: one per core measured best)
#   BENCH_BUILD_DIR=$KL_ROOT/build-bench   BENCH_SKIP_BUILD=1 uses what is there
#   BENCH_SKIP_ANCHOR=1          tuning only: Kowloon's runs, no anchor, no
#                                RESULT line
#   BENCH_KEEP_TMP=1 keeps the scratch dir (logs)
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib/common.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib/common.sh"

TENANTS=${BENCH_TENANTS:-1000}
LARGE=${BENCH_LARGE_TENANTS-10000}
ROUNDS=${BENCH_ROUNDS:-3}
SETTLE_S=${BENCH_SETTLE_S-}
case $SETTLE_S in *[!0-9]*) echo "BENCH_SETTLE_S must be a whole number of seconds, not '$SETTLE_S'" >&2; exit 2 ;; esac
case $ROUNDS in '' | *[!0-9]* | 0) echo "BENCH_ROUNDS must be a positive integer, not '$ROUNDS'" >&2; exit 2 ;; esac
[ "$LARGE" = 0 ] && LARGE=
WORKERS=${BENCH_MIGRATION_WORKERS:-$(nproc)}
BUILD=${BENCH_BUILD_DIR:-$KL_ROOT/build-bench}

bench_init migrations
bench_say "machine: $(bench_machine)"

# --- build -------------------------------------------------------------------
extra=()
command -v node >/dev/null || extra+=(nodejs)
command -v npm >/dev/null || extra+=(npm)
kl_install_packages "${extra[@]}"
if [ -n "${BENCH_SKIP_BUILD:-}" ]; then
    bench_say "BENCH_SKIP_BUILD set: using the binaries already in $BUILD"
else
    bench_build "$BUILD" kowloon-tenant kowloon-migration kowloonctl -- \
        -DCMAKE_BUILD_TYPE=Release -DKOWLOON_ASAN=OFF -DKOWLOON_TSAN=OFF
fi
TENANT_BIN=$BUILD/services/tenant/kowloon-tenant
MIGRATION_BIN=$BUILD/services/migration/kowloon-migration
CTL_BIN=$BUILD/tools/kowloonctl/kowloonctl
for b in "$TENANT_BIN" "$MIGRATION_BIN" "$CTL_BIN"; do
    [ -x "$b" ] || bench_die "$b was not built"
done

# --- the anchor's migrations as SQL files ------------------------------------
# What Knex 3 sends PostgreSQL for migrations/001..003 (`bigIncrements` is a
# bigserial primary key, `timestamp` a timestamptz, `references` a named
# foreign key, `index(['project_id', 'done'])` "tasks_project_id_done_index").
MIG_DIR=$BENCH_TMP/migrations
mkdir -p "$MIG_DIR"
cat >"$MIG_DIR/V0001__projects.sql" <<'SQL'
CREATE TABLE projects (
  id bigserial PRIMARY KEY,
  name text NOT NULL,
  created_at timestamptz DEFAULT CURRENT_TIMESTAMP
);
SQL
cat >"$MIG_DIR/V0002__tasks.sql" <<'SQL'
CREATE TABLE tasks (
  id bigserial PRIMARY KEY,
  project_id bigint,
  title text NOT NULL,
  done boolean DEFAULT '0'
);
ALTER TABLE tasks ADD CONSTRAINT tasks_project_id_foreign
  FOREIGN KEY (project_id) REFERENCES projects (id);
SQL
cat >"$MIG_DIR/V0003__index_and_column.sql" <<'SQL'
ALTER TABLE tasks ADD COLUMN notes text;
CREATE INDEX tasks_project_id_done_index ON tasks (project_id, done);
SQL

# --- one private PostgreSQL for both sides ------------------------------------
bench_pg_start migrations
PG_PORT=$BENCH_PG_PORT
PG_SOCK=$BENCH_PG_SOCK
psqlq() { PGOPTIONS=--client-min-messages=warning psql -q -X -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U postgres "$@"; }

# Every measurement gets a database of its own, and none is dropped before
# the bench ends (the scratch dir goes, PostgreSQL's data with it): dropping
# one deletes tens of thousands of files, and for minutes after that ext4
# creates files markedly slower (its inode allocator skips recently freed
# inodes; a profile of the next run shows the kernel's ext4_new_inode
# search, find_inode_bit / recently_deleted, as PostgreSQL's top cost), so
# whichever side ran after a drop paid for the other's clean-up.

# settle: what PostgreSQL and the kernel hold dirty goes to disk now, not
# during the next measurement.
settle() {
    psqlq -d postgres -c CHECKPOINT >&2
    sync
}

# anchor_measure N [TAG] -> ANCHOR_S: node migrate-all.js N (it drops and
# creates its N schemas before its clock starts).
anchor_measure() {
    local n=$1 out db=seed_$1${2:+_$2}
    psqlq -d postgres -c "CREATE DATABASE $db" >&2
    settle
    bench_say "anchor: node migrate-all.js $n"
    out=$(cd "$BENCH_ANCHOR_DIR" && PGHOST=$PG_SOCK PGPORT=$PG_PORT PGUSER=postgres PGDATABASE=$db \
        node migrate-all.js "$n") || bench_die "node migrate-all.js $n failed"
    ANCHOR_S=$(printf '%s\n' "$out" | tail -n1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])') ||
        bench_die "could not read the anchor's output: $out"
    local tables
    tables=$(psqlq -d "$db" -At -c "SELECT count(*) FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname LIKE 'tenant\\_%' AND c.relname = 'tasks' AND a.attname = 'notes'")
    [ "$tables" = "$n" ] || bench_die "anchor: $tables of $n schemas have tasks.notes"
    bench_say "anchor: $n tenants in $ANCHOR_S s"
}

# kowloon_measure N INSTANCES [TAG] -> KOWLOON_S: a fresh control database
# with N schema tenants, INSTANCES kowloon-migration processes, the clock
# around `kowloonctl migrate run --wait`.
kowloon_measure() {
    local n=$1 instances=$2 db=kowloon_bench_$1_$2${3:+_$3} url tport i eps=() pids=() t0 t1 status
    psqlq -d postgres -c "CREATE DATABASE $db" >&2
    url="postgresql://postgres@127.0.0.1:$PG_PORT/$db"
    tport=$(kl_free_port)
    bench_start "$BENCH_TMP/tenant-$n-$instances.log" env KOWLOON_DATABASE_URL="$url" \
        KOWLOON_TENANT_BIND="tcp://127.0.0.1:$tport" KOWLOON_REDIS_URL= \
        KOWLOON_LOG_LEVEL=warn "$TENANT_BIN"
    local tenant_pid=$BENCH_LAST_PID
    for i in $(seq 1 100); do
        "$CTL_BIN" --tenant-endpoint "tcp://127.0.0.1:$tport" --timeout 500 tenants list --limit 1 >/dev/null 2>&1 && break
        kill -0 "$tenant_pid" 2>/dev/null || { cat "$BENCH_TMP/tenant-$n-$instances.log" >&2; bench_die "kowloon-tenant exited"; }
        sleep 0.1
    done
    # The tenants: rows in the tenant service's table (a bench shortcut:
    # creating 10,000 tenants through the API is not what is measured),
    # then one schema each, named as kl_tenant_db names them.
    psqlq -d "$db" -c "INSERT INTO tenant.tenants (subdomain, name, plan, isolation, status)
        SELECT 'bench' || g, 'Bench ' || g, 'starter', 'schema', 'active' FROM generate_series(1, $n) g" >&2
    psqlq -d "$db" -At -c "SELECT format('CREATE SCHEMA %I;', 't_' || replace(id::text, '-', '')) FROM tenant.tenants" >"$BENCH_TMP/schemas.sql"
    psqlq -d "$db" -f "$BENCH_TMP/schemas.sql" >&2
    for i in $(seq 1 "$instances"); do
        local mport
        mport=$(kl_free_port)
        eps+=(--migration-endpoint "tcp://127.0.0.1:$mport")
        bench_start "$BENCH_TMP/migration-$n-$instances-$i.log" env KOWLOON_DATABASE_URL="$url" \
            KOWLOON_DATA_OWNER_URL="$url" KOWLOON_MIGRATIONS_DIR="$MIG_DIR" \
            KOWLOON_MIGRATION_BIND="tcp://127.0.0.1:$mport" \
            KOWLOON_TENANT_ENDPOINTS="tcp://127.0.0.1:$tport" KOWLOON_REDIS_URL= \
            KOWLOON_MIGRATION_WORKERS="$WORKERS" KOWLOON_MIGRATION_POLL_MS=50 \
            KOWLOON_LOG_LEVEL="${BENCH_MIGRATION_LOG_LEVEL:-warn}" "$MIGRATION_BIN"
        pids+=("$BENCH_LAST_PID")
    done
    # Every instance answers before the clock starts.
    for i in $(seq 0 $((instances - 1))); do
        local ok=
        for _ in $(seq 1 100); do
            local rc=0
            "$CTL_BIN" "${eps[2 * i]}" "${eps[2 * i + 1]}" --timeout 500 migrate status >/dev/null 2>&1 || rc=$?
            # 4: "no run yet" (NOT_FOUND) is an answer.
            if [ "$rc" = 0 ] || [ "$rc" = 4 ]; then ok=1; break; fi
            kill -0 "${pids[i]}" 2>/dev/null || break
            sleep 0.1
        done
        [ -n "$ok" ] || { cat "$BENCH_TMP/migration-$n-$instances-$((i + 1)).log" >&2; bench_die "kowloon-migration $((i + 1)) does not answer"; }
    done
    settle
    bench_say "kowloon: $n schema tenants, $instances instance(s) x $WORKERS workers"
    t0=$(date +%s.%N)
    "$CTL_BIN" "${eps[@]}" --quiet migrate run --wait --interval 100 >"$BENCH_TMP/run-$n-$instances.txt" ||
        { cat "$BENCH_TMP/run-$n-$instances.txt" >&2; bench_die "migrate run failed"; }
    t1=$(date +%s.%N)
    KOWLOON_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    status=$("$CTL_BIN" "${eps[@]}" --json migrate status)
    bench_say "kowloon: the run's own elapsed time: $(printf '%s\n' "$status" | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["elapsedMs"]) / 1000)') s"
    printf '%s\n' "$status" | python3 -c '
import json, sys
s = json.load(sys.stdin); n = int(sys.argv[1])
# Every tenant schema plus the row model'"'"'s shared schema, which a run always
# includes (docs/migrations.md): n + 1 targets, 3 migrations each.
assert s["state"] == "finished" and s["done"] == n + 1 and s["failed"] == 0 and s["applied"] == 3 * (n + 1), s
' "$n" || bench_die "the run did not migrate every tenant: $status"
    local tables
    tables=$(psqlq -d "$db" -At -c "SELECT count(*) FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname LIKE 't\\_%' AND c.relname = 'tasks' AND a.attname = 'notes'")
    [ "$tables" = "$n" ] || bench_die "kowloon: $tables of $n schemas have tasks.notes"
    for i in "${pids[@]}"; do bench_stop "$i"; done
    bench_stop "$tenant_pid"
    bench_say "kowloon: $n tenants in $KOWLOON_S s ($instances instance(s))"
}

# --- side by side ------------------------------------------------------------
[ -z "${BENCH_SKIP_ANCHOR:-}" ] && bench_anchor_install
# Settling. What ran before this bench (a test suite, another bench, this
# bench's previous run removing its scratch dir) may just have deleted tens
# of thousands of files. On an ext4 WITHOUT a journal (this kind of VM's
# root file system; a server's ext4 has one), the kernel will not reuse an
# inode for 60 s after its deletion, 360 s while its inode table block is
# dirty (fs/ext4/ialloc.c, recently_deleted), and every file created
# meanwhile in that part of the disk walks past all of them: the same
# 1,000-tenant DDL from one psql session measured 2.8 s, and 3.7-4.5 s in
# a database directory that landed among 170,000 inodes deleted seconds
# before. Both sides create the same files, but that cost is a small part
# of the anchor's time and most of Kowloon's; the bench measures the
# migration tools, not the previous job's clean-up, so it waits out the
# window once, before the first round.
settle_default() {
    local dev
    [ "$(findmnt -no FSTYPE -T "$BENCH_TMP" 2>/dev/null)" = ext4 ] || { echo 0; return; }
    dev=$(basename "$(findmnt -no SOURCE -T "$BENCH_TMP")")
    if [ "$(cat "/sys/fs/ext4/$dev/journal_task" 2>/dev/null)" = "<none>" ]; then echo 360; else echo 0; fi
}
[ -n "$SETTLE_S" ] || SETTLE_S=$(settle_default)
if [ "$SETTLE_S" -gt 0 ]; then
    bench_say "ext4 without a journal: sync, then $SETTLE_S s for recently deleted inodes to become reusable (BENCH_SETTLE_S=0 skips)"
    sync
    sleep "$SETTLE_S"
fi
A_ALL=() K_ALL=()
for ((r = 1; r <= ROUNDS; r++)); do
    bench_say "round $r of $ROUNDS"
    if [ -z "${BENCH_SKIP_ANCHOR:-}" ]; then
        anchor_measure "$TENANTS" "r$r"
        A_ALL+=("$ANCHOR_S")
    fi
    kowloon_measure "$TENANTS" 1 "r$r"
    K_ALL+=("$KOWLOON_S")
done
K_S=$(bench_median "${K_ALL[@]}")
[ -z "${BENCH_SKIP_ANCHOR:-}" ] && A_S=$(bench_median "${A_ALL[@]}")
kowloon_measure "$TENANTS" 2
K2_S=$KOWLOON_S

if [ -n "$LARGE" ]; then
    kowloon_measure "$LARGE" 1
    KL1_S=$KOWLOON_S
    kowloon_measure "$LARGE" 2
    KL2_S=$KOWLOON_S
    if [ -n "${BENCH_ANCHOR_LARGE:-}" ]; then
        anchor_measure "$LARGE"
        AL_S=$ANCHOR_S
    fi
fi

if [ -n "${BENCH_SKIP_ANCHOR:-}" ]; then
    bench_say "kowloon: $TENANTS tenants: $K_S s (1 instance, median of ${K_ALL[*]}), $K2_S s (2 instances); BENCH_SKIP_ANCHOR set: no RESULT"
    exit 0
fi
RATIO=$(awk -v a="$A_S" -v k="$K_S" 'BEGIN { printf "%.1f", a / k }')
{
    echo
    echo "migrations: the anchor's 3 migrations on schema-model tenants"
    printf '  %-36s %10s\n' "run" "seconds"
    printf '  %-36s %10s   (rounds: %s)\n' "anchor, node migrate-all.js $TENANTS" "$A_S" "${A_ALL[*]}"
    printf '  %-36s %10s   (rounds: %s)\n' "kowloon, $TENANTS tenants, 1 instance" "$K_S" "${K_ALL[*]}"
    printf '  %-36s %10s\n' "kowloon, $TENANTS tenants, 2 instances" "$K2_S"
    if [ -n "$LARGE" ]; then
        printf '  %-36s %10s\n' "kowloon, $LARGE tenants, 1 instance" "$KL1_S"
        printf '  %-36s %10s\n' "kowloon, $LARGE tenants, 2 instances" "$KL2_S"
        [ -n "${AL_S:-}" ] && printf '  %-36s %10s\n' "anchor, node migrate-all.js $LARGE" "$AL_S"
    fi
    echo "  ratio (median anchor / median kowloon, $TENANTS tenants, 1 instance, $ROUNDS rounds): $RATIO x (target >= 10)"
    echo "  ($WORKERS migration workers per instance; $(nproc) cores shared with PostgreSQL)"
} >&2
echo "RESULT name=migrations ratio=$RATIO kowloon=$K_S anchor=$A_S unit=s rounds=$ROUNDS"
