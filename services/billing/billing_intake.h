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
 *
 * Group commit (opts.group): invoice deliveries that arrive while
 * BILLING_INTAKE_LEADERS batches are being recorded queue up, and the next
 * worker to lead records up to BILLING_INTAKE_BATCH_MAX of them in one
 * transaction of the same two round trips, each one statement over arrays
 * (billing_store's batch forms): BEGIN with the inbox statement of them
 * all; the decisions; the effect statement of them all with COMMIT. Each
 * delivery is answered only once that COMMIT succeeded, exactly as alone.
 * No two deliveries with a key in common are in batches at once (the
 * later waits for a batch after), so one tenant's events are decided in
 * arrival order from committed state. When anything in a batch fails (the
 * database, a decision, two events that turn out to be one tenant's), the
 * batch is rolled back and each of its deliveries is recorded alone, as
 * without a group, and answered by its own result: one delivery's failure
 * is never another's.
 * docs/billing.md, "Group commit".
 */
#ifndef BILLING_INTAKE_H
#define BILLING_INTAKE_H

#include "billing_plans.h"
#include "kl_code.h"
#include "kl_pg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The most deliveries one transaction records. */
#define BILLING_INTAKE_BATCH_MAX 64
/* Batches recorded at once, each by its leader on its own connection. */
#define BILLING_INTAKE_LEADERS 2

/* Deliveries waiting for a batch, shared by a service's workers. */
typedef struct billing_intake_group billing_intake_group_t;

billing_intake_group_t *billing_intake_group_new(void);
/* Only once no worker uses it. */
void billing_intake_group_destroy(billing_intake_group_t **self_p);

typedef struct {
    uint64_t batches;   /* transactions of two or more deliveries */
    uint64_t grouped;   /* deliveries recorded in them */
    uint64_t fallbacks; /* batches rolled back and recorded one by one */
    uint64_t waiting;   /* deliveries queued now, not yet in a batch */
} billing_intake_group_stats_t;

void billing_intake_group_stats(billing_intake_group_t *self,
                                billing_intake_group_stats_t *out);

typedef struct {
    const char *const *secrets; /* whsec_..., any may match */
    size_t n_secrets;
    int64_t tolerance_s;    /* |now - t| allowed for the signature */
    billing_plans_t *plans; /* price -> plan */
    /* Test only (billing_service_opts_t.fault): "webhook.decided", between
     * the two round trips; non-zero stops there (UNAVAILABLE).
     * "webhook.batch.decided", the same point in a batch of two or more,
     * once per delivery; non-zero rolls the batch back (each delivery is
     * then recorded alone). */
    int (*fault)(const char *point, void *user);
    void *fault_user;
    /* Group commit across the workers sharing it; NULL: each delivery in
     * its own transaction. */
    billing_intake_group_t *group;
} billing_intake_opts_t;

/*
 * Handles one delivery on a worker's connection pg (with a group, the
 * batch it joins may be recorded on another worker's connection, while
 * this one waits). Returns
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
