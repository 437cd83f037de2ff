/*
 * workspace_service: kowloon.workspace.WorkspaceService
 * (proto/kowloon/workspace.proto) on kl_rpc_server — projects and tasks per
 * tenant in schema "workspace", the row isolation model.
 *
 * Two database roles: the owner role (owner_url) runs the DDL and grants at
 * start and nothing else; every call runs as the application role
 * (database_url), which owns nothing, and inside a tenant-scoped
 * transaction (workspace_tx) whose tenant comes only from the call context.
 * Project creation is counted against the plan's "max_projects" limit by
 * the flags service (Consume) before the row is written.
 *
 * Each worker thread owns one kl_pg (application role) and one kl_redis
 * (events). See docs/workspace-service.md for the rules and every error.
 */
#ifndef WORKSPACE_SERVICE_H
#define WORKSPACE_SERVICE_H

#include "kl_code.h"
#include "kl_rpc_client.h"
#include "kl_rpc_server.h"

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
} workspace_service_opts_t;

typedef struct workspace_service workspace_service_t;

/* Copies opts (but for flags). NULL + INVALID_ARGUMENT when a URL or the
 * flags client is missing or the Redis URL is malformed. */
workspace_service_t *workspace_service_new(const workspace_service_opts_t *opts,
                                           kl_status_t *status);
void workspace_service_destroy(workspace_service_t **self_p);

/*
 * Start-up, before serving: migrates schema "workspace" as the owner role,
 * grants the application role (found with SELECT current_user over
 * database_url) its privileges, then checks the catalog as the application
 * role (workspace_store_check). FAILED_PRECONDITION when the roles are
 * unsafe: the service must refuse to run. Safe when several instances
 * start at once.
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
