/*
 * billing_service: kowloon.billing.BillingService (proto/kowloon/billing.proto)
 * on kl_rpc_server — Stripe customers, subscriptions, Checkout, Portal and
 * Alipay payments, and the webhook inbox. See docs/billing.md.
 *
 * Each worker thread owns one kl_pg. The service owns the Stripe client,
 * the tenant and flags clients, the plan cache and the outbox threads
 * (started by billing_service_start, after the migration).
 */
#ifndef BILLING_SERVICE_H
#define BILLING_SERVICE_H

#include "billing_intake.h"
#include "kl_code.h"
#include "kl_rpc_server.h"

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *database_url;
    const char *const *tenant_endpoints; /* TenantService instances */
    size_t n_tenant_endpoints;
    const char *const *flags_endpoints; /* FlagsService instances */
    size_t n_flags_endpoints;
    const char *stripe_api_base;
    const char *stripe_secret_key;
    const char *stripe_api_version;
    const char *const *webhook_secrets; /* whsec_..., any may match */
    size_t n_webhook_secrets;
    int64_t webhook_tolerance_s;
    int trial_days;
    const char *checkout_success_url;
    const char *checkout_cancel_url;
    const char *portal_return_url;
    int64_t past_due_grace_s;
    /* Calls to the tenant and flags services (kl_rpc_client.h): Curve
     * keys (borrowed, must outlive the service; NULL: plaintext), the
     * server key of endpoints without "?key=" and the reply size cap
     * (0: default). */
    const kl_curve_t *curve;
    const char *server_public_key;
    size_t max_message_bytes;
    /* Tuning (0: defaults); tests shorten them. */
    int64_t sweep_interval_ms;      /* grace sweeper period, default 5000 */
    int retention_days;             /* inbox/outbox retention; 0: 90 */
    int64_t prune_interval_ms;      /* how often to prune; 0: one hour */
    long stripe_backoff_ms;         /* first retry wait, default 500 */
    long stripe_max_total_ms;       /* a Stripe call's budget, default 60000 */
    long stripe_request_timeout_ms; /* one attempt, default 30000 */
    /* Test only: called at named points ("customer.created",
     * "subscription.created", and "webhook.decided" between the intake's
     * two round trips); non-zero makes the call stop there as if the
     * process had died (UNAVAILABLE, nothing more written). */
    int (*fault)(const char *point, void *user);
    void *fault_user;
} billing_service_opts_t;

typedef struct billing_service billing_service_t;

/* Copies opts; NULL + INVALID_ARGUMENT on a bad option. */
billing_service_t *billing_service_new(const billing_service_opts_t *opts,
                                       kl_status_t *status);
/* Stops the outbox threads and frees. */
void billing_service_destroy(billing_service_t **self_p);

/* Creates or upgrades schema "billing" over a connection of its own. */
int billing_service_migrate(const billing_service_t *self, kl_status_t *status);

/* Starts the outbox worker and the grace sweeper. */
int billing_service_start(billing_service_t *self, kl_status_t *status);

ProtobufCService *billing_service_base(billing_service_t *self);

/* Sets opts' worker_init, worker_fini, ready and user. */
void billing_service_server_opts(billing_service_t *self,
                                 kl_rpc_server_opts_t *opts);

/* Webhook group commit so far (billing_intake.h): batches of two or more
 * deliveries, the deliveries in them, batches recorded one by one. */
void billing_service_intake_stats(billing_service_t *self,
                                  billing_intake_group_stats_t *out);

#endif
