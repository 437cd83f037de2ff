/*
 * kowloon-billing: Stripe billing. Reads its settings, migrates schema
 * "billing", starts the outbox worker and the grace sweeper, and serves
 * kowloon.billing.BillingService until SIGTERM.
 */
#include "billing_service.h"
#include "kl_config.h"
#include "kl_log.h"
#include "kl_rpc_env.h"
#include "kl_rpc_server.h"

#include <curl/curl.h>
#include <signal.h>
#include <stdlib.h>

/* A LIST setting as an array of borrowed strings; caller frees the array. */
static const char **
s_list(const kl_config_t *cfg, kl_config_id_t id, size_t *n)
{
    *n = kl_config_list_len(cfg, id);
    const char **out = calloc(*n ? *n : 1, sizeof *out);
    if (!out)
        abort();
    for (size_t i = 0; i < *n; i++)
        out[i] = kl_config_list_at(cfg, id, i);
    return out;
}

int
main(void)
{
    kl_status_t status;
    kl_log_init("billing", KL_INFO);
    kl_config_t *cfg = kl_config_load(KL_PROC_BILLING, NULL, NULL, &status);
    if (!cfg) {
        kl_log_write(KL_ERROR, "%s", status.message);
        return 2;
    }
    kl_log_init("billing", (kl_log_level_t)kl_log_level_from_name(
                               kl_config_str(cfg, KL_CFG_LOG_LEVEL)));
    kl_config_log(cfg);
    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        kl_log_write(KL_ERROR, "curl_global_init() failed");
        return 2;
    }

    /* Curve keys and allow-list, drain grace, "@file" endpoint lists
     * (docs/operations/curve.md). The tenant and flags clients are the
     * service's own: their endpoints are read at start, not on SIGHUP. */
    kl_rpc_env_t *rpc = kl_rpc_env_new(cfg, KL_PROC_BILLING, &status);
    kl_rpc_client_opts_t topts = {0}, fopts = {0};
    if (!rpc ||
        kl_rpc_env_client_opts(rpc, KL_CFG_TENANT_ENDPOINTS, &topts, &status) <
            0 ||
        kl_rpc_env_client_opts(rpc, KL_CFG_FLAGS_ENDPOINTS, &fopts, &status) <
            0) {
        kl_log_write(KL_ERROR, "%s", status.message);
        kl_rpc_env_destroy(&rpc);
        kl_config_destroy(&cfg);
        curl_global_cleanup();
        return 2;
    }
    size_t n_secrets;
    const char **secrets =
        s_list(cfg, KL_CFG_STRIPE_WEBHOOK_SECRETS, &n_secrets);
    billing_service_opts_t sopts = {
        .database_url = kl_config_str(cfg, KL_CFG_DATABASE_URL),
        .tenant_endpoints = topts.endpoints,
        .n_tenant_endpoints = topts.n_endpoints,
        .flags_endpoints = fopts.endpoints,
        .n_flags_endpoints = fopts.n_endpoints,
        .curve = topts.curve,
        .server_public_key = topts.server_public_key,
        .max_message_bytes = topts.max_message_bytes,
        .stripe_api_base = kl_config_str(cfg, KL_CFG_STRIPE_API_BASE),
        .stripe_secret_key = kl_config_str(cfg, KL_CFG_STRIPE_SECRET_KEY),
        .stripe_api_version = kl_config_str(cfg, KL_CFG_STRIPE_API_VERSION),
        .webhook_secrets = secrets,
        .n_webhook_secrets = n_secrets,
        .webhook_tolerance_s =
            kl_config_int(cfg, KL_CFG_STRIPE_WEBHOOK_TOLERANCE_S),
        .trial_days = (int)kl_config_int(cfg, KL_CFG_TRIAL_DAYS),
        .checkout_success_url = kl_config_str(cfg, KL_CFG_CHECKOUT_SUCCESS_URL),
        .checkout_cancel_url = kl_config_str(cfg, KL_CFG_CHECKOUT_CANCEL_URL),
        .portal_return_url = kl_config_str(cfg, KL_CFG_PORTAL_RETURN_URL),
        .past_due_grace_s = kl_config_int(cfg, KL_CFG_PAST_DUE_GRACE_S),
        .retention_days =
            (int)kl_config_int(cfg, KL_CFG_BILLING_RETENTION_DAYS),
    };
    int rc = 1;
    kl_rpc_server_t *server = NULL;
    billing_service_t *svc = billing_service_new(&sopts, &status);
    if (!svc) {
        kl_log_write(KL_ERROR, "%s", status.message);
        rc = 2;
        goto done;
    }
    if (billing_service_migrate(svc, &status) < 0) {
        kl_log_write(KL_ERROR, "migrating schema billing failed: %s",
                     status.message);
        goto done;
    }
    if (billing_service_start(svc, &status) < 0) {
        kl_log_write(KL_ERROR, "cannot start the outbox: %s", status.message);
        goto done;
    }
    kl_rpc_server_opts_t opts = {
        .bind = kl_config_str(cfg, KL_CFG_BILLING_BIND),
        .workers = (int)kl_config_int(cfg, KL_CFG_WORKERS),
        .max_message_bytes =
            (size_t)kl_config_int(cfg, KL_CFG_RPC_MAX_MESSAGE_BYTES),
    };
    billing_service_server_opts(svc, &opts);
    kl_rpc_env_server_opts(rpc, &opts);
    if (kl_rpc_env_handle_sighup(rpc) < 0)
        kl_log_write(KL_WARN, "SIGHUP reload unavailable");
    server = kl_rpc_server_new(&opts, &status);
    if (!server ||
        kl_rpc_server_add_service(server, billing_service_base(svc)) < 0 ||
        kl_rpc_server_bind(server, &status) < 0) {
        kl_log_write(KL_ERROR, "cannot serve: %s", status.message);
        goto done;
    }
    kl_log_write(KL_INFO, "serving kowloon.billing.BillingService on %s",
                 kl_rpc_server_endpoint(server));
    rc = kl_rpc_server_run(server) == 0 ? 0 : 1;
    kl_log_write(KL_INFO, "stopped");
done:
    kl_rpc_server_destroy(&server);
    billing_service_destroy(&svc);
    kl_rpc_env_destroy(&rpc);
    free(secrets);
    kl_config_destroy(&cfg);
    curl_global_cleanup();
    return rc;
}
