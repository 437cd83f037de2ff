/*
 * migration_store: runs, claims and the ledger in schema "migration".
 */
#include "migration_store.h"

#include "kl_alloc.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const kl_pg_migration_t s_steps[] = {
    {1, "CREATE TABLE migration.runs ("
        " id bigserial PRIMARY KEY,"
        " state text NOT NULL DEFAULT 'running'"
        "  CHECK (state IN ('running', 'finished')),"
        " latest_version integer NOT NULL,"
        " retry_of bigint REFERENCES migration.runs (id),"
        " total integer NOT NULL DEFAULT 0,"
        " created_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
        " finished_at timestamptz);"
        "CREATE TABLE migration.run_targets ("
        " run_id bigint NOT NULL REFERENCES migration.runs (id)"
        "  ON DELETE CASCADE,"
        " seq integer NOT NULL,"
        " target text NOT NULL,"
        " tenant_id text NOT NULL DEFAULT '',"
        " isolation text NOT NULL,"
        " schema_name text NOT NULL,"
        " db_name text NOT NULL DEFAULT '',"
        " db_server text NOT NULL DEFAULT '',"
        " state text NOT NULL DEFAULT 'pending'"
        "  CHECK (state IN ('pending', 'done', 'failed')),"
        " failed_version integer,"
        " error text,"
        " applied integer NOT NULL DEFAULT 0,"
        " instance text,"
        " started_at timestamptz,"
        " finished_at timestamptz,"
        " PRIMARY KEY (run_id, target));"
        "CREATE INDEX run_targets_pending ON migration.run_targets"
        " (run_id, seq) WHERE state = 'pending';"
        "CREATE INDEX run_targets_failed ON migration.run_targets"
        " (run_id, seq) WHERE state = 'failed';"
        "CREATE TABLE migration.ledger ("
        " target text NOT NULL,"
        " version integer NOT NULL,"
        " tenant_id text NOT NULL DEFAULT '',"
        " name text NOT NULL,"
        " checksum text NOT NULL,"
        " state text NOT NULL"
        "  CHECK (state IN ('pending', 'running', 'applied', 'failed')),"
        " run_id bigint,"
        " started_at timestamptz,"
        " finished_at timestamptz,"
        " duration_ms bigint,"
        " error text,"
        " PRIMARY KEY (target, version));"},
};

int
migration_store_migrate(kl_pg_t *pg, kl_status_t *status)
{
    return kl_pg_migrate(pg, "migration", s_steps,
                         sizeof s_steps / sizeof s_steps[0], status);
}

/* --- array literals ------------------------------------------------------ */

/* Appends one element of a text[] literal, always double-quoted. */
static void
s_put_elem(kl_buf_t *b, const char *s, int first)
{
    if (!first)
        kl_buf_add(b, ",", 1);
    kl_buf_add(b, "\"", 1);
    for (const char *p = s ? s : ""; *p; p++) {
        if (*p == '"' || *p == '\\')
            kl_buf_add(b, "\\", 1);
        kl_buf_add(b, p, 1);
    }
    kl_buf_add(b, "\"", 1);
}

static void
s_put_num(kl_buf_t *b, int64_t v, int first)
{
    char num[32];
    int n = snprintf(num, sizeof num, "%s%" PRId64, first ? "" : ",", v);
    kl_buf_add(b, num, (size_t)n);
}

/* --- runs ---------------------------------------------------------------- */

/* Inside the transaction that added a run's targets: fresh statistics for
 * run_targets. The claim is a prepared statement, planned once per
 * connection, typically while the table was still empty; planned on those
 * statistics it reads and sorts every pending target of the run on every
 * claim (quadratic in the run's size). The new statistics (counting the
 * rows this transaction added) commit with the run, and the change
 * invalidates every connection's cached plan: the next claim is planned
 * again and takes the first unlocked target from run_targets_pending in
 * index order. Cheap: ANALYZE samples at most 30,000 rows. */
static int
s_analyze_targets(kl_pg_t *pg, kl_status_t *status)
{
    return kl_pg_exec(pg, "ANALYZE migration.run_targets", status);
}

int
migration_store_create_run(kl_pg_t *pg, int latest_version,
                           const migration_target_t *targets, size_t n,
                           int64_t *run_id, kl_status_t *status)
{
    int rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    char latest[16], total[16];
    snprintf(latest, sizeof latest, "%d", latest_version);
    snprintf(total, sizeof total, "%zu", n);
    const char *p1[] = {latest, total};
    PGresult *res = kl_pg_query(
        pg, "migration_run_new",
        "INSERT INTO migration.runs (latest_version, total, state,"
        " finished_at) VALUES ($1::int, $2::int,"
        " CASE WHEN $2::int = 0 THEN 'finished' ELSE 'running' END,"
        " CASE WHEN $2::int = 0 THEN clock_timestamp() END) RETURNING id",
        2, p1, status);
    if (!res)
        goto fail;
    *run_id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    char id[32];
    snprintf(id, sizeof id, "%" PRId64, *run_id);
    PQclear(res);
    if (n > 0) {
        kl_buf_t a[6] = {{0}};
        for (int k = 0; k < 6; k++)
            kl_buf_add(&a[k], "{", 1);
        for (size_t i = 0; i < n; i++) {
            s_put_elem(&a[0], targets[i].target, i == 0);
            s_put_elem(&a[1], targets[i].tenant_id, i == 0);
            s_put_elem(&a[2], targets[i].isolation, i == 0);
            s_put_elem(&a[3], targets[i].schema, i == 0);
            s_put_elem(&a[4], targets[i].db_name, i == 0);
            s_put_elem(&a[5], targets[i].db_server, i == 0);
        }
        for (int k = 0; k < 6; k++)
            kl_buf_add(&a[k], "}", 1);
        const char *p2[] = {id, a[0].p, a[1].p, a[2].p, a[3].p, a[4].p, a[5].p};
        res = kl_pg_query(
            pg, "migration_run_targets",
            "INSERT INTO migration.run_targets (run_id, seq, target,"
            " tenant_id, isolation, schema_name, db_name, db_server)"
            " SELECT $1::bigint, x.ord, x.t, x.tid, x.iso, x.sch, x.db, x.srv"
            " FROM unnest($2::text[], $3::text[], $4::text[], $5::text[],"
            " $6::text[], $7::text[])"
            " WITH ORDINALITY AS x(t, tid, iso, sch, db, srv, ord)",
            7, p2, status);
        for (int k = 0; k < 6; k++)
            free(a[k].p);
        if (!res)
            goto fail;
        PQclear(res);
        if (s_analyze_targets(pg, status) < 0)
            goto fail;
    }
    return kl_pg_commit(pg, status);
fail:
    kl_pg_rollback(pg);
    return -(int)status->code;
}

int
migration_store_retry_run(kl_pg_t *pg, int64_t run_id, int latest_version,
                          int64_t *new_run_id, int *n_targets,
                          kl_status_t *status)
{
    int rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    char id[32], latest[16];
    snprintf(id, sizeof id, "%" PRId64, run_id);
    snprintf(latest, sizeof latest, "%d", latest_version);
    const char *p1[] = {id};
    /* The run row is locked so that two retries of one run queue up. */
    PGresult *res = kl_pg_query(
        pg, "migration_retry_of",
        "SELECT id, state, (SELECT count(*) FROM migration.run_targets t"
        "  WHERE t.run_id = r.id AND t.state = 'failed')"
        " FROM migration.runs r WHERE id = CASE WHEN $1::bigint = 0 THEN"
        " (SELECT max(id) FROM migration.runs) ELSE $1::bigint END"
        " FOR UPDATE",
        1, p1, status);
    if (!res)
        goto fail;
    if (PQntuples(res) == 0) {
        PQclear(res);
        kl_status_set(status, KL_NOT_FOUND, "run %" PRId64 " not found",
                      run_id);
        goto fail;
    }
    int64_t old = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    int running = strcmp(PQgetvalue(res, 0, 1), "running") == 0;
    int failed = atoi(PQgetvalue(res, 0, 2));
    PQclear(res);
    if (running) {
        kl_status_set(status, KL_FAILED_PRECONDITION,
                      "run %" PRId64 " is still running: retry it when it "
                      "has finished",
                      old);
        goto fail;
    }
    if (failed == 0) {
        kl_status_set(status, KL_FAILED_PRECONDITION,
                      "run %" PRId64 " has no failed target", old);
        goto fail;
    }
    snprintf(id, sizeof id, "%" PRId64, old);
    const char *p2[] = {id, latest};
    res = kl_pg_query(
        pg, "migration_retry_new",
        "WITH r AS (INSERT INTO migration.runs (latest_version, retry_of,"
        "  total) SELECT $2::int, $1::bigint, count(*)"
        "  FROM migration.run_targets WHERE run_id = $1::bigint"
        "  AND state = 'failed' RETURNING id, total)"
        " SELECT id, total FROM r",
        2, p2, status);
    if (!res)
        goto fail;
    *new_run_id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    *n_targets = atoi(PQgetvalue(res, 0, 1));
    PQclear(res);
    char nid[32];
    snprintf(nid, sizeof nid, "%" PRId64, *new_run_id);
    const char *p3[] = {nid, id};
    res = kl_pg_query(
        pg, "migration_retry_targets",
        "INSERT INTO migration.run_targets (run_id, seq, target, tenant_id,"
        " isolation, schema_name, db_name, db_server)"
        " SELECT $1::bigint, row_number() OVER (ORDER BY seq), target,"
        " tenant_id, isolation, schema_name, db_name, db_server"
        " FROM migration.run_targets WHERE run_id = $2::bigint"
        " AND state = 'failed'",
        2, p3, status);
    if (!res)
        goto fail;
    PQclear(res);
    if (s_analyze_targets(pg, status) < 0)
        goto fail;
    return kl_pg_commit(pg, status);
fail:
    kl_pg_rollback(pg);
    return -(int)status->code;
}

/* --- work ---------------------------------------------------------------- */

int
migration_store_claim(kl_pg_t *pg, migration_target_t *t, int64_t *run_id,
                      kl_status_t *status)
{
    int rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    /* SKIP LOCKED: a target another worker (in any instance) holds is
     * passed over, never waited for and never taken twice. The target's
     * advisory lock (migration_store_lock_target's) is taken in the same
     * statement, on the one row claimed only: the claim is materialized
     * first, so no row that SKIP LOCKED passes over is ever locked. */
    PGresult *res = kl_pg_query(
        pg, "migration_claim_lock",
        "WITH c AS MATERIALIZED (SELECT rt.run_id, rt.target, rt.tenant_id,"
        " rt.isolation, rt.schema_name, rt.db_name, rt.db_server"
        " FROM migration.run_targets rt"
        " WHERE rt.state = 'pending' AND rt.run_id IN"
        " (SELECT id FROM migration.runs WHERE state = 'running')"
        " ORDER BY rt.run_id, rt.seq LIMIT 1 FOR UPDATE OF rt SKIP LOCKED)"
        " SELECT c.*, pg_advisory_xact_lock(hashtextextended("
        "'kowloon.migration:' || c.target, 0)) FROM c",
        0, NULL, status);
    if (!res) {
        kl_pg_rollback(pg);
        return -(int)status->code;
    }
    if (PQntuples(res) == 0) {
        PQclear(res);
        kl_pg_rollback(pg);
        return 0;
    }
    memset(t, 0, sizeof *t);
    *run_id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    snprintf(t->target, sizeof t->target, "%s", PQgetvalue(res, 0, 1));
    snprintf(t->tenant_id, sizeof t->tenant_id, "%s", PQgetvalue(res, 0, 2));
    snprintf(t->isolation, sizeof t->isolation, "%s", PQgetvalue(res, 0, 3));
    snprintf(t->schema, sizeof t->schema, "%s", PQgetvalue(res, 0, 4));
    snprintf(t->db_name, sizeof t->db_name, "%s", PQgetvalue(res, 0, 5));
    snprintf(t->db_server, sizeof t->db_server, "%s", PQgetvalue(res, 0, 6));
    PQclear(res);
    return 1;
}

int
migration_store_lock_target(kl_pg_t *pg, const migration_target_t *t,
                            kl_status_t *status)
{
    const char *p[] = {t->target};
    PGresult *res = kl_pg_query(
        pg, "migration_lock_target",
        "SELECT pg_advisory_xact_lock(hashtextextended('kowloon.migration:'"
        " || $1, 0))",
        1, p, status);
    if (!res)
        return -(int)status->code;
    PQclear(res);
    return 0;
}

/* The ledger rows as the 8 array literals of s_ledger_sql's $4..$11
 * (caller frees each). */
static void
s_ledger_arrays(const migration_ledger_row_t *rows, size_t n, char *out[8])
{
    kl_buf_t a[8] = {{0}};
    for (int k = 0; k < 8; k++)
        kl_buf_add(&a[k], "{", 1);
    for (size_t i = 0; i < n; i++) {
        const migration_ledger_row_t *r = &rows[i];
        int first = i == 0;
        s_put_num(&a[0], r->version, first);
        s_put_elem(&a[1], r->name, first);
        s_put_elem(&a[2], r->checksum, first);
        s_put_elem(&a[3], r->state, first);
        s_put_num(&a[4], r->started_ms, first);
        s_put_num(&a[5], r->finished_ms, first);
        s_put_num(&a[6], r->duration_ms, first);
        s_put_elem(&a[7], r->error ? r->error : "", first);
    }
    for (int k = 0; k < 8; k++) {
        kl_buf_add(&a[k], "}", 1);
        out[k] = a[k].p;
    }
}

/* The ledger upsert: $1 target, $2 tenant, $3 run (0: none), $4..$11 the
 * rows' arrays. A row reconciled from the target's history (started 0)
 * fills a gap in the ledger and never overwrites what a run recorded. */
#define S_LEDGER_SQL                                                           \
    "INSERT INTO migration.ledger AS l (target, version, tenant_id, name,"     \
    " checksum, state, run_id, started_at, finished_at, duration_ms,"          \
    " error)"                                                                  \
    " SELECT $1, x.v, $2, x.n, x.c, x.s, nullif($3::bigint, 0),"               \
    " CASE WHEN x.st > 0 THEN to_timestamp(x.st / 1000.0) END,"                \
    " CASE WHEN x.ft > 0 THEN to_timestamp(x.ft / 1000.0) END,"                \
    " x.d, nullif(x.e, '')"                                                    \
    " FROM unnest($4::int[], $5::text[], $6::text[], $7::text[],"              \
    " $8::bigint[], $9::bigint[], $10::bigint[], $11::text[])"                 \
    " AS x(v, n, c, s, st, ft, d, e)"                                          \
    " ON CONFLICT (target, version) DO UPDATE SET"                             \
    " tenant_id = excluded.tenant_id, name = excluded.name,"                   \
    " checksum = excluded.checksum, state = excluded.state,"                   \
    " run_id = excluded.run_id, started_at = excluded.started_at,"             \
    " finished_at = excluded.finished_at,"                                     \
    " duration_ms = excluded.duration_ms, error = excluded.error"              \
    " WHERE excluded.started_at IS NOT NULL OR l.state <> 'applied'"

int
migration_store_ledger(kl_pg_t *pg, const migration_target_t *t, int64_t run_id,
                       const migration_ledger_row_t *rows, size_t n,
                       kl_status_t *status)
{
    if (n == 0)
        return 0;
    char *a[8];
    s_ledger_arrays(rows, n, a);
    char run[32];
    snprintf(run, sizeof run, "%" PRId64, run_id);
    const char *p[] = {t->target, t->tenant_id, run,  a[0], a[1], a[2],
                       a[3],      a[4],         a[5], a[6], a[7]};
    PGresult *res =
        kl_pg_query(pg, "migration_ledger", S_LEDGER_SQL, 11, p, status);
    for (int k = 0; k < 8; k++)
        free(a[k]);
    if (!res)
        return -(int)status->code;
    PQclear(res);
    return 0;
}

int
migration_store_target_finish(kl_pg_t *pg, int64_t run_id,
                              const migration_target_t *t,
                              const migration_ledger_row_t *rows, size_t n,
                              const migration_target_outcome_t *o,
                              kl_status_t *status)
{
    char *a[8];
    s_ledger_arrays(rows, n, a);
    char run[32], fv[16], ap[16], st[32];
    snprintf(run, sizeof run, "%" PRId64, run_id);
    snprintf(fv, sizeof fv, "%d", o->failed_version);
    snprintf(ap, sizeof ap, "%d", o->applied);
    snprintf(st, sizeof st, "%" PRId64, o->started_ms);
    const char *p[] = {t->target, t->tenant_id,
                       run,       a[0],
                       a[1],      a[2],
                       a[3],      a[4],
                       a[5],      a[6],
                       a[7],      o->failed ? "failed" : "done",
                       fv,        o->error ? o->error : "",
                       ap,        o->instance ? o->instance : "",
                       st};
    /* One statement: the ledger rows (none is fine) and the run's target. */
    PGresult *res = kl_pg_query(
        pg, "migration_target_finish",
        "WITH ledger AS (" S_LEDGER_SQL ")"
        " UPDATE migration.run_targets SET state = $12,"
        " failed_version = nullif($13::int, 0), error = nullif($14, ''),"
        " applied = $15::int, instance = $16,"
        " started_at = to_timestamp($17::bigint / 1000.0),"
        " finished_at = clock_timestamp()"
        " WHERE run_id = $3::bigint AND target = $1",
        17, p, status);
    for (int k = 0; k < 8; k++)
        free(a[k]);
    if (!res)
        return -(int)status->code;
    PQclear(res);
    return 0;
}

int
migration_store_target_defer(kl_pg_t *pg, int64_t run_id,
                             const migration_target_t *t, const char *reason,
                             kl_status_t *status)
{
    char run[32];
    snprintf(run, sizeof run, "%" PRId64, run_id);
    const char *p[] = {run, t->target, reason};
    PGresult *res = kl_pg_query(
        pg, "migration_target_defer",
        "UPDATE migration.run_targets SET error = $3,"
        " seq = (SELECT max(seq) + 1 FROM migration.run_targets"
        "        WHERE run_id = $1::bigint)"
        " WHERE run_id = $1::bigint AND target = $2 AND state = 'pending'",
        3, p, status);
    if (!res)
        return -(int)status->code;
    PQclear(res);
    return 0;
}

int
migration_store_finish_run(kl_pg_t *pg, int64_t run_id, kl_status_t *status)
{
    char run[32];
    snprintf(run, sizeof run, "%" PRId64, run_id);
    const char *p[] = {run};
    /* Run after the worker's own commit: the last target to commit sees
     * every other one committed, so some worker always finishes the run. */
    PGresult *res = kl_pg_query(
        pg, "migration_finish_run",
        "UPDATE migration.runs SET state = 'finished',"
        " finished_at = clock_timestamp()"
        " WHERE id = $1::bigint AND state = 'running' AND NOT EXISTS"
        " (SELECT 1 FROM migration.run_targets WHERE run_id = $1::bigint"
        "  AND state = 'pending')",
        1, p, status);
    if (!res)
        return -(int)status->code;
    PQclear(res);
    return 0;
}

/* --- status -------------------------------------------------------------- */

int
migration_store_status(kl_pg_t *pg, int64_t run_id, int max_failures,
                       migration_run_status_t *out, kl_status_t *status)
{
    memset(out, 0, sizeof *out);
    char run[32], max[16];
    snprintf(run, sizeof run, "%" PRId64, run_id);
    snprintf(max, sizeof max, "%d", max_failures > 0 ? max_failures : 100);
    const char *p[] = {run};
    PGresult *res = kl_pg_query(
        pg, "migration_status",
        "SELECT r.id, r.state, r.total, r.latest_version,"
        " coalesce(r.retry_of, 0),"
        " to_char(r.created_at AT TIME ZONE 'UTC',"
        "  'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"
        " coalesce(to_char(r.finished_at AT TIME ZONE 'UTC',"
        "  'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), ''),"
        " (extract(epoch FROM coalesce(r.finished_at, clock_timestamp())"
        "  - r.created_at) * 1000)::bigint,"
        " s.done, s.failed, s.pending, s.applied"
        " FROM migration.runs r CROSS JOIN LATERAL (SELECT"
        "  count(*) FILTER (WHERE t.state = 'done') AS done,"
        "  count(*) FILTER (WHERE t.state = 'failed') AS failed,"
        "  count(*) FILTER (WHERE t.state = 'pending') AS pending,"
        "  coalesce(sum(t.applied), 0) AS applied"
        "  FROM migration.run_targets t WHERE t.run_id = r.id) s"
        " WHERE r.id = CASE WHEN $1::bigint = 0 THEN"
        " (SELECT max(id) FROM migration.runs) ELSE $1::bigint END",
        1, p, status);
    if (!res)
        return -(int)status->code;
    if (PQntuples(res) == 0) {
        PQclear(res);
        return run_id ? kl_status_set(status, KL_NOT_FOUND,
                                      "run %" PRId64 " not found", run_id)
                      : kl_status_set(status, KL_NOT_FOUND, "no run yet");
    }
    out->run_id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    snprintf(out->state, sizeof out->state, "%s", PQgetvalue(res, 0, 1));
    out->total = atoi(PQgetvalue(res, 0, 2));
    out->latest_version = atoi(PQgetvalue(res, 0, 3));
    out->retry_of = strtoll(PQgetvalue(res, 0, 4), NULL, 10);
    snprintf(out->created_at, sizeof out->created_at, "%s",
             PQgetvalue(res, 0, 5));
    snprintf(out->finished_at, sizeof out->finished_at, "%s",
             PQgetvalue(res, 0, 6));
    out->elapsed_ms = strtoll(PQgetvalue(res, 0, 7), NULL, 10);
    out->done = atoi(PQgetvalue(res, 0, 8));
    out->failed = atoi(PQgetvalue(res, 0, 9));
    out->remaining = atoi(PQgetvalue(res, 0, 10));
    out->applied = atoi(PQgetvalue(res, 0, 11));
    PQclear(res);
    snprintf(run, sizeof run, "%" PRId64, out->run_id);
    const char *p2[] = {run, max};
    res = kl_pg_query(pg, "migration_status_failures",
                      "SELECT target, tenant_id, coalesce(failed_version, 0),"
                      " coalesce(error, '') FROM migration.run_targets"
                      " WHERE run_id = $1::bigint AND state = 'failed'"
                      " ORDER BY seq LIMIT $2::int",
                      2, p2, status);
    if (!res)
        return -(int)status->code;
    int rows = PQntuples(res);
    if (rows > 0) {
        out->failures = kl_calloc((size_t)rows, sizeof *out->failures);
        for (int r = 0; r < rows; r++) {
            migration_failure_t *f = &out->failures[r];
            snprintf(f->target, sizeof f->target, "%s", PQgetvalue(res, r, 0));
            snprintf(f->tenant_id, sizeof f->tenant_id, "%s",
                     PQgetvalue(res, r, 1));
            f->version = atoi(PQgetvalue(res, r, 2));
            f->error = kl_strdup(PQgetvalue(res, r, 3));
        }
        out->n_failures = (size_t)rows;
    }
    PQclear(res);
    return 0;
}

void
migration_store_status_free(migration_run_status_t *st)
{
    for (size_t i = 0; i < st->n_failures; i++)
        free(st->failures[i].error);
    free(st->failures);
    st->failures = NULL;
    st->n_failures = 0;
}
