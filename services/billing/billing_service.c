/*
 * billing_service: the handlers of kowloon.billing.BillingService.
 *
 * A Stripe POST always goes: claim an Idempotency-Key (committed in
 * billing.idempotency_keys before the request), call Stripe, then record
 * the answer and retire the key in one transaction. A crash between the
 * two leaves the key pending; the retry sends the same key and body, and
 * Stripe answers with the object it made the first time.
 */
#include "billing_service.h"

#include "billing_events.h"
#include "billing_form.h"
#include "billing_intake.h"
#include "billing_outbox.h"
#include "billing_plans.h"
#include "billing_store.h"
#include "billing_stripe.h"
#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_pg.h"
#include "kl_rpc_client.h"
#include "kl_service.h"
#include "kl_valid.h"
#include "kowloon/billing.pb-c.h"
#include "kowloon/flags.pb-c.h"
#include "kowloon/tenant.pb-c.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_PLANS_TTL_MS 60000
#define S_AMOUNT_MAX 99999999 /* Stripe: at most 8 digits */

struct billing_service {
    /* First member: a handler's service pointer is this object. */
    Kowloon__Billing__BillingService_Service base;
    char *database_url; /* owned */
    char **secrets;     /* owned copies */
    size_t n_secrets;
    int64_t tolerance_s;
    int trial_days;
    char *success_url;       /* owned */
    char *cancel_url;        /* owned */
    char *portal_return_url; /* owned */
    int64_t grace_s;
    int64_t sweep_interval_ms;
    int retention_days;
    int64_t prune_interval_ms;
    billing_stripe_t *stripe;       /* owned */
    kl_rpc_client_t *tenant;        /* owned */
    kl_rpc_client_t *flags;         /* owned */
    billing_plans_t *plans;         /* owned */
    billing_outbox_t *outbox;       /* owned; NULL until started */
    billing_intake_group_t *intake; /* owned; webhook group commit */
    int (*fault)(const char *point, void *user);
    void *fault_user;
    kl_service_t *std; /* owned; the workers' pg */
};

/* --- helpers ----------------------------------------------------------- */

/* A Stripe id as it may appear in a URL path. */
static bool
s_stripe_id_valid(const char *s)
{
    size_t len = strlen(s);
    if (len < 4 || len >= BILLING_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

/* The tenant of a tenant-facing call: from the call context only. */
static int
s_ctx_tenant(void *closure_data, char tenant[37], kl_status_t *status)
{
    const kl_call_ctx_t *ctx = kl_call_ctx(kl_call_from(closure_data));
    if (!kl_valid_uuid(ctx->tenant_id))
        return kl_status_set(status, KL_PERMISSION_DENIED,
                             "this method is called on behalf of a tenant");
    kl_valid_uuid_lower(ctx->tenant_id, tenant);
    return 0;
}

static void
s_rfc3339(int64_t t, char out[32])
{
    out[0] = '\0';
    if (t <= 0)
        return;
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void
s_answer_billing(const billing_row_t *row,
                 Kowloon__Billing__Billing_Closure closure, void *closure_data)
{
    char cpe[32], te[32], pds[32], pu[32], ua[32];
    s_rfc3339(row->current_period_end, cpe);
    s_rfc3339(row->trial_end, te);
    s_rfc3339(row->past_due_since, pds);
    s_rfc3339(row->paid_until, pu);
    s_rfc3339(row->updated_at, ua);
    Kowloon__Billing__Billing b = KOWLOON__BILLING__BILLING__INIT;
    b.tenant_id = (char *)row->tenant_id;
    b.customer_id = (char *)row->customer_id;
    b.subscription_id =
        (char *)(row->has_subscription ? row->subscription_id : "");
    b.plan = (char *)row->plan;
    b.price_id = (char *)row->price_id;
    b.subscription_status = (char *)row->status;
    b.tenant_status = (char *)row->tenant_status;
    b.cancel_at_period_end = row->cancel_at_period_end;
    b.current_period_end = cpe;
    b.trial_end = te;
    b.collection_method = (char *)row->collection_method;
    b.past_due_since = pds;
    b.paid_until = pu;
    b.updated_at = ua;
    closure(&b, closure_data);
}

/* Ends a transaction: commit when rc is 0, else roll back. */
static int
s_finish(kl_pg_t *pg, int rc, kl_status_t *status)
{
    if (rc < 0) {
        kl_pg_rollback(pg);
        return rc;
    }
    return kl_pg_commit(pg, status);
}

static int
s_fault(billing_service_t *self, const char *point, kl_status_t *status)
{
    if (self->fault && self->fault(point, self->fault_user))
        return kl_status_set(status, KL_UNAVAILABLE, "fault injected at %s",
                             point);
    return 0;
}

/*
 * One idempotent Stripe POST for tenant: claims the key of op (sticky:
 * resend the stored body), posts, and returns the answer. The key stays
 * pending; the caller retires it (billing_store_key_done) with the write
 * that records the answer.
 */
static int
s_stripe_post(billing_service_t *self, kl_pg_t *pg, const char *tenant,
              const char *op, const char *path, billing_form_t *form,
              bool sticky, char key[64], json_t **out, kl_status_t *status)
{
    char *body = NULL;
    int rc = billing_store_key_claim(pg, tenant, op, billing_form_body(form),
                                     sticky, key, &body, status);
    if (rc < 0)
        return rc;
    rc = billing_stripe_request(self->stripe, "POST", path, body, key, out,
                                status);
    free(body);
    return rc;
}

/* Retires key in its own transaction (answers not recorded in state). */
static void
s_key_done(kl_pg_t *pg, const char *key)
{
    kl_status_t st;
    if (billing_store_key_done(pg, key, &st) < 0)
        KL_LOG(KL_WARN, "idempotency key %s not retired: %s, ignored", key,
               st.message);
}

/* The tenant's record in the tenant service (its name). */
static int
s_tenant_get(billing_service_t *self, void *closure_data, const char *tenant,
             char name[256], kl_status_t *status)
{
    Kowloon__Tenant__GetTenantRequest req =
        KOWLOON__TENANT__GET_TENANT_REQUEST__INIT;
    req.id = (char *)tenant;
    kl_call_opts_t opts = {.timeout_ms = 3000,
                           .idempotent = true,
                           .ctx = kl_call_ctx(kl_call_from(closure_data))};
    ProtobufCMessage *out = NULL;
    int rc =
        kl_rpc_client_call(self->tenant, "Get", &req.base, &opts, &out, status);
    if (rc < 0) {
        if (rc == -KL_UNAVAILABLE || rc == -KL_DEADLINE_EXCEEDED)
            return kl_status_set(status, KL_UNAVAILABLE,
                                 "tenant service unavailable: %.200s",
                                 status->message);
        return rc;
    }
    Kowloon__Tenant__Tenant *t = (Kowloon__Tenant__Tenant *)out;
    snprintf(name, 256, "%s", t->name ? t->name : "");
    bool deleted = t->status && strcmp(t->status, "deleted") == 0;
    protobuf_c_message_free_unpacked(out, NULL);
    if (deleted)
        return kl_status_set(status, KL_FAILED_PRECONDITION,
                             "tenant %s is deleted", tenant);
    return 0;
}

/* Records a subscription object returned by the API as of now. */
static int
s_record_sub(billing_service_t *self, kl_pg_t *pg, const char *tenant,
             json_t *sub, int64_t as_of, bool replace, const char *key,
             billing_row_t *row, kl_status_t *status)
{
    billing_events_result_t res;
    memset(&res, 0, sizeof res);
    billing_events_ctx_t ctx = {.pg = pg, .plans = self->plans};
    int rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    rc = billing_events_apply_subscription(&ctx, tenant, sub, as_of, "api",
                                           replace, &res, status);
    if (rc == 0)
        rc = billing_store_effect(pg, &res.effect, NULL, NULL, NULL, status);
    if (rc == 0 && key)
        rc = billing_store_key_done(pg, key, status);
    rc = s_finish(pg, rc, status);
    if (rc < 0)
        return rc;
    KL_LOG(KL_INFO, "%s", res.outcome);
    if (res.effect.outbox)
        billing_outbox_wake(self->outbox);
    return billing_store_get(pg, tenant, false, row, status);
}

/* --- StartSubscription --------------------------------------------------- */

static int
s_start(billing_service_t *self, kl_pg_t *pg, void *closure_data,
        const char *tenant,
        const Kowloon__Billing__StartSubscriptionRequest *in,
        billing_row_t *row, kl_status_t *st)
{
    const char *method = kl_valid_empty(in->collection_method)
                             ? "charge_automatically"
                             : in->collection_method;
    int rc = kl_valid_check_plan("plan", in->plan, st);
    if (rc < 0)
        return rc;
    if (strcmp(method, "charge_automatically") != 0 &&
        strcmp(method, "send_invoice") != 0)
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "collection_method \"%.32s\" is invalid: want "
                             "charge_automatically or send_invoice",
                             method);
    bool invoice = strcmp(method, "send_invoice") == 0;
    if (in->days_until_due != 0 && !invoice)
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "days_until_due is for send_invoice only");
    if (in->days_until_due < 0 || in->days_until_due > 90)
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "days_until_due must be 1 to 90, got %d",
                             (int)in->days_until_due);
    if (in->trial_days < -1 || in->trial_days > 730)
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "trial_days must be -1 (none) to 730, got %d",
                             (int)in->trial_days);
    if (!kl_valid_empty(in->email) &&
        (strlen(in->email) > 254 || !strchr(in->email, '@')))
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "email \"%.64s\" is not an email address",
                             in->email);
    if (!kl_valid_empty(in->name) && strlen(in->name) > 256)
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "name must be at most 256 bytes");
    char price[BILLING_ID_MAX];
    rc = billing_plans_price_of(self->plans, in->plan, price, st);
    if (rc < 0)
        return rc;
    char name[256];
    rc = s_tenant_get(self, closure_data, tenant, name, st);
    if (rc < 0)
        return rc;
    rc = billing_store_get(pg, tenant, false, row, st);
    if (rc < 0)
        return rc;
    if (row->has_subscription && !billing_events_terminal(row->status))
        return kl_status_set(st, KL_ALREADY_EXISTS,
                             "tenant already has subscription %s (%s)",
                             row->subscription_id, row->status);

    /* 1. The customer, once per tenant. */
    char key[64];
    json_t *obj = NULL;
    if (!row->has_customer) {
        billing_form_t *f = billing_form_new();
        if (!kl_valid_empty(in->email))
            billing_form_add(f, "email", in->email);
        billing_form_add(f, "name", kl_valid_empty(in->name) ? name : in->name);
        billing_form_add(f, "metadata[tenant_id]", tenant);
        rc = s_stripe_post(self, pg, tenant, "customer.create", "/v1/customers",
                           f, true, key, &obj, st);
        billing_form_destroy(&f);
        if (rc < 0)
            return rc;
        char cus[BILLING_ID_MAX];
        snprintf(cus, sizeof cus, "%s",
                 json_string_value(json_object_get(obj, "id"))
                     ? json_string_value(json_object_get(obj, "id"))
                     : "");
        json_decref(obj);
        obj = NULL;
        if (!s_stripe_id_valid(cus))
            return kl_status_set(st, KL_INTERNAL,
                                 "Stripe made a customer without an id");
        rc = s_fault(self, "customer.created", st);
        if (rc < 0)
            return rc;
        rc = kl_pg_begin(pg, st);
        if (rc == 0)
            rc = billing_store_customer_put(pg, tenant, cus, st);
        if (rc == 0)
            rc = billing_store_key_done(pg, key, st);
        rc = s_finish(pg, rc, st);
        if (rc < 0)
            return rc;
        KL_LOG(KL_INFO, "Stripe customer %s made for tenant %s", cus, tenant);
        rc = billing_store_get(pg, tenant, false, row, st);
        if (rc < 0)
            return rc;
    }

    /* 2. The subscription on the plan's price. */
    int trial = in->trial_days == 0    ? self->trial_days
                : in->trial_days == -1 ? 0
                                       : in->trial_days;
    billing_form_t *f = billing_form_new();
    billing_form_add(f, "customer", row->customer_id);
    billing_form_add(f, "items[0][price]", price);
    billing_form_add(f, "metadata[tenant_id]", tenant);
    billing_form_add(f, "metadata[plan]", in->plan);
    billing_form_add(f, "collection_method", method);
    if (invoice)
        billing_form_addf(f, "days_until_due", "%d",
                          in->days_until_due ? (int)in->days_until_due : 7);
    if (trial > 0) {
        billing_form_addf(f, "trial_period_days", "%d", trial);
        if (!invoice)
            billing_form_add(
                f, "trial_settings[end_behavior][missing_payment_method]",
                "cancel");
    } else if (!invoice) {
        billing_form_add(f, "payment_behavior", "default_incomplete");
    }
    rc = s_stripe_post(self, pg, tenant, "subscription.create",
                       "/v1/subscriptions", f, true, key, &obj, st);
    billing_form_destroy(&f);
    if (rc < 0)
        return rc;
    if (!s_stripe_id_valid(json_string_value(json_object_get(obj, "id"))
                               ? json_string_value(json_object_get(obj, "id"))
                               : "")) {
        json_decref(obj);
        return kl_status_set(st, KL_INTERNAL,
                             "Stripe made a subscription without an id");
    }
    rc = s_fault(self, "subscription.created", st);
    if (rc == 0) {
        json_t *created = json_object_get(obj, "created");
        int64_t as_of = json_is_integer(created)
                            ? (int64_t)json_integer_value(created)
                            : (int64_t)time(NULL);
        rc = s_record_sub(self, pg, tenant, obj, as_of, true, key, row, st);
    }
    json_decref(obj);
    if (rc == 0)
        KL_LOG(KL_INFO, "tenant %s subscribed to %s (%s, %d trial days)",
               tenant, in->plan, row->subscription_id, trial);
    return rc;
}

static void
s_start_subscription(Kowloon__Billing__BillingService_Service *svc,
                     const Kowloon__Billing__StartSubscriptionRequest *in,
                     Kowloon__Billing__Billing_Closure closure,
                     void *closure_data)
{
    billing_service_t *self = (billing_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    char tenant[37];
    billing_row_t row;
    int rc = s_ctx_tenant(closure_data, tenant, &st);
    if (rc == 0)
        rc = s_start(self, w->pg, closure_data, tenant, in, &row, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "StartSubscription", &st);
        closure(NULL, closure_data);
        return;
    }
    s_answer_billing(&row, closure, closure_data);
}

/* --- Checkout and Portal ------------------------------------------------- */

static void
s_answer_session(json_t *obj, Kowloon__Billing__SessionUrl_Closure closure,
                 void *closure_data, const char *what)
{
    const char *id = json_string_value(json_object_get(obj, "id"));
    const char *url = json_string_value(json_object_get(obj, "url"));
    if (!id || !url) {
        kl_call_fail(kl_call_from(closure_data), KL_INTERNAL,
                     "Stripe answered a %s without id or url", what);
        closure(NULL, closure_data);
        return;
    }
    /* The URL is a bearer credential: logged nowhere. */
    KL_LOG(KL_INFO, "%s %s created", what, id);
    Kowloon__Billing__SessionUrl out = KOWLOON__BILLING__SESSION_URL__INIT;
    out.id = (char *)id;
    out.url = (char *)url;
    closure(&out, closure_data);
}

static void
s_create_checkout_session(Kowloon__Billing__BillingService_Service *svc,
                          const Kowloon__Billing__CheckoutRequest *in,
                          Kowloon__Billing__SessionUrl_Closure closure,
                          void *closure_data)
{
    billing_service_t *self = (billing_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    char tenant[37], price[BILLING_ID_MAX], key[64];
    billing_row_t row;
    json_t *obj = NULL;
    int rc = s_ctx_tenant(closure_data, tenant, &st);
    if (rc == 0)
        rc = kl_valid_check_plan("plan", in->plan, &st);
    if (rc == 0)
        rc = billing_plans_price_of(self->plans, in->plan, price, &st);
    if (rc == 0)
        rc = billing_store_get(w->pg, tenant, false, &row, &st);
    if (rc == 0) {
        billing_form_t *f = billing_form_new();
        billing_form_add(f, "mode", "subscription");
        billing_form_add(f, "client_reference_id", tenant);
        if (row.has_customer)
            billing_form_add(f, "customer", row.customer_id);
        billing_form_add(f, "line_items[0][price]", price);
        billing_form_add(f, "line_items[0][quantity]", "1");
        billing_form_add(f, "success_url", self->success_url);
        billing_form_add(f, "cancel_url", self->cancel_url);
        billing_form_add(f, "metadata[tenant_id]", tenant);
        billing_form_add(f, "metadata[plan]", in->plan);
        billing_form_add(f, "subscription_data[metadata][tenant_id]", tenant);
        billing_form_add(f, "subscription_data[metadata][plan]", in->plan);
        rc = s_stripe_post(self, w->pg, tenant, "checkout.create",
                           "/v1/checkout/sessions", f, false, key, &obj, &st);
        billing_form_destroy(&f);
        if (rc == 0)
            s_key_done(w->pg, key);
    }
    if (rc < 0) {
        kl_service_fail(closure_data, "CreateCheckoutSession", &st);
        closure(NULL, closure_data);
        return;
    }
    s_answer_session(obj, closure, closure_data, "checkout session");
    json_decref(obj);
}

static void
s_create_portal_session(Kowloon__Billing__BillingService_Service *svc,
                        const Kowloon__Billing__PortalRequest *in,
                        Kowloon__Billing__SessionUrl_Closure closure,
                        void *closure_data)
{
    billing_service_t *self = (billing_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    char tenant[37], key[64];
    billing_row_t row;
    json_t *obj = NULL;
    int rc = s_ctx_tenant(closure_data, tenant, &st);
    if (rc == 0)
        rc = billing_store_get(w->pg, tenant, false, &row, &st);
    if (rc == 0 && !row.has_customer)
        rc = kl_status_set(&st, KL_FAILED_PRECONDITION,
                           "no Stripe customer yet: start a subscription "
                           "or a checkout first");
    if (rc == 0) {
        billing_form_t *f = billing_form_new();
        billing_form_add(f, "customer", row.customer_id);
        billing_form_add(f, "return_url", self->portal_return_url);
        rc = s_stripe_post(self, w->pg, tenant, "portal.create",
                           "/v1/billing_portal/sessions", f, false, key, &obj,
                           &st);
        billing_form_destroy(&f);
        if (rc == 0)
            s_key_done(w->pg, key);
    }
    if (rc < 0) {
        kl_service_fail(closure_data, "CreatePortalSession", &st);
        closure(NULL, closure_data);
        return;
    }
    s_answer_session(obj, closure, closure_data, "portal session");
    json_decref(obj);
}

/* --- Alipay -------------------------------------------------------------- */

/* Currencies Stripe settles Alipay in, with the smallest amount Stripe
 * charges in each (in the smallest unit; jpy has no minor unit). */
static const struct {
    const char *code;
    int64_t min;
} s_alipay_currencies[] = {
    {"aud", 50}, {"cad", 50},  {"eur", 50}, {"gbp", 30}, {"hkd", 400},
    {"jpy", 50}, {"myr", 200}, {"nzd", 50}, {"sgd", 50}, {"usd", 50},
};

/* scheme://host[:port] of url into out; false when url has none. */
static bool
s_origin(const char *url, char *out, size_t size)
{
    const char *p = strstr(url, "://");
    if (!p ||
        (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0))
        return false;
    const char *end = p + 3;
    end += strcspn(end, "/?#");
    if (end == p + 3 || (size_t)(end - url) >= size)
        return false;
    memcpy(out, url, (size_t)(end - url));
    out[end - url] = '\0';
    for (char *c = out; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');
    return true;
}

static int
s_check_alipay(const billing_service_t *self,
               const Kowloon__Billing__AlipayPaymentRequest *in,
               kl_status_t *st)
{
    const char *cur = in->currency ? in->currency : "";
    if (!*cur)
        return kl_status_set(st, KL_INVALID_ARGUMENT, "currency is required");
    if (strcmp(cur, "cny") == 0)
        return kl_status_set(
            st, KL_INVALID_ARGUMENT,
            "currency cny is refused: Alipay shows cny to the payer "
            "(presentment) but Stripe settles it in aud, cad, eur, gbp, hkd, "
            "jpy, myr, nzd, sgd or usd; charge in one of those");
    int64_t min = -1;
    for (size_t i = 0;
         i < sizeof s_alipay_currencies / sizeof s_alipay_currencies[0]; i++)
        if (strcmp(s_alipay_currencies[i].code, cur) == 0)
            min = s_alipay_currencies[i].min;
    if (min < 0)
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "currency \"%.16s\" is not supported for Alipay: "
                             "want aud, cad, eur, gbp, hkd, jpy, myr, nzd, "
                             "sgd or usd (lower case)",
                             cur);
    if (in->amount <= 0)
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "amount must be positive, got %lld",
                             (long long)in->amount);
    if (in->amount > S_AMOUNT_MAX)
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "amount %lld is above Stripe's maximum %d",
                             (long long)in->amount, S_AMOUNT_MAX);
    if (in->amount < min)
        return kl_status_set(
            st, KL_INVALID_ARGUMENT,
            "amount %lld %s is below Stripe's minimum charge %lld %s%s",
            (long long)in->amount, cur, (long long)min, cur,
            strcmp(cur, "jpy") == 0 ? " (jpy is zero-decimal: amounts are yen)"
                                    : " (amounts are in the smallest unit)");
    if (in->period_days < 1 || in->period_days > 366)
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "period_days must be 1 to 366, got %d",
                             (int)in->period_days);
    if (kl_valid_empty(in->return_url))
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "return_url is required: Alipay redirects the "
                             "payer back to it");
    char want[512], got[512], alt[512];
    if (strlen(in->return_url) > 2048 ||
        !s_origin(in->return_url, got, sizeof got))
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "return_url is not an http(s) URL");
    bool ok = (s_origin(self->success_url, want, sizeof want) &&
               strcmp(want, got) == 0) ||
              (s_origin(self->portal_return_url, alt, sizeof alt) &&
               strcmp(alt, got) == 0);
    if (!ok)
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "return_url must be on %s", want);
    return 0;
}

static void
s_create_alipay_payment(Kowloon__Billing__BillingService_Service *svc,
                        const Kowloon__Billing__AlipayPaymentRequest *in,
                        Kowloon__Billing__AlipayPayment_Closure closure,
                        void *closure_data)
{
    billing_service_t *self = (billing_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    char tenant[37], key[64];
    billing_row_t row;
    json_t *obj = NULL;
    int rc = s_ctx_tenant(closure_data, tenant, &st);
    if (rc == 0)
        rc = s_check_alipay(self, in, &st);
    if (rc == 0)
        rc = billing_store_get(w->pg, tenant, false, &row, &st);
    if (rc == 0) {
        billing_form_t *f = billing_form_new();
        billing_form_addf(f, "amount", "%lld", (long long)in->amount);
        billing_form_add(f, "currency", in->currency);
        billing_form_add(f, "payment_method_types[]", "card");
        billing_form_add(f, "payment_method_types[]", "alipay");
        if (row.has_customer)
            billing_form_add(f, "customer", row.customer_id);
        billing_form_add(f, "metadata[tenant_id]", tenant);
        billing_form_addf(f, "metadata[period_days]", "%d",
                          (int)in->period_days);
        /* Confirmed at once with Alipay: the answer carries Alipay's
         * redirect; the client secret still lets Stripe.js pay by card. */
        billing_form_add(f, "payment_method_data[type]", "alipay");
        billing_form_add(f, "confirm", "true");
        billing_form_add(f, "return_url", in->return_url);
        rc = s_stripe_post(self, w->pg, tenant, "alipay.create",
                           "/v1/payment_intents", f, false, key, &obj, &st);
        billing_form_destroy(&f);
        if (rc == 0)
            s_key_done(w->pg, key);
    }
    if (rc < 0) {
        kl_service_fail(closure_data, "CreateAlipayPayment", &st);
        closure(NULL, closure_data);
        return;
    }
    Kowloon__Billing__AlipayPayment out =
        KOWLOON__BILLING__ALIPAY_PAYMENT__INIT;
    const char *id = json_string_value(json_object_get(obj, "id"));
    const char *secret =
        json_string_value(json_object_get(obj, "client_secret"));
    const char *status = json_string_value(json_object_get(obj, "status"));
    const char *redirect = json_string_value(json_object_get(
        json_object_get(json_object_get(obj, "next_action"), "redirect_to_url"),
        "url"));
    out.payment_intent_id = (char *)(id ? id : "");
    out.client_secret = (char *)(secret ? secret : "");
    out.status = (char *)(status ? status : "");
    out.redirect_url = (char *)(redirect ? redirect : "");
    KL_LOG(KL_INFO, "payment %s of %lld %s for %d days created (%s)",
           out.payment_intent_id, (long long)in->amount, in->currency,
           (int)in->period_days, out.status);
    closure(&out, closure_data);
    json_decref(obj);
}

/* --- ChangePlan, CancelAtPeriodEnd ---------------------------------------- */

/* Posts form to the tenant's live subscription and records the answer. */
static int
s_update_sub(billing_service_t *self, kl_pg_t *pg, const char *tenant,
             billing_form_t *f, billing_row_t *row, kl_status_t *st)
{
    char path[BILLING_ID_MAX + 32], key[64];
    snprintf(path, sizeof path, "/v1/subscriptions/%s", row->subscription_id);
    json_t *obj = NULL;
    int rc = s_stripe_post(self, pg, tenant, "subscription.update", path, f,
                           false, key, &obj, st);
    if (rc < 0)
        return rc;
    rc = s_record_sub(self, pg, tenant, obj, (int64_t)time(NULL), false, key,
                      row, st);
    json_decref(obj);
    return rc;
}

static int
s_live_sub(kl_pg_t *pg, const char *tenant, billing_row_t *row, kl_status_t *st)
{
    int rc = billing_store_get(pg, tenant, false, row, st);
    if (rc < 0)
        return rc;
    if (!row->has_subscription || billing_events_terminal(row->status))
        return kl_status_set(st, KL_FAILED_PRECONDITION,
                             "tenant has no live subscription");
    if (!s_stripe_id_valid(row->subscription_id))
        return kl_status_set(st, KL_INTERNAL,
                             "stored subscription id is "
                             "malformed");
    return 0;
}

static void
s_change_plan(Kowloon__Billing__BillingService_Service *svc,
              const Kowloon__Billing__ChangePlanRequest *in,
              Kowloon__Billing__Billing_Closure closure, void *closure_data)
{
    billing_service_t *self = (billing_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    char tenant[37], price[BILLING_ID_MAX];
    billing_row_t row;
    int rc = s_ctx_tenant(closure_data, tenant, &st);
    if (rc == 0)
        rc = kl_valid_check_plan("plan", in->plan, &st);
    if (rc == 0)
        rc = billing_plans_price_of(self->plans, in->plan, price, &st);
    if (rc == 0)
        rc = s_live_sub(w->pg, tenant, &row, &st);
    if (rc == 0 && !row.item_id[0])
        rc = kl_status_set(&st, KL_FAILED_PRECONDITION,
                           "subscription item not known yet, retry shortly");
    if (rc == 0 && strcmp(row.price_id, price) != 0) {
        billing_form_t *f = billing_form_new();
        billing_form_add(f, "items[0][id]", row.item_id);
        billing_form_add(f, "items[0][price]", price);
        billing_form_add(f, "proration_behavior", "create_prorations");
        billing_form_add(f, "metadata[plan]", in->plan);
        rc = s_update_sub(self, w->pg, tenant, f, &row, &st);
        billing_form_destroy(&f);
    }
    if (rc < 0) {
        kl_service_fail(closure_data, "ChangePlan", &st);
        closure(NULL, closure_data);
        return;
    }
    s_answer_billing(&row, closure, closure_data);
}

static void
s_cancel_at_period_end(Kowloon__Billing__BillingService_Service *svc,
                       const Kowloon__Billing__CancelRequest *in,
                       Kowloon__Billing__Billing_Closure closure,
                       void *closure_data)
{
    billing_service_t *self = (billing_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    char tenant[37];
    billing_row_t row;
    int rc = s_ctx_tenant(closure_data, tenant, &st);
    if (rc == 0)
        rc = s_live_sub(w->pg, tenant, &row, &st);
    if (rc == 0 && !row.cancel_at_period_end) {
        billing_form_t *f = billing_form_new();
        billing_form_add(f, "cancel_at_period_end", "true");
        rc = s_update_sub(self, w->pg, tenant, f, &row, &st);
        billing_form_destroy(&f);
    }
    if (rc < 0) {
        kl_service_fail(closure_data, "CancelAtPeriodEnd", &st);
        closure(NULL, closure_data);
        return;
    }
    s_answer_billing(&row, closure, closure_data);
}

/* --- reads -----------------------------------------------------------------
 */

static void
s_get_billing(Kowloon__Billing__BillingService_Service *svc,
              const Kowloon__Billing__GetBillingRequest *in,
              Kowloon__Billing__Billing_Closure closure, void *closure_data)
{
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    char tenant[37];
    billing_row_t row;
    int rc = s_ctx_tenant(closure_data, tenant, &st);
    if (rc == 0)
        rc = billing_store_get(w->pg, tenant, false, &row, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "GetBilling", &st);
        closure(NULL, closure_data);
        return;
    }
    s_answer_billing(&row, closure, closure_data);
}

static void
s_get_tenant_billing(Kowloon__Billing__BillingService_Service *svc,
                     const Kowloon__Billing__TenantBillingRequest *in,
                     Kowloon__Billing__Billing_Closure closure,
                     void *closure_data)
{
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    billing_row_t row;
    int rc = 0;
    rc = kl_valid_check_uuid("tenant_id", in->tenant_id, &st);
    if (rc == 0)
        rc = billing_store_get(w->pg, in->tenant_id, false, &row, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "GetTenantBilling", &st);
        closure(NULL, closure_data);
        return;
    }
    s_answer_billing(&row, closure, closure_data);
}

/* --- HandleWebhook -----------------------------------------------------------
 */

static void
s_handle_webhook(Kowloon__Billing__BillingService_Service *svc,
                 const Kowloon__Billing__WebhookRequest *in,
                 Kowloon__Billing__WebhookResponse_Closure closure,
                 void *closure_data)
{
    billing_service_t *self = (billing_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    char event_id[256] = "";
    bool duplicate = false, queued = false;
    billing_intake_opts_t opts = {
        .secrets = (const char *const *)self->secrets,
        .n_secrets = self->n_secrets,
        .tolerance_s = self->tolerance_s,
        .plans = self->plans,
        .fault = self->fault,
        .fault_user = self->fault_user,
        .group = self->intake,
    };
    int rc = billing_intake_handle(&opts, w->pg, in->payload.data,
                                   in->payload.len, in->signature, event_id,
                                   &duplicate, &queued, &st);
    if (rc == 0 && queued)
        billing_outbox_wake(self->outbox);
    if (rc < 0) {
        if (rc == -KL_INVALID_ARGUMENT)
            KL_LOG(KL_WARN, "webhook refused: %s", st.message);
        kl_service_fail(closure_data, "HandleWebhook", &st);
        closure(NULL, closure_data);
        return;
    }
    Kowloon__Billing__WebhookResponse out =
        KOWLOON__BILLING__WEBHOOK_RESPONSE__INIT;
    out.event_id = event_id;
    out.duplicate = duplicate;
    closure(&out, closure_data);
}

/* --- object ------------------------------------------------------------------
 */

static const Kowloon__Billing__BillingService_Service s_base =
    KOWLOON__BILLING__BILLING_SERVICE__INIT(s_);

billing_service_t *
billing_service_new(const billing_service_opts_t *opts, kl_status_t *status)
{
    if (kl_valid_empty(opts->database_url)) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "billing service needs a database URL");
        return NULL;
    }
    if (opts->n_webhook_secrets == 0) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "billing service needs at least one webhook secret");
        return NULL;
    }
    for (size_t i = 0; i < opts->n_webhook_secrets; i++)
        if (strncmp(opts->webhook_secrets[i], "whsec_", 6) != 0) {
            kl_status_set(status, KL_INVALID_ARGUMENT,
                          "webhook secret %zu does not start with whsec_",
                          i + 1);
            return NULL;
        }
    char o[512];
    if (kl_valid_empty(opts->checkout_success_url) ||
        !s_origin(opts->checkout_success_url, o, sizeof o) ||
        kl_valid_empty(opts->checkout_cancel_url) ||
        !s_origin(opts->checkout_cancel_url, o, sizeof o) ||
        kl_valid_empty(opts->portal_return_url) ||
        !s_origin(opts->portal_return_url, o, sizeof o)) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "checkout success/cancel and portal return URLs must be "
                      "http(s) URLs");
        return NULL;
    }
    billing_stripe_opts_t sopts = {
        .api_base = opts->stripe_api_base,
        .secret_key = opts->stripe_secret_key,
        .api_version = opts->stripe_api_version,
        .backoff_ms = opts->stripe_backoff_ms,
        .max_total_ms = opts->stripe_max_total_ms,
        .request_timeout_ms = opts->stripe_request_timeout_ms,
    };
    billing_stripe_t *stripe = billing_stripe_new(&sopts, status);
    if (!stripe)
        return NULL;
    kl_rpc_client_opts_t topts = {.endpoints = opts->tenant_endpoints,
                                  .n_endpoints = opts->n_tenant_endpoints,
                                  .max_message_bytes = opts->max_message_bytes,
                                  .curve = opts->curve,
                                  .server_public_key = opts->server_public_key};
    kl_rpc_client_t *tenant = kl_rpc_client_new(
        &kowloon__tenant__tenant_service__descriptor, &topts, status);
    kl_rpc_client_opts_t fopts = topts;
    fopts.endpoints = opts->flags_endpoints;
    fopts.n_endpoints = opts->n_flags_endpoints;
    kl_rpc_client_t *flags =
        tenant ? kl_rpc_client_new(&kowloon__flags__flags_service__descriptor,
                                   &fopts, status)
               : NULL;
    if (!tenant || !flags) {
        kl_rpc_client_destroy(&tenant);
        billing_stripe_destroy(&stripe);
        return NULL;
    }
    billing_service_t *self = kl_calloc(1, sizeof *self);
    self->base = s_base;
    self->database_url = kl_strdup(opts->database_url);
    self->n_secrets = opts->n_webhook_secrets;
    self->secrets = kl_calloc(self->n_secrets + 1, sizeof *self->secrets);
    for (size_t i = 0; i < self->n_secrets; i++)
        self->secrets[i] = kl_strdup(opts->webhook_secrets[i]);
    self->tolerance_s =
        opts->webhook_tolerance_s > 0 ? opts->webhook_tolerance_s : 300;
    self->trial_days = opts->trial_days;
    self->success_url = kl_strdup(opts->checkout_success_url);
    self->cancel_url = kl_strdup(opts->checkout_cancel_url);
    self->portal_return_url = kl_strdup(opts->portal_return_url);
    self->grace_s = opts->past_due_grace_s;
    self->sweep_interval_ms = opts->sweep_interval_ms;
    self->retention_days = opts->retention_days;
    self->prune_interval_ms = opts->prune_interval_ms;
    self->stripe = stripe;
    self->tenant = tenant;
    self->flags = flags;
    self->plans = billing_plans_new(flags, S_PLANS_TTL_MS);
    self->intake = billing_intake_group_new();
    self->fault = opts->fault;
    self->fault_user = opts->fault_user;
    self->std = kl_service_new(&(kl_service_opts_t){
        .name = "billing", .database_url = self->database_url});
    return self;
}

void
billing_service_destroy(billing_service_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    billing_service_t *self = *self_p;
    billing_outbox_destroy(&self->outbox);
    kl_service_destroy(&self->std);
    billing_intake_group_destroy(&self->intake);
    billing_plans_destroy(&self->plans);
    kl_rpc_client_destroy(&self->flags);
    kl_rpc_client_destroy(&self->tenant);
    billing_stripe_destroy(&self->stripe);
    for (size_t i = 0; i < self->n_secrets; i++) {
        memset(self->secrets[i], 0, strlen(self->secrets[i]));
        free(self->secrets[i]);
    }
    free(self->secrets);
    free(self->database_url);
    free(self->success_url);
    free(self->cancel_url);
    free(self->portal_return_url);
    free(self);
    *self_p = NULL;
}

int
billing_service_migrate(const billing_service_t *self, kl_status_t *status)
{
    kl_pg_t *pg = kl_pg_new(self->database_url);
    int rc = billing_store_migrate(pg, status);
    kl_pg_destroy(&pg);
    return rc;
}

int
billing_service_start(billing_service_t *self, kl_status_t *status)
{
    if (self->outbox)
        return 0;
    billing_outbox_opts_t opts = {
        .database_url = self->database_url,
        .tenant = self->tenant,
        .grace_s = self->grace_s,
        .sweep_interval_ms = self->sweep_interval_ms,
        .retention_days = self->retention_days,
        .prune_interval_ms = self->prune_interval_ms,
    };
    self->outbox = billing_outbox_new(&opts, status);
    return self->outbox ? 0 : -(int)status->code;
}

ProtobufCService *
billing_service_base(billing_service_t *self)
{
    return &self->base.base;
}

void
billing_service_intake_stats(billing_service_t *self,
                             billing_intake_group_stats_t *out)
{
    billing_intake_group_stats(self->intake, out);
}

void
billing_service_server_opts(billing_service_t *self, kl_rpc_server_opts_t *opts)
{
    kl_service_server_opts(self->std, opts);
}
