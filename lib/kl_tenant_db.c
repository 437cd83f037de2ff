/*
 * kl_tenant_db: tenant placement and the tenant-scoped transaction, for
 * the row, schema and database isolation models.
 *
 * Every transaction sets both its search_path (the tenant's schema, or the
 * shared one) and app.tenant_id with set_config(..., true), so the same
 * unqualified SQL runs in every model, and the row-level security policies
 * that every product table carries in every model still apply.
 */
#include "kl_tenant_db.h"

#include "kl_alloc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One configured database server. */
typedef struct {
    char *name; /* "main", "db2", ... */
    char *url;  /* libpq URL of the application role on that server */
} s_server_t;

/* One open connection to a tenant database. */
typedef struct {
    char server[KL_TENANT_NAME_MAX]; /* server name */
    char db_name[KL_TENANT_NAME_MAX];
    kl_pg_t *pg;
    uint64_t used; /* tick of its last use, for LRU eviction */
} s_open_t;

struct kl_tenant_db {
    kl_pg_t *main;       /* the main database: row and schema tenants */
    char *main_url;      /* its URL, also the default server "main" */
    s_server_t *servers; /* KOWLOON_TENANT_DB_SERVERS entries */
    size_t n_servers;
    s_open_t *open; /* tenant-database connections, at most max_open */
    size_t n_open;
    size_t max_open;
    uint64_t tick; /* advances at every tenant-database use */
};

static const char *const s_names[] = {"row", "schema", "database"};

int
kl_isolation_parse(const char *name, kl_isolation_t *out, kl_status_t *status)
{
    for (size_t i = 0; name && i < sizeof s_names / sizeof s_names[0]; i++)
        if (strcmp(name, s_names[i]) == 0) {
            *out = (kl_isolation_t)i;
            return 0;
        }
    return kl_status_set(status, KL_INVALID_ARGUMENT,
                         "isolation must be row, schema or database");
}

const char *
kl_isolation_name(kl_isolation_t isolation)
{
    if ((unsigned)isolation < sizeof s_names / sizeof s_names[0])
        return s_names[isolation];
    return "unknown";
}

/* A lowercase canonical uuid: 8-4-4-4-12 hex digits. */
static bool
s_uuid_valid(const char *s)
{
    if (!s || strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!((s[i] >= '0' && s[i] <= '9') ||
                     (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

/* The 32 hex digits of a valid uuid. */
static void
s_hex(const char *uuid, char out[33])
{
    size_t n = 0;
    for (const char *p = uuid; *p; p++)
        if (*p != '-')
            out[n++] = *p;
    out[n] = '\0';
}

/* A server or shared-schema name: [a-z0-9_-], 1..63 bytes, starting with a
 * letter. Only configuration supplies them, but they still never carry
 * anything that would need quoting to be read back. */
static bool
s_name_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n >= KL_TENANT_NAME_MAX || !(s[0] >= 'a' && s[0] <= 'z'))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') ||
              s[i] == '_' || s[i] == '-'))
            return false;
    return true;
}

int
kl_tenant_place(const char *tenant_id, kl_isolation_t isolation,
                const char *shared_schema, const char *db_server,
                kl_tenant_place_t *out, kl_status_t *status)
{
    memset(out, 0, sizeof *out);
    if (!s_uuid_valid(tenant_id))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "tenant id must be a lowercase uuid");
    if (!s_name_valid(shared_schema))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "shared schema must be a lowercase name");
    char hex[33];
    s_hex(tenant_id, hex);
    snprintf(out->tenant_id, sizeof out->tenant_id, "%s", tenant_id);
    out->isolation = isolation;
    switch (isolation) {
    case KL_ISOLATION_ROW:
        snprintf(out->schema, sizeof out->schema, "%s", shared_schema);
        return 0;
    case KL_ISOLATION_SCHEMA:
        snprintf(out->schema, sizeof out->schema, "t_%s", hex);
        return 0;
    case KL_ISOLATION_DATABASE:
        if (!s_name_valid(db_server))
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "database tenants need a server name");
        snprintf(out->schema, sizeof out->schema, "%s", shared_schema);
        snprintf(out->db_server, sizeof out->db_server, "%s", db_server);
        snprintf(out->db_name, sizeof out->db_name, "kowloon_t_%s", hex);
        return 0;
    }
    return kl_status_set(status, KL_INVALID_ARGUMENT,
                         "isolation must be row, schema or database");
}

int
kl_tenant_place_check(const kl_tenant_place_t *place, kl_status_t *status)
{
    kl_tenant_place_t want;
    const char *shared =
        place->isolation == KL_ISOLATION_SCHEMA ? "x" : place->schema;
    int rc = kl_tenant_place(place->tenant_id, place->isolation, shared,
                             place->db_server, &want, status);
    if (rc < 0)
        return rc;
    /* Whatever filled *place (a cache, a reply, a test), the names must be
     * the derived ones: nothing else ever reaches SQL. */
    if (strcmp(want.schema, place->schema) != 0 ||
        strcmp(want.db_name, place->db_name) != 0 ||
        strcmp(want.db_server, place->db_server) != 0)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "tenant placement names do not match tenant %s",
                             place->tenant_id);
    return 0;
}

/* --- servers ------------------------------------------------------------ */

int
kl_tenant_server_find(const char *const *servers, size_t n_servers,
                      const char *name, const char **url, size_t *url_len,
                      kl_status_t *status)
{
    size_t name_len = name ? strlen(name) : 0;
    for (size_t i = 0; i < n_servers; i++) {
        const char *eq = strchr(servers[i], '=');
        if (!eq)
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "database server entry %zu is not name=url",
                                 i + 1);
        if ((size_t)(eq - servers[i]) == name_len &&
            strncmp(servers[i], name, name_len) == 0) {
            *url = eq + 1;
            *url_len = strlen(eq + 1);
            return 0;
        }
    }
    return kl_status_set(status, KL_NOT_FOUND, "database server \"%s\" unknown",
                         name ? name : "");
}

char *
kl_tenant_db_conninfo(const char *server_url, const char *db_name,
                      kl_status_t *status)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(server_url, &err);
    if (!opts) {
        /* libpq's message may quote the string, password included. */
        PQfreemem(err);
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "database server URL is malformed");
        return NULL;
    }
    size_t cap = 256, len = 0;
    char *out = kl_calloc(1, cap);
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        const char *v = o->val;
        if (db_name && strcmp(o->keyword, "dbname") == 0)
            v = db_name;
        if (!v)
            continue;
        while (len + strlen(o->keyword) + 2 * strlen(v) + 8 > cap) {
            cap *= 2;
            out = kl_realloc(out, cap);
        }
        /* keyword='value' with ' and \ escaped: libpq's own syntax. */
        len += (size_t)snprintf(out + len, cap - len, "%s='", o->keyword);
        for (const char *p = v; *p; p++) {
            if (*p == '\'' || *p == '\\')
                out[len++] = '\\';
            out[len++] = *p;
        }
        out[len++] = '\'';
        out[len++] = ' ';
        out[len] = '\0';
    }
    PQconninfoFree(opts);
    return out;
}

kl_tenant_db_t *
kl_tenant_db_new(const char *main_url, const char *const *servers,
                 size_t n_servers, size_t max_open, kl_status_t *status)
{
    if (!main_url || !*main_url) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "tenant databases need the main database URL");
        return NULL;
    }
    kl_tenant_db_t *self = kl_calloc(1, sizeof *self);
    self->main = kl_pg_new(main_url);
    self->main_url = kl_strdup(main_url);
    self->max_open = max_open ? max_open : 1;
    self->open = kl_calloc(self->max_open, sizeof *self->open);
    self->servers = kl_calloc(n_servers + 1, sizeof *self->servers);
    for (size_t i = 0; i < n_servers; i++) {
        const char *eq = strchr(servers[i], '=');
        char *name =
            eq ? kl_strndup(servers[i], (size_t)(eq - servers[i])) : NULL;
        if (!name || !s_name_valid(name) || !eq[1]) {
            kl_status_set(status, KL_INVALID_ARGUMENT,
                          "database server entry %zu must be name=url with a "
                          "lowercase name",
                          i + 1);
            free(name);
            kl_tenant_db_destroy(&self);
            return NULL;
        }
        for (size_t j = 0; j < self->n_servers; j++)
            if (strcmp(self->servers[j].name, name) == 0) {
                kl_status_set(status, KL_INVALID_ARGUMENT,
                              "database server \"%s\" listed twice", name);
                free(name);
                kl_tenant_db_destroy(&self);
                return NULL;
            }
        self->servers[self->n_servers].name = name;
        self->servers[self->n_servers].url = kl_strdup(eq + 1);
        self->n_servers++;
    }
    return self;
}

void
kl_tenant_db_destroy(kl_tenant_db_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kl_tenant_db_t *self = *self_p;
    for (size_t i = 0; i < self->n_open; i++)
        kl_pg_destroy(&self->open[i].pg);
    for (size_t i = 0; i < self->n_servers; i++) {
        free(self->servers[i].name);
        free(self->servers[i].url);
    }
    free(self->servers);
    free(self->open);
    kl_pg_destroy(&self->main);
    free(self->main_url);
    free(self);
    *self_p = NULL;
}

const char *
kl_tenant_db_server_url(const kl_tenant_db_t *self, const char *name)
{
    for (size_t i = 0; i < self->n_servers; i++)
        if (strcmp(self->servers[i].name, name) == 0)
            return self->servers[i].url;
    /* "main" is the main database's server unless listed explicitly. */
    if (strcmp(name, "main") == 0)
        return self->main_url;
    return NULL;
}

kl_pg_t *
kl_tenant_db_main(kl_tenant_db_t *self)
{
    return self->main;
}

size_t
kl_tenant_db_open_count(const kl_tenant_db_t *self)
{
    return self->n_open;
}

/* The connection to place's database, opened (evicting the least recently
 * used one when full) if needed. */
static kl_pg_t *
s_tenant_conn(kl_tenant_db_t *self, const kl_tenant_place_t *place,
              kl_status_t *status)
{
    self->tick++;
    for (size_t i = 0; i < self->n_open; i++)
        if (strcmp(self->open[i].server, place->db_server) == 0 &&
            strcmp(self->open[i].db_name, place->db_name) == 0) {
            self->open[i].used = self->tick;
            return self->open[i].pg;
        }
    const char *url = kl_tenant_db_server_url(self, place->db_server);
    if (!url) {
        kl_status_set(status, KL_NOT_FOUND, "database server \"%s\" unknown",
                      place->db_server);
        return NULL;
    }
    char *conninfo = kl_tenant_db_conninfo(url, place->db_name, status);
    if (!conninfo)
        return NULL;
    size_t slot = self->n_open;
    if (slot == self->max_open) {
        slot = 0;
        for (size_t i = 1; i < self->n_open; i++)
            if (self->open[i].used < self->open[slot].used)
                slot = i;
        kl_pg_destroy(&self->open[slot].pg);
    } else {
        self->n_open++;
    }
    s_open_t *o = &self->open[slot];
    snprintf(o->server, sizeof o->server, "%s", place->db_server);
    snprintf(o->db_name, sizeof o->db_name, "%s", place->db_name);
    o->pg = kl_pg_new(conninfo);
    o->used = self->tick;
    free(conninfo);
    return o->pg;
}

kl_pg_t *
kl_tenant_tx_begin(kl_tenant_db_t *self, const kl_tenant_place_t *place,
                   kl_status_t *status)
{
    return kl_tenant_tx_begin_ex(self, place, 0, status);
}

/* The scope statement of a transaction on place: search_path and
 * app.tenant_id, transaction-local; on the main database also the move
 * lock (writes) and the fence. params[] (4 entries) backs the statement's
 * parameters and must outlive it. */
static kl_pg_stmt_t
s_scope_stmt(const kl_tenant_place_t *place, unsigned flags,
             const char *params[4])
{
    /* The server quotes the schema (quote_ident), and both settings are
     * transaction-local: COMMIT or ROLLBACK restores the session's values,
     * so the next transaction on this connection starts unscoped. */
    params[0] = place->schema;
    params[1] = place->tenant_id;
    params[2] = kl_isolation_name(place->isolation);
    params[3] = (flags & KL_TENANT_TX_READ_ONLY) ? "f" : "t";
    if (place->isolation != KL_ISOLATION_DATABASE)
        /* Tenants move only away from the main database, so only its
         * placements can be stale or fenced by a mover. */
        return (kl_pg_stmt_t){
            "kl_tenant_tx_scope_main",
            "SELECT pg_catalog.set_config('search_path',"
            " pg_catalog.quote_ident($1), true),"
            " pg_catalog.set_config('app.tenant_id', $2, true),"
            " CASE WHEN $4::boolean THEN pg_catalog."
            "pg_try_advisory_xact_lock_shared(" KL_TENANT_LOCK_SQL(
                "$2") ") ELSE true END,"
                      " EXISTS (SELECT 1 FROM " KL_TENANT_FENCE_TABLE
                      " m WHERE m.tenant_id = $2::uuid AND m.isolation <> $3)",
            4, params};
    return (kl_pg_stmt_t){"kl_tenant_tx_scope",
                          "SELECT pg_catalog.set_config('search_path',"
                          " pg_catalog.quote_ident($1), true),"
                          " pg_catalog.set_config('app.tenant_id', $2, true)",
                          2, params};
}

/* The scope statement's answer: 0, or UNAVAILABLE when a mover holds the
 * tenant (writes) or the placement is stale. */
static int
s_scope_check(const kl_tenant_place_t *place, const PGresult *res,
              kl_status_t *status)
{
    if (place->isolation == KL_ISOLATION_DATABASE)
        return 0;
    if (strcmp(PQgetvalue(res, 0, 2), "t") != 0)
        return kl_status_set(status, KL_UNAVAILABLE,
                             "tenant is being moved, retry");
    if (strcmp(PQgetvalue(res, 0, 3), "t") == 0)
        return kl_status_set(status, KL_UNAVAILABLE,
                             "tenant placement changed, retry");
    return 0;
}

/* The connection for place: the main database, or the tenant's. */
static kl_pg_t *
s_place_conn(kl_tenant_db_t *self, const kl_tenant_place_t *place,
             kl_status_t *status)
{
    if (kl_tenant_place_check(place, status) < 0)
        return NULL;
    if (place->isolation != KL_ISOLATION_DATABASE)
        return self->main;
    return s_tenant_conn(self, place, status);
}

kl_pg_t *
kl_tenant_tx_begin_ex(kl_tenant_db_t *self, const kl_tenant_place_t *place,
                      unsigned flags, kl_status_t *status)
{
    if (flags & KL_TENANT_TX_SNAPSHOT)
        flags |= KL_TENANT_TX_READ_ONLY;
    kl_pg_t *pg = s_place_conn(self, place, status);
    if (!pg)
        return NULL;
    if (kl_pg_begin(pg, status) < 0)
        return NULL;
    /* Before any query: the snapshot is taken by the first one. */
    if ((flags & KL_TENANT_TX_SNAPSHOT) &&
        kl_pg_exec(pg,
                   "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                   status) < 0) {
        kl_pg_rollback(pg);
        return NULL;
    }
    const char *params[4];
    kl_pg_stmt_t scope = s_scope_stmt(place, flags, params);
    PGresult *res = kl_pg_query(pg, scope.name, scope.sql, scope.nparams,
                                scope.params, status);
    if (!res) {
        kl_pg_rollback(pg);
        return NULL;
    }
    int rc = s_scope_check(place, res, status);
    PQclear(res);
    if (rc < 0) {
        kl_pg_rollback(pg);
        return NULL;
    }
    return pg;
}

PGresult *
kl_tenant_read(kl_tenant_db_t *self, const kl_tenant_place_t *place,
               const char *name, const char *sql, int nparams,
               const char *const *params, kl_status_t *status)
{
    kl_status_t local;
    if (!status)
        status = &local;
    kl_pg_t *pg = s_place_conn(self, place, status);
    if (!pg)
        return NULL;
    /* BEGIN READ ONLY, the scope, the query and COMMIT go together: the
     * scope's answer (the fence) is read only after the query has run, so
     * a refused placement's rows are thrown away. The transaction is read
     * only: running the query on a stale placement costs the read and
     * nothing else. */
    const char *scope_params[4];
    const kl_pg_stmt_t stmts[] = {
        {"kl_tenant_read_begin", "BEGIN READ ONLY", 0, NULL},
        s_scope_stmt(place, KL_TENANT_TX_READ_ONLY, scope_params),
        {name, sql, nparams, params},
        {"kl_tenant_read_commit", "COMMIT", 0, NULL},
    };
    PGresult *res[4];
    if (kl_pg_pipeline(pg, stmts, 4, res, status) < 0) {
        /* The fence's answer comes first, as when the scope runs before
         * the query: on a stale placement the query may fail for that
         * very reason (the tenant's old schema dropped after a move). */
        if (res[1])
            s_scope_check(place, res[1], status);
        for (size_t i = 0; i < 4; i++)
            PQclear(res[i]);
        return NULL;
    }
    /* kl_pg_pipeline succeeded, so every statement did: COMMIT ended the
     * transaction and with it the scope. */
    int rc = s_scope_check(place, res[1], status);
    PQclear(res[0]);
    PQclear(res[1]);
    PQclear(res[3]);
    if (rc < 0) {
        PQclear(res[2]);
        return NULL;
    }
    return res[2];
}

/* Runs sql as owner in one transaction under the advisory lock
 * kl_pg_migrate takes for lock_name: concurrent CREATE ... IF NOT EXISTS
 * and GRANTs on one object can fail with "tuple concurrently updated". */
static int
s_locked_exec(kl_pg_t *owner, const char *lock_name, const char *sql,
              kl_status_t *status)
{
    int rc = kl_pg_begin(owner, status);
    if (rc < 0)
        return rc;
    PGresult *res = kl_pg_query(
        owner, "kl_tenant_prepare_lock",
        "SELECT pg_advisory_xact_lock(hashtext('kowloon.migrate.' || $1))", 1,
        (const char *const[]){lock_name}, status);
    rc = res ? 0 : -(int)status->code;
    PQclear(res);
    if (rc == 0)
        rc = kl_pg_exec(owner, sql, status);
    if (rc < 0)
        kl_pg_rollback(owner);
    else
        rc = kl_pg_commit(owner, status);
    return rc;
}

/* PQescapeIdentifier of name into *out (PQfreemem). */
static int
s_quote(kl_pg_t *owner, const char *name, char **out, kl_status_t *status)
{
    PGconn *conn = kl_pg_conn(owner, status);
    if (!conn)
        return -(int)status->code;
    *out = PQescapeIdentifier(conn, name, strlen(name));
    if (!*out)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "PQescapeIdentifier() failed: %s",
                             PQerrorMessage(conn));
    return 0;
}

int
kl_tenant_db_prepare_main(kl_pg_t *owner, const char *app_role,
                          kl_status_t *status)
{
    char *q = NULL;
    int rc = s_quote(owner, app_role, &q, status);
    if (rc < 0)
        return rc;
    char *sql =
        kl_asprintf("CREATE SCHEMA IF NOT EXISTS " KL_TENANT_FENCE_SCHEMA ";"
                    "CREATE TABLE IF NOT EXISTS " KL_TENANT_FENCE_TABLE " ("
                    " tenant_id uuid PRIMARY KEY,"
                    " isolation text NOT NULL,"
                    " moved_at timestamptz NOT NULL DEFAULT now());"
                    "GRANT USAGE ON SCHEMA " KL_TENANT_FENCE_SCHEMA " TO %s;"
                    "GRANT SELECT ON " KL_TENANT_FENCE_TABLE " TO %s",
                    q, q);
    PQfreemem(q);
    rc = s_locked_exec(owner, KL_TENANT_FENCE_SCHEMA, sql, status);
    free(sql);
    return rc;
}

char *
kl_tenant_db_grant_sql(const char *qschema, const char *lschema,
                       const char *qrole, const char *lrole)
{
    /* Only tables with row-level security enabled and forced: a table
     * without (a migration ledger, a forgotten policy) stays out of the
     * application role's reach rather than open to every tenant. Their
     * serial/identity sequences (pg_depend 'a'/'i') get USAGE, which is
     * nextval and currval; not SELECT (last_value would tell one tenant
     * how many rows the others of a shared table made). format('%I') is
     * the server's own identifier quoting. */
    return kl_asprintf(
        "GRANT USAGE ON SCHEMA %s TO %s;"
        "DO $kl$ DECLARE r record; BEGIN"
        " FOR r IN SELECT c.relname FROM pg_catalog.pg_class c"
        "  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        "  WHERE n.nspname = %s AND c.relkind IN ('r', 'p')"
        "  AND c.relrowsecurity AND c.relforcerowsecurity LOOP"
        "  EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE"
        " ON %%I.%%I TO %%I', %s, r.relname, %s);"
        " END LOOP;"
        " FOR r IN SELECT s.relname FROM pg_catalog.pg_class s"
        "  JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace"
        "  JOIN pg_catalog.pg_depend d ON d.classid ="
        " 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = s.oid"
        "  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass"
        "  AND d.deptype IN ('a', 'i')"
        "  JOIN pg_catalog.pg_class t ON t.oid = d.refobjid"
        "  WHERE n.nspname = %s AND s.relkind = 'S'"
        "  AND t.relrowsecurity AND t.relforcerowsecurity LOOP"
        "  EXECUTE pg_catalog.format('GRANT USAGE ON SEQUENCE %%I.%%I TO %%I',"
        " %s, r.relname, %s);"
        " END LOOP; END $kl$;",
        qschema, qrole, lschema, lschema, lrole, lschema, lschema, lrole);
}

int
kl_tenant_db_grant_schema(kl_pg_t *owner, const char *schema,
                          const char *app_role, kl_status_t *status)
{
    char *qs = NULL, *qr = NULL;
    int rc = s_quote(owner, schema, &qs, status);
    if (rc == 0)
        rc = s_quote(owner, app_role, &qr, status);
    PGconn *conn = rc == 0 ? kl_pg_conn(owner, status) : NULL;
    char *ls = conn ? PQescapeLiteral(conn, schema, strlen(schema)) : NULL;
    char *lr = conn ? PQescapeLiteral(conn, app_role, strlen(app_role)) : NULL;
    if (rc == 0 && (!ls || !lr))
        rc = kl_status_set(status, KL_INVALID_ARGUMENT,
                           "PQescapeLiteral() failed: %s",
                           conn ? PQerrorMessage(conn) : "no connection");
    if (rc == 0) {
        char *grant = kl_tenant_db_grant_sql(qs, ls, qr, lr);
        char *sql = kl_asprintf("CREATE SCHEMA IF NOT EXISTS %s;%s", qs, grant);
        free(grant);
        rc = s_locked_exec(owner, schema, sql, status);
        free(sql);
    }
    PQfreemem(ls);
    PQfreemem(lr);
    PQfreemem(qs);
    PQfreemem(qr);
    return rc;
}

int
kl_tenant_tx_commit(kl_tenant_db_t *self, kl_pg_t *pg, kl_status_t *status)
{
    (void)self;
    return kl_pg_commit(pg, status);
}

void
kl_tenant_tx_rollback(kl_tenant_db_t *self, kl_pg_t *pg)
{
    (void)self;
    if (pg)
        kl_pg_rollback(pg);
}
