/*
 * workspace_service: kowloon.workspace.WorkspaceService
 * (proto/kowloon/workspace.proto) on kl_rpc_server — projects and tasks per
 * tenant, in whichever isolation model the tenant lives (row, schema or
 * database; docs/isolation.md). The same unqualified SQL runs in all
 * three: kl_tenant_tx_begin picks the connection and sets search_path and
 * app.tenant_id for the transaction.
 *
 * Two database roles: the owner role (owner_url) runs the DDL and grants at
 * start and nothing else; every call runs as the application role
 * (database_url), which owns nothing, and inside a tenant-scoped
 * transaction (kl_tenant_tx_begin) whose tenant comes only from the call
 * context and whose placement comes from the tenant service
 * (workspace_placement, cached), never from the request.
 * Project creation is counted against the plan's "max_projects" limit by
 * the flags service (Consume) before the row is written.
 *
 * Each worker thread owns one kl_tenant_db (application role: the main
 * database and an LRU of tenant databases) and one kl_redis (events). See
 * docs/workspace-service.md for the rules and every error.
 */
#ifndef WORKSPACE_SERVICE_H
#define WORKSPACE_SERVICE_H

#include "kl_code.h"
#include "kl_rpc_client.h"
#include "kl_rpc_server.h"
#include "workspace_placement.h"

#include <protobuf-c/protobuf-c.h>
#include <stdint.h>

typedef struct {
    const char *database_url;   /* application role: every call */
    const char *owner_url;      /* owner role: migrations and grants */
    const char *redis_url;      /* "" disables events */
    const char *events_channel; /* KOWLOON_EVENTS_CHANNEL */
    /* A client of kowloon.flags.FlagsService; borrowed, must outlive the
     * service (tests point it at an in-process flags service). */
    kl_rpc_client_t *flags;
    int64_t flags_timeout_ms; /* deadline of a flags call; 0: 3000 */
    /* The row model's shared schema (also the schema inside tenant
     * databases); NULL: "workspace". */
    const char *shared_schema;
    /* KOWLOON_TENANT_DB_SERVERS: "name=url" of the application role on
     * each database server; "main" defaults to database_url's server. */
    const char *const *db_servers;
    size_t n_db_servers;
    size_t max_open_dbs; /* tenant databases kept open per worker; 0: 16 */
    /* Where tenants live: .tenants (TenantService client) or .fn; neither:
     * every tenant in the row model. shared_schema is taken from above. */
    workspace_placement_opts_t placement;
} workspace_service_opts_t;

typedef struct workspace_service workspace_service_t;

/* Copies opts (but for flags and placement.tenants, borrowed). NULL +
 * INVALID_ARGUMENT when a URL, a database server entry or the
 * flags client is missing or malformed, or the Redis URL is malformed. */
workspace_service_t *workspace_service_new(const workspace_service_opts_t *opts,
                                           kl_status_t *status);
void workspace_service_destroy(workspace_service_t **self_p);

/*
 * Start-up, before serving: as the owner role, creates the shared schema if
 * missing and grants the application role (found with SELECT current_user
 * over database_url) its privileges there, now and on the tables the
 * migrations create later (workspace_store_prepare); then checks the
 * catalog as the application role (workspace_store_check): the tables must
 * exist, so kowloon-migration must have run. FAILED_PRECONDITION when the roles
 * are unsafe: the service must refuse to run. Safe when several instances start
 * at once.
 */
int workspace_service_prepare(const workspace_service_t *self,
                              kl_status_t *status);

/* The generated service to give kl_rpc_server_add_service; lives as long
 * as self. */
ProtobufCService *workspace_service_base(workspace_service_t *self);

/* Sets opts' worker_init, worker_fini, ready and user for this service
 * (ready: the worker's database answers SELECT 1). */
void workspace_service_server_opts(workspace_service_t *self,
                                   kl_rpc_server_opts_t *opts);

#endif
