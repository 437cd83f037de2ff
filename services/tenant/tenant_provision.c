/*
 * tenant_provision: CREATE SCHEMA / CREATE DATABASE for new and moved
 * tenants, their grants and their fence entry.
 */
#include "tenant_provision.h"

#include "kl_alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tenant_provision {
    char **names; /* server names, owned */
    char **urls;  /* owner URLs, owned; never logged */
    size_t n;
    char *app_role;      /* owned */
    char *shared_schema; /* owned */
    tenant_provision_migrate_fn migrate;
    void *migrate_arg;
};

tenant_provision_t *
tenant_provision_new(const tenant_provision_opts_t *opts, kl_status_t *status)
{
    if (!opts->app_role || !*opts->app_role) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "provisioning needs the application role");
        return NULL;
    }
    tenant_provision_t *self = kl_calloc(1, sizeof *self);
    self->names = kl_calloc(opts->n_owner_servers + 1, sizeof(char *));
    self->urls = kl_calloc(opts->n_owner_servers + 1, sizeof(char *));
    for (size_t i = 0; i < opts->n_owner_servers; i++) {
        const char *e = opts->owner_servers[i];
        const char *eq = strchr(e, '=');
        if (!eq || eq == e || !eq[1]) {
            kl_status_set(status, KL_INVALID_ARGUMENT,
                          "owner server entry %zu is not name=url", i + 1);
            tenant_provision_destroy(&self);
            return NULL;
        }
        self->names[self->n] = kl_strndup(e, (size_t)(eq - e));
        self->urls[self->n] = kl_strdup(eq + 1);
        self->n++;
    }
    self->app_role = kl_strdup(opts->app_role);
    self->shared_schema = kl_strdup(opts->shared_schema && *opts->shared_schema
                                        ? opts->shared_schema
                                        : "workspace");
    self->migrate = opts->migrate;
    self->migrate_arg = opts->migrate_arg;
    return self;
}

void
tenant_provision_destroy(tenant_provision_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tenant_provision_t *self = *self_p;
    for (size_t i = 0; i < self->n; i++) {
        free(self->names[i]);
        free(self->urls[i]);
    }
    free(self->names);
    free(self->urls);
    free(self->app_role);
    free(self->shared_schema);
    free(self);
    *self_p = NULL;
}

const char *
tenant_provision_shared_schema(const tenant_provision_t *self)
{
    return self->shared_schema;
}

bool
tenant_provision_has_server(const tenant_provision_t *self, const char *name)
{
    for (size_t i = 0; i < self->n; i++)
        if (strcmp(self->names[i], name) == 0)
            return true;
    return false;
}

size_t
tenant_provision_servers(const tenant_provision_t *self,
                         const char *const **names)
{
    *names = (const char *const *)self->names;
    return self->n;
}

kl_pg_t *
tenant_provision_owner(const tenant_provision_t *self, const char *server,
                       const char *db_name, kl_status_t *status)
{
    for (size_t i = 0; i < self->n; i++)
        if (strcmp(self->names[i], server) == 0) {
            char *ci = kl_tenant_db_conninfo(self->urls[i], db_name, status);
            if (!ci)
                return NULL;
            kl_pg_t *pg = kl_pg_new(ci);
            free(ci);
            return pg;
        }
    kl_status_set(status, KL_NOT_FOUND,
                  "database server \"%s\" has no owner credentials "
                  "(KOWLOON_TENANT_DB_OWNER_SERVERS)",
                  server);
    return NULL;
}

int
tenant_provision_prepare(const tenant_provision_t *self, kl_status_t *status)
{
    kl_pg_t *owner = tenant_provision_owner(self, "main", NULL, status);
    if (!owner)
        return -(int)status->code;
    int rc = kl_tenant_db_prepare_main(owner, self->app_role, status);
    kl_pg_destroy(&owner);
    return rc;
}

/* Runs sql (with identifiers already quoted) as server's owner on db. */
static int
s_owner_exec(const tenant_provision_t *self, const char *server, const char *db,
             const char *sql, kl_status_t *status)
{
    kl_pg_t *owner = tenant_provision_owner(self, server, db, status);
    if (!owner)
        return -(int)status->code;
    int rc = kl_pg_exec(owner, sql, status);
    kl_pg_destroy(&owner);
    return rc;
}

/* PQescapeIdentifier through a live owner connection of server. */
static char *
s_ident(const tenant_provision_t *self, const char *server, const char *name,
        kl_status_t *status)
{
    kl_pg_t *owner = tenant_provision_owner(self, server, NULL, status);
    if (!owner)
        return NULL;
    PGconn *conn = kl_pg_conn(owner, status);
    char *q = conn ? PQescapeIdentifier(conn, name, strlen(name)) : NULL;
    char *out = q ? kl_strdup(q) : NULL;
    if (conn && !q)
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "PQescapeIdentifier() failed: %s", PQerrorMessage(conn));
    PQfreemem(q);
    kl_pg_destroy(&owner);
    return out;
}

int
tenant_provision_fence(const tenant_provision_t *self, const char *tenant_id,
                       const char *isolation, kl_status_t *status)
{
    kl_pg_t *owner = tenant_provision_owner(self, "main", NULL, status);
    if (!owner)
        return -(int)status->code;
    PGresult *res;
    if (isolation)
        res =
            kl_pg_query(owner, "tenant_fence_set",
                        "INSERT INTO " KL_TENANT_FENCE_TABLE
                        " (tenant_id, isolation) VALUES ($1, $2)"
                        " ON CONFLICT (tenant_id) DO UPDATE SET"
                        " isolation = EXCLUDED.isolation, moved_at = now()",
                        2, (const char *const[]){tenant_id, isolation}, status);
    else
        res = kl_pg_query(owner, "tenant_fence_clear",
                          "DELETE FROM " KL_TENANT_FENCE_TABLE
                          " WHERE tenant_id = $1",
                          1, (const char *const[]){tenant_id}, status);
    int rc = res ? 0 : -(int)status->code;
    PQclear(res);
    kl_pg_destroy(&owner);
    return rc;
}

/* The server and database holding place's schema. */
static void
s_where(const kl_tenant_place_t *place, const char **server, const char **db)
{
    bool database = place->isolation == KL_ISOLATION_DATABASE;
    *server = database ? place->db_server : "main";
    *db = database ? place->db_name : NULL;
}

int
tenant_provision_migrate(const tenant_provision_t *self,
                         const kl_tenant_place_t *place, kl_status_t *status)
{
    int rc = 0;
    if (self->migrate)
        rc = self->migrate(self->migrate_arg, place, status);
    if (rc < 0)
        return rc;
    const char *server, *db;
    s_where(place, &server, &db);
    kl_pg_t *owner = tenant_provision_owner(self, server, db, status);
    if (!owner)
        return -(int)status->code;
    rc =
        kl_tenant_db_grant_schema(owner, place->schema, self->app_role, status);
    kl_pg_destroy(&owner);
    return rc;
}

int
tenant_provision_create(const tenant_provision_t *self,
                        const kl_tenant_place_t *place, kl_status_t *status)
{
    int rc = kl_tenant_place_check(place, status);
    if (rc < 0)
        return rc;
    if (place->isolation == KL_ISOLATION_ROW)
        return 0;
    const char *server, *db;
    s_where(place, &server, &db);
    if (place->isolation == KL_ISOLATION_DATABASE) {
        char *qd = s_ident(self, server, place->db_name, status);
        char *qr = qd ? s_ident(self, server, self->app_role, status) : NULL;
        if (!qd || !qr) {
            free(qd);
            return -(int)status->code;
        }
        /* CREATE DATABASE cannot run inside a transaction block: one
         * statement, then the privileges. */
        char *sql = kl_asprintf("CREATE DATABASE %s", qd);
        rc = s_owner_exec(self, server, NULL, sql, status);
        free(sql);
        if (rc == 0) {
            sql = kl_asprintf("REVOKE ALL ON DATABASE %s FROM PUBLIC;"
                              "GRANT CONNECT ON DATABASE %s TO %s",
                              qd, qd, qr);
            rc = s_owner_exec(self, server, NULL, sql, status);
            free(sql);
        }
        free(qd);
        free(qr);
        if (rc < 0) {
            if (status->code != KL_ALREADY_EXISTS) {
                kl_status_t ignored;
                tenant_provision_drop(self, place, &ignored);
            }
            return rc;
        }
    }
    kl_pg_t *owner = tenant_provision_owner(self, server, db, status);
    rc = owner ? kl_tenant_db_grant_schema(owner, place->schema, self->app_role,
                                           status)
               : -(int)status->code;
    kl_pg_destroy(&owner);
    if (rc == 0)
        rc = tenant_provision_migrate(self, place, status);
    if (rc < 0) {
        kl_status_t ignored;
        tenant_provision_drop(self, place, &ignored);
    }
    return rc;
}

int
tenant_provision_drop(const tenant_provision_t *self,
                      const kl_tenant_place_t *place, kl_status_t *status)
{
    int rc = kl_tenant_place_check(place, status);
    if (rc < 0 || place->isolation == KL_ISOLATION_ROW)
        return rc;
    const char *server, *db;
    s_where(place, &server, &db);
    bool database = place->isolation == KL_ISOLATION_DATABASE;
    char *q = s_ident(self, server, database ? place->db_name : place->schema,
                      status);
    if (!q)
        return -(int)status->code;
    /* A schema's migration history lives beside it in the main database
     * (kowloon_migration.history, target "tenant:<id>"), not in it: it goes
     * with the schema, or a later provisioning of the same tenant (a move
     * retried after a failure) would find every version "applied" to an
     * empty schema. The id is a checked uuid (kl_tenant_place_check). */
    char *sql =
        database ? kl_asprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", q)
                 : kl_asprintf("DROP SCHEMA IF EXISTS %s CASCADE;"
                               "DO $kl$ BEGIN"
                               " IF pg_catalog.to_regclass("
                               "'kowloon_migration.history') IS NOT NULL THEN"
                               " DELETE FROM kowloon_migration.history"
                               " WHERE target = 'tenant:%s';"
                               " END IF; END $kl$",
                               q, place->tenant_id);
    rc = s_owner_exec(self, server, NULL, sql, status);
    free(sql);
    free(q);
    return rc;
}
