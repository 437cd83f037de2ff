/*
 * kowloon-migration: applies the product's migrations to every tenant.
 * Reads its settings, loads KOWLOON_MIGRATIONS_DIR (refusing to start on a
 * malformed set), migrates schema "migration", starts the migration workers
 * (which resume any run left unfinished) and serves
 * kowloon.migration.MigrationService until SIGTERM.
 */
#include "kl_config.h"
#include "kl_log.h"
#include "kl_pg.h"
#include "kl_rpc_client.h"
#include "kl_rpc_env.h"
#include "kl_rpc_server.h"
#include "kowloon/tenant.pb-c.h"
#include "migration_files.h"
#include "migration_runner.h"
#include "migration_service.h"
#include "migration_store.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Deadline of a call to the tenant service. */
#define S_TENANT_TIMEOUT_MS 10000

int
main(void)
{
    kl_status_t status;
    kl_log_init("migration", KL_INFO);
    kl_config_t *cfg = kl_config_load(KL_PROC_MIGRATION, NULL, NULL, &status);
    if (!cfg) {
        kl_log_write(KL_ERROR, "%s", status.message);
        return 2;
    }
    kl_log_init("migration", (kl_log_level_t)kl_log_level_from_name(
                                 kl_config_str(cfg, KL_CFG_LOG_LEVEL)));
    kl_config_log(cfg);
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    kl_rpc_server_t *server = NULL;
    kl_rpc_client_t *tenants = NULL;
    migration_runner_t *runner = NULL;
    migration_service_t *svc = NULL;
    const char **endpoints = NULL;
    const char **owners = NULL;
    /* Curve keys and allow-list, drain grace, "@file" endpoint lists
     * (docs/operations/curve.md); destroyed after the server and client. */
    kl_rpc_env_t *rpc = kl_rpc_env_new(cfg, KL_PROC_MIGRATION, &status);
    if (!rpc) {
        kl_log_write(KL_ERROR, "%s", status.message);
        kl_config_destroy(&cfg);
        return 2;
    }
    migration_files_t *files = migration_files_load(
        kl_config_str(cfg, KL_CFG_MIGRATIONS_DIR), &status);
    if (!files) {
        kl_log_write(KL_ERROR, "%s: %s", kl_config_name(KL_CFG_MIGRATIONS_DIR),
                     status.message);
        rc = 2;
        goto done;
    }
    kl_log_write(KL_INFO, "%zu migrations loaded, latest version %d",
                 migration_files_count(files), migration_files_latest(files));

    size_t n_ep = kl_config_list_len(cfg, KL_CFG_TENANT_ENDPOINTS);
    endpoints = calloc(n_ep ? n_ep : 1, sizeof *endpoints);
    if (!endpoints)
        abort();
    for (size_t i = 0; i < n_ep; i++)
        endpoints[i] = kl_config_list_at(cfg, KL_CFG_TENANT_ENDPOINTS, i);
    kl_rpc_client_opts_t copts = {
        .endpoints = endpoints,
        .n_endpoints = n_ep,
        .max_message_bytes =
            (size_t)kl_config_int(cfg, KL_CFG_RPC_MAX_MESSAGE_BYTES),
    };
    if (kl_rpc_env_client_opts(rpc, KL_CFG_TENANT_ENDPOINTS, &copts, &status) ==
        0)
        tenants = kl_rpc_client_new(
            &kowloon__tenant__tenant_service__descriptor, &copts, &status);
    if (!tenants) {
        kl_log_write(KL_ERROR, "%s: %s",
                     kl_config_name(KL_CFG_TENANT_ENDPOINTS), status.message);
        rc = 2;
        goto done;
    }

    char host[128] = "";
    gethostname(host, sizeof host - 1);
    char instance[192];
    snprintf(instance, sizeof instance, "%s:%d", host, (int)getpid());
    const char *database_url = kl_config_str(cfg, KL_CFG_DATABASE_URL);
    size_t n_owners = kl_config_list_len(cfg, KL_CFG_TENANT_DB_OWNER_SERVERS);
    owners = calloc(n_owners ? n_owners : 1, sizeof *owners);
    if (!owners)
        abort();
    for (size_t i = 0; i < n_owners; i++)
        owners[i] = kl_config_list_at(cfg, KL_CFG_TENANT_DB_OWNER_SERVERS, i);
    const char *owner_url = kl_config_str(cfg, KL_CFG_DATA_OWNER_URL);
    /* Tables a migration adds are granted to the application role in the
     * migration's transaction; without one they stay unreachable to it
     * until something else grants them (said once, here). */
    const char *app_role = kl_config_str(cfg, KL_CFG_DATA_APP_ROLE);
    if (!app_role[0])
        kl_log_write(KL_WARN,
                     "%s is empty: tables added by migrations are not "
                     "granted to the application role",
                     kl_config_name(KL_CFG_DATA_APP_ROLE));
    /* Schema "migration" first: the workers claim from it at once. */
    kl_pg_t *pg = kl_pg_new(database_url);
    int mrc = migration_store_migrate(pg, &status);
    kl_pg_destroy(&pg);
    if (mrc < 0) {
        kl_log_write(KL_ERROR, "migrating schema migration failed: %s",
                     status.message);
        goto done;
    }
    migration_runner_opts_t ropts = {
        .database_url = database_url,
        .owner_url = owner_url,
        .owner_servers = owners,
        .n_owner_servers = n_owners,
        .files = files,
        .workers = (int)kl_config_int(cfg, KL_CFG_MIGRATION_WORKERS),
        .poll_ms = (int)kl_config_int(cfg, KL_CFG_MIGRATION_POLL_MS),
        .instance = instance,
        .app_role = app_role,
    };
    runner = migration_runner_new(&ropts, &status);
    if (!runner) {
        kl_log_write(KL_ERROR, "%s", status.message);
        rc = 2;
        goto done;
    }
    migration_service_opts_t sopts = {
        .database_url = database_url,
        .owner_url = owner_url,
        .owner_servers = owners,
        .n_owner_servers = n_owners,
        .shared_schema = kl_config_str(cfg, KL_CFG_MIGRATION_SHARED_SCHEMA),
        .files = files,
        .tenants = tenants,
        .tenants_timeout_ms = S_TENANT_TIMEOUT_MS,
        .runner = runner,
        .app_role = app_role,
    };
    svc = migration_service_new(&sopts, &status);
    if (!svc) {
        kl_log_write(KL_ERROR, "%s", status.message);
        rc = 2;
        goto done;
    }
    kl_rpc_server_opts_t opts = {
        .bind = kl_config_str(cfg, KL_CFG_MIGRATION_BIND),
        .workers = (int)kl_config_int(cfg, KL_CFG_WORKERS),
        .max_message_bytes =
            (size_t)kl_config_int(cfg, KL_CFG_RPC_MAX_MESSAGE_BYTES),
    };
    migration_service_server_opts(svc, &opts);
    kl_rpc_env_server_opts(rpc, &opts);
    if (kl_rpc_env_handle_sighup(rpc) < 0)
        kl_log_write(KL_WARN, "SIGHUP reload unavailable");
    server = kl_rpc_server_new(&opts, &status);
    if (!server ||
        kl_rpc_server_add_service(server, migration_service_base(svc)) < 0 ||
        kl_rpc_server_bind(server, &status) < 0) {
        kl_log_write(KL_ERROR, "cannot serve: %s", status.message);
        goto done;
    }
    kl_log_write(KL_INFO,
                 "serving kowloon.migration.MigrationService on %s as %s",
                 kl_rpc_server_endpoint(server), instance);
    rc = kl_rpc_server_run(server) == 0 ? 0 : 1;
    kl_log_write(KL_INFO, "stopped");
done:
    kl_rpc_server_destroy(&server);
    migration_runner_destroy(&runner);
    migration_service_destroy(&svc);
    kl_rpc_client_destroy(&tenants);
    free(endpoints);
    free(owners);
    migration_files_destroy(&files);
    kl_rpc_env_destroy(&rpc);
    kl_config_destroy(&cfg);
    return rc;
}
