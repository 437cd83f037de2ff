/*
 * migration_apply: target connections, history, drift and one migration.
 */
#include "migration_apply.h"

#include "kl_alloc.h"
#include "kl_rpc.h"
#include "kl_tenant_db.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct migration_apply {
    char *owner_url;  /* conninfo of the owner role, main database */
    char **servers;   /* "name=url" of the owner role per server (owned) */
    size_t n_servers; /* entries in servers */
    PGconn *main;     /* connection for row and schema targets */
    PGconn *db;       /* connection to one tenant database, or NULL */
    char db_name[MIGRATION_NAME_MAX]; /* the database db is connected to */
    bool main_ready;                  /* the history table exists on main */
    bool db_ready;                    /* ... and on db */
    char *app_role;                   /* granted on new tables; "": none */
};

/* Notices ("relation already exists, skipping") are not errors: drop. */
static void
s_quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

migration_apply_t *
migration_apply_new(const char *owner_url, const char *const *owner_servers,
                    size_t n_owner_servers, kl_status_t *status)
{
    char *check =
        kl_tenant_db_conninfo(owner_url ? owner_url : "", NULL, status);
    if (!check)
        return NULL;
    free(check);
    for (size_t i = 0; i < n_owner_servers; i++) {
        const char *url = NULL;
        size_t len = 0;
        const char *eq = strchr(owner_servers[i], '=');
        if (!eq || eq == owner_servers[i]) {
            kl_status_set(status, KL_INVALID_ARGUMENT,
                          "owner server entry %zu is not name=url", i + 1);
            return NULL;
        }
        char name[MIGRATION_NAME_MAX];
        snprintf(name, sizeof name, "%.*s", (int)(eq - owner_servers[i]),
                 owner_servers[i]);
        if (kl_tenant_server_find(owner_servers, n_owner_servers, name, &url,
                                  &len, status) < 0)
            return NULL;
        check = kl_tenant_db_conninfo(url, NULL, status);
        if (!check)
            return NULL;
        free(check);
    }
    migration_apply_t *self = kl_calloc(1, sizeof *self);
    self->owner_url = kl_strdup(owner_url);
    self->servers = kl_calloc(n_owner_servers + 1, sizeof *self->servers);
    for (size_t i = 0; i < n_owner_servers; i++)
        self->servers[i] = kl_strdup(owner_servers[i]);
    self->n_servers = n_owner_servers;
    self->app_role = kl_strdup("");
    return self;
}

void
migration_apply_set_app_role(migration_apply_t *self, const char *app_role)
{
    free(self->app_role);
    self->app_role = kl_strdup(app_role ? app_role : "");
}

void
migration_apply_release(migration_apply_t *self)
{
    if (self->db) {
        PQfinish(self->db);
        self->db = NULL;
        self->db_name[0] = '\0';
        self->db_ready = false;
    }
}

void
migration_apply_destroy(migration_apply_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    migration_apply_t *self = *self_p;
    migration_apply_release(self);
    if (self->main)
        PQfinish(self->main);
    for (size_t i = 0; i < self->n_servers; i++)
        free(self->servers[i]);
    free(self->servers);
    free(self->owner_url);
    free(self->app_role);
    free(self);
    *self_p = NULL;
}

static PGconn *
s_connect(const char *conninfo, kl_status_t *status)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        char msg[KL_STATUS_MESSAGE_MAX];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
        msg[strcspn(msg, "\n")] = '\0';
        kl_status_set(status, KL_UNAVAILABLE, "cannot connect: %s", msg);
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, s_quiet, NULL);
    return c;
}

static int s_fail(PGconn *c, const PGresult *res, kl_status_t *status);

/* The history of every target in one database: kowloon_migration.history,
 * made once per connection. The advisory lock keeps concurrent workers
 * from racing on CREATE ... IF NOT EXISTS. */
static int
s_history_table(PGconn *c, kl_status_t *status)
{
    PGresult *res =
        PQexec(c, "BEGIN;"
                  "SELECT pg_advisory_xact_lock(hashtextextended("
                  "'kowloon_migration.history', 0));"
                  "CREATE SCHEMA IF NOT EXISTS kowloon_migration;"
                  "CREATE TABLE IF NOT EXISTS kowloon_migration.history ("
                  " target text NOT NULL,"
                  " version integer NOT NULL,"
                  " name text NOT NULL,"
                  " checksum text NOT NULL,"
                  " applied_at timestamptz NOT NULL DEFAULT now(),"
                  " duration_ms bigint NOT NULL DEFAULT 0,"
                  " PRIMARY KEY (target, version));"
                  "COMMIT");
    int rc = 0;
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        rc = s_fail(c, res, status);
        if (PQstatus(c) == CONNECTION_OK &&
            PQtransactionStatus(c) != PQTRANS_IDLE)
            PQclear(PQexec(c, "ROLLBACK"));
    }
    PQclear(res);
    return rc;
}

/* The main database's connection, (re)connecting as needed. */
static PGconn *
s_main(migration_apply_t *self, kl_status_t *status)
{
    if (self->main && PQstatus(self->main) != CONNECTION_OK) {
        PQfinish(self->main);
        self->main = NULL;
        self->main_ready = false;
    }
    if (!self->main)
        self->main = s_connect(self->owner_url, status);
    return self->main;
}

/* The connection for t, (re)connecting as needed. */
static PGconn *
s_conn(migration_apply_t *self, const migration_target_t *t, bool prepare,
       kl_status_t *status)
{
    if (!t->db_name[0]) {
        s_main(self, status);
        if (self->main && prepare && !self->main_ready) {
            if (s_history_table(self->main, status) < 0)
                return NULL;
            self->main_ready = true;
        }
        return self->main;
    }
    /* The database's server: its owner URL from the configured list, the
     * main server's owner URL as the fallback for "main". */
    char server_url[4096];
    const char *url = NULL;
    size_t url_len = 0;
    kl_status_t st;
    const char *server = t->db_server[0] ? t->db_server : "main";
    if (kl_tenant_server_find((const char *const *)self->servers,
                              self->n_servers, server, &url, &url_len,
                              &st) == 0 &&
        url_len < sizeof server_url) {
        memcpy(server_url, url, url_len);
        server_url[url_len] = '\0';
    } else if (strcmp(server, "main") == 0) {
        snprintf(server_url, sizeof server_url, "%s", self->owner_url);
    } else {
        kl_status_set(status, KL_UNAVAILABLE,
                      "database server \"%s\" of %s is not in "
                      "KOWLOON_TENANT_DB_OWNER_SERVERS",
                      server, t->db_name);
        return NULL;
    }
    if (self->db && (strcmp(self->db_name, t->db_name) != 0 ||
                     PQstatus(self->db) != CONNECTION_OK))
        migration_apply_release(self);
    if (!self->db) {
        char *ci = kl_tenant_db_conninfo(server_url, t->db_name, status);
        if (!ci)
            return NULL;
        self->db = s_connect(ci, status);
        free(ci);
        if (!self->db) {
            /* Name the database: libpq's text alone may not. */
            char msg[KL_STATUS_MESSAGE_MAX];
            snprintf(msg, sizeof msg, "%s", status->message);
            kl_status_set(status, KL_UNAVAILABLE, "database %s: %s", t->db_name,
                          msg);
            return NULL;
        }
        snprintf(self->db_name, sizeof self->db_name, "%s", t->db_name);
    }
    if (prepare && !self->db_ready) {
        if (s_history_table(self->db, status) < 0)
            return NULL;
        self->db_ready = true;
    }
    return self->db;
}

/* Fills status from a failed result (or the connection's state). */
static int
s_fail(PGconn *c, const PGresult *res, kl_status_t *status)
{
    if (PQstatus(c) != CONNECTION_OK)
        return kl_status_set(status, KL_UNAVAILABLE, "connection lost: %s",
                             PQerrorMessage(c));
    const char *primary =
        res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (!primary) {
        char msg[KL_STATUS_MESSAGE_MAX];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
        msg[strcspn(msg, "\n")] = '\0';
        return kl_status_set(status, KL_INTERNAL, "%s", msg);
    }
    return kl_status_set(status, KL_FAILED_PRECONDITION, "%s (SQLSTATE %s)",
                         primary, state ? state : "?");
}

static int
s_ok(const PGresult *res)
{
    ExecStatusType s = PQresultStatus(res);
    return s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
}

int
migration_apply_history(migration_apply_t *self, const migration_target_t *t,
                        migration_applied_t **out, size_t *n,
                        kl_status_t *status)
{
    *out = NULL;
    *n = 0;
    PGconn *c = s_conn(self, t, false, status);
    if (!c)
        return -(int)status->code;
    bool *ready = t->db_name[0] ? &self->db_ready : &self->main_ready;
    const char *params[] = {t->schema, t->target};
    if (!*ready) {
        /* Reading must not create anything (Plan is a dry run): without
         * the history table, nothing was ever applied here. */
        PGresult *r = PQexecParams(
            c,
            "SELECT (SELECT count(*) FROM pg_catalog.pg_namespace"
            "        WHERE nspname = $1),"
            "       to_regclass('kowloon_migration.history') IS NOT NULL",
            1, NULL, params, NULL, NULL, 0);
        if (!s_ok(r)) {
            int rc = s_fail(c, r, status);
            PQclear(r);
            return rc;
        }
        int has_schema = atoi(PQgetvalue(r, 0, 0)) > 0;
        int has_table = strcmp(PQgetvalue(r, 0, 1), "t") == 0;
        PQclear(r);
        if (!has_schema && strcmp(t->isolation, "row") != 0)
            return kl_status_set(status, KL_NOT_FOUND,
                                 "schema %s does not exist: the tenant is "
                                 "not provisioned",
                                 t->schema);
        if (!has_table)
            return 0;
        *ready = true;
    }
    PGresult *res = PQexecParams(
        c,
        "SELECT (SELECT count(*) FROM pg_catalog.pg_namespace"
        "        WHERE nspname = $1),"
        "       version, checksum, duration_ms"
        " FROM (SELECT 1) one LEFT JOIN kowloon_migration.history h"
        " ON h.target = $2 ORDER BY version",
        2, NULL, params, NULL, NULL, 0);
    if (!s_ok(res)) {
        int rc = s_fail(c, res, status);
        PQclear(res);
        return rc;
    }
    int has_schema = atoi(PQgetvalue(res, 0, 0)) > 0;
    if (!has_schema && strcmp(t->isolation, "row") != 0) {
        PQclear(res);
        return kl_status_set(status, KL_NOT_FOUND,
                             "schema %s does not exist: the tenant is not "
                             "provisioned",
                             t->schema);
    }
    int rows = PQntuples(res);
    migration_applied_t *a = kl_calloc((size_t)rows + 1, sizeof *a);
    size_t n_a = 0;
    for (int r = 0; r < rows; r++) {
        if (PQgetisnull(res, r, 1))
            continue;
        a[n_a].version = atoi(PQgetvalue(res, r, 1));
        snprintf(a[n_a].checksum, sizeof a[n_a].checksum, "%s",
                 PQgetvalue(res, r, 2));
        a[n_a].duration_ms = strtoll(PQgetvalue(res, r, 3), NULL, 10);
        n_a++;
    }
    PQclear(res);
    if (n_a == 0) {
        free(a);
        return 0;
    }
    *out = a;
    *n = n_a;
    return 0;
}

int
migration_apply_hold_tenant(migration_apply_t *self, const char *tenant_id,
                            char *isolation, size_t size, kl_status_t *status)
{
    isolation[0] = '\0';
    PGconn *c = s_main(self, status);
    if (!c)
        return -(int)status->code;
    const char *p[] = {tenant_id};
    PGresult *res = PQexecParams(
        c,
        "SELECT pg_catalog.pg_try_advisory_lock_shared(" KL_TENANT_LOCK_SQL(
            "$1::text") "),"
                        " pg_catalog.to_regclass('" KL_TENANT_FENCE_TABLE
                        "') IS NOT NULL",
        1, NULL, p, NULL, NULL, 0);
    if (!s_ok(res)) {
        int rc = s_fail(c, res, status);
        PQclear(res);
        return rc;
    }
    bool held = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    bool fence = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
    PQclear(res);
    if (!held)
        return 0;
    if (!fence)
        return 1;
    /* Read under the lock: no move is under way, the record is settled. */
    res = PQexecParams(
        c,
        "SELECT coalesce((SELECT isolation FROM " KL_TENANT_FENCE_TABLE
        " WHERE tenant_id = $1::uuid), 'row')",
        1, NULL, p, NULL, NULL, 0);
    if (!s_ok(res)) {
        int rc = s_fail(c, res, status);
        PQclear(res);
        migration_apply_unhold_tenant(self, tenant_id);
        return rc;
    }
    snprintf(isolation, size, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return 1;
}

void
migration_apply_unhold_tenant(migration_apply_t *self, const char *tenant_id)
{
    /* A lost connection took the lock with it. */
    if (!self->main || PQstatus(self->main) != CONNECTION_OK)
        return;
    const char *p[] = {tenant_id};
    PQclear(PQexecParams(
        self->main,
        "SELECT pg_catalog.pg_advisory_unlock_shared(" KL_TENANT_LOCK_SQL(
            "$1::text") ")",
        1, NULL, p, NULL, NULL, 0));
}

bool
migration_apply_has(const migration_applied_t *applied, size_t n, int version)
{
    for (size_t i = 0; i < n; i++)
        if (applied[i].version == version)
            return true;
    return false;
}

int
migration_apply_check(const migration_files_t *files,
                      const migration_applied_t *applied, size_t n,
                      int *current, kl_status_t *status)
{
    *current = 0;
    for (size_t i = 0; i < n; i++) {
        const migration_applied_t *a = &applied[i];
        if (a->version > *current)
            *current = a->version;
        const migration_file_t *f = migration_files_get(files, a->version);
        if (!f)
            return kl_status_set(status, KL_FAILED_PRECONDITION,
                                 "V%04d is applied but its file is missing",
                                 a->version);
        if (strcmp(f->checksum, a->checksum) != 0)
            return kl_status_set(
                status, KL_FAILED_PRECONDITION,
                "checksum mismatch for V%04d (applied %.12s..., "
                "file %.12s...)",
                a->version, a->checksum, f->checksum);
    }
    return 0;
}

/* Runs sql; on error rolls the transaction back and fills status. */
static int
s_exec(PGconn *c, const char *sql, kl_status_t *status)
{
    PGresult *res = PQexec(c, sql);
    if (s_ok(res)) {
        PQclear(res);
        return 0;
    }
    int rc = s_fail(c, res, status);
    PQclear(res);
    if (PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) != PQTRANS_IDLE)
        PQclear(PQexec(c, "ROLLBACK"));
    return rc;
}

int
migration_apply_one(migration_apply_t *self, const migration_target_t *t,
                    const migration_file_t *file, int64_t *duration_ms,
                    kl_status_t *status)
{
    *duration_ms = 0;
    PGconn *c = s_conn(self, t, true, status);
    if (!c)
        return -(int)status->code;
    int64_t t0 = kl_now_mono_ms();
    /* Identifiers and literals are quoted by libpq; the names come from
     * the tenant id and the configured shared schema anyway. */
    const char *role = self->app_role;
    char *ident = PQescapeIdentifier(c, t->schema, strlen(t->schema));
    char *lschema = PQescapeLiteral(c, t->schema, strlen(t->schema));
    char *tenant = PQescapeLiteral(c, t->tenant_id, strlen(t->tenant_id));
    char *target = PQescapeLiteral(c, t->target, strlen(t->target));
    char *name = PQescapeLiteral(c, file->file_name, strlen(file->file_name));
    char *sum = PQescapeLiteral(c, file->checksum, strlen(file->checksum));
    char *qrole = role[0] ? PQescapeIdentifier(c, role, strlen(role)) : NULL;
    char *lrole = role[0] ? PQescapeLiteral(c, role, strlen(role)) : NULL;
    if (!ident || !lschema || !tenant || !target || !name || !sum ||
        (role[0] && (!qrole || !lrole))) {
        int rc = s_fail(c, NULL, status);
        PQfreemem(ident);
        PQfreemem(lschema);
        PQfreemem(tenant);
        PQfreemem(target);
        PQfreemem(name);
        PQfreemem(sum);
        PQfreemem(qrole);
        PQfreemem(lrole);
        return rc;
    }
    /* With an application role, the tables the file adds are granted to
     * it in the same transaction, exactly as kl_tenant_db_grant_schema
     * does at provisioning: USAGE on the schema, SELECT, INSERT, UPDATE,
     * DELETE on each table with row-level security enabled and forced,
     * nothing on any other. The lock is kl_tenant_db_grant_schema's, taken
     * first (before the file locks any table) so that a concurrent
     * provisioning grant on the same schema waits instead of deadlocking. */
    char *lock = NULL, *grant = NULL;
    if (role[0]) {
        lock = kl_asprintf("SELECT pg_advisory_xact_lock(hashtext("
                           "'kowloon.migrate.' || %s));",
                           lschema);
        grant = kl_asprintf(
            "GRANT USAGE ON SCHEMA %s TO %s;"
            "DO $kl$ DECLARE r record; BEGIN"
            " FOR r IN SELECT c.relname FROM pg_catalog.pg_class c"
            "  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            "  WHERE n.nspname = %s AND c.relkind IN ('r', 'p')"
            "  AND c.relrowsecurity AND c.relforcerowsecurity LOOP"
            "  EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE"
            " ON %%I.%%I TO %%I', %s, r.relname, %s);"
            " END LOOP; END $kl$;",
            ident, qrole, lschema, lschema, lrole);
    }
    /* The row model's shared schema is the service's to create; a schema
     * or database tenant is provisioned by the tenant service, and a
     * missing schema is an error (migration_apply_history says so).
     * The file goes in the same round trip as BEGIN: the server parses
     * the whole string before running any of it, so a syntax error runs
     * nothing, and any other error aborts the transaction. */
    int shared = strcmp(t->isolation, "row") == 0;
    char *begin = kl_asprintf(
        "BEGIN;"
        "%s"
        "%s%s%s"
        "SET LOCAL search_path TO %s;"
        "SELECT set_config('app.tenant_id', %s, true);\n"
        "%s\n;",
        lock ? lock : "", shared ? "CREATE SCHEMA IF NOT EXISTS " : "",
        shared ? ident : "", shared ? ";" : "", ident, tenant, file->sql);
    char *record = kl_asprintf(
        "%s"
        "INSERT INTO kowloon_migration.history (target, version, name,"
        " checksum, duration_ms) VALUES (%s, %d, %s, %s,"
        " (extract(epoch FROM clock_timestamp() - now()) * 1000)::bigint);"
        "COMMIT",
        grant ? grant : "", target, file->version, name, sum);
    free(lock);
    free(grant);
    PQfreemem(ident);
    PQfreemem(lschema);
    PQfreemem(tenant);
    PQfreemem(target);
    PQfreemem(name);
    PQfreemem(sum);
    PQfreemem(qrole);
    PQfreemem(lrole);

    int rc = s_exec(c, begin, status);
    if (rc == 0 && PQtransactionStatus(c) != PQTRANS_INTRANS) {
        /* The file ended the transaction itself (COMMIT, ROLLBACK): what
         * it did is outside our control, say so loudly. */
        if (PQtransactionStatus(c) != PQTRANS_IDLE)
            PQclear(PQexec(c, "ROLLBACK"));
        rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                           "%s ends the transaction itself: COMMIT and "
                           "ROLLBACK are not allowed in a migration",
                           file->file_name);
    }
    if (rc == 0)
        rc = s_exec(c, record, status);
    if (rc == 0 && PQtransactionStatus(c) != PQTRANS_IDLE) {
        PQclear(PQexec(c, "ROLLBACK"));
        rc = kl_status_set(status, KL_INTERNAL,
                           "COMMIT left a transaction "
                           "open");
    }
    free(begin);
    free(record);
    *duration_ms = kl_now_mono_ms() - t0;
    return rc;
}
