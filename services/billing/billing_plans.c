/*
 * billing_plans: the price <-> plan cache over the flags service.
 */
#include "billing_plans.h"

#include "kl_alloc.h"
#include "kl_log.h"
#include "kowloon/flags.pb-c.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char plan[64];
    char price[BILLING_ID_MAX]; /* "" for a plan without a price */
    bool first;                 /* the plan's first price */
} s_pair_t;

struct billing_plans {
    kl_rpc_client_t *flags; /* borrowed */
    int64_t ttl_ms;
    pthread_mutex_t mu; /* guards everything below */
    s_pair_t *pairs;    /* owned */
    size_t n_pairs;
    bool loaded;
    int64_t loaded_at; /* mono ms */
    int64_t tried_at;  /* mono ms of the last refresh attempt */
};

billing_plans_t *
billing_plans_new(kl_rpc_client_t *flags, int64_t ttl_ms)
{
    billing_plans_t *self = kl_calloc(1, sizeof *self);
    self->flags = flags;
    self->ttl_ms = ttl_ms;
    pthread_mutex_init(&self->mu, NULL);
    return self;
}

void
billing_plans_destroy(billing_plans_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    billing_plans_t *self = *self_p;
    free(self->pairs);
    pthread_mutex_destroy(&self->mu);
    free(self);
    *self_p = NULL;
}

/* Calls ListPlans (outside the lock) and swaps the table in. */
static int
s_refresh(billing_plans_t *self, kl_status_t *status)
{
    Kowloon__Flags__ListPlansRequest req =
        KOWLOON__FLAGS__LIST_PLANS_REQUEST__INIT;
    kl_call_opts_t opts = {.timeout_ms = 3000, .idempotent = true};
    ProtobufCMessage *out = NULL;
    int rc = kl_rpc_client_call(self->flags, "ListPlans", &req.base, &opts,
                                &out, status);
    if (rc < 0) {
        if (rc == -KL_DEADLINE_EXCEEDED || rc == -KL_UNAVAILABLE)
            kl_status_set(status, KL_UNAVAILABLE,
                          "flags service unavailable: %.200s", status->message);
        return -KL_UNAVAILABLE;
    }
    Kowloon__Flags__ListPlansResponse *resp =
        (Kowloon__Flags__ListPlansResponse *)out;
    size_t n = 0;
    for (size_t i = 0; i < resp->n_plans; i++)
        n += resp->plans[i]->n_stripe_price_ids
                 ? resp->plans[i]->n_stripe_price_ids
                 : 1;
    s_pair_t *pairs = kl_calloc(n ? n : 1, sizeof *pairs);
    size_t k = 0;
    for (size_t i = 0; i < resp->n_plans; i++) {
        Kowloon__Flags__Plan *p = resp->plans[i];
        size_t m = p->n_stripe_price_ids ? p->n_stripe_price_ids : 1;
        for (size_t j = 0; j < m; j++, k++) {
            snprintf(pairs[k].plan, sizeof pairs[k].plan, "%s", p->name);
            snprintf(pairs[k].price, sizeof pairs[k].price, "%s",
                     p->n_stripe_price_ids ? p->stripe_price_ids[j] : "");
            pairs[k].first = j == 0;
        }
    }
    protobuf_c_message_free_unpacked(out, NULL);
    pthread_mutex_lock(&self->mu);
    free(self->pairs);
    self->pairs = pairs;
    self->n_pairs = n;
    self->loaded = true;
    self->loaded_at = kl_now_mono_ms();
    pthread_mutex_unlock(&self->mu);
    return 0;
}

/* Looks key up by plan (by_plan) or by price; copies the other side. */
static int
s_lookup(billing_plans_t *self, bool by_plan, const char *key, char *out,
         size_t out_size, bool *plan_known)
{
    for (size_t i = 0; i < self->n_pairs; i++) {
        s_pair_t *p = &self->pairs[i];
        if (by_plan && strcmp(p->plan, key) == 0) {
            *plan_known = true;
            if (p->first && p->price[0]) {
                snprintf(out, out_size, "%s", p->price);
                return 0;
            }
        } else if (!by_plan && p->price[0] && strcmp(p->price, key) == 0) {
            snprintf(out, out_size, "%s", p->plan);
            return 0;
        }
    }
    return -1;
}

static int
s_find(billing_plans_t *self, bool by_plan, const char *key, char *out,
       size_t out_size, kl_status_t *status)
{
    bool plan_known = false;
    pthread_mutex_lock(&self->mu);
    int64_t now = kl_now_mono_ms();
    bool found = self->loaded &&
                 s_lookup(self, by_plan, key, out, out_size, &plan_known) == 0;
    bool stale = !self->loaded || now - self->loaded_at >= self->ttl_ms;
    /* A miss refreshes at most once a second, so unknown prices in a
     * burst of webhooks do not flood the flags service. */
    bool refresh = stale || (!found && now - self->tried_at >= 1000);
    if (refresh)
        self->tried_at = now;
    pthread_mutex_unlock(&self->mu);
    if (refresh) {
        kl_status_t st;
        if (s_refresh(self, &st) == 0) {
            plan_known = false;
            pthread_mutex_lock(&self->mu);
            found =
                s_lookup(self, by_plan, key, out, out_size, &plan_known) == 0;
            pthread_mutex_unlock(&self->mu);
        } else if (!found) {
            pthread_mutex_lock(&self->mu);
            bool loaded = self->loaded;
            pthread_mutex_unlock(&self->mu);
            if (!loaded)
                return kl_status_set(status, KL_UNAVAILABLE, "%s", st.message);
            KL_LOG(KL_WARN, "plans not refreshed: %s, using cache", st.message);
        }
    }
    if (found)
        return 0;
    if (by_plan && plan_known)
        return kl_status_set(status, KL_FAILED_PRECONDITION,
                             "plan \"%.64s\" has no Stripe price", key);
    return by_plan ? kl_status_set(status, KL_NOT_FOUND,
                                   "plan \"%.64s\" not found", key)
                   : kl_status_set(status, KL_NOT_FOUND,
                                   "no plan has Stripe price %.64s", key);
}

int
billing_plans_price_of(billing_plans_t *self, const char *plan,
                       char price[BILLING_ID_MAX], kl_status_t *status)
{
    return s_find(self, true, plan, price, BILLING_ID_MAX, status);
}

int
billing_plans_plan_of(billing_plans_t *self, const char *price, char plan[64],
                      kl_status_t *status)
{
    return s_find(self, false, price, plan, 64, status);
}
