/*
 * migration_apply: target connections, history, drift and one migration.
 */
#include "migration_apply.h"
#include "migration_apply_int.h"

#include "kl_alloc.h"
#include "kl_rpc.h"
#include "kl_tenant_db.h"

#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Notices ("relation already exists, skipping") are not errors: drop. */
static void
s_quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* Drops a history read ahead with the hold that nobody asked for. */
static void
s_forget_prefetch(migration_apply_t *self)
{
    PQclear(self->pre_hist);
    self->pre_hist = NULL;
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
        /* The server gives back what the session held. */
        PQfinish(self->db);
        self->db = NULL;
        self->db_name[0] = '\0';
        self->db_ready = false;
        if (self->locked && self->locked_on_db)
            self->locked = false;
    }
}

void
migration_apply_destroy(migration_apply_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    migration_apply_t *self = *self_p;
    migration_apply_release(self);
    s_forget_prefetch(self);
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
        rc = migration_apply__fail(c, res, status);
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
        self->main_fence = false;
        /* The server gave back what the lost session held. */
        self->held[0] = '\0';
        if (self->locked && !self->locked_on_db)
            self->locked = false;
        s_forget_prefetch(self);
    }
    if (!self->main)
        self->main = s_connect(self->owner_url, status);
    return self->main;
}

/* The connection for t, (re)connecting as needed. */
PGconn *
migration_apply__conn(migration_apply_t *self, const migration_target_t *t,
                      bool prepare, kl_status_t *status)
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
int
migration_apply__fail(PGconn *c, const PGresult *res, kl_status_t *status)
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

int
migration_apply__ok(const PGresult *res)
{
    ExecStatusType s = PQresultStatus(res);
    return s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
}

/* The query that reads t's history, with t's schema and target quoted as
 * literals by libpq (so that it can go in one string with others). NULL
 * when libpq cannot quote (out of memory). Caller frees. */
static char *
s_history_sql(PGconn *c, const migration_target_t *t)
{
    char *schema = PQescapeLiteral(c, t->schema, strlen(t->schema));
    char *target = PQescapeLiteral(c, t->target, strlen(t->target));
    char *sql = NULL;
    if (schema && target)
        sql = kl_asprintf(
            "SELECT (SELECT count(*) FROM pg_catalog.pg_namespace"
            "        WHERE nspname = %s),"
            "       version, checksum, duration_ms"
            " FROM (SELECT 1) one LEFT JOIN kowloon_migration.history h"
            " ON h.target = %s ORDER BY version;",
            schema, target);
    PQfreemem(schema);
    PQfreemem(target);
    return sql;
}

/* Reads the history out of res (s_history_sql's answer; cleared here). */
static int
s_history_parse(PGresult *res, const migration_target_t *t,
                migration_applied_t **out, size_t *n, kl_status_t *status)
{
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
migration_apply_history(migration_apply_t *self, const migration_target_t *t,
                        migration_applied_t **out, size_t *n,
                        kl_status_t *status)
{
    *out = NULL;
    *n = 0;
    PGconn *c = migration_apply__conn(self, t, false, status);
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
        if (!migration_apply__ok(r)) {
            int rc = migration_apply__fail(c, r, status);
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
    if (!migration_apply__ok(res)) {
        int rc = migration_apply__fail(c, res, status);
        PQclear(res);
        return rc;
    }
    return s_history_parse(res, t, out, n, status);
}

/* Sends sql (one or more statements, simple query protocol) and collects
 * every result in order: *out is malloc'd (caller PQclear()s each and
 * frees it). The server stops at the first failing statement, whose error
 * is then the last result. Returns the number of results, or -1 when sql
 * could not be sent (the connection's message says why). COPY, which a
 * migration has no business doing, is ended with an error. */
int
migration_apply__send_all(PGconn *c, const char *sql, PGresult ***out)
{
    *out = NULL;
    if (!PQsendQuery(c, sql))
        return -1;
    size_t n = 0, cap = 8;
    PGresult **all = kl_calloc(cap, sizeof *all);
    PGresult *res;
    while ((res = PQgetResult(c)) != NULL) {
        ExecStatusType rs = PQresultStatus(res);
        if (rs == PGRES_COPY_IN) {
            PQclear(res);
            PQputCopyEnd(c, "COPY is not allowed in a migration");
            continue;
        }
        if (rs == PGRES_COPY_OUT) {
            PQclear(res);
            char *buf = NULL;
            while (PQgetCopyData(c, &buf, 0) > 0)
                PQfreemem(buf);
            continue;
        }
        if (n == cap) {
            cap *= 2;
            all = kl_realloc(all, cap * sizeof *all);
        }
        all[n++] = res;
        if (PQstatus(c) != CONNECTION_OK)
            break;
    }
    *out = all;
    return (int)n;
}

void
migration_apply__clear_all(PGresult **all, int n)
{
    for (int i = 0; i < n; i++)
        PQclear(all[i]);
    free(all);
}

/* --- locks -------------------------------------------------------------- */

int
migration_apply_hold_tenant(migration_apply_t *self,
                            const migration_target_t *t, char *isolation,
                            size_t size, kl_status_t *status)
{
    isolation[0] = '\0';
    s_forget_prefetch(self);
    PGconn *c = s_main(self, status);
    if (!c)
        return -(int)status->code;
    bool ahead = !t->db_name[0] && self->main_ready;
    char *tenant = PQescapeLiteral(c, t->tenant_id, strlen(t->tenant_id));
    char *target = PQescapeLiteral(c, t->target, strlen(t->target));
    char *hist = ahead ? s_history_sql(c, t) : NULL;
    if (!tenant || !target || (ahead && !hist)) {
        int rc = migration_apply__fail(c, NULL, status);
        PQfreemem(tenant);
        PQfreemem(target);
        free(hist);
        return rc;
    }
    /* One round trip. The move lock first; only when it is held, the
     * target's apply lock, when the target lives on this connection and
     * its history table is known (migration_apply_lock's work, done ahead:
     * the subquery is evaluated once, before the CASE). Then, each with a
     * snapshot of its own taken after the locks, the fence (once it is
     * known to exist) and the history. */
    bool fence = self->main_fence;
    char *fence_sql =
        fence ? kl_asprintf("SELECT coalesce((SELECT isolation "
                            "FROM " KL_TENANT_FENCE_TABLE " WHERE tenant_id ="
                            " %s::uuid), 'row');",
                            tenant)
              : NULL;
    char *lock_sql =
        ahead ? kl_asprintf(", CASE WHEN h.held THEN pg_catalog.pg_advisory_"
                            "lock(" MIGRATION_APPLY_KEY_SQL("%s") ")::text"
                                                                  " END",
                            target)
              : NULL;
    char *sql = kl_asprintf(
        "SELECT h.held, h.fence%s FROM (SELECT"
        " pg_catalog.pg_try_advisory_lock_shared(" KL_TENANT_LOCK_SQL(
            "%s") ") AS held,"
                  " pg_catalog.to_regclass('" KL_TENANT_FENCE_TABLE
                  "') IS NOT NULL AS fence OFFSET 0) h;%s%s",
        lock_sql ? lock_sql : "", tenant, fence_sql ? fence_sql : "",
        hist ? hist : "");
    free(fence_sql);
    free(lock_sql);
    free(hist);
    PQfreemem(tenant);
    PQfreemem(target);
    PGresult **r = NULL;
    int n = migration_apply__send_all(c, sql, &r);
    free(sql);
    int want = 1 + (fence ? 1 : 0) + (ahead ? 1 : 0);
    bool held = false, has_fence = false;
    if (n >= 1 && migration_apply__ok(r[0]) && PQntuples(r[0]) == 1) {
        held = strcmp(PQgetvalue(r[0], 0, 0), "t") == 0;
        has_fence = strcmp(PQgetvalue(r[0], 0, 1), "t") == 0;
    }
    if (held) {
        snprintf(self->held, sizeof self->held, "%s", t->tenant_id);
        if (ahead) {
            self->locked = true;
            self->locked_on_db = false;
            snprintf(self->locked_target, sizeof self->locked_target, "%s",
                     t->target);
        }
    }
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++)
        if (!migration_apply__ok(r[i]))
            rc = migration_apply__fail(c, r[i], status);
    if (rc == 0 && n != want)
        rc = migration_apply__fail(c, NULL, status);
    if (rc < 0 || !held) {
        migration_apply__clear_all(r, n);
        migration_apply_unlock(self);
        return rc < 0 ? rc : 0;
    }
    if (fence) {
        snprintf(isolation, size, "%s", PQgetvalue(r[1], 0, 0));
    } else if (has_fence) {
        /* The first time on this connection: read under the lock, no move
         * is under way and the record is settled. */
        self->main_fence = true;
        const char *p[] = {t->tenant_id};
        PGresult *res = PQexecParams(
            c,
            "SELECT coalesce((SELECT isolation FROM " KL_TENANT_FENCE_TABLE
            " WHERE tenant_id = $1::uuid), 'row')",
            1, NULL, p, NULL, NULL, 0);
        if (!migration_apply__ok(res)) {
            rc = migration_apply__fail(c, res, status);
            PQclear(res);
            migration_apply__clear_all(r, n);
            migration_apply_unlock(self);
            return rc;
        }
        snprintf(isolation, size, "%s", PQgetvalue(res, 0, 0));
        PQclear(res);
    }
    if (ahead) {
        self->pre_hist = r[n - 1];
        r[n - 1] = NULL;
    }
    migration_apply__clear_all(r, n);
    return 1;
}

int
migration_apply_lock(migration_apply_t *self, const migration_target_t *t,
                     migration_applied_t **out, size_t *n, kl_status_t *status)
{
    *out = NULL;
    *n = 0;
    if (self->locked && strcmp(self->locked_target, t->target) == 0) {
        /* Taken (and read) in the hold's round trip: never twice, an
         * advisory lock counts how often it was taken. */
        PGresult *res = self->pre_hist;
        self->pre_hist = NULL;
        if (res)
            return s_history_parse(res, t, out, n, status);
        return migration_apply_history(self, t, out, n, status);
    }
    s_forget_prefetch(self);
    PGconn *c = migration_apply__conn(self, t, false, status);
    if (!c)
        return -(int)status->code;
    bool on_db = t->db_name[0] != '\0';
    bool ready = on_db ? self->db_ready : self->main_ready;
    char *target = PQescapeLiteral(c, t->target, strlen(t->target));
    char *hist = target && ready ? s_history_sql(c, t) : NULL;
    if (!target || (ready && !hist)) {
        int rc = migration_apply__fail(c, NULL, status);
        PQfreemem(target);
        return rc;
    }
    /* The lock, then the history with a snapshot taken after it. The
     * first time on a connection (history table not known yet) the
     * history is read as migration_apply_history reads it. */
    char *sql = kl_asprintf(
        "SELECT pg_catalog.pg_advisory_lock(" MIGRATION_APPLY_KEY_SQL(
            "%s") ");%s",
        target, hist ? hist : "");
    PQfreemem(target);
    free(hist);
    PGresult **r = NULL;
    int nr = migration_apply__send_all(c, sql, &r);
    free(sql);
    if (nr >= 1 && migration_apply__ok(r[0])) {
        self->locked = true;
        self->locked_on_db = on_db;
        snprintf(self->locked_target, sizeof self->locked_target, "%s",
                 t->target);
    }
    int rc = 0;
    for (int i = 0; i < nr && rc == 0; i++)
        if (!migration_apply__ok(r[i]))
            rc = migration_apply__fail(c, r[i], status);
    if (rc == 0 && nr != (ready ? 2 : 1))
        rc = migration_apply__fail(c, NULL, status);
    if (rc == 0 && ready) {
        PGresult *res = r[1];
        r[1] = NULL;
        rc = s_history_parse(res, t, out, n, status);
    } else if (rc == 0) {
        rc = migration_apply_history(self, t, out, n, status);
    }
    migration_apply__clear_all(r, nr);
    return rc;
}

void
migration_apply__unlocked(migration_apply_t *self, bool apply_lock, bool tenant)
{
    if (apply_lock)
        self->locked = false;
    if (tenant)
        self->held[0] = '\0';
}

void
migration_apply_unlock(migration_apply_t *self)
{
    s_forget_prefetch(self);
    /* A lost connection took its locks with it (s_main, release). */
    PGconn *m =
        self->main && PQstatus(self->main) == CONNECTION_OK ? self->main : NULL;
    PGconn *d =
        self->db && PQstatus(self->db) == CONNECTION_OK ? self->db : NULL;
    if (self->locked) {
        PGconn *c = self->locked_on_db ? d : m;
        char *target = c ? PQescapeLiteral(c, self->locked_target,
                                           strlen(self->locked_target))
                         : NULL;
        char *tenant = c == m && m && self->held[0]
                           ? PQescapeLiteral(m, self->held, strlen(self->held))
                           : NULL;
        if (target) {
            /* Both in one round trip when both are on main. */
            char *also =
                tenant ? kl_asprintf(", "
                                     "pg_catalog.pg_advisory_unlock_"
                                     "shared(" KL_TENANT_LOCK_SQL("%s") ")",
                                     tenant)
                       : NULL;
            char *sql = kl_asprintf(
                "SELECT pg_catalog.pg_advisory_unlock(" MIGRATION_APPLY_KEY_SQL(
                    "%s") ")%s",
                target, also ? also : "");
            free(also);
            PQclear(PQexec(c, sql));
            free(sql);
            if (tenant)
                self->held[0] = '\0';
        }
        PQfreemem(target);
        PQfreemem(tenant);
        self->locked = false;
    }
    if (self->held[0] && m) {
        const char *p[] = {self->held};
        PQclear(PQexecParams(
            m,
            "SELECT pg_catalog.pg_advisory_unlock_shared(" KL_TENANT_LOCK_SQL(
                "$1::text") ")",
            1, NULL, p, NULL, NULL, 0));
    }
    self->held[0] = '\0';
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
    if (migration_apply__ok(res)) {
        PQclear(res);
        return 0;
    }
    int rc = migration_apply__fail(c, res, status);
    PQclear(res);
    if (PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) != PQTRANS_IDLE)
        PQclear(PQexec(c, "ROLLBACK"));
    return rc;
}

void
migration_apply__quoted_free(migration_apply__quoted_t *q)
{
    PQfreemem(q->ident);
    PQfreemem(q->lschema);
    PQfreemem(q->tenant);
    PQfreemem(q->target);
    PQfreemem(q->qrole);
    PQfreemem(q->lrole);
    memset(q, 0, sizeof *q);
}

/* Returns 0, or -1 when libpq could not quote (out of memory). */
int
migration_apply__quote(PGconn *c, const migration_target_t *t, const char *role,
                       migration_apply__quoted_t *q)
{
    q->ident = PQescapeIdentifier(c, t->schema, strlen(t->schema));
    q->lschema = PQescapeLiteral(c, t->schema, strlen(t->schema));
    q->tenant = PQescapeLiteral(c, t->tenant_id, strlen(t->tenant_id));
    q->target = PQescapeLiteral(c, t->target, strlen(t->target));
    q->qrole = role[0] ? PQescapeIdentifier(c, role, strlen(role)) : NULL;
    q->lrole = role[0] ? PQescapeLiteral(c, role, strlen(role)) : NULL;
    if (!q->ident || !q->lschema || !q->tenant || !q->target ||
        (role[0] && (!q->qrole || !q->lrole))) {
        migration_apply__quoted_free(q);
        return -1;
    }
    return 0;
}

/* With an application role, the tables a migration adds are granted to it
 * in the migration's transaction with the SQL kl_tenant_db_grant_schema
 * runs at provisioning (kl_tenant_db_grant_sql: USAGE on the schema;
 * SELECT, INSERT, UPDATE, DELETE on each table with row-level security
 * enabled and forced and USAGE on their owned sequences; nothing else). The
 * lock is kl_tenant_db_grant_schema's, taken first (before a file locks any
 * table) so that a concurrent provisioning grant on the same schema waits
 * instead of deadlocking. Both "" without a role; caller frees. */
char *
migration_apply__grant_lock_sql(const migration_apply__quoted_t *q)
{
    if (!q->qrole)
        return kl_strdup("");
    return kl_asprintf("SELECT pg_advisory_xact_lock(hashtext("
                       "'kowloon.migrate.' || %s));",
                       q->lschema);
}

char *
migration_apply__grant_sql(const migration_apply__quoted_t *q)
{
    if (!q->qrole)
        return kl_strdup("");
    return kl_tenant_db_grant_sql(q->ident, q->lschema, q->qrole, q->lrole);
}

/*
 * A "-- kowloon:no-transaction" file: its one statement is sent alone, so
 * PostgreSQL runs it outside any transaction block (CREATE INDEX
 * CONCURRENTLY refuses to run inside one), with search_path and
 * app.tenant_id set for the session around it and reset after (RESET ALL:
 * the values the connection started with), whatever happens. The history
 * row and the grants follow in a transaction of their own: a crash between
 * the two leaves the statement done and unrecorded, and the next run runs
 * it again (docs/migrations.md: such a file must be safe to run twice).
 * The apply lock (session-level) keeps other instances off the target all
 * along.
 */
/* After a no-transaction file: an invalid index in the target's schema is
 * what a failed CREATE INDEX CONCURRENTLY leaves, and an IF NOT EXISTS run
 * again skips it without a word. Refuses to record the file over one.
 * Returns 0, or -code with status naming the indexes. */
static int
s_check_indexes(PGconn *c, const migration_target_t *t,
                const migration_file_t *file,
                const migration_apply__quoted_t *q, kl_status_t *status)
{
    char *sql = kl_asprintf(
        "SELECT string_agg(quote_ident(x.relname), ', ' ORDER BY x.relname)"
        " FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class x ON x.oid ="
        " i.indexrelid JOIN pg_catalog.pg_namespace n ON n.oid ="
        " x.relnamespace WHERE n.nspname = %s AND NOT i.indisvalid",
        q->lschema);
    PGresult *res = PQexec(c, sql);
    free(sql);
    int rc = 0;
    if (!migration_apply__ok(res))
        rc = migration_apply__fail(c, res, status);
    else if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
        rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                           "%s ran, but schema %s has an invalid index: %s "
                           "(left by a CREATE INDEX CONCURRENTLY that "
                           "failed; drop it with DROP INDEX CONCURRENTLY "
                           "and retry)",
                           file->file_name, t->schema, PQgetvalue(res, 0, 0));
    PQclear(res);
    return rc;
}

static int
s_apply_outside(PGconn *c, const migration_target_t *t,
                const migration_file_t *file,
                const migration_apply__quoted_t *q, const char *name,
                const char *sum, int64_t *duration_ms, kl_status_t *status)
{
    int shared = strcmp(t->isolation, "row") == 0;
    char *scope = kl_asprintf("%s%s%s"
                              "SET search_path TO %s;"
                              "SELECT set_config('app.tenant_id', %s, false)",
                              shared ? "CREATE SCHEMA IF NOT EXISTS " : "",
                              shared ? q->ident : "", shared ? ";" : "",
                              q->ident, q->tenant);
    int64_t t0 = kl_now_mono_ms();
    int rc = s_exec(c, scope, status);
    free(scope);
    if (rc == 0)
        rc = s_exec(c, file->sql, status);
    int64_t took = kl_now_mono_ms() - t0;
    if (rc == 0 && PQtransactionStatus(c) != PQTRANS_IDLE) {
        PQclear(PQexec(c, "ROLLBACK"));
        rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                           "%s left a transaction open", file->file_name);
    }
    if (PQstatus(c) == CONNECTION_OK)
        PQclear(PQexec(c, "RESET ALL"));
    if (rc == 0)
        rc = s_check_indexes(c, t, file, q, status);
    if (rc < 0)
        return rc;
    char *lock = migration_apply__grant_lock_sql(q),
         *grant = migration_apply__grant_sql(q);
    char *record = kl_asprintf(
        "BEGIN;%s%s"
        "INSERT INTO kowloon_migration.history (target, version, name,"
        " checksum, duration_ms) VALUES (%s, %d, %s, %s, %lld);"
        "COMMIT",
        lock, grant, q->target, file->version, name, sum, (long long)took);
    free(lock);
    free(grant);
    rc = s_exec(c, record, status);
    free(record);
    *duration_ms = kl_now_mono_ms() - t0;
    return rc;
}

int
migration_apply_one(migration_apply_t *self, const migration_target_t *t,
                    const migration_file_t *file, int64_t *duration_ms,
                    kl_status_t *status)
{
    *duration_ms = 0;
    PGconn *c = migration_apply__conn(self, t, true, status);
    if (!c)
        return -(int)status->code;
    int64_t t0 = kl_now_mono_ms();
    /* Identifiers and literals are quoted by libpq; the names come from
     * the tenant id and the configured shared schema anyway. */
    migration_apply__quoted_t q = {0};
    char *name = PQescapeLiteral(c, file->file_name, strlen(file->file_name));
    char *sum = PQescapeLiteral(c, file->checksum, strlen(file->checksum));
    if (migration_apply__quote(c, t, self->app_role, &q) < 0 || !name || !sum) {
        int rc = migration_apply__fail(c, NULL, status);
        migration_apply__quoted_free(&q);
        PQfreemem(name);
        PQfreemem(sum);
        return rc;
    }
    if (file->no_transaction) {
        int rc =
            s_apply_outside(c, t, file, &q, name, sum, duration_ms, status);
        migration_apply__quoted_free(&q);
        PQfreemem(name);
        PQfreemem(sum);
        return rc;
    }
    char *lock = migration_apply__grant_lock_sql(&q),
         *grant = migration_apply__grant_sql(&q);
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
        lock, shared ? "CREATE SCHEMA IF NOT EXISTS " : "",
        shared ? q.ident : "", shared ? ";" : "", q.ident, q.tenant, file->sql);
    char *record = kl_asprintf(
        "%s"
        "INSERT INTO kowloon_migration.history (target, version, name,"
        " checksum, duration_ms) VALUES (%s, %d, %s, %s,"
        " (extract(epoch FROM clock_timestamp() - now()) * 1000)::bigint);"
        "COMMIT",
        grant, q.target, file->version, name, sum);
    free(lock);
    free(grant);
    migration_apply__quoted_free(&q);
    PQfreemem(name);
    PQfreemem(sum);

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
