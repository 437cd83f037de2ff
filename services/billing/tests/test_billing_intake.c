/*
 * The webhook intake under concurrency, in process: billing, a tenant
 * service and a flags service on tcp://127.0.0.1:*, a fresh database in
 * KLTEST_PG_URL. Tenants get their customer and subscription rows by SQL
 * (as bench/webhooks.sh does), and events are signed here, so no Stripe
 * stand-in is needed.
 *
 * Invoice events take the two-round-trip path (the inbox statement reads
 * and locks the subscription row, no advisory lock); subscription events
 * take the general one (advisory lock, then the row). These tests deliver
 * many events of the same tenants at once, each several times, in
 * shuffled order, and mix both paths, then check that every tenant ends
 * in the state of its newest event, each event recorded once, with one
 * effect.
 */
#include "billing_service.h"
#include "billing_webhook.h"
#include "flags_service.h"
#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_rpc.h"
#include "kl_test_db.h"
#include "kl_test_server.h"
#include "kowloon/billing.pb-c.h"
#include "kowloon/tenant.pb-c.h"
#include "tenant_service.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>

#define S_TIMEOUT_MS 15000
#define S_WHSEC "whsec_intake_test"

static kl_test_db_t *s_db;
static const char *s_url;
static tenant_service_t *s_tenant_svc;
static flags_service_t *s_flags_svc;
static billing_service_t *s_billing_svc;
static kl_test_server_t *s_tenant, *s_flags, *s_billing;
static long long s_created = 1700000000; /* events' created, increasing */

/* The fault hook: "kill" terminates the backend of the intake between its
 * round trips and lets the call go on; "fail" stops the call there;
 * "failbatch" stops the next batch of two or more there. */
static char s_fault_mode[16];
static pthread_mutex_t s_fault_mu = PTHREAD_MUTEX_INITIALIZER;

static int
s_fault(const char *point, void *user)
{
    (void)user;
    bool batch = strcmp(point, "webhook.batch.decided") == 0;
    if (!batch && strcmp(point, "webhook.decided") != 0)
        return 0;
    pthread_mutex_lock(&s_fault_mu);
    char mode[16];
    snprintf(mode, sizeof mode, "%s", s_fault_mode);
    /* "failbatch" waits for a batch; the others for a lone delivery. */
    if (batch == (strcmp(mode, "failbatch") == 0))
        s_fault_mode[0] = '\0';
    else
        mode[0] = '\0';
    pthread_mutex_unlock(&s_fault_mu);
    if (strcmp(mode, "kill") == 0) {
        char *n = kl_test_db_value(
            s_url, "SELECT count(pg_terminate_backend(pid, 5000)) FROM"
                   " pg_stat_activity WHERE datname = current_database()"
                   " AND state = 'idle in transaction' AND query LIKE"
                   " 'WITH ins AS (INSERT INTO billing.events%'");
        assert_non_null(n);
        assert_string_equal(n, "1");
        free(n);
        return 0;
    }
    return strcmp(mode, "fail") == 0 || strcmp(mode, "failbatch") == 0;
}

/* --- helpers ---------------------------------------------------------- */

static char *
s_value(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *v = kl_test_db_vvalue(s_url, fmt, ap);
    va_end(ap);
    if (!v)
        fail_msg("query failed (its error is printed above)");
    return v;
}

static long
s_count(const char *fmt, const char *arg)
{
    char *v = s_value(fmt, arg);
    long n = strtol(v, NULL, 10);
    free(v);
    return n;
}

/* A tenant (status active in the tenant service) with customer cus_<tag>
 * and an active subscription sub_<tag> on pro. */
static void
s_tenant_new(const char *tag, char id[37])
{
    kl_status_t st;
    Kowloon__Tenant__CreateTenantRequest req =
        KOWLOON__TENANT__CREATE_TENANT_REQUEST__INIT;
    req.subdomain = (char *)tag;
    req.name = (char *)tag;
    req.plan = "pro";
    req.status = "active";
    Kowloon__Tenant__Tenant *t = NULL;
    if (kl_test_server_call(s_tenant, "Create", &req, &t, S_TIMEOUT_MS, &st) <
        0)
        fail_msg("Create %s: %s", tag, st.message);
    snprintf(id, 37, "%s", t->id);
    protobuf_c_message_free_unpacked(&t->base, NULL);
    char *ok = s_value(
        "WITH c AS (INSERT INTO billing.customers VALUES ('%s', 'cus_%s'))"
        " INSERT INTO billing.subscriptions (tenant_id, subscription_id,"
        " customer_id, plan, status, tenant_status) VALUES ('%s', 'sub_%s',"
        " 'cus_%s', 'pro', 'active', 'active') RETURNING 1",
        id, tag, id, tag, tag);
    free(ok);
}

static char *
s_tenant_status(const char *id)
{
    kl_status_t st;
    Kowloon__Tenant__GetTenantRequest req =
        KOWLOON__TENANT__GET_TENANT_REQUEST__INIT;
    req.id = (char *)id;
    Kowloon__Tenant__Tenant *t = NULL;
    if (kl_test_server_call(s_tenant, "Get", &req, &t, S_TIMEOUT_MS, &st) < 0)
        fail_msg("Get %s: %s", id, st.message);
    char *s = kl_strdup(t->status);
    protobuf_c_message_free_unpacked(&t->base, NULL);
    return s;
}

/* Waits until the outbox has nothing pending. */
static void
s_drain(void)
{
    int64_t until = kl_now_mono_ms() + 20000;
    while (s_count("SELECT count(*) FROM billing.outbox WHERE done_at IS"
                   " NULL%s",
                   "") > 0) {
        if (kl_now_mono_ms() > until)
            fail_msg("the outbox did not drain in 20 s");
        usleep(20 * 1000);
    }
    assert_int_equal(s_count("SELECT count(*) FROM billing.outbox WHERE"
                             " last_error IS NOT NULL%s",
                             ""),
                     0);
}

/* A signed delivery. */
typedef struct {
    char id[64];
    char *payload;
    char header[128];
    /* results */
    int rc;
    bool duplicate;
    char message[KL_STATUS_MESSAGE_MAX];
} s_delivery_t;

static void
s_sign(s_delivery_t *d, const char *id, const char *type, long long created,
       const char *object)
{
    memset(d, 0, sizeof *d);
    snprintf(d->id, sizeof d->id, "%s", id);
    d->payload = kl_asprintf("{\"id\":\"%s\",\"object\":\"event\",\"type\":"
                             "\"%s\",\"created\":%lld,\"data\":{\"object\":"
                             "%s}}",
                             id, type, created, object);
    long long now = (long long)time(NULL);
    char sig[65];
    billing_webhook_sign(S_WHSEC, now, (const uint8_t *)d->payload,
                         strlen(d->payload), sig);
    snprintf(d->header, sizeof d->header, "t=%lld,v1=%s", now, sig);
}

/* An invoice event of tenant tag. */
static void
s_invoice(s_delivery_t *d, const char *id, const char *tag, bool failed,
          long long created)
{
    char obj[256];
    snprintf(obj, sizeof obj,
             "{\"id\":\"in_%s\",\"object\":\"invoice\",\"customer\":"
             "\"cus_%s\",\"subscription\":\"sub_%s\",\"amount_paid\":%d}",
             id, tag, tag, failed ? 0 : 2900);
    s_sign(d, id,
           failed ? "invoice.payment_failed" : "invoice.payment_succeeded",
           created, obj);
}

/* Another delivery of the same event (its own payload and answer). */
static void
s_copy(s_delivery_t *to, const s_delivery_t *from)
{
    *to = *from;
    to->payload = kl_strdup(from->payload);
}

static void
s_deliver(s_delivery_t *d)
{
    Kowloon__Billing__WebhookRequest req =
        KOWLOON__BILLING__WEBHOOK_REQUEST__INIT;
    req.payload.data = (uint8_t *)d->payload;
    req.payload.len = strlen(d->payload);
    req.signature = d->header;
    Kowloon__Billing__WebhookResponse *resp = NULL;
    kl_status_t st;
    kl_status_clear(&st);
    d->rc = kl_test_server_call(s_billing, "HandleWebhook", &req, &resp,
                                S_TIMEOUT_MS, &st);
    d->duplicate = resp && resp->duplicate;
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    snprintf(d->message, sizeof d->message, "%s", st.message);
}

/* Delivers every delivery of list, from n_threads threads at once. */
typedef struct {
    s_delivery_t **list;
    size_t n;
    size_t next; /* guarded by mu */
    pthread_mutex_t mu;
} s_pool_t;

static void *
s_pool_main(void *arg)
{
    s_pool_t *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        size_t i = p->next++;
        pthread_mutex_unlock(&p->mu);
        if (i >= p->n)
            return NULL;
        s_deliver(p->list[i]);
    }
}

static void
s_deliver_all(s_delivery_t **list, size_t n, int n_threads)
{
    s_pool_t p = {.list = list, .n = n};
    pthread_mutex_init(&p.mu, NULL);
    pthread_t th[32];
    assert_true(n_threads <= 32);
    for (int i = 0; i < n_threads; i++)
        assert_int_equal(pthread_create(&th[i], NULL, s_pool_main, &p), 0);
    for (int i = 0; i < n_threads; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_destroy(&p.mu);
    for (size_t i = 0; i < n; i++)
        if (list[i]->rc != 0)
            fail_msg("delivery of %s: %s %s", list[i]->id,
                     kl_strerror(list[i]->rc), list[i]->message);
}

/* Shuffles list (a fixed seed: the same order on every run). */
static void
s_shuffle(s_delivery_t **list, size_t n, unsigned *seed)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)rand_r(seed) % i;
        s_delivery_t *t = list[i - 1];
        list[i - 1] = list[j];
        list[j] = t;
    }
}

/* --- setup -------------------------------------------------------------- */

static int
s_setup(void **state)
{
    (void)state;
    kl_log_init("test", KL_WARN);
    s_db = kl_test_db_new("test_billing_intake", "klintake");
    if (!s_db)
        return -1;
    s_url = kl_test_db_url(s_db);
    kl_status_t st;
    tenant_service_opts_t topts = {.database_url = s_url,
                                   .redis_url = "",
                                   .events_channel = "kltest",
                                   .default_plan = "starter",
                                   .default_isolation = "row"};
    s_tenant_svc = tenant_service_new(&topts, &st);
    if (!s_tenant_svc || tenant_service_migrate(s_tenant_svc, &st) < 0) {
        fprintf(stderr, "tenant service: %s\n", st.message);
        return -1;
    }
    kl_rpc_server_opts_t o = {.workers = 4};
    tenant_service_server_opts(s_tenant_svc, &o);
    s_tenant = kl_test_server_start(tenant_service_base(s_tenant_svc), &o);
    flags_service_opts_t fopts = {
        .database_url = s_url, .redis_url = "", .events_channel = "kltest"};
    s_flags_svc = flags_service_new(&fopts, &st);
    if (!s_flags_svc || flags_service_migrate(s_flags_svc, &st) < 0) {
        fprintf(stderr, "flags service: %s\n", st.message);
        return -1;
    }
    o = (kl_rpc_server_opts_t){.workers = 2};
    flags_service_server_opts(s_flags_svc, &o);
    s_flags = kl_test_server_start(flags_service_base(s_flags_svc), &o);
    if (!s_tenant || !s_flags)
        return -1;
    const char *tenant_ep = kl_test_server_endpoint(s_tenant);
    const char *flags_ep = kl_test_server_endpoint(s_flags);
    const char *secrets[] = {S_WHSEC};
    billing_service_opts_t bopts = {
        .database_url = s_url,
        .tenant_endpoints = &tenant_ep,
        .n_tenant_endpoints = 1,
        .flags_endpoints = &flags_ep,
        .n_flags_endpoints = 1,
        /* Intake never calls Stripe. */
        .stripe_api_base = "http://127.0.0.1:9",
        .stripe_secret_key = "sk_test_intake",
        .stripe_api_version = "2024-06-20",
        .webhook_secrets = secrets,
        .n_webhook_secrets = 1,
        .webhook_tolerance_s = 300,
        .trial_days = 14,
        .checkout_success_url = "https://app.example.com/ok",
        .checkout_cancel_url = "https://app.example.com/cancel",
        .portal_return_url = "https://app.example.com/billing",
        .past_due_grace_s = 3600,
        .fault = s_fault,
    };
    s_billing_svc = billing_service_new(&bopts, &st);
    if (!s_billing_svc || billing_service_migrate(s_billing_svc, &st) < 0 ||
        billing_service_start(s_billing_svc, &st) < 0) {
        fprintf(stderr, "billing service: %s\n", st.message);
        return -1;
    }
    /* 10: held deliveries and a batch queued behind them (group tests). */
    o = (kl_rpc_server_opts_t){.workers = 10};
    billing_service_server_opts(s_billing_svc, &o);
    s_billing = kl_test_server_start(billing_service_base(s_billing_svc), &o);
    return s_billing ? 0 : -1;
}

static int
s_teardown(void **state)
{
    (void)state;
    kl_test_server_stop(&s_billing);
    billing_service_destroy(&s_billing_svc);
    kl_test_server_stop(&s_flags);
    flags_service_destroy(&s_flags_svc);
    kl_test_server_stop(&s_tenant);
    tenant_service_destroy(&s_tenant_svc);
    kl_test_db_destroy(&s_db);
    return 0;
}

/* --- tests -------------------------------------------------------------- */

#define S_TENANTS 4
#define S_EVENTS 16 /* per tenant and round */
#define S_COPIES 3  /* deliveries of each event */

/*
 * Rounds of 16 invoice events for each of 4 tenants, alternately failed
 * and succeeded, each delivered 3 times, all 192 deliveries shuffled and
 * sent from 16 threads at once. Whatever the order: each event is recorded
 * once (one delivery fresh, the others duplicates), and each tenant ends
 * in the state of its newest event (failed: past_due, succeeded: active),
 * stamped with it, in billing and then in the tenant service.
 */
static void
test_concurrent_events(void **state)
{
    (void)state;
    char ids[S_TENANTS][37], tags[S_TENANTS][16];
    for (int k = 0; k < S_TENANTS; k++) {
        snprintf(tags[k], sizeof tags[k], "conc%d", k);
        s_tenant_new(tags[k], ids[k]);
    }
    unsigned seed = 4;
    size_t n = S_TENANTS * S_EVENTS * S_COPIES;
    s_delivery_t *all = kl_calloc(n, sizeof *all);
    s_delivery_t **list = kl_calloc(n, sizeof *list);
    for (int round = 0; round < 3; round++) {
        long long base = s_created;
        s_created += S_EVENTS;
        size_t o = 0;
        for (int k = 0; k < S_TENANTS; k++)
            for (int i = 0; i < S_EVENTS; i++) {
                char id[64];
                snprintf(id, sizeof id, "evt_c%d_%d_%d", round, k, i);
                s_invoice(&all[o], id, tags[k], (i + k + round) % 2 == 0,
                          base + i);
                for (int c = 1; c < S_COPIES; c++)
                    s_copy(&all[o + c], &all[o]);
                o += S_COPIES;
            }
        for (size_t i = 0; i < n; i++)
            list[i] = &all[i];
        s_shuffle(list, n, &seed);
        s_deliver_all(list, n, 16);
        /* Copies are adjacent in all: one fresh answer per event. */
        for (size_t e = 0; e < n; e += S_COPIES) {
            int fresh = 0;
            for (int c = 0; c < S_COPIES; c++)
                fresh += !all[e + c].duplicate;
            if (fresh != 1)
                fail_msg("%s: %d fresh answers", all[e].id, fresh);
        }
        for (int k = 0; k < S_TENANTS; k++) {
            char like[64];
            snprintf(like, sizeof like, "evt_c%d_%d_%%", round, k);
            assert_int_equal(s_count("SELECT count(*) FROM billing.events"
                                     " WHERE id LIKE '%s'",
                                     like),
                             S_EVENTS);
            int last = S_EVENTS - 1;
            bool failed = (last + k + round) % 2 == 0;
            char *v = s_value("SELECT status || ' ' || tenant_status || ' '"
                              " || status_event_id || ' ' ||"
                              " status_event_created FROM"
                              " billing.subscriptions WHERE tenant_id = '%s'",
                              ids[k]);
            char want[160];
            snprintf(want, sizeof want, "%s %s evt_c%d_%d_%d %lld",
                     failed ? "past_due" : "active",
                     failed ? "past_due" : "active", round, k, last,
                     base + last);
            assert_string_equal(v, want);
            free(v);
        }
        s_drain();
        for (int k = 0; k < S_TENANTS; k++) {
            bool failed = (S_EVENTS - 1 + k + round) % 2 == 0;
            char *t = s_tenant_status(ids[k]);
            assert_string_equal(t, failed ? "past_due" : "active");
            free(t);
        }
        for (size_t i = 0; i < n; i++)
            free(all[i].payload);
    }
    /* No event queued a change twice. */
    assert_int_equal(s_count("SELECT count(*) FROM (SELECT event_id FROM"
                             " billing.outbox WHERE event_id LIKE 'evt_c%s'"
                             " GROUP BY event_id HAVING count(*) > 1) d",
                             "%"),
                     0);
    free(all);
    free(list);
}

/* The same payment failure 20 times at once, among 10 older payments of
 * its tenant: one fresh answer, one inbox row, one outbox row. */
static void
test_same_event_at_once(void **state)
{
    (void)state;
    char id[37];
    s_tenant_new("same", id);
    long long base = s_created;
    s_created += 20;
    s_delivery_t all[30];
    s_delivery_t *list[30];
    s_invoice(&all[0], "evt_same", "same", true, base + 10);
    for (int i = 1; i < 20; i++)
        s_copy(&all[i], &all[0]);
    for (int i = 0; i < 10; i++) {
        char eid[32];
        snprintf(eid, sizeof eid, "evt_same_o%d", i);
        /* Payments that change nothing on an active subscription. */
        s_invoice(&all[20 + i], eid, "same", false, base + i);
    }
    for (int i = 0; i < 30; i++)
        list[i] = &all[i];
    unsigned seed = 20;
    s_shuffle(list, 30, &seed);
    /* A thread per delivery: the 20 copies really run at once. */
    s_deliver_all(list, 30, 30);
    int fresh = 0;
    for (int i = 0; i < 20; i++)
        fresh += !all[i].duplicate;
    assert_int_equal(fresh, 1);
    assert_int_equal(s_count("SELECT count(*) FROM billing.events WHERE id ="
                             " '%s'",
                             "evt_same"),
                     1);
    assert_int_equal(s_count("SELECT count(*) FROM billing.outbox WHERE"
                             " event_id = '%s'",
                             "evt_same"),
                     1);
    char *v = s_value("SELECT status || ' ' || status_event_id FROM"
                      " billing.subscriptions WHERE tenant_id = '%s'",
                      id);
    assert_string_equal(v, "past_due evt_same");
    free(v);
    /* And later again: a duplicate. */
    s_deliver(&all[0]);
    assert_int_equal(all[0].rc, 0);
    assert_true(all[0].duplicate);
    for (int i = 0; i < 30; i++)
        free(all[i].payload);
}

/* Invoice events delivered newest first: the newest decides, the older
 * ones are recorded and change nothing. */
static void
test_reverse_order(void **state)
{
    (void)state;
    char id[37];
    s_tenant_new("rev", id);
    long long base = s_created;
    s_created += 10;
    s_delivery_t ev[4];
    s_invoice(&ev[0], "evt_rev1", "rev", true, base + 1);
    s_invoice(&ev[1], "evt_rev2", "rev", true, base + 2);
    s_invoice(&ev[2], "evt_rev3", "rev", false, base + 3);
    for (int i = 2; i >= 0; i--) {
        s_deliver(&ev[i]);
        assert_int_equal(ev[i].rc, 0);
        assert_false(ev[i].duplicate);
    }
    char *v = s_value("SELECT outcome FROM billing.events WHERE id = '%s'",
                      "evt_rev3");
    assert_string_equal(v, "invoice in_evt_rev3: already active");
    free(v);
    for (int i = 0; i < 2; i++) {
        v = s_value("SELECT outcome FROM billing.events WHERE id = '%s'",
                    ev[i].id);
        assert_non_null(strstr(v, "older than the state it would change"));
        free(v);
    }
    assert_int_equal(s_count("SELECT count(*) FROM billing.outbox WHERE"
                             " tenant_id = '%s'",
                             id),
                     0);
    v = s_value("SELECT status || ' ' || status_event_created FROM"
                " billing.subscriptions WHERE tenant_id = '%s'",
                id);
    char want[64];
    snprintf(want, sizeof want, "active %lld", base + 3);
    assert_string_equal(v, want);
    free(v);
    /* A newer failure applies. */
    s_invoice(&ev[3], "evt_rev4", "rev", true, base + 4);
    s_deliver(&ev[3]);
    assert_int_equal(ev[3].rc, 0);
    assert_int_equal(s_count("SELECT count(*) FROM billing.outbox WHERE"
                             " event_id = '%s' AND status = 'past_due'",
                             "evt_rev4"),
                     1);
    for (int i = 0; i < 4; i++)
        free(ev[i].payload);
}

/*
 * A subscription event (general path: advisory lock, then the row) and a
 * newer invoice event (two round trips: the row only) of one tenant, at
 * once, ten times: the newer event wins every time, in either order.
 */
static void
test_mixed_paths(void **state)
{
    (void)state;
    char id[37];
    s_tenant_new("mixed", id);
    for (int r = 0; r < 10; r++) {
        long long base = s_created;
        s_created += 2;
        s_delivery_t sub, inv;
        char sid[32], iid[32];
        snprintf(sid, sizeof sid, "evt_mix_s%d", r);
        snprintf(iid, sizeof iid, "evt_mix_i%d", r);
        s_sign(&sub, sid, "customer.subscription.updated", base,
               "{\"id\":\"sub_mixed\",\"object\":\"subscription\","
               "\"customer\":\"cus_mixed\",\"status\":\"past_due\"}");
        s_invoice(&inv, iid, "mixed", false, base + 1);
        s_delivery_t *list[2] = {r % 2 ? &sub : &inv, r % 2 ? &inv : &sub};
        s_deliver_all(list, 2, 2);
        char *v = s_value("SELECT status || ' ' || status_event_id FROM"
                          " billing.subscriptions WHERE tenant_id = '%s'",
                          id);
        char want[64];
        snprintf(want, sizeof want, "active %s", iid);
        assert_string_equal(v, want);
        free(v);
        free(sub.payload);
        free(inv.payload);
    }
    s_drain();
    char *t = s_tenant_status(id);
    assert_string_equal(t, "active");
    free(t);
}

/*
 * The intake's connection is lost between its two round trips, and in
 * another delivery the call stops there: the event is not recorded and
 * the answer is UNAVAILABLE (Stripe delivers again); the next delivery
 * records it once, with its effect.
 */
static void
test_lost_between_round_trips(void **state)
{
    (void)state;
    char id[37];
    s_tenant_new("lost", id);
    long long base = s_created;
    s_created += 2;
    s_delivery_t ev;
    s_invoice(&ev, "evt_lost", "lost", true, base);
    const char *modes[] = {"kill", "fail"};
    for (int m = 0; m < 2; m++) {
        pthread_mutex_lock(&s_fault_mu);
        snprintf(s_fault_mode, sizeof s_fault_mode, "%s", modes[m]);
        pthread_mutex_unlock(&s_fault_mu);
        s_deliver(&ev);
        if (ev.rc != -KL_UNAVAILABLE)
            fail_msg("%s: %s %s", modes[m], kl_strerror(ev.rc), ev.message);
        assert_int_equal(s_count("SELECT count(*) FROM billing.events WHERE"
                                 " id = '%s'",
                                 "evt_lost"),
                         0);
        assert_int_equal(s_count("SELECT count(*) FROM billing.subscriptions"
                                 " WHERE status = 'past_due' AND"
                                 " subscription_id = '%s'",
                                 "sub_lost"),
                         0);
    }
    s_deliver(&ev);
    assert_int_equal(ev.rc, 0);
    assert_false(ev.duplicate);
    assert_int_equal(s_count("SELECT count(*) FROM billing.outbox WHERE"
                             " event_id = '%s'",
                             "evt_lost"),
                     1);
    s_deliver(&ev);
    assert_int_equal(ev.rc, 0);
    assert_true(ev.duplicate);
    free(ev.payload);
}

/* Three changes of one tenant queued at once (a backlog): the outbox
 * applies them as one Update with the last status and the last plan, and
 * marks all three done in the same transaction. */
static void
test_outbox_folds_backlog(void **state)
{
    (void)state;
    char id[37];
    s_tenant_new("fold", id);
    char *ok = s_value("INSERT INTO billing.outbox (tenant_id, status, plan,"
                       " reason) VALUES ('%s', 'past_due', NULL, 'one'),"
                       " ('%s', NULL, 'starter', 'two'), ('%s', 'active', NULL,"
                       " 'three') RETURNING 1",
                       id, id, id);
    free(ok);
    s_drain();
    char *t = s_tenant_status(id);
    assert_string_equal(t, "active");
    free(t);
    kl_status_t st;
    Kowloon__Tenant__GetTenantRequest req =
        KOWLOON__TENANT__GET_TENANT_REQUEST__INIT;
    req.id = id;
    Kowloon__Tenant__Tenant *got = NULL;
    assert_int_equal(
        kl_test_server_call(s_tenant, "Get", &req, &got, S_TIMEOUT_MS, &st), 0);
    assert_string_equal(got->plan, "starter");
    protobuf_c_message_free_unpacked(&got->base, NULL);
    assert_int_equal(s_count("SELECT count(DISTINCT done_at) FROM"
                             " billing.outbox WHERE tenant_id = '%s'",
                             id),
                     1);
    assert_int_equal(s_count("SELECT count(*) FROM billing.outbox WHERE"
                             " tenant_id = '%s' AND attempts = 1",
                             id),
                     3);
}

/* --- group commit ------------------------------------------------------- */

/* A delivery on a thread of its own. */
static void *
s_deliver_main(void *arg)
{
    s_deliver(arg);
    return NULL;
}

static billing_intake_group_stats_t
s_stats(void)
{
    billing_intake_group_stats_t g;
    billing_service_intake_stats(s_billing_svc, &g);
    return g;
}

/*
 * Makes a batch of list: BILLING_INTAKE_LEADERS deliveries of tenants
 * "<held>0", "<held>1", ... each lead a batch of their own and wait on
 * their subscription rows, locked here; list queues behind them; the rows
 * are let go, and the next leader takes list as one batch (but for
 * deliveries sharing keys). Every answer is in when this returns; a
 * failed one fails the test only after every thread is joined and the
 * rows are free, so a failure never leaves a worker stuck.
 */
static void
s_batch_behind(const char *held, s_delivery_t *helds, s_delivery_t **list,
               size_t n)
{
    enum { H = BILLING_INTAKE_LEADERS };
    PGconn *c = PQconnectdb(s_url);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    char sql[256];
    snprintf(sql, sizeof sql,
             "BEGIN; SELECT 1 FROM billing.subscriptions WHERE"
             " subscription_id LIKE 'sub\\_%s_' FOR UPDATE",
             held);
    PGresult *r = PQexec(c, sql);
    bool locked = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == H;
    PQclear(r);
    pthread_t th[H + 8];
    assert_true(n <= 8);
    size_t started = 0;
    for (int k = 0; locked && k < H; k++)
        if (pthread_create(&th[started], NULL, s_deliver_main, &helds[k]) == 0)
            started++;
    bool ok = locked && started == H;
    /* Wait for them without failing yet (a failure must free the rows). */
    int64_t until = kl_now_mono_ms() + 10000;
    while (ok && s_count("SELECT count(*) FROM pg_stat_activity WHERE"
                         " datname = current_database() AND"
                         " wait_event_type = 'Lock'%s",
                         "") < H)
        if (kl_now_mono_ms() > until)
            ok = false;
        else
            usleep(5 * 1000);
    for (size_t i = 0; ok && i < n; i++) {
        if (pthread_create(&th[started], NULL, s_deliver_main, list[i]) != 0) {
            ok = false;
            break;
        }
        started++;
        until = kl_now_mono_ms() + 10000;
        while (s_stats().waiting < i + 1 && kl_now_mono_ms() < until)
            usleep(2 * 1000);
        ok = s_stats().waiting >= i + 1;
    }
    r = PQexec(c, "COMMIT");
    PQclear(r);
    PQfinish(c);
    for (size_t i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    if (!ok)
        fail_msg("could not queue the batch behind %d held deliveries "
                 "(rows locked: %d)",
                 H, locked);
    for (int k = 0; k < H; k++)
        if (helds[k].rc != 0)
            fail_msg("held delivery %s: %s", helds[k].id, helds[k].message);
    for (size_t i = 0; i < n; i++)
        if (list[i]->rc != 0)
            fail_msg("delivery of %s: %s %s", list[i]->id,
                     kl_strerror(list[i]->rc), list[i]->message);
}

/* Tenants "<held>0".. for s_batch_behind, and their deliveries. */
static void
s_helds_new(const char *held, s_delivery_t *helds, const char *event_prefix,
            bool failed, long long created)
{
    for (int k = 0; k < BILLING_INTAKE_LEADERS; k++) {
        char tag[32], id[37], eid[64];
        snprintf(tag, sizeof tag, "%s%d", held, k);
        if (s_count("SELECT count(*) FROM billing.subscriptions WHERE"
                    " subscription_id = 'sub_%s'",
                    tag) == 0)
            s_tenant_new(tag, id);
        snprintf(eid, sizeof eid, "%s%d", event_prefix, k);
        s_invoice(&helds[k], eid, tag, failed, created);
    }
}

static void
s_helds_free(s_delivery_t *helds)
{
    for (int k = 0; k < BILLING_INTAKE_LEADERS; k++)
        free(helds[k].payload);
}

static void
s_assert_sub(const char *tag, const char *want)
{
    char *v = s_value("SELECT status || ' ' || status_event_id FROM"
                      " billing.subscriptions WHERE subscription_id ="
                      " 'sub_%s'",
                      tag);
    assert_string_equal(v, want);
    free(v);
}

/*
 * Deliveries queued behind a busy intake are recorded in batches: four
 * tenants' failed invoices, a redelivery of an event recorded before, and
 * a second event of the first tenant (deliveries sharing keys with one
 * taken wait for the batch after). Each is answered as alone: recorded once
 * with its effect, the redelivery a duplicate, the tenant's two events applied
 * in order.
 */
static void
test_group_commit_batch(void **state)
{
    (void)state;
    char ids[4][37], tags[4][16];
    for (int k = 0; k < 4; k++) {
        snprintf(tags[k], sizeof tags[k], "grp%d", k);
        s_tenant_new(tags[k], ids[k]);
    }
    long long base = s_created;
    s_created += 4;
    s_delivery_t old, helds[BILLING_INTAKE_LEADERS], ev[4], again, later;
    s_invoice(&old, "evt_grp_old", "grp3", false, base);
    s_deliver(&old);
    assert_int_equal(old.rc, 0);
    s_helds_new("grpheld", helds, "evt_grp_held", true, base + 1);
    for (int k = 0; k < 4; k++) {
        char eid[32];
        snprintf(eid, sizeof eid, "evt_grp_%d", k);
        s_invoice(&ev[k], eid, tags[k], true, base + 1);
    }
    s_copy(&again, &old);
    s_invoice(&later, "evt_grp_later", "grp0", false, base + 2);
    s_delivery_t *list[6] = {&ev[0], &later, &ev[1], &ev[2], &again, &ev[3]};
    billing_intake_group_stats_t before = s_stats();
    s_batch_behind("grpheld", helds, list, 6);
    billing_intake_group_stats_t after = s_stats();
    /* ev0, ev1, ev2 and the redelivery of grp3's event; then `later`
     * and ev3, which share keys with ev0 and the redelivery. */
    assert_int_equal(after.batches - before.batches, 2);
    assert_int_equal(after.grouped - before.grouped, 6);
    assert_int_equal(after.fallbacks, before.fallbacks);
    assert_int_equal(after.waiting, 0);
    assert_true(again.duplicate);
    assert_false(later.duplicate);
    for (int k = 0; k < 4; k++)
        assert_false(ev[k].duplicate);
    s_assert_sub("grp0", "active evt_grp_later");
    s_assert_sub("grp1", "past_due evt_grp_1");
    s_assert_sub("grp2", "past_due evt_grp_2");
    /* grp3's failed event is newer than its recorded success. */
    s_assert_sub("grp3", "past_due evt_grp_3");
    s_assert_sub("grpheld0", "past_due evt_grp_held0");
    assert_int_equal(s_count("SELECT count(*) FROM billing.events WHERE id"
                             " LIKE '%s'",
                             "evt\\_grp\\_%"),
                     6 + BILLING_INTAKE_LEADERS);
    assert_int_equal(s_count("SELECT count(*) FROM billing.outbox WHERE"
                             " event_id LIKE '%s'",
                             "evt\\_grp\\_%"),
                     5 + BILLING_INTAKE_LEADERS);
    s_drain();
    for (int k = 1; k < 4; k++) {
        char *t = s_tenant_status(ids[k]);
        assert_string_equal(t, "past_due");
        free(t);
    }
    char *t = s_tenant_status(ids[0]);
    assert_string_equal(t, "active");
    free(t);
    free(old.payload);
    s_helds_free(helds);
    free(again.payload);
    free(later.payload);
    for (int k = 0; k < 4; k++)
        free(ev[k].payload);
}

/*
 * A batch that cannot be recorded whole is rolled back and each delivery
 * recorded alone: (1) two events that name one tenant by different keys
 * (one by its subscription, one by its customer only), and (2) the batch's
 * connection killed between its round trips. Every delivery is still
 * answered 200 and recorded once with its effect.
 */
static void
test_group_commit_fallback(void **state)
{
    (void)state;
    char id[37], other[37];
    s_tenant_new("gfa", id);
    s_tenant_new("gfb", other);
    long long base = s_created;
    s_created += 4;
    s_delivery_t helds[BILLING_INTAKE_LEADERS], by_sub, by_cus, b;
    s_helds_new("gfheld", helds, "evt_gf_held", true, base);
    s_sign(&by_sub, "evt_gf_sub", "invoice.payment_failed", base + 1,
           "{\"id\":\"in_gf1\",\"object\":\"invoice\",\"customer\":"
           "\"cus_gf_unknown\",\"subscription\":\"sub_gfa\","
           "\"amount_paid\":0}");
    s_sign(&by_cus, "evt_gf_cus", "invoice.payment_failed", base + 1,
           "{\"id\":\"in_gf2\",\"object\":\"invoice\",\"customer\":"
           "\"cus_gfa\",\"subscription\":\"sub_gf_unknown\","
           "\"amount_paid\":0}");
    s_invoice(&b, "evt_gf_b", "gfb", true, base + 1);
    s_delivery_t *list[3] = {&by_sub, &by_cus, &b};
    billing_intake_group_stats_t before = s_stats();
    s_batch_behind("gfheld", helds, list, 3);
    billing_intake_group_stats_t after = s_stats();
    assert_int_equal(after.batches - before.batches, 1);
    assert_int_equal(after.fallbacks - before.fallbacks, 1);
    for (int i = 0; i < 3; i++)
        assert_false(list[i]->duplicate);
    assert_int_equal(s_count("SELECT count(*) FROM billing.events WHERE id"
                             " LIKE '%s' AND outcome <> ''",
                             "evt\\_gf\\_%"),
                     3 + BILLING_INTAKE_LEADERS);
    s_assert_sub("gfa", "past_due evt_gf_sub");
    s_assert_sub("gfb", "past_due evt_gf_b");

    /* (2) The batch's decision fails (a fault): rolled back, then each
     * delivery alone. */
    s_helds_free(helds);
    s_delivery_t x, y;
    s_helds_new("gfheld", helds, "evt_gf_held2_", false, base + 2);
    s_invoice(&x, "evt_gf_x", "gfa", false, base + 2);
    s_invoice(&y, "evt_gf_y", "gfb", false, base + 2);
    s_delivery_t *list2[2] = {&x, &y};
    before = s_stats();
    pthread_mutex_lock(&s_fault_mu);
    snprintf(s_fault_mode, sizeof s_fault_mode, "%s", "failbatch");
    pthread_mutex_unlock(&s_fault_mu);
    s_batch_behind("gfheld", helds, list2, 2);
    after = s_stats();
    assert_string_equal(s_fault_mode, "");
    assert_int_equal(after.batches - before.batches, 1);
    assert_int_equal(after.fallbacks - before.fallbacks, 1);
    assert_false(x.duplicate);
    assert_false(y.duplicate);
    s_assert_sub("gfa", "active evt_gf_x");
    s_assert_sub("gfb", "active evt_gf_y");
    assert_int_equal(s_count("SELECT count(*) FROM billing.outbox WHERE"
                             " event_id IN ('evt_gf_x', 'evt_gf_y')%s",
                             ""),
                     2);
    s_drain();
    char *t = s_tenant_status(id);
    assert_string_equal(t, "active");
    free(t);
    s_helds_free(helds);
    free(by_sub.payload);
    free(by_cus.payload);
    free(b.payload);
    free(x.payload);
    free(y.payload);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_events),
        cmocka_unit_test(test_same_event_at_once),
        cmocka_unit_test(test_reverse_order),
        cmocka_unit_test(test_mixed_paths),
        cmocka_unit_test(test_lost_between_round_trips),
        cmocka_unit_test(test_outbox_folds_backlog),
        cmocka_unit_test(test_group_commit_batch),
        cmocka_unit_test(test_group_commit_fallback),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
