/*
 * tenant_service: kowloon.tenant.TenantService (proto/kowloon/tenant.proto)
 * on kl_rpc_server — request validation, the store calls, and a change
 * event on the Redis channel after every committed write.
 *
 * Each worker thread owns one kl_pg (the control database) and one
 * kl_redis (events); a Redis failure is logged at warn and never fails a
 * call. See docs/tenant-service.md for the rules and every error.
 */
#ifndef TENANT_SERVICE_H
#define TENANT_SERVICE_H

#include "kl_code.h"
#include "kl_rpc_client.h"
#include "kl_rpc_server.h"
#include "tenant_mover.h"
#include "tenant_provision.h"

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

typedef struct {
    const char *database_url;      /* libpq conninfo of the control DB */
    const char *redis_url;         /* "" disables events */
    const char *events_channel;    /* KOWLOON_EVENTS_CHANNEL */
    const char *default_plan;      /* KOWLOON_DEFAULT_PLAN */
    const char *default_isolation; /* KOWLOON_DEFAULT_ISOLATION */
    const char *const *reserved;   /* subdomains no tenant may take */
    size_t n_reserved;
    /* Provisioning and moves (docs/isolation.md). With no owner servers,
     * schema and database tenants are recorded but not provisioned (a
     * warning is logged) and Move answers FAILED_PRECONDITION. */
    const char *const *owner_servers; /* KOWLOON_TENANT_DB_OWNER_SERVERS */
    size_t n_owner_servers;
    const char *app_role;      /* KOWLOON_DATA_APP_ROLE; "": found at
                                  migrate as DATABASE_URL's current_user */
    const char *shared_schema; /* NULL: "workspace" */
    /* Brings a provisioned place's tables to the latest version: fn if
     * set, else MigrationService.ProvisionTenant over migration (borrowed)
     * if set, else nothing (the tables are then missing: a warning). */
    tenant_provision_migrate_fn migrate;
    void *migrate_arg;
    kl_rpc_client_t *migration;
    int64_t move_lock_timeout_ms; /* wait for in-flight writes; 0: 30000 */
    /* Tests only (0 in production): every move stops dead at this point,
     * as if the process died there (TENANT_MOVER_STOP_*). */
    tenant_mover_stop_t move_stop_at;
} tenant_service_opts_t;

typedef struct tenant_service tenant_service_t;

/* Copies opts. NULL + INVALID_ARGUMENT when the Redis URL, the default plan
 * or the default isolation is malformed. */
tenant_service_t *tenant_service_new(const tenant_service_opts_t *opts,
                                     kl_status_t *status);
void tenant_service_destroy(tenant_service_t **self_p);

/* Creates or upgrades schema "tenant" over a connection of its own; safe
 * when several instances start at once. With owner servers configured,
 * also finds the application role (if not given) and prepares the
 * placement fence in the main database. */
int tenant_service_migrate(const tenant_service_t *self, kl_status_t *status);

/* After tenant_service_migrate, before serving: removes the creations a
 * process that died mid-creation left (docs/isolation.md, "Creating a
 * tenant"), then settles the moves that a
 * process which died mid-move left (docs/isolation.md, "Moves"): each is
 * finished if the fence shows its switch happened, else undone; a move
 * that another process holds (its claim or move lock taken) is left
 * alone. Events as Move's. Failures for one tenant are logged and leave
 * it as it was (the next start or Move settles it); -code only when the
 * tenants cannot be listed. */
int tenant_service_recover(const tenant_service_t *self, kl_status_t *status);

/* The generated service to give kl_rpc_server_add_service; lives as long
 * as self. */
ProtobufCService *tenant_service_base(tenant_service_t *self);

/* Sets opts' worker_init, worker_fini, ready and user for this service
 * (ready: the worker's database answers SELECT 1). */
void tenant_service_server_opts(tenant_service_t *self,
                                kl_rpc_server_opts_t *opts);

#endif
