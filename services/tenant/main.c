/*
 * kowloon-tenant: the tenant registry service. Reads its settings, migrates
 * schema "tenant", settles moves a dead process left, and serves
 * kowloon.tenant.TenantService until SIGTERM.
 */
#include "kl_config.h"
#include "kl_log.h"
#include "kl_rpc_client.h"
#include "kl_rpc_env.h"
#include "kl_rpc_server.h"
#include "kowloon/migration.pb-c.h"
#include "tenant_service.h"

#include <signal.h>
#include <stdlib.h>

int
main(void)
{
    kl_status_t status;
    /* Until the settings are read, errors go out as info-level JSON. */
    kl_log_init("tenant", KL_INFO);
    kl_config_t *cfg = kl_config_load(KL_PROC_TENANT, NULL, NULL, &status);
    if (!cfg) {
        kl_log_write(KL_ERROR, "%s", status.message);
        return 2;
    }
    kl_log_init("tenant", (kl_log_level_t)kl_log_level_from_name(
                              kl_config_str(cfg, KL_CFG_LOG_LEVEL)));
    kl_config_log(cfg);
    /* hiredis writes with write(2): a peer that went away must not kill
     * the process. */
    signal(SIGPIPE, SIG_IGN);
    /* Curve keys and allow-list, drain grace, "@file" endpoint lists
     * (docs/operations/curve.md); destroyed after the server and client. */
    kl_rpc_env_t *rpc = kl_rpc_env_new(cfg, KL_PROC_TENANT, &status);
    if (!rpc) {
        kl_log_write(KL_ERROR, "%s", status.message);
        kl_config_destroy(&cfg);
        return 2;
    }

    size_t n_reserved = kl_config_list_len(cfg, KL_CFG_RESERVED_SUBDOMAINS);
    const char **reserved =
        calloc(n_reserved ? n_reserved : 1, sizeof *reserved);
    if (!reserved)
        abort();
    for (size_t i = 0; i < n_reserved; i++)
        reserved[i] = kl_config_list_at(cfg, KL_CFG_RESERVED_SUBDOMAINS, i);
    size_t n_owners = kl_config_list_len(cfg, KL_CFG_TENANT_DB_OWNER_SERVERS);
    const char **owners = calloc(n_owners + 1, sizeof *owners);
    size_t n_migration = kl_config_list_len(cfg, KL_CFG_MIGRATION_ENDPOINTS);
    const char **migration_endpoints =
        calloc(n_migration + 1, sizeof *migration_endpoints);
    if (!owners || !migration_endpoints)
        abort();
    for (size_t i = 0; i < n_owners; i++)
        owners[i] = kl_config_list_at(cfg, KL_CFG_TENANT_DB_OWNER_SERVERS, i);
    for (size_t i = 0; i < n_migration; i++)
        migration_endpoints[i] =
            kl_config_list_at(cfg, KL_CFG_MIGRATION_ENDPOINTS, i);
    /* New schema and database tenants get their tables from the
     * migration service; only needed when they are provisioned. */
    kl_rpc_client_t *migration = NULL;
    if (n_owners > 0 && n_migration > 0) {
        kl_rpc_client_opts_t copts = {
            .endpoints = migration_endpoints,
            .n_endpoints = n_migration,
            .max_message_bytes =
                (size_t)kl_config_int(cfg, KL_CFG_RPC_MAX_MESSAGE_BYTES),
        };
        if (kl_rpc_env_client_opts(rpc, KL_CFG_MIGRATION_ENDPOINTS, &copts,
                                   &status) == 0)
            migration = kl_rpc_client_new(
                &kowloon__migration__migration_service__descriptor, &copts,
                &status);
        if (!migration) {
            kl_log_write(KL_ERROR, "%s: %s",
                         kl_config_name(KL_CFG_MIGRATION_ENDPOINTS),
                         status.message);
            free(owners);
            free(migration_endpoints);
            free(reserved);
            kl_rpc_env_destroy(&rpc);
            kl_config_destroy(&cfg);
            return 2;
        }
    }
    tenant_service_opts_t sopts = {
        .database_url = kl_config_str(cfg, KL_CFG_DATABASE_URL),
        .redis_url = kl_config_str(cfg, KL_CFG_REDIS_URL),
        .events_channel = kl_config_str(cfg, KL_CFG_EVENTS_CHANNEL),
        .default_plan = kl_config_str(cfg, KL_CFG_DEFAULT_PLAN),
        .default_isolation = kl_config_str(cfg, KL_CFG_DEFAULT_ISOLATION),
        .reserved = reserved,
        .n_reserved = n_reserved,
        .owner_servers = owners,
        .n_owner_servers = n_owners,
        .app_role = kl_config_str(cfg, KL_CFG_DATA_APP_ROLE),
        .migration = migration,
    };
    int rc = 1;
    kl_rpc_server_t *server = NULL;
    tenant_service_t *svc = tenant_service_new(&sopts, &status);
    if (!svc) {
        kl_log_write(KL_ERROR, "%s", status.message);
        rc = 2;
        goto done;
    }
    if (tenant_service_migrate(svc, &status) < 0) {
        kl_log_write(KL_ERROR, "migrating schema tenant failed: %s",
                     status.message);
        goto done;
    }
    /* Moves a process that died mid-move left are finished or undone
     * before serving; a failure here must not keep the registry down. */
    if (tenant_service_recover(svc, &status) < 0)
        kl_log_write(KL_WARN, "settling unsettled moves failed: %s, ignored",
                     status.message);
    kl_rpc_server_opts_t opts = {
        .bind = kl_config_str(cfg, KL_CFG_TENANT_BIND),
        .workers = (int)kl_config_int(cfg, KL_CFG_WORKERS),
        .max_message_bytes =
            (size_t)kl_config_int(cfg, KL_CFG_RPC_MAX_MESSAGE_BYTES),
    };
    tenant_service_server_opts(svc, &opts);
    kl_rpc_env_server_opts(rpc, &opts);
    if (kl_rpc_env_handle_sighup(rpc) < 0)
        kl_log_write(KL_WARN, "SIGHUP reload unavailable");
    server = kl_rpc_server_new(&opts, &status);
    if (!server ||
        kl_rpc_server_add_service(server, tenant_service_base(svc)) < 0 ||
        kl_rpc_server_bind(server, &status) < 0) {
        kl_log_write(KL_ERROR, "cannot serve: %s", status.message);
        goto done;
    }
    kl_log_write(KL_INFO, "serving kowloon.tenant.TenantService on %s",
                 kl_rpc_server_endpoint(server));
    rc = kl_rpc_server_run(server) == 0 ? 0 : 1;
    kl_log_write(KL_INFO, "stopped");
done:
    kl_rpc_server_destroy(&server);
    tenant_service_destroy(&svc);
    kl_rpc_client_destroy(&migration);
    free(owners);
    free(migration_endpoints);
    free(reserved);
    kl_rpc_env_destroy(&rpc);
    kl_config_destroy(&cfg);
    return rc;
}
