/*
 * tenant_mover: copy, verify, switch, clean up — under the tenant's claim
 * and move lock — and the recovery's check, undo and removal. Uses libpq
 * directly on owner connections (COPY streaming, several statements per
 * transaction on two servers at once, locks held by one session).
 */
#include "tenant_mover.h"

#include "kl_alloc.h"
#include "kl_rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One table to copy. */
typedef struct {
    char name[KL_TENANT_NAME_MAX]; /* relname */
    char *src;                     /* "schema"."table" in the source */
    char *dst;                     /* "schema"."table" in the target */
    char *cols;                    /* quoted column list */
    char *deps;                    /* parents' relnames, '\x1f'-separated */
    bool done;                     /* placed in the copy order */
} s_table_t;

/* A connection of the mover. */
typedef struct {
    kl_pg_t *pg;   /* owns the PGconn */
    PGconn *conn;  /* borrowed from pg */
    const char *w; /* "source", "target", "main": for messages */
} s_conn_t;

static int
s_open(const tenant_provision_t *prov, const char *server, const char *db,
       const char *what, s_conn_t *c, kl_status_t *status)
{
    memset(c, 0, sizeof *c);
    c->w = what;
    c->pg = tenant_provision_owner(prov, server, db, status);
    if (!c->pg)
        return -(int)status->code;
    c->conn = kl_pg_conn(c->pg, status);
    if (!c->conn) {
        kl_pg_destroy(&c->pg);
        return -(int)status->code;
    }
    return 0;
}

static void
s_close(s_conn_t *c)
{
    kl_pg_destroy(&c->pg);
    c->conn = NULL;
}

/* Status from a failed result (NULL: the connection's error). */
static int
s_fail(s_conn_t *c, PGresult *res, kl_status_t *status)
{
    const char *msg = res ? PQresultErrorMessage(res) : PQerrorMessage(c->conn);
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    kl_code_t code = KL_INTERNAL;
    if (PQstatus(c->conn) != CONNECTION_OK ||
        (state && state[0] == '0' && state[1] == '8'))
        code = KL_UNAVAILABLE;
    else if (state && strcmp(state, "55P03") == 0)
        code = KL_UNAVAILABLE;
    size_t len = msg ? strlen(msg) : 0;
    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
        len--;
    return kl_status_set(status, code, "%s: %.*s", c->w, (int)len,
                         msg ? msg : "");
}

/* Runs sql (params as text) and expects COMMAND_OK or TUPLES_OK; *out
 * (may be NULL) gets the result to PQclear. */
static int
s_run(s_conn_t *c, const char *sql, int n, const char *const *params,
      PGresult **out, kl_status_t *status)
{
    PGresult *res = PQexecParams(c->conn, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        int rc = s_fail(c, res, status);
        PQclear(res);
        return rc;
    }
    if (out)
        *out = res;
    else
        PQclear(res);
    return 0;
}

/* BEGIN and the tenant's scope (the owner is subject to forced RLS). */
static int
s_begin(s_conn_t *c, const char *tenant_id, bool snapshot, kl_status_t *status)
{
    int rc =
        s_run(c, snapshot ? "BEGIN ISOLATION LEVEL REPEATABLE READ" : "BEGIN",
              0, NULL, NULL, status);
    if (rc == 0)
        rc = s_run(c, "SELECT pg_catalog.set_config('app.tenant_id', $1, true)",
                   1, (const char *const[]){tenant_id}, NULL, status);
    return rc;
}

static void
s_rollback(s_conn_t *c)
{
    if (c->conn)
        PQclear(PQexec(c->conn, "ROLLBACK"));
}

/* The source schema's tables with RLS forced, in copy order (parents
 * first). */
static int
s_tables(s_conn_t *src, const char *src_schema, const char *dst_schema,
         s_table_t **out, size_t *n_out, kl_status_t *status)
{
    PGresult *res = NULL;
    int rc = s_run(
        src,
        "SELECT c.relname::text,"
        " pg_catalog.quote_ident(n.nspname) || '.' ||"
        "  pg_catalog.quote_ident(c.relname),"
        " pg_catalog.quote_ident($2) || '.' || "
        "pg_catalog.quote_ident(c.relname),"
        " (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', '"
        "   ORDER BY a.attnum) FROM pg_catalog.pg_attribute a"
        "   WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),"
        " coalesce((SELECT pg_catalog.string_agg(DISTINCT r.relname::text,"
        "   chr(31)) FROM pg_catalog.pg_constraint k"
        "   JOIN pg_catalog.pg_class r ON r.oid = k.confrelid"
        "   WHERE k.conrelid = c.oid AND k.contype = 'f'"
        "   AND k.confrelid <> c.oid), '')"
        " FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')"
        " AND c.relrowsecurity AND c.relforcerowsecurity"
        " ORDER BY c.relname",
        2, (const char *const[]){src_schema, dst_schema}, &res, status);
    if (rc < 0)
        return rc;
    size_t n = (size_t)PQntuples(res);
    if (n > TENANT_MOVER_MAX_TABLES) {
        PQclear(res);
        return kl_status_set(status, KL_FAILED_PRECONDITION,
                             "more than %d tables to move",
                             TENANT_MOVER_MAX_TABLES);
    }
    s_table_t *in = kl_calloc(n + 1, sizeof *in);
    for (size_t i = 0; i < n; i++) {
        snprintf(in[i].name, sizeof in[i].name, "%s",
                 PQgetvalue(res, (int)i, 0));
        in[i].src = kl_strdup(PQgetvalue(res, (int)i, 1));
        in[i].dst = kl_strdup(PQgetvalue(res, (int)i, 2));
        in[i].cols = kl_strdup(PQgetvalue(res, (int)i, 3));
        in[i].deps = kl_strdup(PQgetvalue(res, (int)i, 4));
    }
    PQclear(res);
    /* Topological order: repeatedly take a table whose parents are all
     * placed (or are not among the tables moved). */
    s_table_t *order = kl_calloc(n + 1, sizeof *order);
    size_t placed = 0;
    while (placed < n) {
        bool progress = false;
        for (size_t i = 0; i < n; i++) {
            if (in[i].done)
                continue;
            bool ready = true;
            char *deps = kl_strdup(in[i].deps), *save = NULL;
            for (char *d = strtok_r(deps, "\x1f", &save); d && ready;
                 d = strtok_r(NULL, "\x1f", &save))
                for (size_t j = 0; j < n; j++)
                    if (strcmp(in[j].name, d) == 0 && !in[j].done)
                        ready = false;
            free(deps);
            if (ready) {
                in[i].done = true;
                order[placed++] = in[i];
                progress = true;
            }
        }
        if (!progress) {
            /* A cycle of foreign keys: keep the rest in name order; the
             * copy then fails and rolls back rather than guessing. */
            for (size_t i = 0; i < n; i++)
                if (!in[i].done) {
                    in[i].done = true;
                    order[placed++] = in[i];
                }
        }
    }
    free(in);
    *out = order;
    *n_out = n;
    return 0;
}

static void
s_tables_free(s_table_t *t, size_t n)
{
    for (size_t i = 0; i < n && t; i++) {
        free(t[i].src);
        free(t[i].dst);
        free(t[i].cols);
        free(t[i].deps);
    }
    free(t);
}

/* Inside the main database: one transaction, INSERT ... SELECT. */
static int
s_copy_local(s_conn_t *main, const char *tenant_id, s_table_t *t, size_t n,
             kl_status_t *status)
{
    int rc = s_begin(main, tenant_id, false, status);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char *sql = kl_asprintf("INSERT INTO %s (%s) SELECT %s FROM %s"
                                " WHERE tenant_id = $1::uuid",
                                t[i].dst, t[i].cols, t[i].cols, t[i].src);
        rc =
            s_run(main, sql, 1, (const char *const[]){tenant_id}, NULL, status);
        free(sql);
    }
    if (rc == 0)
        rc = s_run(main, "COMMIT", 0, NULL, NULL, status);
    if (rc < 0)
        s_rollback(main);
    return rc;
}

/* One table from src's COPY TO STDOUT into dst's COPY FROM STDIN. */
static int
s_stream(s_conn_t *src, s_conn_t *dst, const char *tenant_id,
         const s_table_t *t, kl_status_t *status)
{
    /* tenant_id is a validated uuid: safe between quotes. */
    char *out_sql = kl_asprintf(
        "COPY (SELECT %s FROM %s WHERE tenant_id = '%s'::uuid) TO STDOUT",
        t->cols, t->src, tenant_id);
    char *in_sql = kl_asprintf("COPY %s (%s) FROM STDIN", t->dst, t->cols);
    PGresult *r1 = PQexec(src->conn, out_sql);
    int rc = 0;
    if (PQresultStatus(r1) != PGRES_COPY_OUT)
        rc = s_fail(src, r1, status);
    PQclear(r1);
    PGresult *r2 = NULL;
    if (rc == 0) {
        r2 = PQexec(dst->conn, in_sql);
        if (PQresultStatus(r2) != PGRES_COPY_IN)
            rc = s_fail(dst, r2, status);
        PQclear(r2);
        if (rc < 0) /* drain the source's COPY */
            while (PQgetResult(src->conn))
                ;
    }
    free(out_sql);
    free(in_sql);
    if (rc < 0)
        return rc;
    char *buf = NULL;
    int len;
    while ((len = PQgetCopyData(src->conn, &buf, 0)) > 0) {
        if (rc == 0 && PQputCopyData(dst->conn, buf, len) != 1)
            rc = s_fail(dst, NULL, status);
        PQfreemem(buf);
        buf = NULL;
    }
    PGresult *res;
    while ((res = PQgetResult(src->conn))) {
        if (rc == 0 && PQresultStatus(res) != PGRES_COMMAND_OK)
            rc = s_fail(src, res, status);
        PQclear(res);
    }
    if (len == -2 && rc == 0)
        rc = s_fail(src, NULL, status);
    if (PQputCopyEnd(dst->conn, rc == 0 ? NULL : "source failed") != 1 &&
        rc == 0)
        rc = s_fail(dst, NULL, status);
    while ((res = PQgetResult(dst->conn))) {
        if (rc == 0 && PQresultStatus(res) != PGRES_COMMAND_OK)
            rc = s_fail(dst, res, status);
        PQclear(res);
    }
    return rc;
}

/* Between databases: the source from one snapshot, the target in one
 * transaction. COPY FROM refuses tables whose row-level security applies
 * to the copying role, and FORCE makes it apply to the owner: the target
 * is a fresh database nobody else uses yet, so FORCE is lifted inside the
 * transaction and restored before it commits (no one ever sees it off). */
static int
s_copy_remote(s_conn_t *src, s_conn_t *dst, const char *tenant_id, s_table_t *t,
              size_t n, kl_status_t *status)
{
    int rc = s_begin(src, tenant_id, true, status);
    if (rc == 0)
        rc = s_begin(dst, tenant_id, false, status);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char *sql =
            kl_asprintf("ALTER TABLE %s NO FORCE ROW LEVEL SECURITY", t[i].dst);
        rc = s_run(dst, sql, 0, NULL, NULL, status);
        free(sql);
    }
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = s_stream(src, dst, tenant_id, &t[i], status);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char *sql =
            kl_asprintf("ALTER TABLE %s FORCE ROW LEVEL SECURITY", t[i].dst);
        rc = s_run(dst, sql, 0, NULL, NULL, status);
        free(sql);
    }
    if (rc == 0)
        rc = s_run(dst, "COMMIT", 0, NULL, NULL, status);
    if (rc < 0)
        s_rollback(dst);
    s_rollback(src);
    return rc;
}

/* count(*) of the tenant's rows in table (qualified) on c. */
static int
s_count(s_conn_t *c, const char *tenant_id, const char *table, int64_t *out,
        kl_status_t *status)
{
    int rc = s_begin(c, tenant_id, false, status);
    PGresult *res = NULL;
    if (rc == 0) {
        char *sql = kl_asprintf(
            "SELECT count(*) FROM %s WHERE tenant_id = $1::uuid", table);
        rc = s_run(c, sql, 1, (const char *const[]){tenant_id}, &res, status);
        free(sql);
    }
    if (rc == 0) {
        *out = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        PQclear(res);
    }
    s_rollback(c);
    return rc;
}

/* Deletes the tenant's rows from the shared tables, children first. */
static int
s_delete_rows(s_conn_t *main, const char *tenant_id, s_table_t *t, size_t n,
              kl_status_t *status)
{
    int rc = s_begin(main, tenant_id, false, status);
    for (size_t i = n; rc == 0 && i > 0; i--) {
        char *sql = kl_asprintf("DELETE FROM %s WHERE tenant_id = $1::uuid",
                                t[i - 1].src);
        rc =
            s_run(main, sql, 1, (const char *const[]){tenant_id}, NULL, status);
        free(sql);
    }
    if (rc == 0)
        rc = s_run(main, "COMMIT", 0, NULL, NULL, status);
    if (rc < 0)
        s_rollback(main);
    return rc;
}

static bool
s_supported(kl_isolation_t from, kl_isolation_t to)
{
    return (from == KL_ISOLATION_ROW && to == KL_ISOLATION_SCHEMA) ||
           (from == KL_ISOLATION_ROW && to == KL_ISOLATION_DATABASE) ||
           (from == KL_ISOLATION_SCHEMA && to == KL_ISOLATION_DATABASE);
}

/* --- the claim ----------------------------------------------------------- */

struct tenant_mover {
    const tenant_provision_t *prov; /* borrowed */
    char tenant_id[37];             /* the claimed tenant */
    s_conn_t lock; /* main owner session: claim, move lock, fence writes;
                      raw libpq, never reconnected (a new session would
                      silently hold neither lock) */
    bool locked;   /* the move lock is held */
};

tenant_mover_t *
tenant_mover_new(const tenant_provision_t *prov, const char *tenant_id,
                 kl_status_t *status)
{
    tenant_mover_t *self = kl_calloc(1, sizeof *self);
    self->prov = prov;
    snprintf(self->tenant_id, sizeof self->tenant_id, "%s", tenant_id);
    PGresult *res = NULL;
    int rc = s_open(prov, "main", NULL, "main", &self->lock, status);
    if (rc == 0)
        rc = s_run(
            &self->lock,
            "SELECT pg_catalog.pg_try_advisory_lock(" TENANT_MOVER_CLAIM_SQL(
                "$1::text") ")",
            1, (const char *const[]){tenant_id}, &res, status);
    if (rc == 0) {
        if (strcmp(PQgetvalue(res, 0, 0), "t") != 0)
            rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                               "tenant %s is already being moved", tenant_id);
        PQclear(res);
    }
    if (rc < 0)
        tenant_mover_destroy(&self);
    return self;
}

void
tenant_mover_destroy(tenant_mover_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tenant_mover_t *self = *self_p;
    /* Ending the session releases the claim and the move lock. */
    s_close(&self->lock);
    free(self);
    *self_p = NULL;
}

int
tenant_mover_lock(tenant_mover_t *self, int64_t wait_ms, kl_status_t *status)
{
    if (self->locked)
        return 0;
    const char *id = self->tenant_id;
    PGresult *res = NULL;
    int rc;
    if (wait_ms > 0) {
        char *sql = kl_asprintf("SET lock_timeout = %lld", (long long)wait_ms);
        rc = s_run(&self->lock, sql, 0, NULL, NULL, status);
        free(sql);
        if (rc == 0)
            rc = s_run(&self->lock,
                       "SELECT pg_catalog.pg_advisory_lock(" KL_TENANT_LOCK_SQL(
                           "$1::text") ")",
                       1, (const char *const[]){id}, NULL, status);
    } else {
        rc = s_run(&self->lock,
                   "SELECT pg_catalog.pg_try_advisory_lock(" KL_TENANT_LOCK_SQL(
                       "$1::text") ")",
                   1, (const char *const[]){id}, &res, status);
        if (rc == 0 && strcmp(PQgetvalue(res, 0, 0), "t") != 0)
            rc = kl_status_set(status, KL_UNAVAILABLE,
                               "tenant %s is busy: its move lock is held", id);
        PQclear(res);
    }
    self->locked = rc == 0;
    return rc;
}

int
tenant_mover_lock_pid(const tenant_mover_t *self)
{
    return self->lock.conn ? PQbackendPID(self->lock.conn) : 0;
}

/* Records (isolation != NULL) or clears the fence entry on the claim's
 * session: if that session is gone, so are the locks, and the write
 * fails rather than be made by someone who no longer holds the tenant. */
static int
s_fence_set(tenant_mover_t *self, const char *isolation, kl_status_t *status)
{
    if (isolation)
        return s_run(&self->lock,
                     "INSERT INTO " KL_TENANT_FENCE_TABLE
                     " (tenant_id, isolation) VALUES ($1, $2)"
                     " ON CONFLICT (tenant_id) DO UPDATE SET"
                     " isolation = EXCLUDED.isolation, moved_at = now()",
                     2, (const char *const[]){self->tenant_id, isolation}, NULL,
                     status);
    return s_run(&self->lock,
                 "DELETE FROM " KL_TENANT_FENCE_TABLE " WHERE tenant_id = $1",
                 1, (const char *const[]){self->tenant_id}, NULL, status);
}

/* The fence entry of a placement: none for the row model. */
static const char *
s_fence_of(const kl_tenant_place_t *place)
{
    return place->isolation == KL_ISOLATION_ROW
               ? NULL
               : kl_isolation_name(place->isolation);
}

int
tenant_mover_fence(tenant_mover_t *self, char isolation[16],
                   kl_status_t *status)
{
    PGresult *res = NULL;
    int rc = s_run(&self->lock,
                   "SELECT isolation FROM " KL_TENANT_FENCE_TABLE
                   " WHERE tenant_id = $1::uuid",
                   1, (const char *const[]){self->tenant_id}, &res, status);
    if (rc < 0)
        return rc;
    snprintf(isolation, 16, "%s",
             PQntuples(res) > 0 ? PQgetvalue(res, 0, 0) : "");
    PQclear(res);
    return 0;
}

/* --- steps shared by a move and a recovery ------------------------------- */

/* Row counts of every table in source and target; out->counts. */
static int
s_verify(s_conn_t *src, s_conn_t *tgt, const char *id, const s_table_t *t,
         size_t n, tenant_mover_result_t *out, kl_status_t *status)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        int64_t a = -1, b = -2;
        rc = s_count(src, id, t[i].src, &a, status);
        if (rc == 0)
            rc = s_count(tgt, id, t[i].dst, &b, status);
        if (rc == 0 && a != b)
            rc = kl_status_set(status, KL_ABORTED,
                               "table %s: %lld rows in the source, %lld in "
                               "the target",
                               t[i].name, (long long)a, (long long)b);
        if (rc == 0) {
            snprintf(out->counts[i].table, sizeof out->counts[i].table, "%s",
                     t[i].name);
            out->counts[i].rows = a;
            out->n_counts = i + 1;
        }
    }
    return rc;
}

/* Removes old's copy; src (main, open) and its tables for a row source. */
static int
s_remove(tenant_mover_t *self, const kl_tenant_place_t *old, s_conn_t *src,
         s_table_t *t, size_t n, kl_status_t *status)
{
    if (old->isolation == KL_ISOLATION_ROW)
        return s_delete_rows(src, old->tenant_id, t, n, status);
    if (old->isolation == KL_ISOLATION_SCHEMA)
        return tenant_provision_drop(self->prov, old, status);
    return kl_status_set(status, KL_INVALID_ARGUMENT,
                         "a database placement is never an old copy");
}

/* Refuses a placement that is not the claimed tenant's. */
static int
s_check_place(const tenant_mover_t *self, const kl_tenant_place_t *place,
              kl_status_t *status)
{
    int rc = kl_tenant_place_check(place, status);
    if (rc == 0 && strcmp(place->tenant_id, self->tenant_id) != 0)
        rc = kl_status_set(status, KL_INVALID_ARGUMENT,
                           "placement of tenant %s given to the mover of %s",
                           place->tenant_id, self->tenant_id);
    return rc;
}

static int
s_check_move(const tenant_mover_t *self, const kl_tenant_place_t *from,
             const kl_tenant_place_t *to, kl_status_t *status)
{
    if (s_check_place(self, from, status) < 0 ||
        s_check_place(self, to, status) < 0)
        return -(int)status->code;
    if (!s_supported(from->isolation, to->isolation))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "cannot move a tenant from %s to %s: want row "
                             "-> schema, row -> database or schema -> "
                             "database",
                             kl_isolation_name(from->isolation),
                             kl_isolation_name(to->isolation));
    return 0;
}

static int
s_need_lock(const tenant_mover_t *self, kl_status_t *status)
{
    if (self->locked)
        return 0;
    return kl_status_set(status, KL_FAILED_PRECONDITION,
                         "the move lock of tenant %s is not held",
                         self->tenant_id);
}

/* Whether a test asked the move to stop dead at `at`. */
static bool
s_stop(const tenant_mover_opts_t *opts, tenant_mover_stop_t at,
       tenant_mover_result_t *out, kl_status_t *status)
{
    static const char *const names[] = {"", "provisioned", "copied", "fenced",
                                        "switched"};
    if (opts->stop_at != at)
        return false;
    out->stopped = true;
    kl_status_set(status, KL_ABORTED, "move stopped once %s (test hook)",
                  names[at]);
    return true;
}

/* --- the move ------------------------------------------------------------ */

int
tenant_mover_run(tenant_mover_t *self, const kl_tenant_place_t *from,
                 const kl_tenant_place_t *to, const tenant_mover_opts_t *opts,
                 tenant_mover_result_t *out, kl_status_t *status)
{
    memset(out, 0, sizeof *out);
    int64_t started = kl_now_mono_ms();
    int rc = s_check_move(self, from, to, status);
    if (rc < 0)
        return rc;
    const char *id = self->tenant_id;
    s_conn_t src = {0}, dst = {0};
    s_table_t *tables = NULL;
    size_t n = 0;
    bool target_made = false, fence_written = false, unsure = false;

    /* 1. The move lock: waits for writes already under way. */
    rc = tenant_mover_lock(
        self, opts->lock_timeout_ms > 0 ? opts->lock_timeout_ms : 30000,
        status);
    /* 2. The target. */
    if (rc == 0) {
        rc = tenant_provision_create(self->prov, to, status);
        target_made = rc == 0;
    }
    if (rc == 0 && s_stop(opts, TENANT_MOVER_STOP_PROVISIONED, out, status))
        goto done;
    /* 3. The copy. Sources are always in the main database. */
    if (rc == 0)
        rc = s_open(self->prov, "main", NULL, "source", &src, status);
    if (rc == 0)
        rc = s_tables(&src, from->schema, to->schema, &tables, &n, status);
    if (rc == 0 && to->isolation == KL_ISOLATION_SCHEMA) {
        rc = s_copy_local(&src, id, tables, n, status);
    } else if (rc == 0) {
        rc = s_open(self->prov, to->db_server, to->db_name, "target", &dst,
                    status);
        if (rc == 0)
            rc = s_copy_remote(&src, &dst, id, tables, n, status);
    }
    /* 4. Verification, table by table. */
    if (rc == 0)
        rc = s_verify(&src, to->isolation == KL_ISOLATION_SCHEMA ? &src : &dst,
                      id, tables, n, out, status);
    if (rc == 0 && s_stop(opts, TENANT_MOVER_STOP_COPIED, out, status))
        goto done;
    /* 5. The switch. The fence goes first, or in the record's own
     * transaction, so that a stale placement is refused from the moment
     * the record changes. Once the fence may say the new model, the
     * target holds a complete, counted copy: a recovery that finds the
     * fence there finishes the move. */
    if (rc == 0 && !opts->switch_fences) {
        rc = s_fence_set(self, kl_isolation_name(to->isolation), status);
        fence_written = true; /* or perhaps, if the reply was lost */
        if (rc == 0 && s_stop(opts, TENANT_MOVER_STOP_FENCED, out, status))
            goto done;
    }
    if (rc == 0)
        rc = opts->switch_fn(opts->switch_arg, to, opts->switch_fences,
                             tenant_mover_lock_pid(self), &unsure, status);
    if (rc < 0) {
        out->n_counts = 0;
        s_close(&dst);
        /* Put the fence back; if that fails too, the fence may say the
         * new model: undo nothing, and leave the tenant to a recovery,
         * which decides by the fence. */
        kl_status_t fst;
        if (unsure ||
            (fence_written && s_fence_set(self, s_fence_of(from), &fst) < 0))
            out->unsettled = true;
        else if (target_made) {
            kl_status_t ignored;
            tenant_provision_drop(self->prov, to, &ignored);
        }
        goto done;
    }
    if (s_stop(opts, TENANT_MOVER_STOP_SWITCHED, out, status)) {
        rc = -(int)status->code;
        goto done;
    }
    /* 6. The old copy. */
    kl_status_t cst;
    if (s_remove(self, from, &src, tables, n, &cst) < 0)
        snprintf(out->cleanup_error, sizeof out->cleanup_error, "%s",
                 cst.message);
done:
    if (out->stopped)
        rc = -(int)status->code;
    s_tables_free(tables, n);
    s_close(&src);
    s_close(&dst);
    out->elapsed_ms = kl_now_mono_ms() - started;
    return rc;
}

/* --- recovery ------------------------------------------------------------ */

/* Whether to's schema or database exists. */
static int
s_target_exists(tenant_mover_t *self, const kl_tenant_place_t *to, bool *exists,
                kl_status_t *status)
{
    bool database = to->isolation == KL_ISOLATION_DATABASE;
    s_conn_t server = {0};
    s_conn_t *c = &self->lock;
    int rc = 0;
    if (database) {
        rc = s_open(self->prov, to->db_server, NULL, "target server", &server,
                    status);
        c = &server;
    }
    PGresult *res = NULL;
    if (rc == 0)
        rc =
            s_run(c,
                  database ? "SELECT count(*) FROM pg_catalog.pg_database"
                             " WHERE datname = $1"
                           : "SELECT count(*) FROM pg_catalog.pg_namespace"
                             " WHERE nspname = $1",
                  1, (const char *const[]){database ? to->db_name : to->schema},
                  &res, status);
    if (rc == 0) {
        *exists = strcmp(PQgetvalue(res, 0, 0), "0") != 0;
        PQclear(res);
    }
    s_close(&server);
    return rc;
}

int
tenant_mover_check(tenant_mover_t *self, const kl_tenant_place_t *from,
                   const kl_tenant_place_t *to, tenant_mover_result_t *out,
                   kl_status_t *status)
{
    memset(out, 0, sizeof *out);
    int64_t started = kl_now_mono_ms();
    int rc = s_check_move(self, from, to, status);
    if (rc == 0)
        rc = s_need_lock(self, status);
    bool exists = false;
    if (rc == 0)
        rc = s_target_exists(self, to, &exists, status);
    if (rc == 0 && !exists)
        rc = kl_status_set(status, KL_NOT_FOUND,
                           "the %s of tenant %s does not exist",
                           kl_isolation_name(to->isolation), self->tenant_id);
    s_conn_t src = {0}, dst = {0};
    s_table_t *tables = NULL;
    size_t n = 0;
    if (rc == 0)
        rc = s_open(self->prov, "main", NULL, "source", &src, status);
    if (rc == 0)
        rc = s_tables(&src, from->schema, to->schema, &tables, &n, status);
    if (rc == 0 && to->isolation == KL_ISOLATION_DATABASE)
        rc = s_open(self->prov, to->db_server, to->db_name, "target", &dst,
                    status);
    if (rc == 0)
        rc = s_verify(&src, to->isolation == KL_ISOLATION_SCHEMA ? &src : &dst,
                      self->tenant_id, tables, n, out, status);
    if (rc < 0)
        out->n_counts = 0;
    s_tables_free(tables, n);
    s_close(&src);
    s_close(&dst);
    out->elapsed_ms = kl_now_mono_ms() - started;
    return rc;
}

int
tenant_mover_undo(tenant_mover_t *self, const kl_tenant_place_t *from,
                  const kl_tenant_place_t *to, kl_status_t *status)
{
    int rc = s_check_move(self, from, to, status);
    if (rc == 0)
        rc = s_need_lock(self, status);
    /* The fence first: from then on a stale placement of the target is
     * refused, and the old placement is accepted again. */
    if (rc == 0)
        rc = s_fence_set(self, s_fence_of(from), status);
    if (rc == 0)
        rc = tenant_provision_drop(self->prov, to, status);
    return rc;
}

int
tenant_mover_remove(tenant_mover_t *self, const kl_tenant_place_t *old,
                    kl_status_t *status)
{
    int rc = s_check_place(self, old, status);
    if (rc == 0)
        rc = s_need_lock(self, status);
    s_conn_t src = {0};
    s_table_t *tables = NULL;
    size_t n = 0;
    if (rc == 0 && old->isolation == KL_ISOLATION_ROW) {
        rc = s_open(self->prov, "main", NULL, "source", &src, status);
        if (rc == 0)
            rc = s_tables(&src, old->schema, old->schema, &tables, &n, status);
    }
    if (rc == 0)
        rc = s_remove(self, old, &src, tables, n, status);
    s_tables_free(tables, n);
    s_close(&src);
    return rc;
}
