/*
 * kowloon-workspace: the worked example of a product service. Reads its
 * settings, migrates schema "workspace" as the owner role, grants and
 * checks the application role (refusing to run, exit 2, when row-level
 * security would not hold), and serves kowloon.workspace.WorkspaceService
 * until SIGTERM.
 */
#include "kl_config.h"
#include "kl_log.h"
#include "kl_rpc_client.h"
#include "kl_rpc_server.h"
#include "kowloon/flags.pb-c.h"
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
    kl_rpc_client_t *flags = kl_rpc_client_new(
        &kowloon__flags__flags_service__descriptor, &copts, &status);
    if (!flags) {
        kl_log_write(KL_ERROR, "%s: %s", kl_config_name(KL_CFG_FLAGS_ENDPOINTS),
                     status.message);
        rc = 2;
        goto done;
    }
    workspace_service_opts_t sopts = {
        .database_url = kl_config_str(cfg, KL_CFG_DATABASE_URL),
        .owner_url = kl_config_str(cfg, KL_CFG_DATA_OWNER_URL),
        .redis_url = kl_config_str(cfg, KL_CFG_REDIS_URL),
        .events_channel = kl_config_str(cfg, KL_CFG_EVENTS_CHANNEL),
        .flags = flags,
        .flags_timeout_ms = S_FLAGS_TIMEOUT_MS,
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
    free(flags_endpoints);
    kl_config_destroy(&cfg);
    return rc;
}
