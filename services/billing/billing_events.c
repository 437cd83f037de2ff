/*
 * billing_events: Stripe events applied to billing state.
 */
#include "billing_events.h"

#include "billing_store.h"
#include "kl_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The one table: Stripe subscription status -> tenant status. */
static const struct {
    const char *stripe;
    const char *tenant;
} s_status_map[] = {
    {"trialing", "trialing"},  {"active", "active"},
    {"past_due", "past_due"},  {"unpaid", "suspended"},
    {"canceled", "suspended"}, {"incomplete_expired", "suspended"},
    {"paused", "suspended"},   {"incomplete", NULL},
};

const char *
billing_events_tenant_status(const char *stripe_status)
{
    for (size_t i = 0; i < sizeof s_status_map / sizeof s_status_map[0]; i++)
        if (strcmp(s_status_map[i].stripe, stripe_status) == 0)
            return s_status_map[i].tenant;
    return NULL;
}

bool
billing_events_terminal(const char *stripe_status)
{
    return strcmp(stripe_status, "canceled") == 0 ||
           strcmp(stripe_status, "incomplete_expired") == 0;
}

/* --- JSON helpers ------------------------------------------------------- */

static const char *
s_str(json_t *obj, const char *key)
{
    const char *v = json_string_value(json_object_get(obj, key));
    return v ? v : "";
}

/* A string field or the id of an expanded object. */
static const char *
s_ref(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (json_is_object(v))
        return s_str(v, "id");
    return s_str(obj, key);
}

static int64_t
s_int(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
}

static const char *
s_meta(json_t *obj, const char *key)
{
    return s_str(json_object_get(obj, "metadata"), key);
}

/* The tenant id an invoice names (its subscription's metadata). */
static const char *
s_invoice_candidate(json_t *inv)
{
    return s_str(json_object_get(json_object_get(inv, "subscription_details"),
                                 "metadata"),
                 "tenant_id");
}

/* 8-4-4-4-12 hex. */
static bool
s_uuid_valid(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return false;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
                     (c >= 'A' && c <= 'F'))) {
            return false;
        }
    }
    return true;
}

static void
s_set(char *dst, size_t size, const char *v)
{
    snprintf(dst, size, "%s", v);
}

#define S_SET(field, v) s_set(field, sizeof field, v)

/* A tenant id named by an event, lower case; "" when candidate is not
 * one. */
static void
s_candidate(const char *candidate, char out[37])
{
    out[0] = '\0';
    if (!candidate || !s_uuid_valid(candidate))
        return;
    snprintf(out, 37, "%s", candidate);
    for (char *p = out; *p; p++)
        if (*p >= 'A' && *p <= 'F')
            *p = (char)(*p - 'A' + 'a');
}

/* The database is needed: a preloaded decision must not get here. */
static int
s_need_pg(const billing_events_ctx_t *ctx, kl_status_t *status)
{
    if (ctx->pg)
        return 0;
    return kl_status_set(status, KL_INTERNAL,
                         "event decided from a preload needs the database");
}

/* Finds the tenant of an object: a tenant id in metadata (or the given
 * candidate), else the mapping of its subscription or customer. With a
 * preload, the intake statement did this lookup; it must have used the
 * same keys. */
static int
s_find_tenant(const billing_events_ctx_t *ctx, const char *candidate,
              const char *sub_id, const char *customer_id, char tenant[37],
              kl_status_t *status)
{
    char c[37];
    s_candidate(candidate, c);
    sub_id = sub_id ? sub_id : "";
    customer_id = customer_id ? customer_id : "";
    if (ctx->preload) {
        const billing_keys_t *k = &ctx->preload->keys;
        if (strcmp(k->candidate, c) != 0 ||
            strcmp(k->subscription_id, sub_id) != 0 ||
            strcmp(k->customer_id, customer_id) != 0)
            return kl_status_set(status, KL_INTERNAL,
                                 "preload read for other keys than %.64s/"
                                 "%.64s",
                                 sub_id, customer_id);
        if (!ctx->preload->found)
            return kl_status_set(status, KL_NOT_FOUND,
                                 "no tenant for %.64s/%.64s", sub_id,
                                 customer_id);
        snprintf(tenant, 37, "%s", ctx->preload->row.tenant_id);
        return 0;
    }
    if (c[0]) {
        snprintf(tenant, 37, "%s", c);
        return 0;
    }
    int rc = s_need_pg(ctx, status);
    if (rc < 0)
        return rc;
    return billing_store_tenant_of(ctx->pg, sub_id, customer_id, tenant,
                                   status);
}

/* Records the writes of a subscription state next (cur before it) in the
 * effect. */
static void
s_effect_save(billing_events_result_t *res, const billing_row_t *cur,
              const billing_row_t *next)
{
    billing_effect_t *e = &res->effect;
    S_SET(e->tenant_id, next->tenant_id);
    e->save = true;
    e->exists = cur->has_subscription;
    e->sub = *next;
}

/* Records the tenant's customer in the effect (the first one wins, as a
 * second insert would find the tenant's mapping and keep it). */
static void
s_effect_customer(billing_events_result_t *res, const char *tenant,
                  const char *customer_id)
{
    billing_effect_t *e = &res->effect;
    if (!customer_id[0] || e->customer_id[0])
        return;
    S_SET(e->tenant_id, tenant);
    S_SET(e->customer_id, customer_id);
}

/* Queues a tenant change in the effect; status and plan NULL: unchanged. */
static void
s_effect_outbox(billing_events_result_t *res, const char *tenant,
                const char *status, const char *plan, const char *reason,
                const char *source)
{
    billing_effect_t *e = &res->effect;
    S_SET(e->tenant_id, tenant);
    e->outbox = true;
    S_SET(e->outbox_status, status ? status : "");
    S_SET(e->outbox_plan, plan ? plan : "");
    S_SET(e->outbox_reason, reason);
    S_SET(e->outbox_source, source ? source : "");
}

/* --- the state machine -----------------------------------------------------
 */

/*
 * Moves the tenant's subscription to `next` (status and fields already
 * set from Stripe), as of created/source. Decides the outbox row and saves.
 * cur is the state before (locked).
 */
static int
s_commit_state(const billing_events_ctx_t *ctx, const billing_row_t *cur,
               billing_row_t *next, int64_t created, const char *source,
               const char *reason, billing_events_result_t *res,
               kl_status_t *status)
{
    /* The plan follows the price. */
    if (next->price_id[0] &&
        (strcmp(next->price_id, cur->price_id) != 0 || !next->plan[0])) {
        char plan[64];
        int rc =
            billing_plans_plan_of(ctx->plans, next->price_id, plan, status);
        if (rc == 0)
            S_SET(next->plan, plan);
        else if (rc == -KL_NOT_FOUND)
            KL_LOG(KL_WARN, "no plan has Stripe price %s, plan kept",
                   next->price_id);
        else
            return rc;
    }
    /* Grace bookkeeping. */
    if (strcmp(next->status, "past_due") == 0) {
        if (!cur->has_subscription || strcmp(cur->status, "past_due") != 0 ||
            strcmp(cur->subscription_id, next->subscription_id) != 0) {
            next->past_due_since = created > 0 ? created : (int64_t)time(NULL);
            next->grace_expired = false;
        }
    } else {
        next->past_due_since = 0;
        next->grace_expired = false;
    }
    next->status_event_created = created;
    S_SET(next->status_event_id, source);

    const char *want = billing_events_tenant_status(next->status);
    if (want && strcmp(want, "past_due") == 0 && next->grace_expired)
        want = "suspended";
    const char *status_change = NULL, *plan_change = NULL;
    if (want && strcmp(want, cur->tenant_status) != 0) {
        status_change = want;
        S_SET(next->tenant_status, want);
    }
    if (next->plan[0] && strcmp(next->plan, cur->plan) != 0)
        plan_change = next->plan;
    s_effect_save(res, cur, next);
    if (status_change || plan_change)
        s_effect_outbox(res, next->tenant_id, status_change, plan_change,
                        reason, source);
    snprintf(res->outcome, sizeof res->outcome,
             "subscription %.40s %.20s%s%.16s%s%.40s", next->subscription_id,
             next->status, status_change ? ", tenant -> " : "",
             status_change ? status_change : "",
             plan_change ? ", plan -> " : "", plan_change ? plan_change : "");
    return 0;
}

/* Locks and reads the tenant's state (billing_store_lock_tenant, then the
 * subscription row), or takes it from the preload, which read and locked
 * it in the inbox statement. */
static int
s_read_locked(const billing_events_ctx_t *ctx, const char *tenant,
              billing_row_t *cur, kl_status_t *status)
{
    if (ctx->preload) {
        if (!ctx->preload->found ||
            strcmp(ctx->preload->row.tenant_id, tenant) != 0)
            return kl_status_set(status, KL_INTERNAL,
                                 "preload read another tenant than %s", tenant);
        *cur = ctx->preload->row;
        return 0;
    }
    int rc = s_need_pg(ctx, status);
    if (rc == 0)
        rc = billing_store_lock_tenant(ctx->pg, tenant, status);
    if (rc == 0)
        rc = billing_store_get(ctx->pg, tenant, true, cur, status);
    return rc;
}

/* Loads the tenant's state and says whether an update about subscription
 * sub_id as of created may apply. */
static int
s_load(const billing_events_ctx_t *ctx, const char *tenant, const char *sub_id,
       int64_t created, bool replace, billing_row_t *cur, bool *applies,
       const char **why, kl_status_t *status)
{
    int rc = s_read_locked(ctx, tenant, cur, status);
    if (rc < 0)
        return rc;
    *applies = true;
    *why = "";
    if (!cur->has_subscription)
        return 0;
    bool same = strcmp(cur->subscription_id, sub_id) == 0;
    if (created < cur->status_event_created) {
        *applies = false;
        *why = "older than the state it would change";
    } else if (!same && !replace && !billing_events_terminal(cur->status)) {
        *applies = false;
        *why = "not the tenant's current subscription";
    }
    return 0;
}

int
billing_events_apply_subscription(const billing_events_ctx_t *ctx,
                                  const char *tenant_id, json_t *sub,
                                  int64_t created, const char *source,
                                  bool replace, billing_events_result_t *res,
                                  kl_status_t *status)
{
    S_SET(res->tenant_id, tenant_id);
    const char *sub_id = s_str(sub, "id");
    billing_row_t cur, next;
    bool applies;
    const char *why;
    int rc = s_load(ctx, tenant_id, sub_id, created, replace, &cur, &applies,
                    &why, status);
    if (rc < 0)
        return rc;
    if (!applies) {
        snprintf(res->outcome, sizeof res->outcome, "subscription %.40s: %s",
                 sub_id, why);
        return 0;
    }
    bool same =
        cur.has_subscription && strcmp(cur.subscription_id, sub_id) == 0;
    next = cur;
    if (!same) {
        /* A new subscription: nothing of the old one carries over but the
         * tenant status billing last asked for. */
        memset(&next, 0, sizeof next);
        S_SET(next.tenant_id, tenant_id);
        S_SET(next.tenant_status, cur.tenant_status);
    }
    next.has_subscription = true;
    S_SET(next.subscription_id, sub_id);
    const char *customer = s_ref(sub, "customer");
    S_SET(next.customer_id, customer[0] ? customer : cur.customer_id);
    S_SET(next.status, s_str(sub, "status"));
    json_t *item = json_array_get(
        json_object_get(json_object_get(sub, "items"), "data"), 0);
    if (item) {
        S_SET(next.item_id, s_str(item, "id"));
        S_SET(next.price_id, s_ref(item, "price"));
    }
    if (json_is_string(json_object_get(sub, "collection_method")))
        S_SET(next.collection_method, s_str(sub, "collection_method"));
    next.cancel_at_period_end =
        json_is_true(json_object_get(sub, "cancel_at_period_end"));
    next.current_period_end = s_int(sub, "current_period_end");
    next.trial_end = s_int(sub, "trial_end");
    const char *meta_plan = s_meta(sub, "plan");
    if (!next.price_id[0] && meta_plan[0])
        S_SET(next.plan, meta_plan);
    /* Keep the tenant's customer mapping whole. */
    s_effect_customer(res, tenant_id, next.customer_id);
    char reason[64];
    snprintf(reason, sizeof reason, "subscription %.20s", next.status);
    return s_commit_state(ctx, &cur, &next, created, source, reason, res,
                          status);
}

/* customer.subscription.* */
static int
s_on_subscription(const billing_events_ctx_t *ctx, const char *event_id,
                  int64_t created, json_t *sub, billing_events_result_t *res,
                  kl_status_t *status)
{
    char tenant[37];
    int rc = s_find_tenant(ctx, s_meta(sub, "tenant_id"), s_str(sub, "id"),
                           s_ref(sub, "customer"), tenant, status);
    if (rc == -KL_NOT_FOUND) {
        snprintf(res->outcome, sizeof res->outcome,
                 "subscription %.40s of no known tenant", s_str(sub, "id"));
        return 0;
    }
    if (rc < 0)
        return rc;
    return billing_events_apply_subscription(ctx, tenant, sub, created,
                                             event_id, false, res, status);
}

/* checkout.session.completed: a tenant bought a subscription. */
static int
s_on_checkout(const billing_events_ctx_t *ctx, const char *event_id,
              int64_t created, json_t *cs, billing_events_result_t *res,
              kl_status_t *status)
{
    const char *candidate = s_str(cs, "client_reference_id");
    if (!candidate[0])
        candidate = s_meta(cs, "tenant_id");
    char tenant[37];
    int rc = s_find_tenant(ctx, candidate, "", s_ref(cs, "customer"), tenant,
                           status);
    if (rc == -KL_NOT_FOUND) {
        snprintf(res->outcome, sizeof res->outcome,
                 "checkout %.40s of no known tenant", s_str(cs, "id"));
        return 0;
    }
    if (rc < 0)
        return rc;
    S_SET(res->tenant_id, tenant);
    const char *customer = s_ref(cs, "customer");
    s_effect_customer(res, tenant, customer);
    const char *sub_id = s_ref(cs, "subscription");
    if (strcmp(s_str(cs, "mode"), "subscription") != 0 || !sub_id[0]) {
        snprintf(res->outcome, sizeof res->outcome,
                 "checkout %.40s (mode %.16s): customer recorded",
                 s_str(cs, "id"), s_str(cs, "mode"));
        return 0;
    }
    const char *pay = s_str(cs, "payment_status");
    const char *sub_status = strcmp(pay, "paid") == 0 ? "active"
                             : strcmp(pay, "no_payment_required") == 0
                                 ? "trialing"
                                 : "incomplete";
    /* The session does not carry the subscription object: build the part
     * of it the session says, and keep what the state knows. */
    billing_row_t cur;
    bool applies;
    const char *why;
    rc = s_load(ctx, tenant, sub_id, created, true, &cur, &applies, &why,
                status);
    if (rc < 0)
        return rc;
    if (!applies) {
        snprintf(res->outcome, sizeof res->outcome, "checkout %.40s: %s",
                 s_str(cs, "id"), why);
        return 0;
    }
    json_t *sub = json_object();
    json_object_set_new(sub, "id", json_string(sub_id));
    json_object_set_new(sub, "customer", json_string(customer));
    json_object_set_new(sub, "status", json_string(sub_status));
    bool same =
        cur.has_subscription && strcmp(cur.subscription_id, sub_id) == 0;
    if (same) {
        /* A later subscription event may already have told more. */
        json_t *item = json_object();
        json_object_set_new(item, "id", json_string(cur.item_id));
        json_object_set_new(item, "price", json_string(cur.price_id));
        json_t *data = json_array();
        json_array_append_new(data, item);
        json_t *items = json_object();
        json_object_set_new(items, "data", data);
        json_object_set_new(sub, "items", items);
        json_object_set_new(sub, "cancel_at_period_end",
                            json_boolean(cur.cancel_at_period_end));
        json_object_set_new(sub, "current_period_end",
                            json_integer(cur.current_period_end));
    }
    json_t *meta = json_object();
    json_object_set_new(meta, "plan", json_string(s_meta(cs, "plan")));
    json_object_set_new(sub, "metadata", meta);
    rc = billing_events_apply_subscription(ctx, tenant, sub, created, event_id,
                                           true, res, status);
    json_decref(sub);
    return rc;
}

/* invoice.paid, invoice.payment_succeeded, invoice.payment_failed. */
static int
s_on_invoice(const billing_events_ctx_t *ctx, const char *event_id,
             const char *type, int64_t created, json_t *inv,
             billing_events_result_t *res, kl_status_t *status)
{
    const char *sub_id = s_ref(inv, "subscription");
    if (!sub_id[0]) {
        snprintf(res->outcome, sizeof res->outcome,
                 "invoice %.40s without a subscription: ignored",
                 s_str(inv, "id"));
        return 0;
    }
    char tenant[37];
    int rc = s_find_tenant(ctx, s_invoice_candidate(inv), sub_id,
                           s_ref(inv, "customer"), tenant, status);
    if (rc == -KL_NOT_FOUND) {
        snprintf(res->outcome, sizeof res->outcome,
                 "invoice %.40s of no known tenant", s_str(inv, "id"));
        return 0;
    }
    if (rc < 0)
        return rc;
    S_SET(res->tenant_id, tenant);
    billing_row_t cur;
    bool applies;
    const char *why;
    rc = s_load(ctx, tenant, sub_id, created, false, &cur, &applies, &why,
                status);
    if (rc < 0)
        return rc;
    if (applies &&
        (!cur.has_subscription || strcmp(cur.subscription_id, sub_id) != 0)) {
        applies = false;
        why = "subscription not known yet";
    }
    const char *to = NULL;
    bool failed = strcmp(type, "invoice.payment_failed") == 0;
    if (applies && failed) {
        if (strcmp(cur.status, "active") == 0 ||
            strcmp(cur.status, "trialing") == 0)
            to = "past_due";
        else
            why = "payment failure changes nothing in this status";
    } else if (applies) {
        if (billing_events_terminal(cur.status))
            why = "subscription has ended";
        else if (strcmp(cur.status, "trialing") == 0 &&
                 s_int(inv, "amount_paid") == 0)
            why = "trial invoice";
        else if (strcmp(cur.status, "active") == 0)
            why = "already active";
        else
            to = "active";
    }
    if (!to) {
        snprintf(res->outcome, sizeof res->outcome, "invoice %.40s: %s",
                 s_str(inv, "id"), applies ? why : why);
        /* An event that changed nothing still moves the ordering stamp
         * forward when it applies, so an older event cannot undo it. */
        if (applies && created > cur.status_event_created) {
            billing_row_t next = cur;
            next.status_event_created = created;
            S_SET(next.status_event_id, event_id);
            s_effect_save(res, &cur, &next);
        }
        return 0;
    }
    billing_row_t next = cur;
    S_SET(next.status, to);
    return s_commit_state(ctx, &cur, &next, created, event_id,
                          failed ? "invoice payment failed" : "invoice paid",
                          res, status);
}

/* payment_intent.succeeded: a prepaid period (CreateAlipayPayment). */
static int
s_on_payment(const billing_events_ctx_t *ctx, const char *event_id, json_t *pi,
             billing_events_result_t *res, kl_status_t *status)
{
    const char *tenant = s_meta(pi, "tenant_id");
    const char *days_s = s_meta(pi, "period_days");
    char *end = NULL;
    long days = strtol(days_s, &end, 10);
    if (!s_uuid_valid(tenant) || !days_s[0] || *end || days < 1 || days > 366) {
        snprintf(res->outcome, sizeof res->outcome,
                 "payment %.40s is not a prepaid period: ignored",
                 s_str(pi, "id"));
        return 0;
    }
    S_SET(res->tenant_id, tenant);
    billing_row_t cur;
    int64_t paid_until = 0;
    /* The period is extended at once: its new end is in the outcome. */
    int rc = s_read_locked(ctx, tenant, &cur, status);
    if (rc == 0)
        rc = s_need_pg(ctx, status);
    if (rc == 0)
        rc = billing_store_prepaid_extend(ctx->pg, tenant, (int)days,
                                          &paid_until, status);
    if (rc < 0)
        return rc;
    /* A payment restores access unless a live subscription already
     * grants it. */
    bool granted =
        cur.has_subscription && (strcmp(cur.status, "active") == 0 ||
                                 strcmp(cur.status, "trialing") == 0);
    if (!granted) {
        s_effect_outbox(res, tenant, "active", NULL, "prepaid period paid",
                        event_id);
        if (cur.has_subscription) {
            billing_row_t next = cur;
            S_SET(next.tenant_status, "active");
            s_effect_save(res, &cur, &next);
        }
    }
    snprintf(res->outcome, sizeof res->outcome,
             "payment %.40s: %ld days prepaid, paid until %lld%s",
             s_str(pi, "id"), days, (long long)paid_until,
             granted ? "" : ", tenant -> active");
    return 0;
}

/* The noted types: Stripe emails the customer; the status moves with the
 * subscription events that follow. */
static bool
s_noted(const char *type)
{
    return strcmp(type, "customer.subscription.trial_will_end") == 0 ||
           strcmp(type, "invoice.payment_action_required") == 0;
}

static bool
s_invoice(const char *type)
{
    return strcmp(type, "invoice.paid") == 0 ||
           strcmp(type, "invoice.payment_succeeded") == 0 ||
           strcmp(type, "invoice.payment_failed") == 0;
}

/* The subscription a noted event is about. */
static const char *
s_noted_sub(const char *type, json_t *object)
{
    return strcmp(type, "invoice.payment_action_required") == 0
               ? s_ref(object, "subscription")
               : s_str(object, "id");
}

bool
billing_events_preloadable(const char *type)
{
    /* Everything but the types that may create a subscription row or
     * write outside it (billing_events.h). */
    return strcmp(type, "customer.subscription.created") != 0 &&
           strcmp(type, "customer.subscription.updated") != 0 &&
           strcmp(type, "customer.subscription.deleted") != 0 &&
           strcmp(type, "checkout.session.completed") != 0 &&
           strcmp(type, "payment_intent.succeeded") != 0;
}

/* Copies v into a key field; false when it does not fit. */
static bool
s_key(char *dst, size_t size, const char *v)
{
    return (size_t)snprintf(dst, size, "%s", v) < size;
}

bool
billing_events_keys(const char *type, json_t *object, billing_keys_t *keys)
{
    memset(keys, 0, sizeof *keys);
    if (s_invoice(type)) {
        /* s_on_invoice looks nothing up for an invoice without one. */
        const char *sub_id = s_ref(object, "subscription");
        if (!sub_id[0])
            return true;
        s_candidate(s_invoice_candidate(object), keys->candidate);
        return s_key(keys->subscription_id, sizeof keys->subscription_id,
                     sub_id) &&
               s_key(keys->customer_id, sizeof keys->customer_id,
                     s_ref(object, "customer"));
    }
    if (s_noted(type))
        return s_key(keys->subscription_id, sizeof keys->subscription_id,
                     s_noted_sub(type, object)) &&
               s_key(keys->customer_id, sizeof keys->customer_id,
                     s_ref(object, "customer"));
    return true;
}

int
billing_events_apply(const billing_events_ctx_t *ctx, const char *event_id,
                     const char *type, int64_t created, json_t *object,
                     billing_events_result_t *res, kl_status_t *status)
{
    memset(res, 0, sizeof *res);
    if (ctx->preload && !billing_events_preloadable(type))
        return kl_status_set(status, KL_INTERNAL,
                             "%.64s events are not decided from a preload",
                             type);
    if (strcmp(type, "customer.subscription.created") == 0 ||
        strcmp(type, "customer.subscription.updated") == 0 ||
        strcmp(type, "customer.subscription.deleted") == 0)
        return s_on_subscription(ctx, event_id, created, object, res, status);
    if (strcmp(type, "checkout.session.completed") == 0)
        return s_on_checkout(ctx, event_id, created, object, res, status);
    if (s_invoice(type))
        return s_on_invoice(ctx, event_id, type, created, object, res, status);
    if (strcmp(type, "payment_intent.succeeded") == 0)
        return s_on_payment(ctx, event_id, object, res, status);
    if (s_noted(type)) {
        const char *sub_id = s_noted_sub(type, object);
        char tenant[37];
        kl_status_t st;
        int rc = s_find_tenant(ctx, NULL, sub_id, s_ref(object, "customer"),
                               tenant, &st);
        if (rc == 0)
            S_SET(res->tenant_id, tenant);
        else if (rc != -KL_NOT_FOUND)
            return kl_status_set(status, st.code, "%s", st.message);
        snprintf(res->outcome, sizeof res->outcome, "noted (%.40s)", sub_id);
        return 0;
    }
    snprintf(res->outcome, sizeof res->outcome, "ignored");
    return 0;
}
