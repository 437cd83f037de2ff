/*
 * tenant_mover: copy, verify, switch, clean up — under the tenant's move
 * lock. Uses libpq directly on owner connections (COPY streaming, several
 * statements per transaction on two servers at once).
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

int
tenant_mover_run(const tenant_provision_t *prov, const kl_tenant_place_t *from,
                 const kl_tenant_place_t *to, int64_t lock_timeout_ms,
                 tenant_mover_switch_fn switch_fn, void *switch_arg,
                 tenant_mover_result_t *out, kl_status_t *status)
{
    memset(out, 0, sizeof *out);
    int64_t started = kl_now_mono_ms();
    if (kl_tenant_place_check(from, status) < 0 ||
        kl_tenant_place_check(to, status) < 0)
        return -(int)status->code;
    if (strcmp(from->tenant_id, to->tenant_id) != 0 ||
        !s_supported(from->isolation, to->isolation))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "cannot move a tenant from %s to %s: want row "
                             "-> schema, row -> database or schema -> "
                             "database",
                             kl_isolation_name(from->isolation),
                             kl_isolation_name(to->isolation));
    const char *id = from->tenant_id;
    s_conn_t lock = {0}, src = {0}, dst = {0};
    s_table_t *tables = NULL;
    size_t n = 0;
    bool target_made = false;

    /* 1. The move lock: waits for writes already under way. */
    int rc = s_open(prov, "main", NULL, "main", &lock, status);
    if (rc == 0) {
        char *sql = kl_asprintf(
            "SET lock_timeout = %lld",
            (long long)(lock_timeout_ms > 0 ? lock_timeout_ms : 30000));
        rc = s_run(&lock, sql, 0, NULL, NULL, status);
        free(sql);
    }
    if (rc == 0)
        rc = s_run(&lock,
                   "SELECT pg_catalog.pg_advisory_lock(" KL_TENANT_LOCK_SQL(
                       "$1::text") ")",
                   1, (const char *const[]){id}, NULL, status);
    /* 2. The target. */
    if (rc == 0) {
        rc = tenant_provision_create(prov, to, status);
        target_made = rc == 0;
    }
    /* 3. The copy. Sources are always in the main database. */
    if (rc == 0)
        rc = s_open(prov, "main", NULL, "source", &src, status);
    if (rc == 0)
        rc = s_tables(&src, from->schema, to->schema, &tables, &n, status);
    if (rc == 0 && to->isolation == KL_ISOLATION_SCHEMA) {
        rc = s_copy_local(&src, id, tables, n, status);
    } else if (rc == 0) {
        rc = s_open(prov, to->db_server, to->db_name, "target", &dst, status);
        if (rc == 0)
            rc = s_copy_remote(&src, &dst, id, tables, n, status);
    }
    /* 4. Verification, table by table. */
    s_conn_t *tgt = to->isolation == KL_ISOLATION_SCHEMA ? &src : &dst;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        int64_t a = -1, b = -2;
        rc = s_count(&src, id, tables[i].src, &a, status);
        if (rc == 0)
            rc = s_count(tgt, id, tables[i].dst, &b, status);
        if (rc == 0 && a != b)
            rc = kl_status_set(status, KL_ABORTED,
                               "table %s: %lld rows in the source, %lld in "
                               "the target",
                               tables[i].name, (long long)a, (long long)b);
        if (rc == 0) {
            snprintf(out->counts[i].table, sizeof out->counts[i].table, "%s",
                     tables[i].name);
            out->counts[i].rows = a;
            out->n_counts = i + 1;
        }
    }
    /* 5. The switch: the fence first, so a stale placement is refused
     * from the moment the record changes. */
    if (rc == 0)
        rc = tenant_provision_fence(prov, id, kl_isolation_name(to->isolation),
                                    status);
    if (rc == 0) {
        rc = switch_fn(switch_arg, to, status);
        if (rc < 0) {
            kl_status_t ignored;
            tenant_provision_fence(prov, id,
                                   from->isolation == KL_ISOLATION_ROW
                                       ? NULL
                                       : kl_isolation_name(from->isolation),
                                   &ignored);
        }
    }
    if (rc < 0) {
        out->n_counts = 0;
        s_close(&dst);
        if (target_made) {
            kl_status_t ignored;
            tenant_provision_drop(prov, to, &ignored);
        }
    } else {
        /* 6. The old copy. */
        kl_status_t cst;
        int crc = from->isolation == KL_ISOLATION_ROW
                      ? s_delete_rows(&src, id, tables, n, &cst)
                      : tenant_provision_drop(prov, from, &cst);
        if (crc < 0)
            snprintf(out->cleanup_error, sizeof out->cleanup_error, "%s",
                     cst.message);
    }
    /* 7. Ending the lock's session releases it. */
    s_tables_free(tables, n);
    s_close(&src);
    s_close(&dst);
    s_close(&lock);
    out->elapsed_ms = kl_now_mono_ms() - started;
    return rc;
}
