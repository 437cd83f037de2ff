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
 * - Tenant changes are rows of billing.outbox.
 *
 * Deciding reads the state and locks it in the caller's transaction; the
 * writes a decision makes are not made here but returned as the result's
 * effect, which the caller applies (billing_store_effect, or the intake's
 * last round trip) before it commits. A change of one tenant's billing
 * state is serialised by pg_advisory_xact_lock on the tenant
 * (billing_store_lock_tenant) and the subscription row's lock.
 *
 * Intake preload (billing_events_preloadable): invoice events, notes and
 * unknown types are decided from the state billing_store_intake read and
 * locked in the inbox statement, without the advisory lock. That is safe
 * because such an event writes the subscription only when its row exists,
 * and every writer of an existing row (this module, the grace sweeper)
 * takes the row's lock before reading the state it decides from: the row
 * lock alone orders them. The advisory lock remains for the events that
 * may create the row (subscription, Checkout, payment), where there is no
 * row to lock yet.
 */
#ifndef BILLING_EVENTS_H
#define BILLING_EVENTS_H

#include "billing_plans.h"
#include "billing_store.h"
#include "kl_code.h"
#include "kl_pg.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    char tenant_id[37];      /* "" when the event concerns no known tenant */
    char outcome[160];       /* what was done, for the inbox row and the log */
    billing_effect_t effect; /* the writes; effect.outbox: wake the worker */
} billing_events_result_t;

/* Where a decision reads the state from. */
typedef struct {
    kl_pg_t *pg;                      /* reads and locks; NULL with a preload */
    billing_plans_t *plans;           /* price -> plan */
    const billing_preload_t *preload; /* the intake's read, or NULL */
} billing_events_ctx_t;

/* Tenant status for a Stripe subscription status: trialing, active,
 * past_due as they are; unpaid, canceled, incomplete_expired, paused ->
 * suspended; NULL (no change) for incomplete and unknown ones. */
const char *billing_events_tenant_status(const char *stripe_status);

/* Whether a subscription in this status has ended for good. */
bool billing_events_terminal(const char *stripe_status);

/* Decides event (type, created, data.object) recorded in the inbox as
 * event_id. Unknown types: result outcome "ignored", 0. Returns -code
 * (UNAVAILABLE when the flags service is needed and down; INTERNAL when a
 * preload does not hold what the event needs) and the caller rolls back. */
int billing_events_apply(const billing_events_ctx_t *ctx, const char *event_id,
                         const char *type, int64_t created, json_t *object,
                         billing_events_result_t *result, kl_status_t *status);

/* Decides a subscription object from an API answer for tenant_id, as of
 * `created` (Unix s), source naming it ("api"). replace: it becomes the
 * tenant's current subscription even if another one is live. Needs
 * ctx->pg. */
int billing_events_apply_subscription(const billing_events_ctx_t *ctx,
                                      const char *tenant_id, json_t *sub,
                                      int64_t created, const char *source,
                                      bool replace,
                                      billing_events_result_t *result,
                                      kl_status_t *status);

/* Whether events of type are decided from the intake's preload alone
 * (invoice.paid, invoice.payment_succeeded, invoice.payment_failed, the
 * noted types and unknown ones). */
bool billing_events_preloadable(const char *type);

/* The keys the intake looks the tenant of such an event up by; false when
 * an id is too long for them (the event then takes the general path). */
bool billing_events_keys(const char *type, json_t *object,
                         billing_keys_t *keys);

#endif
