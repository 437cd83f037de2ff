/*
 * tenant_provision: makes and removes the place where a schema- or
 * database-model tenant's product tables live (docs/isolation.md).
 *
 *   schema    CREATE SCHEMA t_<hex> on the main server (owner "main")
 *   database  CREATE DATABASE kowloon_t_<hex> on the chosen server, owned
 *             by that server's owner role; CONNECT revoked from PUBLIC and
 *             granted to the application role; the shared schema inside
 *
 * then the migrate hook brings the tables to the latest version (in
 * production the migration service's ProvisionTenant), then the
 * application role is granted SELECT, INSERT, UPDATE, DELETE on every
 * table with row-level security forced (kl_tenant_db_grant_schema). The
 * tenant's model is then recorded in the main database's placement fence
 * (KL_TENANT_FENCE_TABLE, tenant_provision_fence) so that a service that
 * believes the tenant is in the row model is refused instead of writing to
 * the shared tables.
 *
 * Owner connections come from "name=url" entries (KOWLOON_TENANT_DB_OWNER_
 * SERVERS); every name reaches SQL only through PQescapeIdentifier, and
 * names are derived from the tenant id (kl_tenant_place). URLs are never
 * logged or put in a status message.
 */
#ifndef TENANT_PROVISION_H
#define TENANT_PROVISION_H

#include "kl_code.h"
#include "kl_pg.h"
#include "kl_tenant_db.h"

#include <stdbool.h>
#include <stddef.h>

/* Brings place's tables to the latest version. 0 or -code with status. */
typedef int (*tenant_provision_migrate_fn)(void *arg,
                                           const kl_tenant_place_t *place,
                                           kl_status_t *status);

typedef struct {
    const char *const *owner_servers; /* "name=url", "main" included */
    size_t n_owner_servers;
    const char *app_role;                /* granted on what is provisioned */
    const char *shared_schema;           /* NULL: "workspace" */
    tenant_provision_migrate_fn migrate; /* NULL: tables are not made */
    void *migrate_arg;
} tenant_provision_opts_t;

typedef struct tenant_provision tenant_provision_t;

/* Copies opts. NULL + INVALID_ARGUMENT for a malformed entry or role. */
tenant_provision_t *tenant_provision_new(const tenant_provision_opts_t *opts,
                                         kl_status_t *status);
void tenant_provision_destroy(tenant_provision_t **self_p);

const char *tenant_provision_shared_schema(const tenant_provision_t *self);

/* Whether owner credentials exist for server name. */
bool tenant_provision_has_server(const tenant_provision_t *self,
                                 const char *name);

/* Names of the configured servers, in configuration order (borrowed). */
size_t tenant_provision_servers(const tenant_provision_t *self,
                                const char *const **names);

/* A new connection of server's owner role to database db_name (NULL: the
 * URL's own). Caller destroys. NULL + NOT_FOUND ("database server \"x\"
 * has no owner credentials") or INVALID_ARGUMENT. */
kl_pg_t *tenant_provision_owner(const tenant_provision_t *self,
                                const char *server, const char *db_name,
                                kl_status_t *status);

/* As the main owner: creates the placement fence if missing. */
int tenant_provision_prepare(const tenant_provision_t *self,
                             kl_status_t *status);

/* Creates place (schema or database), migrates it and grants it; the
 * caller records the fence (tenant_provision_fence) once the tenant's
 * record says so. On failure removes what it made. Row placements: nothing
 * to do. UNAVAILABLE when a server is down. */
int tenant_provision_create(const tenant_provision_t *self,
                            const kl_tenant_place_t *place,
                            kl_status_t *status);

/* The migrate hook and the grants only (a move's target after create). */
int tenant_provision_migrate(const tenant_provision_t *self,
                             const kl_tenant_place_t *place,
                             kl_status_t *status);

/* Removes place: DROP SCHEMA ... CASCADE (and the schema's rows in the
 * main database's kowloon_migration.history) or DROP DATABASE ... WITH
 * (FORCE). Row placements: nothing. Missing objects are not an error. */
int tenant_provision_drop(const tenant_provision_t *self,
                          const kl_tenant_place_t *place, kl_status_t *status);

/* Records (isolation != NULL) or clears the tenant's fence entry. */
int tenant_provision_fence(const tenant_provision_t *self,
                           const char *tenant_id, const char *isolation,
                           kl_status_t *status);

#endif
