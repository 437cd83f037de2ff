/*
 * kowloon-workspace: the worked example of a product service. Reads its
 * settings, prepares the shared schema "workspace" as the owner role
 * (grants; the tables come from kowloon-migration), checks the application
 * role (refusing to run, exit 2, when row-level security would not hold),
 * and serves kowloon.workspace.WorkspaceService until SIGTERM, in every
 * tenant's isolation model (placements from the tenant service).
 */
#include "kl_config.h"
#include "kl_log.h"
#include "kl_rpc_client.h"
#include "kl_rpc_env.h"
#include "kl_rpc_server.h"
#include "kowloon/flags.pb-c.h"
#include "kowloon/tenant.pb-c.h"
#include "workspace_service.h"

#include <signal.h>
#include <stdlib.h>

/* Deadline of a call to the flags service. */
#define S_FLAGS_TIMEOUT_MS 3000

int
main(void)
{
    kl_status_t status;
    /* Until the settings are read, errors go out as info-level JSON. */
    kl_log_init("workspace", KL_INFO);
    kl_config_t *cfg = kl_config_load(KL_PROC_WORKSPACE, NULL, NULL, &status);
    if (!cfg) {
        kl_log_write(KL_ERROR, "%s", status.message);
        return 2;
    }
    kl_log_init("workspace", (kl_log_level_t)kl_log_level_from_name(
                                 kl_config_str(cfg, KL_CFG_LOG_LEVEL)));
    kl_config_log(cfg);
    /* hiredis writes with write(2): a peer that went away must not kill
     * the process. */
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    kl_rpc_server_t *server = NULL;
    workspace_service_t *svc = NULL;
    /* Curve keys and allow-list, drain grace, "@file" endpoint lists
     * (docs/operations/curve.md); destroyed after the server and clients. */
    kl_rpc_env_t *rpc = kl_rpc_env_new(cfg, KL_PROC_WORKSPACE, &status);
    if (!rpc) {
        kl_log_write(KL_ERROR, "%s", status.message);
        kl_config_destroy(&cfg);
        return 2;
    }
    size_t n_flags = kl_config_list_len(cfg, KL_CFG_FLAGS_ENDPOINTS);
    const char **flags_endpoints =
        calloc(n_flags ? n_flags : 1, sizeof *flags_endpoints);
    if (!flags_endpoints)
        abort();
    for (size_t i = 0; i < n_flags; i++)
        flags_endpoints[i] = kl_config_list_at(cfg, KL_CFG_FLAGS_ENDPOINTS, i);
    kl_rpc_client_opts_t copts = {
        .endpoints = flags_endpoints,
        .n_endpoints = n_flags,
        .max_message_bytes =
            (size_t)kl_config_int(cfg, KL_CFG_RPC_MAX_MESSAGE_BYTES),
    };
    kl_rpc_client_t *tenants = NULL;
    size_t n_servers = kl_config_list_len(cfg, KL_CFG_TENANT_DB_SERVERS);
    const char **servers = calloc(n_servers + 1, sizeof *servers);
    size_t n_placement = kl_config_list_len(cfg, KL_CFG_PLACEMENT_ENDPOINTS);
    const char **placement = calloc(n_placement + 1, sizeof *placement);
    if (!servers || !placement)
        abort();
    for (size_t i = 0; i < n_servers; i++)
        servers[i] = kl_config_list_at(cfg, KL_CFG_TENANT_DB_SERVERS, i);
    for (size_t i = 0; i < n_placement; i++)
        placement[i] = kl_config_list_at(cfg, KL_CFG_PLACEMENT_ENDPOINTS, i);
    kl_rpc_client_t *flags = NULL;
    if (kl_rpc_env_client_opts(rpc, KL_CFG_FLAGS_ENDPOINTS, &copts, &status) ==
        0)
        flags = kl_rpc_client_new(&kowloon__flags__flags_service__descriptor,
                                  &copts, &status);
    if (!flags) {
        kl_log_write(KL_ERROR, "%s: %s", kl_config_name(KL_CFG_FLAGS_ENDPOINTS),
                     status.message);
        rc = 2;
        goto done;
    }
    if (n_placement > 0) {
        kl_rpc_client_opts_t topts = copts;
        topts.endpoints = placement;
        topts.n_endpoints = n_placement;
        if (kl_rpc_env_client_opts(rpc, KL_CFG_PLACEMENT_ENDPOINTS, &topts,
                                   &status) == 0)
            tenants = kl_rpc_client_new(
                &kowloon__tenant__tenant_service__descriptor, &topts, &status);
        if (!tenants) {
            kl_log_write(KL_ERROR, "%s: %s",
                         kl_config_name(KL_CFG_PLACEMENT_ENDPOINTS),
                         status.message);
            rc = 2;
            goto done;
        }
    }
    workspace_service_opts_t sopts = {
        .database_url = kl_config_str(cfg, KL_CFG_DATABASE_URL),
        .owner_url = kl_config_str(cfg, KL_CFG_DATA_OWNER_URL),
        .redis_url = kl_config_str(cfg, KL_CFG_REDIS_URL),
        .events_channel = kl_config_str(cfg, KL_CFG_EVENTS_CHANNEL),
        .flags = flags,
        .flags_timeout_ms = S_FLAGS_TIMEOUT_MS,
        .db_servers = servers,
        .n_db_servers = n_servers,
        .max_open_dbs = (size_t)kl_config_int(cfg, KL_CFG_TENANT_DB_MAX_OPEN),
        .placement = {.tenants = tenants, .timeout_ms = S_FLAGS_TIMEOUT_MS},
    };
    svc = workspace_service_new(&sopts, &status);
    if (!svc) {
        kl_log_write(KL_ERROR, "%s", status.message);
        rc = 2;
        goto done;
    }
    if (workspace_service_prepare(svc, &status) < 0) {
        /* Unsafe roles are a configuration error: refuse, as for a bad
         * setting. A database that cannot be reached is not. */
        rc = status.code == KL_FAILED_PRECONDITION ? 2 : 1;
        kl_log_write(KL_ERROR, "%s: %s",
                     rc == 2 ? "refusing to run"
                             : "preparing schema workspace failed",
                     status.message);
        goto done;
    }
    kl_rpc_server_opts_t opts = {
        .bind = kl_config_str(cfg, KL_CFG_WORKSPACE_BIND),
        .workers = (int)kl_config_int(cfg, KL_CFG_WORKERS),
        .max_message_bytes =
            (size_t)kl_config_int(cfg, KL_CFG_RPC_MAX_MESSAGE_BYTES),
    };
    workspace_service_server_opts(svc, &opts);
    kl_rpc_env_server_opts(rpc, &opts);
    if (kl_rpc_env_handle_sighup(rpc) < 0)
        kl_log_write(KL_WARN, "SIGHUP reload unavailable");
    server = kl_rpc_server_new(&opts, &status);
    if (!server ||
        kl_rpc_server_add_service(server, workspace_service_base(svc)) < 0 ||
        kl_rpc_server_bind(server, &status) < 0) {
        kl_log_write(KL_ERROR, "cannot serve: %s", status.message);
        goto done;
    }
    kl_log_write(KL_INFO, "serving kowloon.workspace.WorkspaceService on %s",
                 kl_rpc_server_endpoint(server));
    rc = kl_rpc_server_run(server) == 0 ? 0 : 1;
    kl_log_write(KL_INFO, "stopped");
done:
    kl_rpc_server_destroy(&server);
    workspace_service_destroy(&svc);
    kl_rpc_client_destroy(&flags);
    kl_rpc_client_destroy(&tenants);
    free(flags_endpoints);
    free(servers);
    free(placement);
    kl_rpc_env_destroy(&rpc);
    kl_config_destroy(&cfg);
    return rc;
}
