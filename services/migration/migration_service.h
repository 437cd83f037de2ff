/*
 * migration_service: kowloon.migration.MigrationService
 * (proto/kowloon/migration.proto) on kl_rpc_server, with the instance's
 * migration_runner behind it. See docs/migrations.md.
 *
 * The tenant list comes from the tenant service (List, paged; Get for the
 * tenants named in a request). Each RPC worker owns a control-database
 * connection and a migration_apply (Plan reads target histories,
 * ProvisionTenant migrates one target synchronously).
 */
#ifndef MIGRATION_SERVICE_H
#define MIGRATION_SERVICE_H

#include "kl_code.h"
#include "kl_rpc_client.h"
#include "kl_rpc_server.h"
#include "migration_files.h"
#include "migration_runner.h"

#include <protobuf-c/protobuf-c.h>

typedef struct {
    const char *database_url; /* control database */
    const char *owner_url;    /* KOWLOON_DATA_OWNER_URL */
    /* KOWLOON_TENANT_DB_OWNER_SERVERS entries; borrowed, outlive it */
    const char *const *owner_servers;
    size_t n_owner_servers;
    const char *shared_schema;      /* KOWLOON_MIGRATION_SHARED_SCHEMA */
    const migration_files_t *files; /* borrowed */
    kl_rpc_client_t *tenants;       /* tenant service; borrowed */
    int64_t tenants_timeout_ms;     /* deadline of each call to it */
    migration_runner_t *runner;     /* woken after Run/Retry; may be NULL */
    const char *app_role; /* KOWLOON_DATA_APP_ROLE; NULL or "": no grants */
} migration_service_opts_t;

typedef struct migration_service migration_service_t;

/* Copies the strings of opts. NULL + INVALID_ARGUMENT on a bad shared
 * schema name or owner URL. */
migration_service_t *migration_service_new(const migration_service_opts_t *opts,
                                           kl_status_t *status);
void migration_service_destroy(migration_service_t **self_p);

ProtobufCService *migration_service_base(migration_service_t *self);

/* Sets worker_init, worker_fini, ready and user in opts. */
void migration_service_server_opts(migration_service_t *self,
                                   kl_rpc_server_opts_t *opts);

#endif
