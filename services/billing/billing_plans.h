/*
 * billing_plans: plan <-> Stripe price, from FlagsService.ListPlans
 * (Plan.stripe_price_ids), cached for ttl_ms and refreshed on a miss (at
 * most once a second). When the flags service is down a stale cache is
 * used; with no cache at all the lookups answer UNAVAILABLE.
 * Thread-safe.
 */
#ifndef BILLING_PLANS_H
#define BILLING_PLANS_H

#include "billing_store.h"
#include "kl_code.h"
#include "kl_rpc_client.h"

#include <stdint.h>

typedef struct billing_plans billing_plans_t;

/* flags is borrowed and must outlive the object. */
billing_plans_t *billing_plans_new(kl_rpc_client_t *flags, int64_t ttl_ms);
void billing_plans_destroy(billing_plans_t **self_p);

/* The plan's first Stripe price. NOT_FOUND "plan \"x\" not found";
 * FAILED_PRECONDITION "plan \"x\" has no Stripe price"; UNAVAILABLE. */
int billing_plans_price_of(billing_plans_t *self, const char *plan,
                           char price[BILLING_ID_MAX], kl_status_t *status);

/* The plan one of whose prices is price; NOT_FOUND or UNAVAILABLE. */
int billing_plans_plan_of(billing_plans_t *self, const char *price,
                          char plan[64], kl_status_t *status);

#endif
