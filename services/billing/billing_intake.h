/*
 * billing_intake: one Stripe webhook delivery (HandleWebhook), in this
 * order (docs/billing.md, "Exactly once"):
 *
 *   1. the signature, over the bytes as received (billing_webhook);
 *   2. only then the JSON: id, type, integer created and data.object;
 *   3. one transaction: the event recorded in the inbox (a recorded id is
 *      a duplicate: nothing more is done), its effect decided from the
 *      stored state (billing_events) and written with the outbox rows and
 *      the inbox row's outcome, then COMMIT. Success means committed.
 *
 * Invoice events (billing_events_preloadable) take two round trips, two
 * pipelines on the worker's kl_pg (kl_pg_pipeline_ex): BEGIN with the
 * inbox statement, which also reads and locks the tenant's state; then
 * the effect with COMMIT. The others take the general path (BEGIN, inbox,
 * advisory lock and state, effect, COMMIT, a round trip each).
 */
#ifndef BILLING_INTAKE_H
#define BILLING_INTAKE_H

#include "billing_plans.h"
#include "kl_code.h"
#include "kl_pg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *const *secrets; /* whsec_..., any may match */
    size_t n_secrets;
    int64_t tolerance_s;    /* |now - t| allowed for the signature */
    billing_plans_t *plans; /* price -> plan */
    /* Test only (billing_service_opts_t.fault): "webhook.decided", between
     * the two round trips; non-zero stops there (UNAVAILABLE). */
    int (*fault)(const char *point, void *user);
    void *fault_user;
} billing_intake_opts_t;

/*
 * Handles one delivery on a worker's connection pg. Returns
 * 0 once the event is recorded (committed) or found recorded already
 * (*duplicate); event_id is the event's id, *queued whether outbox rows
 * were added (wake the outbox worker). Otherwise -code with status:
 * INVALID_ARGUMENT for a bad signature or payload (the reasons of
 * billing_webhook_verify, "webhook payload is not a JSON object", "webhook
 * payload is not a Stripe event: want id, type, created and data.object"),
 * UNAVAILABLE when it was not recorded for a reason a redelivery may not
 * meet (database down, a conflict with a concurrent transaction, the flags
 * service down for a price), INTERNAL for a bug.
 */
int billing_intake_handle(const billing_intake_opts_t *opts, kl_pg_t *pg,
                          const uint8_t *payload, size_t payload_len,
                          const char *signature, char event_id[256],
                          bool *duplicate, bool *queued, kl_status_t *status);

#endif
