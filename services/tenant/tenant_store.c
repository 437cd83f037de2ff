/*
 * tenant_store: SQL of the tenant service. Every statement is prepared
 * once per connection (kl_pg_query) under a "tenant_" name.
 */
#include "tenant_store.h"

#include "kl_alloc.h"
#include "kl_tenant_db.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Schema "tenant". A deleted tenant keeps its row (Get still finds it) but
 * frees its subdomain: the unique index covers live tenants only. */
static const kl_pg_migration_t s_migrations[] = {
    {1, "CREATE TABLE tenant.tenants ("
        " id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
        " subdomain text NOT NULL,"
        " name text NOT NULL,"
        " plan text NOT NULL,"
        " status text NOT NULL CHECK (status IN"
        "  ('trialing', 'active', 'past_due', 'suspended', 'deleted')),"
        " isolation text NOT NULL CHECK (isolation IN"
        "  ('row', 'schema', 'database')),"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        " updated_at timestamptz NOT NULL DEFAULT now(),"
        " status_changed_at timestamptz NOT NULL DEFAULT now());"
        "CREATE UNIQUE INDEX tenants_subdomain_live ON tenant.tenants"
        " (subdomain) WHERE status <> 'deleted';"
        "CREATE INDEX tenants_created ON tenant.tenants (created_at, id);"
        "CREATE TABLE tenant.api_keys ("
        " id text PRIMARY KEY,"
        " tenant_id uuid NOT NULL REFERENCES tenant.tenants (id),"
        " name text NOT NULL DEFAULT '',"
        " secret_hash bytea NOT NULL,"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        " revoked_at timestamptz);"
        "CREATE INDEX api_keys_tenant ON tenant.api_keys"
        " (tenant_id, created_at)"},
    /* Placement (docs/isolation.md): the server of a database tenant
     * (a name from configuration, never connection info), its database
     * name (derived from the id), and whether a move is under way. */
    {2, "ALTER TABLE tenant.tenants"
        " ADD COLUMN db_server text NOT NULL DEFAULT '',"
        " ADD COLUMN db_name text NOT NULL DEFAULT '',"
        " ADD COLUMN moving boolean NOT NULL DEFAULT false;"
        "CREATE INDEX tenants_db_server ON tenant.tenants (db_server)"
        " WHERE isolation = 'database' AND status <> 'deleted'"},
    /* Moves that a dead process can leave unsettled (docs/isolation.md,
     * "Moves"): while moving, the target (model and server) so that a
     * recovery can finish or undo it; after the switch, the model whose
     * old copy is still to be removed. */
    {3, "ALTER TABLE tenant.tenants"
        " ADD COLUMN move_isolation text NOT NULL DEFAULT '',"
        " ADD COLUMN move_db_server text NOT NULL DEFAULT '',"
        " ADD COLUMN move_cleanup text NOT NULL DEFAULT '';"
        "CREATE INDEX tenants_unsettled ON tenant.tenants (created_at, id)"
        " WHERE moving OR move_cleanup <> ''"},
    /* Creation that a dead process can leave half done (docs/isolation.md,
     * "Creating a tenant"): a schema or database tenant is recorded
     * provisioning, invisible, until its schema or database is ready. */
    {4, "ALTER TABLE tenant.tenants"
        " ADD COLUMN provisioning boolean NOT NULL DEFAULT false;"
        "CREATE INDEX tenants_provisioning ON tenant.tenants (created_at, id)"
        " WHERE provisioning"},
};

int
tenant_store_migrate(kl_pg_t *pg, kl_status_t *status)
{
    return kl_pg_migrate(pg, "tenant", s_migrations,
                         sizeof s_migrations / sizeof s_migrations[0], status);
}

/* RFC 3339 UTC with milliseconds. */
#define S_TS(col)                                                              \
    "to_char(" col " AT TIME ZONE 'UTC', "                                     \
    "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

/* The columns of a tenant_row_t, in order. */
#define S_TENANT_COLS                                                                    \
    "id::text, subdomain, name, plan, status, isolation, " S_TS("created_at") ", " S_TS( \
        "updated_at") ", " S_TS("status_changed_at") ", (extract(epoch FROM "            \
                                                     "created_at) * 1000000)"            \
                                                     "::bigint, db_server, "             \
                                                     "db_name, moving, "                 \
                                                     "move_isolation, "                  \
                                                     "move_db_server, "                  \
                                                     "move_cleanup"

#define S_KEY_COLS "id, tenant_id::text, name, " S_TS("created_at")

static void
s_copy(char *dst, size_t size, const PGresult *res, int row, int col)
{
    snprintf(dst, size, "%s", PQgetvalue(res, row, col));
}

static void
s_tenant_from(const PGresult *res, int row, tenant_row_t *t)
{
    s_copy(t->id, sizeof t->id, res, row, 0);
    s_copy(t->subdomain, sizeof t->subdomain, res, row, 1);
    s_copy(t->name, sizeof t->name, res, row, 2);
    s_copy(t->plan, sizeof t->plan, res, row, 3);
    s_copy(t->status, sizeof t->status, res, row, 4);
    s_copy(t->isolation, sizeof t->isolation, res, row, 5);
    s_copy(t->created_at, sizeof t->created_at, res, row, 6);
    s_copy(t->updated_at, sizeof t->updated_at, res, row, 7);
    s_copy(t->status_changed_at, sizeof t->status_changed_at, res, row, 8);
    t->created_usec = strtoll(PQgetvalue(res, row, 9), NULL, 10);
    s_copy(t->db_server, sizeof t->db_server, res, row, 10);
    s_copy(t->db_name, sizeof t->db_name, res, row, 11);
    t->moving = strcmp(PQgetvalue(res, row, 12), "t") == 0;
    s_copy(t->move_isolation, sizeof t->move_isolation, res, row, 13);
    s_copy(t->move_db_server, sizeof t->move_db_server, res, row, 14);
    s_copy(t->move_cleanup, sizeof t->move_cleanup, res, row, 15);
}

static void
s_key_from(const PGresult *res, int row, tenant_key_row_t *k)
{
    s_copy(k->id, sizeof k->id, res, row, 0);
    s_copy(k->tenant_id, sizeof k->tenant_id, res, row, 1);
    s_copy(k->name, sizeof k->name, res, row, 2);
    s_copy(k->created_at, sizeof k->created_at, res, row, 3);
}

/* The first count rows of res into *rows (caller frees), *n; clears res. */
static void
s_tenant_rows(PGresult *res, size_t count, tenant_row_t **rows, size_t *n)
{
    *rows = kl_calloc(count ? count : 1, sizeof **rows);
    for (size_t i = 0; i < count; i++)
        s_tenant_from(res, (int)i, &(*rows)[i]);
    *n = count;
    PQclear(res);
}

static int
s_code(const kl_status_t *status)
{
    return -(int)status->code;
}

/* Inside a transaction: locks the tenant's row and refuses a missing or
 * deleted tenant. */
static int
s_lock_live(kl_pg_t *pg, const char *id, kl_status_t *status)
{
    const char *params[] = {id};
    PGresult *res = kl_pg_query(
        pg, "tenant_lock",
        "SELECT status FROM tenant.tenants WHERE id = $1 AND NOT provisioning"
        " FOR UPDATE",
        1, params, status);
    if (!res)
        return s_code(status);
    int rc = 0;
    if (PQntuples(res) == 0)
        rc = kl_status_set(status, KL_NOT_FOUND, "tenant %s not found", id);
    else if (strcmp(PQgetvalue(res, 0, 0), "deleted") == 0)
        rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                           "tenant %s is deleted", id);
    PQclear(res);
    return rc;
}

/* Outside a transaction: refuses a missing or deleted tenant. */
static int
s_check_live(kl_pg_t *pg, const char *id, kl_status_t *status)
{
    const char *params[] = {id};
    PGresult *res = kl_pg_query(
        pg, "tenant_status",
        "SELECT status FROM tenant.tenants WHERE id = $1 AND NOT provisioning",
        1, params, status);
    if (!res)
        return s_code(status);
    int rc = 0;
    if (PQntuples(res) == 0)
        rc = kl_status_set(status, KL_NOT_FOUND, "tenant %s not found", id);
    else if (strcmp(PQgetvalue(res, 0, 0), "deleted") == 0)
        rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                           "tenant %s is deleted", id);
    PQclear(res);
    return rc;
}

/* Ends a transaction: commit when rc is 0, else roll back. */
static int
s_finish(kl_pg_t *pg, int rc, kl_status_t *status)
{
    if (rc < 0) {
        kl_pg_rollback(pg);
        return rc;
    }
    return kl_pg_commit(pg, status);
}

int
tenant_store_create(kl_pg_t *pg, const char *id, const char *subdomain,
                    const char *name, const char *plan, const char *isolation,
                    const char *db_server, const char *tenant_status,
                    bool provisioning, tenant_row_t *out, kl_status_t *status)
{
    const char *params[] = {subdomain,
                            name,
                            plan,
                            isolation,
                            tenant_status,
                            db_server ? db_server : "",
                            provisioning ? "t" : "f",
                            id};
    /* The database name is derived from the id, in the same statement. */
    PGresult *res = kl_pg_query(
        pg, "tenant_create",
        "WITH n AS (SELECT coalesce($8::uuid, gen_random_uuid()) AS id)"
        " INSERT INTO tenant.tenants (id, subdomain, name, plan, isolation,"
        " status, db_server, db_name, provisioning)"
        " SELECT n.id, $1, $2, $3, $4, $5,"
        " CASE WHEN $4 = 'database' THEN $6 ELSE '' END,"
        " CASE WHEN $4 = 'database' THEN 'kowloon_t_' ||"
        "  replace(n.id::text, '-', '') ELSE '' END, $7::boolean FROM n"
        " RETURNING " S_TENANT_COLS,
        8, params, status);
    if (!res) {
        /* The only unique key a caller controls is the live subdomain (the
         * ids it may give are random). */
        if (status->code == KL_ALREADY_EXISTS)
            return kl_status_set(status, KL_ALREADY_EXISTS,
                                 "subdomain \"%s\" is taken", subdomain);
        return s_code(status);
    }
    s_tenant_from(res, 0, out);
    PQclear(res);
    return 0;
}

int
tenant_store_get(kl_pg_t *pg, const char *id, tenant_row_t *out,
                 kl_status_t *status)
{
    const char *params[] = {id};
    PGresult *res =
        kl_pg_query(pg, "tenant_get",
                    "SELECT " S_TENANT_COLS " FROM tenant.tenants WHERE id = $1"
                    " AND NOT provisioning",
                    1, params, status);
    if (!res)
        return s_code(status);
    int rc = 0;
    if (PQntuples(res) == 0)
        rc = kl_status_set(status, KL_NOT_FOUND, "tenant %s not found", id);
    else
        s_tenant_from(res, 0, out);
    PQclear(res);
    return rc;
}

int
tenant_store_get_by_subdomain(kl_pg_t *pg, const char *subdomain,
                              tenant_row_t *out, kl_status_t *status)
{
    const char *params[] = {subdomain};
    PGresult *res = kl_pg_query(pg, "tenant_get_by_subdomain",
                                "SELECT " S_TENANT_COLS " FROM tenant.tenants"
                                " WHERE subdomain = $1 AND status <> 'deleted'"
                                " AND NOT provisioning",
                                1, params, status);
    if (!res)
        return s_code(status);
    int rc = 0;
    if (PQntuples(res) == 0)
        rc = kl_status_set(status, KL_NOT_FOUND,
                           "no tenant with subdomain \"%s\"", subdomain);
    else
        s_tenant_from(res, 0, out);
    PQclear(res);
    return rc;
}

int
tenant_store_list(kl_pg_t *pg, const tenant_store_page_t *page,
                  tenant_row_t **rows, size_t *n, bool *more,
                  kl_status_t *status)
{
    char usec[24], limit[16];
    snprintf(usec, sizeof usec, "%lld", (long long)page->after_usec);
    /* One more row than asked tells whether another page follows. */
    snprintf(limit, sizeof limit, "%d", page->limit + 1);
    const char *params[] = {page->status, page->after ? usec : NULL,
                            page->after ? page->after_id : NULL, limit};
    PGresult *res = kl_pg_query(
        pg, "tenant_list",
        "SELECT " S_TENANT_COLS " FROM tenant.tenants"
        " WHERE (($1::text IS NULL AND status <> 'deleted') OR status = $1)"
        "   AND NOT provisioning"
        "   AND ($2::bigint IS NULL OR (created_at, id) >"
        "        ('epoch'::timestamptz + $2::bigint * interval '1 microsecond',"
        "         $3::uuid))"
        " ORDER BY created_at, id LIMIT $4::int",
        4, params, status);
    if (!res)
        return s_code(status);
    size_t count = (size_t)PQntuples(res);
    *more = count > (size_t)page->limit;
    if (*more)
        count = (size_t)page->limit;
    s_tenant_rows(res, count, rows, n);
    return 0;
}

int
tenant_store_update(kl_pg_t *pg, const char *id, const char *name,
                    const char *plan, const char *tenant_status,
                    tenant_row_t *out, kl_status_t *status)
{
    int rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    rc = s_lock_live(pg, id, status);
    if (rc == 0) {
        const char *params[] = {id, name, plan, tenant_status};
        /* In SET, "status" on the right-hand side is the old value. */
        PGresult *res =
            kl_pg_query(pg, "tenant_update",
                        "UPDATE tenant.tenants SET"
                        " name = COALESCE($2, name),"
                        " plan = COALESCE($3, plan),"
                        " status_changed_at = CASE WHEN $4::text IS NOT NULL"
                        "   AND $4::text <> status THEN now()"
                        "   ELSE status_changed_at END,"
                        " status = COALESCE($4::text, status),"
                        " updated_at = now()"
                        " WHERE id = $1 RETURNING " S_TENANT_COLS,
                        4, params, status);
        if (!res) {
            rc = s_code(status);
        } else {
            s_tenant_from(res, 0, out);
            PQclear(res);
        }
    }
    return s_finish(pg, rc, status);
}

int
tenant_store_delete(kl_pg_t *pg, const char *id, tenant_row_t *out,
                    tenant_key_row_t **revoked, size_t *n_revoked,
                    kl_status_t *status)
{
    *revoked = NULL;
    *n_revoked = 0;
    int rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    rc = s_lock_live(pg, id, status);
    const char *params[] = {id};
    if (rc == 0) {
        PGresult *res =
            kl_pg_query(pg, "tenant_delete",
                        "UPDATE tenant.tenants SET status = 'deleted',"
                        " status_changed_at = now(), updated_at = now()"
                        " WHERE id = $1 RETURNING " S_TENANT_COLS,
                        1, params, status);
        if (!res) {
            rc = s_code(status);
        } else {
            s_tenant_from(res, 0, out);
            PQclear(res);
        }
    }
    if (rc == 0) {
        PGresult *res =
            kl_pg_query(pg, "tenant_revoke_all",
                        "UPDATE tenant.api_keys SET revoked_at = now()"
                        " WHERE tenant_id = $1 AND revoked_at IS NULL"
                        " RETURNING " S_KEY_COLS,
                        1, params, status);
        if (!res) {
            rc = s_code(status);
        } else {
            size_t count = (size_t)PQntuples(res);
            *revoked = kl_calloc(count ? count : 1, sizeof **revoked);
            for (size_t i = 0; i < count; i++)
                s_key_from(res, (int)i, &(*revoked)[i]);
            *n_revoked = count;
            PQclear(res);
        }
    }
    rc = s_finish(pg, rc, status);
    if (rc < 0) {
        KL_FREE(revoked);
        *n_revoked = 0;
    }
    return rc;
}

int
tenant_store_key_create(kl_pg_t *pg, const char *tenant_id, const char *name,
                        tenant_key_row_t *out, char key[TENANT_APIKEY_LEN + 1],
                        kl_status_t *status)
{
    int rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    /* The lock keeps a concurrent Delete from missing this key. */
    rc = s_lock_live(pg, tenant_id, status);
    /* Key ids are 64 random bits: a clash is next to impossible, and is
     * answered by drawing another id (ON CONFLICT keeps the transaction
     * alive). */
    bool inserted = false;
    for (int attempt = 0; rc == 0 && !inserted && attempt < 3; attempt++) {
        char id[TENANT_APIKEY_ID_LEN + 1];
        uint8_t hash[TENANT_APIKEY_HASH_LEN];
        char hash_hex[2 * TENANT_APIKEY_HASH_LEN + 3];
        rc = tenant_apikey_generate(id, key, hash, status);
        if (rc < 0)
            break;
        strcpy(hash_hex, "\\x");
        for (size_t i = 0; i < sizeof hash; i++)
            snprintf(hash_hex + 2 + 2 * i, 3, "%02x", hash[i]);
        const char *params[] = {id, tenant_id, name, hash_hex};
        PGresult *res = kl_pg_query(
            pg, "tenant_key_create",
            "INSERT INTO tenant.api_keys (id, tenant_id, name, secret_hash)"
            " VALUES ($1, $2, $3, $4::bytea) ON CONFLICT (id) DO NOTHING"
            " RETURNING " S_KEY_COLS,
            4, params, status);
        if (!res) {
            rc = s_code(status);
            break;
        }
        if (PQntuples(res) == 1) {
            s_key_from(res, 0, out);
            inserted = true;
        }
        PQclear(res);
    }
    if (rc == 0 && !inserted)
        rc = kl_status_set(status, KL_INTERNAL,
                           "could not draw an unused API key id");
    rc = s_finish(pg, rc, status);
    if (rc < 0)
        memset(key, 0, TENANT_APIKEY_LEN + 1);
    return rc;
}

int
tenant_store_key_list(kl_pg_t *pg, const char *tenant_id,
                      tenant_key_row_t **rows, size_t *n, kl_status_t *status)
{
    *rows = NULL;
    *n = 0;
    int rc = s_check_live(pg, tenant_id, status);
    if (rc < 0)
        return rc;
    const char *params[] = {tenant_id};
    PGresult *res = kl_pg_query(pg, "tenant_key_list",
                                "SELECT " S_KEY_COLS " FROM tenant.api_keys"
                                " WHERE tenant_id = $1 AND revoked_at IS NULL"
                                " ORDER BY created_at, id",
                                1, params, status);
    if (!res)
        return s_code(status);
    size_t count = (size_t)PQntuples(res);
    *rows = kl_calloc(count ? count : 1, sizeof **rows);
    for (size_t i = 0; i < count; i++)
        s_key_from(res, (int)i, &(*rows)[i]);
    *n = count;
    PQclear(res);
    return 0;
}

int
tenant_store_key_delete(kl_pg_t *pg, const char *tenant_id, const char *key_id,
                        kl_status_t *status)
{
    int rc = s_check_live(pg, tenant_id, status);
    if (rc < 0)
        return rc;
    const char *params[] = {tenant_id, key_id};
    PGresult *res =
        kl_pg_query(pg, "tenant_key_delete",
                    "UPDATE tenant.api_keys SET revoked_at = now()"
                    " WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
                    2, params, status);
    if (!res)
        return s_code(status);
    if (strcmp(PQcmdTuples(res), "1") != 0)
        rc =
            kl_status_set(status, KL_NOT_FOUND, "API key %s not found", key_id);
    PQclear(res);
    return rc;
}

int
tenant_store_key_lookup(kl_pg_t *pg, const char *key_id, char tenant_id[37],
                        uint8_t hash[TENANT_APIKEY_HASH_LEN], bool *usable,
                        kl_status_t *status)
{
    const char *params[] = {key_id};
    PGresult *res = kl_pg_query(
        pg, "tenant_key_lookup",
        "SELECT k.tenant_id::text, encode(k.secret_hash, 'hex'),"
        " k.revoked_at IS NULL AND t.status <> 'deleted'"
        " FROM tenant.api_keys k JOIN tenant.tenants t ON t.id = k.tenant_id"
        " WHERE k.id = $1",
        1, params, status);
    if (!res)
        return s_code(status);
    int rc = 0;
    if (PQntuples(res) == 0) {
        rc =
            kl_status_set(status, KL_NOT_FOUND, "API key %s not found", key_id);
    } else {
        snprintf(tenant_id, 37, "%s", PQgetvalue(res, 0, 0));
        const char *hex = PQgetvalue(res, 0, 1);
        memset(hash, 0, TENANT_APIKEY_HASH_LEN);
        for (size_t i = 0;
             i < TENANT_APIKEY_HASH_LEN && hex[2 * i] && hex[2 * i + 1]; i++) {
            unsigned v = 0;
            sscanf(hex + 2 * i, "%2x", &v);
            hash[i] = (uint8_t)v;
        }
        *usable = strcmp(PQgetvalue(res, 0, 2), "t") == 0;
    }
    PQclear(res);
    return rc;
}

int
tenant_store_purge(kl_pg_t *pg, const char *id, kl_status_t *status)
{
    PGresult *res = kl_pg_query(
        pg, "tenant_purge",
        "DELETE FROM tenant.tenants t WHERE t.id = $1 AND NOT EXISTS"
        " (SELECT 1 FROM tenant.api_keys k WHERE k.tenant_id = t.id)",
        1, (const char *const[]){id}, status);
    if (!res)
        return s_code(status);
    PQclear(res);
    return 0;
}

int
tenant_store_provisioned(kl_pg_t *pg, const char *id, kl_status_t *status)
{
    PGresult *res = kl_pg_query(
        pg, "tenant_provisioned",
        "UPDATE tenant.tenants SET provisioning = false, updated_at = now()"
        " WHERE id = $1 AND provisioning RETURNING 1",
        1, (const char *const[]){id}, status);
    if (!res)
        return s_code(status);
    int rc = 0;
    if (PQntuples(res) == 0)
        rc =
            kl_status_set(status, KL_ABORTED,
                          "tenant %s was removed while it was provisioned", id);
    PQclear(res);
    return rc;
}

int
tenant_store_unprovisioned(kl_pg_t *pg, const char *subdomain,
                           tenant_row_t **rows, size_t *n, kl_status_t *status)
{
    *rows = NULL;
    *n = 0;
    PGresult *res = kl_pg_query(
        pg, "tenant_unprovisioned",
        "SELECT " S_TENANT_COLS " FROM tenant.tenants WHERE provisioning"
        " AND ($1::text IS NULL OR subdomain = $1) ORDER BY created_at, id",
        1, (const char *const[]){subdomain}, status);
    if (!res)
        return s_code(status);
    s_tenant_rows(res, (size_t)PQntuples(res), rows, n);
    return 0;
}

int
tenant_store_provisioning(kl_pg_t *pg, const char *id, bool *yes,
                          kl_status_t *status)
{
    *yes = false;
    PGresult *res = kl_pg_query(pg, "tenant_provisioning",
                                "SELECT 1 FROM tenant.tenants WHERE id = $1"
                                " AND provisioning",
                                1, (const char *const[]){id}, status);
    if (!res)
        return s_code(status);
    *yes = PQntuples(res) == 1;
    PQclear(res);
    return 0;
}

int
tenant_store_move_begin(kl_pg_t *pg, const char *id, const char *isolation,
                        const char *db_server, tenant_row_t *out,
                        kl_status_t *status)
{
    int rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    rc = s_lock_live(pg, id, status);
    PGresult *res = NULL;
    if (rc == 0) {
        /* Only one move at a time, and none while the old copy of the last
         * one is still to be removed. */
        res = kl_pg_query(pg, "tenant_move_begin",
                          "UPDATE tenant.tenants SET moving = true,"
                          " move_isolation = $2, move_db_server = $3,"
                          " updated_at = now() WHERE id = $1"
                          " AND NOT moving AND move_cleanup = ''"
                          " RETURNING " S_TENANT_COLS,
                          3, (const char *const[]){id, isolation, db_server},
                          status);
        if (!res)
            rc = s_code(status);
        else if (PQntuples(res) == 0)
            rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                               "tenant %s is already being moved", id);
        else
            s_tenant_from(res, 0, out);
        PQclear(res);
    }
    return s_finish(pg, rc, status);
}

int
tenant_store_move_abort(kl_pg_t *pg, const char *id, tenant_row_t *out,
                        kl_status_t *status)
{
    /* No check of the status: a tenant deleted during its move must not
     * stay "moving" for ever. */
    PGresult *res = kl_pg_query(
        pg, "tenant_move_abort",
        "UPDATE tenant.tenants SET moving = false, move_isolation = '',"
        " move_db_server = '', updated_at = now() WHERE id = $1"
        " RETURNING " S_TENANT_COLS,
        1, (const char *const[]){id}, status);
    if (!res)
        return s_code(status);
    int rc = 0;
    if (PQntuples(res) == 0)
        rc = kl_status_set(status, KL_NOT_FOUND, "tenant %s not found", id);
    else
        s_tenant_from(res, 0, out);
    PQclear(res);
    return rc;
}

/* The body of tenant_store_move_switch, inside its transaction. */
static int
s_switch_tx(kl_pg_t *pg, const char *id, const char *isolation,
            const char *db_server, const char *db_name, bool fence,
            const char *lock_pid, tenant_row_t *out, kl_status_t *status)
{
    PGresult *res = kl_pg_query(pg, "tenant_move_lock_row",
                                "SELECT moving, move_isolation, move_db_server"
                                " FROM tenant.tenants WHERE id = $1 FOR UPDATE",
                                1, (const char *const[]){id}, status);
    if (!res)
        return s_code(status);
    int rc = 0;
    if (PQntuples(res) == 0)
        rc = kl_status_set(status, KL_NOT_FOUND, "tenant %s not found", id);
    else if (strcmp(PQgetvalue(res, 0, 0), "t") != 0 ||
             strcmp(PQgetvalue(res, 0, 1), isolation) != 0 ||
             strcmp(PQgetvalue(res, 0, 2), db_server) != 0)
        rc = kl_status_set(status, KL_ABORTED,
                           "tenant %s is no longer being moved to %s", id,
                           isolation);
    PQclear(res);
    if (rc < 0)
        return rc;
    /* The mover's session must still hold the tenant's move lock: if it
     * was lost (the session ended), writes may have gone to the old copy
     * since, and the move must not switch. A bigint advisory key shows in
     * pg_locks as its high half in classid and its low half in objid. */
    res = kl_pg_query(
        pg, "tenant_move_lock_held",
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l"
        " WHERE l.locktype = 'advisory' AND l.pid = $2::int AND l.granted"
        " AND l.mode = 'ExclusiveLock' AND l.objsubid = 1"
        " AND ((l.classid::bigint << 32) | l.objid::bigint) ="
        " " KL_TENANT_LOCK_SQL("$1::text") ")",
        2, (const char *const[]){id, lock_pid}, status);
    if (!res)
        return s_code(status);
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0)
        rc = kl_status_set(status, KL_ABORTED,
                           "the move lock of tenant %s was lost", id);
    PQclear(res);
    if (rc < 0)
        return rc;
    if (fence) {
        res = kl_pg_query(pg, "tenant_move_fence",
                          "INSERT INTO " KL_TENANT_FENCE_TABLE
                          " (tenant_id, isolation) VALUES ($1, $2)"
                          " ON CONFLICT (tenant_id) DO UPDATE SET"
                          " isolation = EXCLUDED.isolation, moved_at = now()",
                          2, (const char *const[]){id, isolation}, status);
        if (!res)
            return s_code(status);
        PQclear(res);
    }
    /* In SET, "isolation" on the right-hand side is the old model: its
     * copy is the one left to remove. */
    res = kl_pg_query(
        pg, "tenant_move_switch",
        "UPDATE tenant.tenants SET move_cleanup = isolation,"
        " isolation = $2, db_server = $3, db_name = $4, moving = false,"
        " move_isolation = '', move_db_server = '', updated_at = now()"
        " WHERE id = $1 RETURNING " S_TENANT_COLS,
        4, (const char *const[]){id, isolation, db_server, db_name}, status);
    if (!res)
        return s_code(status);
    s_tenant_from(res, 0, out);
    PQclear(res);
    return 0;
}

int
tenant_store_move_switch(kl_pg_t *pg, const char *id, const char *isolation,
                         const char *db_server, const char *db_name, bool fence,
                         int lock_pid, tenant_row_t *out, kl_status_t *status)
{
    char pid[16];
    snprintf(pid, sizeof pid, "%d", lock_pid);
    int rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    rc = s_switch_tx(pg, id, isolation, db_server ? db_server : "",
                     db_name ? db_name : "", fence, pid, out, status);
    return s_finish(pg, rc, status);
}

int
tenant_store_move_cleaned(kl_pg_t *pg, const char *id, kl_status_t *status)
{
    PGresult *res = kl_pg_query(pg, "tenant_move_cleaned",
                                "UPDATE tenant.tenants SET move_cleanup = ''"
                                " WHERE id = $1",
                                1, (const char *const[]){id}, status);
    if (!res)
        return s_code(status);
    PQclear(res);
    return 0;
}

int
tenant_store_unsettled(kl_pg_t *pg, tenant_row_t **rows, size_t *n,
                       kl_status_t *status)
{
    *rows = NULL;
    *n = 0;
    PGresult *res = kl_pg_query(pg, "tenant_unsettled",
                                "SELECT " S_TENANT_COLS " FROM tenant.tenants"
                                " WHERE moving OR move_cleanup <> ''"
                                " ORDER BY created_at, id",
                                0, NULL, status);
    if (!res)
        return s_code(status);
    s_tenant_rows(res, (size_t)PQntuples(res), rows, n);
    return 0;
}

int
tenant_store_may_fence(kl_pg_t *pg, bool *out, kl_status_t *status)
{
    /* By oid, so that a schema this role may not use is an answer (false)
     * rather than an error. ON CONFLICT DO UPDATE needs SELECT as well. */
    PGresult *res = kl_pg_query(
        pg, "tenant_may_fence",
        "SELECT coalesce((SELECT"
        " pg_catalog.has_schema_privilege(n.oid, 'USAGE')"
        " AND pg_catalog.has_table_privilege(c.oid, 'SELECT')"
        " AND pg_catalog.has_table_privilege(c.oid, 'INSERT')"
        " AND pg_catalog.has_table_privilege(c.oid, 'UPDATE')"
        " FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname || '.' || c.relname = '" KL_TENANT_FENCE_TABLE "'),"
        " false)",
        0, NULL, status);
    if (!res)
        return s_code(status);
    *out = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return 0;
}

int
tenant_store_count_by_server(kl_pg_t *pg, const char *server, int64_t *n,
                             kl_status_t *status)
{
    PGresult *res = kl_pg_query(
        pg, "tenant_count_by_server",
        "SELECT count(*) FROM tenant.tenants WHERE isolation = 'database'"
        " AND status <> 'deleted' AND db_server = $1",
        1, (const char *const[]){server}, status);
    if (!res)
        return s_code(status);
    *n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return 0;
}
