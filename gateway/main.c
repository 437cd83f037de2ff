/*
 * kowloon-gateway: reads config, starts the server, waits for SIGTERM or
 * SIGINT, stops. Everything else lives in gw_server.
 */
#include "gw_server.h"

#include "kl_config.h"
#include "kl_log.h"
#include "kl_rpc_env.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>

int
main(void)
{
    kl_status_t status;
    sigset_t sigs;
    int sig = 0;

    /* Block the stop signals before any thread starts, so that every
     * thread inherits the mask and only sigwait() below sees them. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    kl_config_t *cfg = kl_config_load(KL_PROC_GATEWAY, NULL, NULL, &status);
    if (!cfg) {
        kl_log_init("gateway", KL_INFO);
        kl_log_write(KL_ERROR, "invalid configuration: %s", status.message);
        return 2;
    }
    kl_log_init("gateway", (kl_log_level_t)kl_log_level_from_name(
                               kl_config_str(cfg, KL_CFG_LOG_LEVEL)));
    kl_config_log(cfg);

    /* Curve keys, "@file" endpoint lists reloaded on SIGHUP
     * (docs/operations/curve.md). */
    kl_rpc_env_t *rpc = kl_rpc_env_new(cfg, KL_PROC_GATEWAY, &status);
    if (!rpc) {
        kl_log_write(KL_ERROR, "invalid configuration: %s", status.message);
        kl_config_destroy(&cfg);
        return 2;
    }
    gw_server_t *server = gw_server_new_env(cfg, rpc, &status);
    if (!server) {
        kl_log_write(KL_ERROR, "gateway did not start: %s", status.message);
        kl_rpc_env_destroy(&rpc);
        kl_config_destroy(&cfg);
        return status.code == KL_INVALID_ARGUMENT ? 2 : 1;
    }
    if (kl_rpc_env_handle_sighup(rpc) < 0)
        KL_LOG(KL_WARN, "SIGHUP reload unavailable");
    KL_LOG(KL_INFO, "gateway listening on %s",
           kl_config_str(cfg, KL_CFG_HTTP_LISTEN));

    while (sigwait(&sigs, &sig) != 0)
        ;
    KL_LOG(KL_INFO, "received %s, stopping",
           sig == SIGTERM ? "SIGTERM" : "SIGINT");
    gw_server_destroy(&server);
    kl_rpc_env_destroy(&rpc);
    kl_config_destroy(&cfg);
    KL_LOG(KL_INFO, "gateway stopped");
    return 0;
}
