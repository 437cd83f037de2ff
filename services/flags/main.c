/*
 * kowloon-flags: plans, per-tenant overrides, feature flags and usage
 * counters. Reads its settings, migrates schema "flags", writes the Redis
 * mirror of the plans, and serves kowloon.flags.FlagsService until SIGTERM.
 */
#include "flags_service.h"
#include "kl_config.h"
#include "kl_log.h"
#include "kl_rpc_env.h"
#include "kl_rpc_server.h"

#include <signal.h>

int
main(void)
{
    kl_status_t status;
    /* Until the settings are read, errors go out as info-level JSON. */
    kl_log_init("flags", KL_INFO);
    kl_config_t *cfg = kl_config_load(KL_PROC_FLAGS, NULL, NULL, &status);
    if (!cfg) {
        kl_log_write(KL_ERROR, "%s", status.message);
        return 2;
    }
    kl_log_init("flags", (kl_log_level_t)kl_log_level_from_name(
                             kl_config_str(cfg, KL_CFG_LOG_LEVEL)));
    kl_config_log(cfg);
    /* hiredis writes with write(2): a peer that went away must not kill
     * the process. */
    signal(SIGPIPE, SIG_IGN);

    flags_service_opts_t sopts = {
        .database_url = kl_config_str(cfg, KL_CFG_DATABASE_URL),
        .redis_url = kl_config_str(cfg, KL_CFG_REDIS_URL),
        .events_channel = kl_config_str(cfg, KL_CFG_EVENTS_CHANNEL),
    };
    int rc = 1;
    kl_rpc_server_t *server = NULL;
    flags_service_t *svc = NULL;
    /* Curve keys and allow-list, drain grace, SIGHUP reload
     * (docs/operations/curve.md). */
    kl_rpc_env_t *rpc = kl_rpc_env_new(cfg, KL_PROC_FLAGS, &status);
    if (!rpc) {
        kl_log_write(KL_ERROR, "%s", status.message);
        rc = 2;
        goto done;
    }
    svc = flags_service_new(&sopts, &status);
    if (!svc) {
        kl_log_write(KL_ERROR, "%s", status.message);
        rc = 2;
        goto done;
    }
    if (flags_service_migrate(svc, &status) < 0) {
        kl_log_write(KL_ERROR, "migrating schema flags failed: %s",
                     status.message);
        goto done;
    }
    kl_rpc_server_opts_t opts = {
        .bind = kl_config_str(cfg, KL_CFG_FLAGS_BIND),
        .workers = (int)kl_config_int(cfg, KL_CFG_WORKERS),
        .max_message_bytes =
            (size_t)kl_config_int(cfg, KL_CFG_RPC_MAX_MESSAGE_BYTES),
    };
    flags_service_server_opts(svc, &opts);
    kl_rpc_env_server_opts(rpc, &opts);
    if (kl_rpc_env_handle_sighup(rpc) < 0)
        kl_log_write(KL_WARN, "SIGHUP reload unavailable");
    server = kl_rpc_server_new(&opts, &status);
    if (!server ||
        kl_rpc_server_add_service(server, flags_service_base(svc)) < 0 ||
        kl_rpc_server_bind(server, &status) < 0) {
        kl_log_write(KL_ERROR, "cannot serve: %s", status.message);
        goto done;
    }
    kl_log_write(KL_INFO, "serving kowloon.flags.FlagsService on %s",
                 kl_rpc_server_endpoint(server));
    rc = kl_rpc_server_run(server) == 0 ? 0 : 1;
    kl_log_write(KL_INFO, "stopped");
done:
    kl_rpc_server_destroy(&server);
    flags_service_destroy(&svc);
    kl_rpc_env_destroy(&rpc);
    kl_config_destroy(&cfg);
    return rc;
}
