/*
 * billing_events: what a Stripe event (or a Stripe API answer) does to a
 * tenant's billing state, decided from the current state (docs/billing.md):
 *
 * - Reordering: each subscription keeps the `created` time and id of the
 *   last event applied to its status; an event created earlier than that
 *   changes nothing (equal times apply: the later arrival wins).
 * - Only the tenant's current subscription moves its status. An event for
 *   another subscription is ignored, unless the current one has ended
 *   (canceled, incomplete_expired) or it is a completed Checkout (the
 *   tenant bought a new subscription).
 * - Stripe status -> tenant status, one table (billing_events_tenant_status).
 * - Tenant changes are rows of billing.outbox written in the caller's
 *   transaction.
 *
 * Every function runs inside the caller's transaction, after
 * billing_store_lock_tenant where it names a tenant itself.
 */
#ifndef BILLING_EVENTS_H
#define BILLING_EVENTS_H

#include "billing_plans.h"
#include "kl_code.h"
#include "kl_pg.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    char tenant_id[37]; /* "" when the event concerns no known tenant */
    char outcome[160];  /* what was done, for the inbox row and the log */
    bool outbox;        /* outbox rows were added: wake the worker */
} billing_events_result_t;

/* Tenant status for a Stripe subscription status: trialing, active,
 * past_due as they are; unpaid, canceled, incomplete_expired, paused ->
 * suspended; NULL (no change) for incomplete and unknown ones. */
const char *billing_events_tenant_status(const char *stripe_status);

/* Whether a subscription in this status has ended for good. */
bool billing_events_terminal(const char *stripe_status);

/* Applies event (type, created, data.object) recorded in the inbox as
 * event_id. Unknown types: result outcome "ignored", 0. Returns -code
 * (UNAVAILABLE when the flags service is needed and down) and the caller
 * rolls back. */
int billing_events_apply(kl_pg_t *pg, billing_plans_t *plans,
                         const char *event_id, const char *type,
                         int64_t created, json_t *object,
                         billing_events_result_t *result, kl_status_t *status);

/* Applies a subscription object from an API answer for tenant_id, as of
 * `created` (Unix s), source naming it ("api"). replace: it becomes the
 * tenant's current subscription even if another one is live. */
int billing_events_apply_subscription(kl_pg_t *pg, billing_plans_t *plans,
                                      const char *tenant_id, json_t *sub,
                                      int64_t created, const char *source,
                                      bool replace,
                                      billing_events_result_t *result,
                                      kl_status_t *status);

#endif
