/*
 * The billing service end to end, in process: billing, a real tenant
 * service and a real flags service on tcp://127.0.0.1:*, a fresh database
 * in KLTEST_PG_URL, and the Stripe stand-in
 * (integration-tests/stripe_standin/standin.py) as a subprocess on a free
 * port. Webhooks are signed by the stand-in and handed to HandleWebhook.
 */
#include "billing_service.h"
#include "billing_store.h"
#include "billing_webhook.h"
#include "flags_service.h"
#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_rpc_client.h"
#include "kl_rpc_server.h"
#include "kl_test_db.h"
#include "kowloon/billing.pb-c.h"
#include "kowloon/flags.pb-c.h"
#include "kowloon/tenant.pb-c.h"
#include "tenant_service.h"

#include <curl/curl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define S_TIMEOUT_MS 15000
#define S_SECRET_KEY "sk_test_kowloon_51Hx"
#define S_WHSEC "whsec_kowloon_test_secret"
#define S_WHSEC_OLD "whsec_kowloon_old_secret"
#define S_GRACE_S 3

static kl_test_db_t *s_db;   /* this run's database */
static const char *s_db_url; /* its conninfo */
static pid_t s_standin_pid;  /* the stand-in */
static char s_standin[64];   /* "http://127.0.0.1:PORT" */

/* --- processes and databases -------------------------------------------- */

/* One value from the test database (caller frees). */
static char *
s_db_value(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *v = kl_test_db_vvalue(s_db_url, fmt, ap);
    va_end(ap);
    if (!v)
        fail_msg("query failed (its error is printed above)");
    return v;
}

static long
s_db_count(const char *fmt, const char *arg)
{
    char *v = s_db_value(fmt, arg);
    long n = strtol(v, NULL, 10);
    free(v);
    return n;
}

static int
s_start_standin(void)
{
    int fds[2];
    if (pipe(fds) < 0)
        return -1;
    s_standin_pid = fork();
    if (s_standin_pid < 0)
        return -1;
    if (s_standin_pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl(KL_PYTHON, KL_PYTHON, KL_STANDIN_PATH, "--port", "0",
              "--secret-key", S_SECRET_KEY, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    char line[128] = "";
    int port = 0;
    if (!fgets(line, sizeof line, f) ||
        sscanf(line, "listening on %d", &port) != 1) {
        fprintf(stderr, "the Stripe stand-in did not start (%s)\n", line);
        fclose(f);
        return -1;
    }
    fclose(f);
    snprintf(s_standin, sizeof s_standin, "http://127.0.0.1:%d", port);
    return 0;
}

/* --- the stand-in's control endpoints ------------------------------------ */

static size_t
s_collect(char *p, size_t size, size_t n, void *user)
{
    char **buf = user;
    size_t old = *buf ? strlen(*buf) : 0;
    *buf = kl_realloc(*buf, old + size * n + 1);
    memcpy(*buf + old, p, size * n);
    (*buf)[old + size * n] = '\0';
    return size * n;
}

/* GET (body NULL) or POST JSON to the stand-in; returns parsed JSON. */
static json_t *
s_control(const char *path, json_t *body)
{
    char url[256];
    snprintf(url, sizeof url, "%s%s", s_standin, path);
    CURL *c = curl_easy_init();
    char *out = NULL, *text = NULL;
    struct curl_slist *h =
        curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    if (body) {
        text = json_dumps(body, JSON_COMPACT);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, text);
    }
    CURLcode rc = curl_easy_perform(c);
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    free(text);
    if (rc != CURLE_OK)
        fail_msg("stand-in %s: %s", path, curl_easy_strerror(rc));
    json_error_t err;
    json_t *doc = json_loads(out ? out : "", 0, &err);
    free(out);
    if (!doc)
        fail_msg("stand-in %s answered no JSON", path);
    return doc;
}

/* Objects of type in the stand-in (metadata[tenant_id] = tenant if set). */
static size_t
s_objects(const char *type, const char *tenant)
{
    char path[256];
    snprintf(path, sizeof path, "/_standin/objects?type=%s%s%s", type,
             tenant ? "&tenant_id=" : "", tenant ? tenant : "");
    json_t *doc = s_control(path, NULL);
    size_t n = json_array_size(json_object_get(doc, "data"));
    json_decref(doc);
    return n;
}

static void
s_inject(const char *spec)
{
    json_error_t err;
    json_t *body = json_loads(spec, 0, &err);
    assert_non_null(body);
    json_decref(s_control("/_standin/fail", body));
    json_decref(body);
}

/* --- services ------------------------------------------------------------- */

typedef struct {
    kl_rpc_server_t *server;
    pthread_t thread;
} s_server_t;

static void *
s_run(void *arg)
{
    kl_rpc_server_run(arg);
    return NULL;
}

/* Serves svc on bind (NULL: a free port). */
static void
s_serve_on(s_server_t *s, const char *bind, ProtobufCService *svc,
           void (*set_opts)(void *, kl_rpc_server_opts_t *), void *obj)
{
    kl_status_t st;
    kl_rpc_server_opts_t o = {.bind = bind ? bind : "tcp://127.0.0.1:*",
                              .workers = 4,
                              .no_signal_handlers = true};
    set_opts(obj, &o);
    s->server = kl_rpc_server_new(&o, &st);
    assert_non_null(s->server);
    assert_int_equal(kl_rpc_server_add_service(s->server, svc), 0);
    if (kl_rpc_server_bind(s->server, &st) < 0)
        fail_msg("bind: %s", st.message);
    assert_int_equal(pthread_create(&s->thread, NULL, s_run, s->server), 0);
}

static void
s_serve(s_server_t *s, ProtobufCService *svc,
        void (*set_opts)(void *, kl_rpc_server_opts_t *), void *obj)
{
    s_serve_on(s, NULL, svc, set_opts, obj);
}

static void
s_unserve(s_server_t *s)
{
    if (!s->server)
        return;
    kl_rpc_server_stop(s->server);
    pthread_join(s->thread, NULL);
    kl_rpc_server_destroy(&s->server);
}

static tenant_service_t *s_tenant_svc;
static flags_service_t *s_flags_svc;
static s_server_t s_tenant_srv, s_flags_srv;
static kl_rpc_client_t *s_tenant, *s_flags;

typedef struct {
    billing_service_t *svc;
    s_server_t srv;
    kl_rpc_client_t *client;
} s_billing_t;

static s_billing_t s_main;

/* The fault hook: fails once at the point named in s_fault_at. */
static char s_fault_at[64];
static pthread_mutex_t s_fault_mu = PTHREAD_MUTEX_INITIALIZER;

static int
s_fault(const char *point, void *user)
{
    pthread_mutex_lock(&s_fault_mu);
    int hit = strcmp(point, s_fault_at) == 0;
    if (hit)
        s_fault_at[0] = '\0';
    pthread_mutex_unlock(&s_fault_mu);
    return hit;
}

static void
s_tenant_opts(void *obj, kl_rpc_server_opts_t *o)
{
    tenant_service_server_opts(obj, o);
}

static void
s_flags_opts(void *obj, kl_rpc_server_opts_t *o)
{
    flags_service_server_opts(obj, o);
}

static void
s_billing_opts(void *obj, kl_rpc_server_opts_t *o)
{
    billing_service_server_opts(obj, o);
}

static void
s_billing_start(s_billing_t *b, const char *api_base)
{
    kl_status_t st;
    const char *tenant_ep = kl_rpc_server_endpoint(s_tenant_srv.server);
    const char *flags_ep = kl_rpc_server_endpoint(s_flags_srv.server);
    const char *secrets[] = {S_WHSEC_OLD, S_WHSEC};
    billing_service_opts_t opts = {
        .database_url = s_db_url,
        .tenant_endpoints = &tenant_ep,
        .n_tenant_endpoints = 1,
        .flags_endpoints = &flags_ep,
        .n_flags_endpoints = 1,
        .stripe_api_base = api_base,
        .stripe_secret_key = S_SECRET_KEY,
        .stripe_api_version = "2024-06-20",
        .webhook_secrets = secrets,
        .n_webhook_secrets = 2,
        .webhook_tolerance_s = 300,
        .trial_days = 14,
        .checkout_success_url = "https://app.example.com/billing/ok",
        .checkout_cancel_url = "https://app.example.com/billing/cancel",
        .portal_return_url = "https://app.example.com/billing",
        .past_due_grace_s = S_GRACE_S,
        .sweep_interval_ms = 200,
        .retention_days = 30,
        .prune_interval_ms = 200,
        .stripe_backoff_ms = 50,
        .stripe_max_total_ms = 3000,
        .stripe_request_timeout_ms = 2000,
        .fault = s_fault,
    };
    memset(b, 0, sizeof *b);
    b->svc = billing_service_new(&opts, &st);
    if (!b->svc)
        fail_msg("billing_service_new: %s", st.message);
    if (billing_service_migrate(b->svc, &st) < 0)
        fail_msg("migrate: %s", st.message);
    if (billing_service_start(b->svc, &st) < 0)
        fail_msg("start: %s", st.message);
    s_serve(&b->srv, billing_service_base(b->svc), s_billing_opts, b->svc);
    const char *ep = kl_rpc_server_endpoint(b->srv.server);
    kl_rpc_client_opts_t copts = {.endpoints = &ep, .n_endpoints = 1};
    b->client = kl_rpc_client_new(
        &kowloon__billing__billing_service__descriptor, &copts, &st);
    assert_non_null(b->client);
}

static void
s_billing_stop(s_billing_t *b)
{
    kl_rpc_client_destroy(&b->client);
    s_unserve(&b->srv);
    billing_service_destroy(&b->svc);
}

/* --- calls ------------------------------------------------------------------
 */

static int
s_call_on(kl_rpc_client_t *c, const char *tenant, const char *method,
          const void *in, void *out_p, kl_status_t *st)
{
    kl_call_ctx_t ctx = {.request_id = "test", .tenant_id = tenant};
    kl_call_opts_t opts = {.timeout_ms = S_TIMEOUT_MS, .ctx = &ctx};
    ProtobufCMessage *ignored = NULL;
    ProtobufCMessage **out = out_p ? out_p : &ignored;
    kl_status_clear(st);
    int rc = kl_rpc_client_call(c, method, in, &opts, out, st);
    if (ignored)
        protobuf_c_message_free_unpacked(ignored, NULL);
    return rc;
}

static int
s_call(const char *tenant, const char *method, const void *in, void *out_p,
       kl_status_t *st)
{
    return s_call_on(s_main.client, tenant, method, in, out_p, st);
}

#define S_EXPECT_FAIL(tenant, method, input, code, ...)                        \
    do {                                                                       \
        kl_status_t st_;                                                       \
        char want_[KL_STATUS_MESSAGE_MAX];                                     \
        snprintf(want_, sizeof want_, __VA_ARGS__);                            \
        int rc_ = s_call(tenant, method, input, NULL, &st_);                   \
        if (rc_ != -(code) || strcmp(st_.message, want_) != 0)                 \
            fail_msg("%s: want %s \"%s\", got %s \"%s\"", method,              \
                     kl_code_name(code), want_, kl_strerror(rc_),              \
                     st_.message);                                             \
    } while (0)

/* Creates a tenant; returns its id (static buffer per call site). */
static void
s_new_tenant(const char *subdomain, char id[37])
{
    Kowloon__Tenant__CreateTenantRequest req =
        KOWLOON__TENANT__CREATE_TENANT_REQUEST__INIT;
    req.subdomain = (char *)subdomain;
    req.name = (char *)subdomain;
    req.plan = "starter";
    Kowloon__Tenant__Tenant *t = NULL;
    kl_status_t st;
    if (s_call_on(s_tenant, "", "Create", &req, &t, &st) != 0)
        fail_msg("Create %s: %s", subdomain, st.message);
    snprintf(id, 37, "%s", t->id);
    protobuf_c_message_free_unpacked(&t->base, NULL);
}

/* Waits up to ms for the tenant's status and plan (plan NULL: any). */
static int64_t
s_wait_tenant(const char *id, const char *status, const char *plan, int ms)
{
    int64_t start = kl_now_mono_ms();
    char got_s[32] = "", got_p[64] = "";
    for (;;) {
        Kowloon__Tenant__GetTenantRequest req =
            KOWLOON__TENANT__GET_TENANT_REQUEST__INIT;
        req.id = (char *)id;
        Kowloon__Tenant__Tenant *t = NULL;
        kl_status_t st;
        int rc = s_call_on(s_tenant, "", "Get", &req, &t, &st);
        if (rc == -KL_UNAVAILABLE && kl_now_mono_ms() - start <= ms) {
            /* Reconnecting after the tenant service restarted. */
            usleep(20000);
            continue;
        }
        if (rc != 0)
            fail_msg("Get %s: %s", id, st.message);
        snprintf(got_s, sizeof got_s, "%s", t->status);
        snprintf(got_p, sizeof got_p, "%s", t->plan);
        protobuf_c_message_free_unpacked(&t->base, NULL);
        if (strcmp(got_s, status) == 0 && (!plan || strcmp(got_p, plan) == 0))
            return kl_now_mono_ms() - start;
        if (kl_now_mono_ms() - start > ms)
            fail_msg("tenant %s: want %s/%s, still %s/%s after %d ms", id,
                     status, plan ? plan : "*", got_s, got_p, ms);
        usleep(20000);
    }
}

static Kowloon__Billing__Billing *
s_billing(const char *tenant)
{
    Kowloon__Billing__TenantBillingRequest req =
        KOWLOON__BILLING__TENANT_BILLING_REQUEST__INIT;
    req.tenant_id = (char *)tenant;
    Kowloon__Billing__Billing *b = NULL;
    kl_status_t st;
    if (s_call("", "GetTenantBilling", &req, &b, &st) != 0)
        fail_msg("GetTenantBilling: %s", st.message);
    return b;
}

static Kowloon__Billing__Billing *
s_subscribe(const char *tenant, const char *plan)
{
    Kowloon__Billing__StartSubscriptionRequest req =
        KOWLOON__BILLING__START_SUBSCRIPTION_REQUEST__INIT;
    req.plan = (char *)plan;
    req.email = "owner@example.com";
    Kowloon__Billing__Billing *b = NULL;
    kl_status_t st;
    if (s_call(tenant, "StartSubscription", &req, &b, &st) != 0)
        fail_msg("StartSubscription: %s %s", kl_code_name(st.code), st.message);
    return b;
}

/* --- webhooks ----------------------------------------------------------------
 */

typedef struct {
    char *payload;
    char *header;
    char id[64];
} s_signed_t;

/* Has the stand-in build and sign an event (object: JSON text). */
static void
s_sign(s_signed_t *out, const char *type, const char *object, long long created,
       int offset, const char *scheme, bool tamper, const char *secret)
{
    json_error_t err;
    json_t *obj = json_loads(object, 0, &err);
    if (!obj)
        fail_msg("bad object %s: %s", object, err.text);
    json_t *spec =
        json_pack("{s:s, s:{s:o}, s:s, s:i, s:s, s:b, s:b}", "type", type,
                  "data", "object", obj, "secret", secret ? secret : S_WHSEC,
                  "timestamp_offset", offset, "scheme", scheme ? scheme : "v1",
                  "tamper", tamper, "deliver", 0);
    if (created)
        json_object_set_new(spec, "created", json_integer(created));
    json_t *doc = s_control("/_standin/deliver", spec);
    json_decref(spec);
    out->payload =
        kl_strdup(json_string_value(json_object_get(doc, "payload")));
    out->header = kl_strdup(json_string_value(json_object_get(doc, "header")));
    snprintf(out->id, sizeof out->id, "%s",
             json_string_value(json_object_get(doc, "id")));
    json_decref(doc);
}

static void
s_signed_free(s_signed_t *s)
{
    free(s->payload);
    free(s->header);
}

static int
s_handle(const s_signed_t *s, bool *duplicate, kl_status_t *st)
{
    Kowloon__Billing__WebhookRequest req =
        KOWLOON__BILLING__WEBHOOK_REQUEST__INIT;
    req.payload.data = (uint8_t *)s->payload;
    req.payload.len = strlen(s->payload);
    req.signature = s->header;
    Kowloon__Billing__WebhookResponse *resp = NULL;
    int rc = s_call("", "HandleWebhook", &req, &resp, st);
    if (resp) {
        if (duplicate)
            *duplicate = resp->duplicate;
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    return rc;
}

/* Signs and handles one event; fails the test unless OK. */
static void
s_event(const char *type, long long created, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char obj[4096];
    vsnprintf(obj, sizeof obj, fmt, ap);
    va_end(ap);
    s_signed_t s;
    s_sign(&s, type, obj, created, 0, NULL, false, NULL);
    kl_status_t st;
    if (s_handle(&s, NULL, &st) != 0)
        fail_msg("%s: %s %s", type, kl_code_name(st.code), st.message);
    s_signed_free(&s);
}

/* --- setup -------------------------------------------------------------------
 */

static int
s_group_setup(void **state)
{
    /* Debug: every log line is formatted, so its arguments are checked
     * by ASan too. */
    kl_log_init("test", KL_DEBUG);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    s_db = kl_test_db_new("test_billing_service", "klbill");
    if (!s_db)
        return -1;
    s_db_url = kl_test_db_url(s_db);
    if (s_start_standin() < 0)
        return -1;

    kl_status_t st;
    tenant_service_opts_t topts = {.database_url = s_db_url,
                                   .redis_url = "",
                                   .events_channel = "kltest",
                                   .default_plan = "starter",
                                   .default_isolation = "row"};
    s_tenant_svc = tenant_service_new(&topts, &st);
    if (!s_tenant_svc || tenant_service_migrate(s_tenant_svc, &st) < 0) {
        fprintf(stderr, "tenant service: %s\n", st.message);
        return -1;
    }
    flags_service_opts_t fopts = {
        .database_url = s_db_url, .redis_url = "", .events_channel = "kltest"};
    s_flags_svc = flags_service_new(&fopts, &st);
    if (!s_flags_svc || flags_service_migrate(s_flags_svc, &st) < 0) {
        fprintf(stderr, "flags service: %s\n", st.message);
        return -1;
    }
    s_serve(&s_tenant_srv, tenant_service_base(s_tenant_svc), s_tenant_opts,
            s_tenant_svc);
    s_serve(&s_flags_srv, flags_service_base(s_flags_svc), s_flags_opts,
            s_flags_svc);
    const char *ep = kl_rpc_server_endpoint(s_tenant_srv.server);
    kl_rpc_client_opts_t copts = {.endpoints = &ep, .n_endpoints = 1};
    s_tenant = kl_rpc_client_new(&kowloon__tenant__tenant_service__descriptor,
                                 &copts, &st);
    ep = kl_rpc_server_endpoint(s_flags_srv.server);
    s_flags = kl_rpc_client_new(&kowloon__flags__flags_service__descriptor,
                                &copts, &st);
    /* Plans and their prices. */
    const char *plans[][2] = {{"starter", "price_starter_m"},
                              {"pro", "price_pro_m"}};
    for (int i = 0; i < 2; i++) {
        Kowloon__Flags__Plan p = KOWLOON__FLAGS__PLAN__INIT;
        p.name = (char *)plans[i][0];
        p.display_name = (char *)plans[i][0];
        char *price = (char *)plans[i][1];
        p.n_stripe_price_ids = 1;
        p.stripe_price_ids = &price;
        /* The limits the flags service requires of every plan. */
        const char *names[] = {"api_requests_per_minute", "max_projects",
                               "max_api_keys", "storage_mb"};
        Kowloon__Flags__Plan__LimitsEntry le[4], *lp[4];
        for (int k = 0; k < 4; k++) {
            kowloon__flags__plan__limits_entry__init(&le[k]);
            le[k].key = (char *)names[k];
            le[k].value = 100;
            lp[k] = &le[k];
        }
        p.n_limits = 4;
        p.limits = lp;
        /* The flags service may seed plans of these names: then update. */
        int rc = s_call_on(s_flags, "", "CreatePlan", &p, NULL, &st);
        if (rc == -KL_ALREADY_EXISTS)
            rc = s_call_on(s_flags, "", "UpdatePlan", &p, NULL, &st);
        if (rc != 0) {
            fprintf(stderr, "CreatePlan %s: %s\n", p.name, st.message);
            return -1;
        }
    }
    char base[64];
    snprintf(base, sizeof base, "%s", s_standin);
    s_billing_start(&s_main, base);
    return 0;
}

static int
s_group_teardown(void **state)
{
    s_billing_stop(&s_main);
    kl_rpc_client_destroy(&s_tenant);
    kl_rpc_client_destroy(&s_flags);
    s_unserve(&s_tenant_srv);
    s_unserve(&s_flags_srv);
    tenant_service_destroy(&s_tenant_svc);
    flags_service_destroy(&s_flags_svc);
    if (s_standin_pid > 0) {
        kill(s_standin_pid, SIGTERM);
        waitpid(s_standin_pid, NULL, 0);
    }
    kl_test_db_destroy(&s_db);
    curl_global_cleanup();
    return 0;
}

/* --- tests ---------------------------------------------------------------- */

/* Sign-up trial -> checkout -> active -> payment failed -> past_due ->
 * grace over -> suspended -> payment succeeded -> active. */
static void
test_lifecycle(void **state)
{
    char t[37];
    s_new_tenant("life", t);
    Kowloon__Billing__Billing *b = s_subscribe(t, "starter");
    assert_string_equal(b->subscription_status, "trialing");
    assert_string_equal(b->plan, "starter");
    assert_string_equal(b->price_id, "price_starter_m");
    assert_true(strncmp(b->customer_id, "cus_", 4) == 0);
    assert_true(strncmp(b->subscription_id, "sub_", 4) == 0);
    assert_true(b->trial_end[0] != '\0');
    char cus[64];
    snprintf(cus, sizeof cus, "%s", b->customer_id);
    protobuf_c_message_free_unpacked(&b->base, NULL);
    assert_int_equal(s_objects("customer", t), 1);
    assert_int_equal(s_objects("subscription", t), 1);
    s_wait_tenant(t, "trialing", "starter", 2000);

    /* Checkout for pro: the URL is Stripe's. */
    Kowloon__Billing__CheckoutRequest creq =
        KOWLOON__BILLING__CHECKOUT_REQUEST__INIT;
    creq.plan = "pro";
    Kowloon__Billing__SessionUrl *cs = NULL;
    kl_status_t st;
    assert_int_equal(s_call(t, "CreateCheckoutSession", &creq, &cs, &st), 0);
    assert_true(strncmp(cs->id, "cs_test_", 8) == 0);
    assert_true(strncmp(cs->url, "https://checkout.stripe.com/", 28) == 0);
    char cs_id[128];
    snprintf(cs_id, sizeof cs_id, "%s", cs->id);
    protobuf_c_message_free_unpacked(&cs->base, NULL);

    /* Events come after the sign-up (whose state is stamped with the
     * subscription's creation time). */
    long long t0 = (long long)time(NULL);
    s_event("checkout.session.completed", t0 + 1,
            "{\"id\":\"%s\",\"object\":\"checkout.session\",\"mode\":"
            "\"subscription\",\"client_reference_id\":\"%s\",\"customer\":"
            "\"%s\",\"subscription\":\"sub_paid1\",\"payment_status\":"
            "\"paid\",\"metadata\":{\"tenant_id\":\"%s\",\"plan\":\"pro\"}}",
            cs_id, t, cus, t);
    /* The outbox applies it within a second. */
    int64_t took = s_wait_tenant(t, "active", "pro", 1000);
    assert_true(took < 1000);
    s_event("customer.subscription.updated", t0 + 2,
            "{\"id\":\"sub_paid1\",\"object\":\"subscription\",\"customer\":"
            "\"%s\",\"status\":\"active\",\"cancel_at_period_end\":false,"
            "\"current_period_end\":%lld,\"items\":{\"data\":[{\"id\":"
            "\"si_paid1\",\"price\":{\"id\":\"price_pro_m\"}}]}}",
            cus, t0 + 30 * 86400);
    b = s_billing(t);
    assert_string_equal(b->subscription_id, "sub_paid1");
    assert_string_equal(b->subscription_status, "active");
    assert_string_equal(b->tenant_status, "active");
    assert_string_equal(b->plan, "pro");
    protobuf_c_message_free_unpacked(&b->base, NULL);

    s_event("invoice.payment_failed", t0 + 3,
            "{\"id\":\"in_f1\",\"object\":\"invoice\",\"customer\":\"%s\","
            "\"subscription\":\"sub_paid1\",\"amount_paid\":0,"
            "\"status\":\"open\"}",
            cus);
    s_wait_tenant(t, "past_due", "pro", 1000);
    b = s_billing(t);
    assert_string_equal(b->subscription_status, "past_due");
    assert_true(b->past_due_since[0] != '\0');
    protobuf_c_message_free_unpacked(&b->base, NULL);
    /* The grace (2 s here) runs from the failure; then the sweeper
     * suspends. */
    s_wait_tenant(t, "suspended", "pro", (S_GRACE_S + 3) * 1000);
    b = s_billing(t);
    assert_string_equal(b->tenant_status, "suspended");
    protobuf_c_message_free_unpacked(&b->base, NULL);

    s_event("invoice.payment_succeeded", t0 + 4,
            "{\"id\":\"in_f1\",\"object\":\"invoice\",\"customer\":\"%s\","
            "\"subscription\":\"sub_paid1\",\"amount_paid\":2900,"
            "\"status\":\"paid\"}",
            cus);
    s_wait_tenant(t, "active", "pro", 1000);
    b = s_billing(t);
    assert_string_equal(b->subscription_status, "active");
    assert_string_equal(b->past_due_since, "");
    protobuf_c_message_free_unpacked(&b->base, NULL);
    /* Every tenant change went through the outbox, and all are done. */
    assert_int_equal(s_db_count("SELECT count(*) FROM billing.outbox WHERE "
                                "tenant_id = '%s' AND done_at IS NULL",
                                t),
                     0);
}

/* Grace counted from a recent failure: not suspended before it ends. */
static void
test_grace_not_early(void **state)
{
    char t[37];
    s_new_tenant("grace", t);
    Kowloon__Billing__Billing *b = s_subscribe(t, "starter");
    char sub[64], cus[64];
    snprintf(sub, sizeof sub, "%s", b->subscription_id);
    snprintf(cus, sizeof cus, "%s", b->customer_id);
    protobuf_c_message_free_unpacked(&b->base, NULL);
    long long now = (long long)time(NULL);
    int64_t t0 = kl_now_mono_ms();
    s_event("customer.subscription.updated", now,
            "{\"id\":\"%s\",\"customer\":\"%s\",\"status\":\"past_due\"}", sub,
            cus);
    s_wait_tenant(t, "past_due", NULL, 1000);
    /* Every look until shortly before the grace ends finds it past_due:
     * the grace is never cut short, however slow this machine is. Stripe's
     * `created` has whole seconds, so the grace is counted from up to one
     * second before the event was sent: hence the 1.1 s margin. */
    while (kl_now_mono_ms() - t0 < S_GRACE_S * 1000 - 1100) {
        s_wait_tenant(t, "past_due", NULL, 0);
        usleep(50 * 1000);
    }
    s_wait_tenant(t, "suspended", NULL, (S_GRACE_S + 2) * 1000);
}

typedef struct {
    const s_signed_t *ev;
    int rc;
    bool duplicate;
    char message[KL_STATUS_MESSAGE_MAX];
} s_delivery_t;

static void *
s_deliver_thread(void *arg)
{
    s_delivery_t *d = arg;
    kl_status_t st;
    d->rc = s_handle(d->ev, &d->duplicate, &st);
    snprintf(d->message, sizeof d->message, "%s", st.message);
    return NULL;
}

/* One event delivered 20 times at once: one effect. */
static void
test_duplicates_concurrent(void **state)
{
    char t[37];
    s_new_tenant("dup", t);
    Kowloon__Billing__Billing *b = s_subscribe(t, "starter");
    char sub[64], cus[64];
    snprintf(sub, sizeof sub, "%s", b->subscription_id);
    snprintf(cus, sizeof cus, "%s", b->customer_id);
    protobuf_c_message_free_unpacked(&b->base, NULL);
    s_wait_tenant(t, "trialing", NULL, 1000);
    long before = s_db_count(
        "SELECT count(*) FROM billing.outbox WHERE tenant_id = '%s'", t);

    char obj[512];
    snprintf(obj, sizeof obj,
             "{\"id\":\"in_d1\",\"object\":\"invoice\",\"customer\":\"%s\","
             "\"subscription\":\"%s\",\"amount_paid\":0}",
             cus, sub);
    s_signed_t ev;
    s_sign(&ev, "invoice.payment_failed", obj, (long long)time(NULL), 0, NULL,
           false, NULL);
    s_delivery_t d[20];
    pthread_t th[20];
    for (int i = 0; i < 20; i++) {
        d[i] = (s_delivery_t){.ev = &ev};
        pthread_create(&th[i], NULL, s_deliver_thread, &d[i]);
    }
    int fresh = 0;
    for (int i = 0; i < 20; i++) {
        pthread_join(th[i], NULL);
        if (d[i].rc != 0)
            fail_msg("delivery %d: %s %s", i, kl_strerror(d[i].rc),
                     d[i].message);
        fresh += !d[i].duplicate;
    }
    assert_int_equal(fresh, 1);
    s_wait_tenant(t, "past_due", NULL, 1000);
    assert_int_equal(s_db_count("SELECT count(*) FROM billing.events WHERE "
                                "id = '%s'",
                                ev.id),
                     1);
    assert_int_equal(s_db_count("SELECT count(*) FROM billing.outbox WHERE "
                                "event_id = '%s'",
                                ev.id),
                     1);
    assert_int_equal(
        s_db_count("SELECT count(*) FROM billing.outbox WHERE tenant_id = '%s'",
                   t),
        before + 1);
    /* And once more, later: still nothing new. */
    bool dup = false;
    kl_status_t st;
    assert_int_equal(s_handle(&ev, &dup, &st), 0);
    assert_true(dup);
    s_signed_free(&ev);
}

/* Events delivered newest first end in the newest state. */
static void
test_reverse_order(void **state)
{
    char t[37];
    s_new_tenant("rev", t);
    Kowloon__Billing__Billing *b = s_subscribe(t, "starter");
    char sub[64], cus[64];
    snprintf(sub, sizeof sub, "%s", b->subscription_id);
    snprintf(cus, sizeof cus, "%s", b->customer_id);
    protobuf_c_message_free_unpacked(&b->base, NULL);
    long long t0 = (long long)time(NULL) + 10;
    const char *states[3][2] = {{"active", "price_starter_m"},
                                {"past_due", "price_starter_m"},
                                {"active", "price_pro_m"}};
    s_signed_t ev[3];
    for (int i = 0; i < 3; i++) {
        char obj[512];
        snprintf(obj, sizeof obj,
                 "{\"id\":\"%s\",\"object\":\"subscription\",\"customer\":"
                 "\"%s\",\"status\":\"%s\",\"items\":{\"data\":[{\"id\":"
                 "\"si_r\",\"price\":{\"id\":\"%s\"}}]}}",
                 sub, cus, states[i][0], states[i][1]);
        s_sign(&ev[i], "customer.subscription.updated", obj, t0 + i, 0, NULL,
               false, NULL);
    }
    kl_status_t st;
    for (int i = 2; i >= 0; i--)
        assert_int_equal(s_handle(&ev[i], NULL, &st), 0);
    s_wait_tenant(t, "active", "pro", 1000);
    b = s_billing(t);
    assert_string_equal(b->subscription_status, "active");
    assert_string_equal(b->plan, "pro");
    assert_string_equal(b->past_due_since, "");
    protobuf_c_message_free_unpacked(&b->base, NULL);
    /* The older two were recorded, and changed nothing. */
    for (int i = 0; i < 2; i++) {
        char *o = s_db_value(
            "SELECT outcome FROM billing.events WHERE id = '%s'", ev[i].id);
        assert_non_null(strstr(o, "older than the state"));
        free(o);
        assert_int_equal(s_db_count("SELECT count(*) FROM billing.outbox "
                                    "WHERE event_id = '%s'",
                                    ev[i].id),
                         0);
    }
    for (int i = 0; i < 3; i++)
        s_signed_free(&ev[i]);
}

/* Refused deliveries: named reason, no effect. */
static void
test_webhook_refusals(void **state)
{
    long events = s_db_count("SELECT count(*) FROM billing.events%s", "");
    const char *obj = "{\"id\":\"in_x\",\"object\":\"invoice\"}";
    kl_status_t st;
    s_signed_t s;

    s_sign(&s, "invoice.paid", obj, 0, 0, NULL, false, NULL);
    char *saved = s.header;
    s.header = "";
    assert_int_equal(s_handle(&s, NULL, &st), -KL_INVALID_ARGUMENT);
    assert_string_equal(st.message, "no signature");
    s.header = "t=abc";
    assert_int_equal(s_handle(&s, NULL, &st), -KL_INVALID_ARGUMENT);
    assert_string_equal(st.message, "malformed signature header");
    s.header = saved;
    s_signed_free(&s);

    struct {
        int offset;
        const char *scheme;
        bool tamper;
        const char *secret;
        const char *want;
    } cases[] = {
        {-301, "v1", false, NULL, "timestamp outside tolerance"},
        {301, "v1", false, NULL, "timestamp outside tolerance"},
        {0, "v0", false, NULL, "no v1 signature in header"},
        {0, "v1", true, NULL, "no matching signature"},
        {0, "v1", false, "whsec_somebody_else", "no matching signature"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_sign(&s, "invoice.paid", obj, 0, cases[i].offset, cases[i].scheme,
               cases[i].tamper, cases[i].secret);
        assert_int_equal(s_handle(&s, NULL, &st), -KL_INVALID_ARGUMENT);
        assert_string_equal(st.message, cases[i].want);
        s_signed_free(&s);
    }
    /* Accepted at the edges of the tolerance, with the old secret too, and
     * with v0 beside v1. */
    int ok_offsets[] = {-299, 299};
    for (int i = 0; i < 2; i++) {
        s_sign(&s, "some.unknown_type", obj, 0, ok_offsets[i], "both", false,
               i ? S_WHSEC_OLD : NULL);
        if (s_handle(&s, NULL, &st) != 0)
            fail_msg("offset %d: %s", ok_offsets[i], st.message);
        char *o = s_db_value(
            "SELECT outcome FROM billing.events WHERE id = '%s'", s.id);
        assert_string_equal(o, "ignored");
        free(o);
        s_signed_free(&s);
    }
    assert_int_equal(s_db_count("SELECT count(*) FROM billing.events%s", ""),
                     events + 2);

    /* Correctly signed but not an event. */
    char sig[65];
    const char *bodies[][2] = {
        {"not json", "webhook payload is not a JSON object"},
        {"[1,2]", "webhook payload is not a JSON object"},
        {"{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"data\":{\"object\":{}}"
         "}",
         "webhook payload is not a Stripe event: want id, type, created and "
         "data.object"},
        {"{\"id\":\"evt_1\",\"created\":1,\"data\":{\"object\":{}}}",
         "webhook payload is not a Stripe event: want id, type, created and "
         "data.object"},
    };
    for (size_t i = 0; i < 4; i++) {
        long long now = (long long)time(NULL);
        billing_webhook_sign(S_WHSEC, now, (const uint8_t *)bodies[i][0],
                             strlen(bodies[i][0]), sig);
        char header[128];
        snprintf(header, sizeof header, "t=%lld,v1=%s", now, sig);
        s_signed_t raw = {.payload = (char *)bodies[i][0], .header = header};
        assert_int_equal(s_handle(&raw, NULL, &st), -KL_INVALID_ARGUMENT);
        assert_string_equal(st.message, bodies[i][1]);
    }
    assert_int_equal(s_db_count("SELECT count(*) FROM billing.events%s", ""),
                     events + 2);
}

/* Stripe answers 500, then 200: one customer, one key. */
static void
test_stripe_500_then_ok(void **state)
{
    char t[37];
    s_new_tenant("retry", t);
    json_t *before = s_control("/_standin/requests", NULL);
    size_t seen = json_array_size(json_object_get(before, "data"));
    json_decref(before);
    s_inject("{\"status\":500,\"count\":1,\"path\":\"/v1/customers\"}");
    s_inject("{\"status\":429,\"count\":1,\"retry_after\":0,"
             "\"path\":\"/v1/subscriptions\"}");
    Kowloon__Billing__Billing *b = s_subscribe(t, "starter");
    protobuf_c_message_free_unpacked(&b->base, NULL);
    assert_int_equal(s_objects("customer", t), 1);
    assert_int_equal(s_objects("subscription", t), 1);
    /* Both attempts of each POST carried the same key; every request the
     * pinned version. */
    json_t *doc = s_control("/_standin/requests", NULL);
    json_t *data = json_object_get(doc, "data");
    const char *paths[] = {"/v1/customers", "/v1/subscriptions"};
    for (int p = 0; p < 2; p++) {
        const char *key = NULL;
        int n = 0;
        size_t i;
        json_t *r;
        json_array_foreach(data, i, r)
        {
            if (i < seen)
                continue;
            assert_string_equal(
                json_string_value(json_object_get(r, "version")), "2024-06-20");
            if (strcmp(json_string_value(json_object_get(r, "path")),
                       paths[p]) != 0)
                continue;
            const char *k =
                json_string_value(json_object_get(r, "idempotency_key"));
            assert_non_null(k);
            if (!key)
                key = k;
            else if (n < 2)
                assert_string_equal(k, key);
            n++;
        }
        assert_true(n >= 2);
    }
    json_decref(doc);
}

/* Billing "dies" after Stripe made the object and before recording it;
 * the retry reuses the stored key: no duplicate at Stripe. */
static void
test_crash_between_stripe_and_db(void **state)
{
    char t[37];
    s_new_tenant("crash", t);
    Kowloon__Billing__StartSubscriptionRequest req =
        KOWLOON__BILLING__START_SUBSCRIPTION_REQUEST__INIT;
    req.plan = "starter";
    req.email = "crash@example.com";
    const char *points[] = {"customer.created", "subscription.created"};
    for (int i = 0; i < 2; i++) {
        snprintf(s_fault_at, sizeof s_fault_at, "%s", points[i]);
        char want[128];
        snprintf(want, sizeof want, "fault injected at %s", points[i]);
        S_EXPECT_FAIL(t, "StartSubscription", &req, KL_UNAVAILABLE, "%s", want);
    }
    /* After both crashes: one customer, one subscription at Stripe, both
     * keys still pending. */
    assert_int_equal(s_objects("customer", t), 1);
    assert_int_equal(s_objects("subscription", t), 1);
    assert_int_equal(s_db_count("SELECT count(*) FROM billing.idempotency_keys"
                                " WHERE tenant_id = '%s' AND done_at IS NULL",
                                t),
                     1);
    /* A restarted billing (a new instance on the same database). */
    s_billing_stop(&s_main);
    char base[64];
    snprintf(base, sizeof base, "%s", s_standin);
    s_billing_start(&s_main, base);
    Kowloon__Billing__Billing *b = NULL;
    kl_status_t st;
    if (s_call(t, "StartSubscription", &req, &b, &st) != 0)
        fail_msg("StartSubscription: %s", st.message);
    assert_string_equal(b->subscription_status, "trialing");
    char sub[64];
    snprintf(sub, sizeof sub, "%s", b->subscription_id);
    protobuf_c_message_free_unpacked(&b->base, NULL);
    assert_int_equal(s_objects("customer", t), 1);
    assert_int_equal(s_objects("subscription", t), 1);
    assert_int_equal(s_db_count("SELECT count(*) FROM billing.idempotency_keys"
                                " WHERE tenant_id = '%s' AND done_at IS NULL",
                                t),
                     0);
    /* A second sign-up is refused. */
    S_EXPECT_FAIL(t, "StartSubscription", &req, KL_ALREADY_EXISTS,
                  "tenant already has subscription %s (trialing)", sub);
}

/* Stripe unreachable: UNAVAILABLE, nothing half-made. */
static void
test_stripe_unreachable(void **state)
{
    char t[37];
    s_new_tenant("down", t);
    s_billing_t dead;
    s_billing_start(&dead, "http://127.0.0.1:1");
    Kowloon__Billing__StartSubscriptionRequest req =
        KOWLOON__BILLING__START_SUBSCRIPTION_REQUEST__INIT;
    req.plan = "starter";
    kl_status_t st;
    int64_t start = kl_now_mono_ms();
    int rc = s_call_on(dead.client, t, "StartSubscription", &req, NULL, &st);
    assert_int_equal(rc, -KL_UNAVAILABLE);
    assert_true(strncmp(st.message, "Stripe unreachable", 18) == 0);
    assert_true(kl_now_mono_ms() - start < 5000);
    s_billing_stop(&dead);
    Kowloon__Billing__Billing *b = s_billing(t);
    assert_string_equal(b->customer_id, "");
    assert_string_equal(b->subscription_id, "");
    protobuf_c_message_free_unpacked(&b->base, NULL);
    /* Stripe slow beyond the budget: also UNAVAILABLE. */
    s_inject("{\"status\":0,\"delay_ms\":2500,\"count\":3,"
             "\"path\":\"/v1/customers\"}");
    rc = s_call(t, "StartSubscription", &req, NULL, &st);
    assert_int_equal(rc, -KL_UNAVAILABLE);
    json_t *empty = json_object();
    json_decref(s_control("/_standin/reset", empty));
    json_decref(empty);
}

static void
test_alipay(void **state)
{
    char t[37];
    s_new_tenant("alipay", t);
    Kowloon__Billing__AlipayPaymentRequest r =
        KOWLOON__BILLING__ALIPAY_PAYMENT_REQUEST__INIT;
    r.amount = 9900;
    r.currency = "hkd";
    r.period_days = 30;
    r.return_url = "https://app.example.com/billing/alipay-done";
    Kowloon__Billing__AlipayPaymentRequest bad = r;
    bad.currency = "cny";
    S_EXPECT_FAIL(t, "CreateAlipayPayment", &bad, KL_INVALID_ARGUMENT,
                  "currency cny is refused: Alipay shows cny to the payer "
                  "(presentment) but Stripe settles it in aud, cad, eur, gbp, "
                  "hkd, jpy, myr, nzd, sgd or usd; charge in one of those");
    bad.currency = "xyz";
    S_EXPECT_FAIL(t, "CreateAlipayPayment", &bad, KL_INVALID_ARGUMENT,
                  "currency \"xyz\" is not supported for Alipay: want aud, "
                  "cad, eur, gbp, hkd, jpy, myr, nzd, sgd or usd (lower case)");
    bad = r;
    bad.amount = 0;
    S_EXPECT_FAIL(t, "CreateAlipayPayment", &bad, KL_INVALID_ARGUMENT,
                  "amount must be positive, got 0");
    bad.amount = 100000000;
    S_EXPECT_FAIL(t, "CreateAlipayPayment", &bad, KL_INVALID_ARGUMENT,
                  "amount 100000000 is above Stripe's maximum 99999999");
    bad.amount = 49;
    bad.currency = "usd";
    S_EXPECT_FAIL(t, "CreateAlipayPayment", &bad, KL_INVALID_ARGUMENT,
                  "amount 49 usd is below Stripe's minimum charge 50 usd "
                  "(amounts are in the smallest unit)");
    bad.currency = "jpy";
    S_EXPECT_FAIL(t, "CreateAlipayPayment", &bad, KL_INVALID_ARGUMENT,
                  "amount 49 jpy is below Stripe's minimum charge 50 jpy "
                  "(jpy is zero-decimal: amounts are yen)");
    bad = r;
    bad.period_days = 0;
    S_EXPECT_FAIL(t, "CreateAlipayPayment", &bad, KL_INVALID_ARGUMENT,
                  "period_days must be 1 to 366, got 0");
    bad = r;
    bad.return_url = "";
    S_EXPECT_FAIL(t, "CreateAlipayPayment", &bad, KL_INVALID_ARGUMENT,
                  "return_url is required: Alipay redirects the payer back "
                  "to it");
    bad.return_url = "https://evil.example/steal";
    S_EXPECT_FAIL(t, "CreateAlipayPayment", &bad, KL_INVALID_ARGUMENT,
                  "return_url must be on https://app.example.com");
    assert_int_equal(s_objects("payment_intent", t), 0);

    /* 5000 yen: jpy amounts are whole yen. */
    Kowloon__Billing__AlipayPaymentRequest jpy = r;
    jpy.amount = 5000;
    jpy.currency = "jpy";
    Kowloon__Billing__AlipayPayment *p = NULL;
    kl_status_t st;
    if (s_call(t, "CreateAlipayPayment", &jpy, &p, &st) != 0)
        fail_msg("CreateAlipayPayment: %s", st.message);
    assert_true(strncmp(p->payment_intent_id, "pi_", 3) == 0);
    assert_string_equal(p->status, "requires_action");
    assert_true(strncmp(p->redirect_url, "https://hooks.stripe.com/", 25) == 0);
    assert_non_null(strstr(p->client_secret, "_secret_"));
    char pi[64];
    snprintf(pi, sizeof pi, "%s", p->payment_intent_id);
    protobuf_c_message_free_unpacked(&p->base, NULL);
    json_t *doc = s_control("/_standin/objects?type=payment_intent", NULL);
    size_t i;
    json_t *o;
    bool seen = false;
    json_array_foreach(json_object_get(doc, "data"), i, o)
    {
        if (strcmp(json_string_value(json_object_get(o, "id")), pi) != 0)
            continue;
        seen = true;
        assert_int_equal(json_integer_value(json_object_get(o, "amount")),
                         5000);
        json_t *types = json_object_get(o, "payment_method_types");
        assert_string_equal(json_string_value(json_array_get(types, 0)),
                            "card");
        assert_string_equal(json_string_value(json_array_get(types, 1)),
                            "alipay");
        json_t *md = json_object_get(o, "metadata");
        assert_string_equal(json_string_value(json_object_get(md, "tenant_id")),
                            t);
        assert_string_equal(
            json_string_value(json_object_get(md, "period_days")), "30");
    }
    json_decref(doc);
    assert_true(seen);

    /* The payment succeeds: paid for 30 days. */
    s_event("payment_intent.succeeded", (long long)time(NULL),
            "{\"id\":\"%s\",\"object\":\"payment_intent\",\"status\":"
            "\"succeeded\",\"amount\":5000,\"currency\":\"jpy\",\"metadata\":"
            "{\"tenant_id\":\"%s\",\"period_days\":\"30\"}}",
            pi, t);
    char *until =
        s_db_value("SELECT paid_until - extract(epoch FROM now())::bigint FROM "
                   "billing.prepaid WHERE tenant_id = '%s'",
                   t);
    long left = strtol(until, NULL, 10);
    free(until);
    assert_true(left > 30 * 86400 - 60 && left <= 30 * 86400);
    s_wait_tenant(t, "active", NULL, 1000);
}

static void
test_plan_portal_cancel(void **state)
{
    char t[37];
    s_new_tenant("change", t);
    Kowloon__Billing__PortalRequest preq =
        KOWLOON__BILLING__PORTAL_REQUEST__INIT;
    S_EXPECT_FAIL(t, "CreatePortalSession", &preq, KL_FAILED_PRECONDITION,
                  "no Stripe customer yet: start a subscription or a checkout "
                  "first");
    Kowloon__Billing__ChangePlanRequest cp =
        KOWLOON__BILLING__CHANGE_PLAN_REQUEST__INIT;
    cp.plan = "pro";
    S_EXPECT_FAIL(t, "ChangePlan", &cp, KL_FAILED_PRECONDITION,
                  "tenant has no live subscription");
    Kowloon__Billing__Billing *b = s_subscribe(t, "starter");
    char sub[64];
    snprintf(sub, sizeof sub, "%s", b->subscription_id);
    protobuf_c_message_free_unpacked(&b->base, NULL);

    cp.plan = "nope";
    S_EXPECT_FAIL(t, "ChangePlan", &cp, KL_NOT_FOUND,
                  "plan \"nope\" not found");
    cp.plan = "Bad Plan";
    S_EXPECT_FAIL(t, "ChangePlan", &cp, KL_INVALID_ARGUMENT,
                  "plan \"Bad Plan\" is invalid: want 1 to 63 of a-z, 0-9, _ "
                  "and -");
    cp.plan = "pro";
    kl_status_t st;
    if (s_call(t, "ChangePlan", &cp, &b, &st) != 0)
        fail_msg("ChangePlan: %s", st.message);
    assert_string_equal(b->plan, "pro");
    assert_string_equal(b->price_id, "price_pro_m");
    protobuf_c_message_free_unpacked(&b->base, NULL);
    s_wait_tenant(t, "trialing", "pro", 1000);

    Kowloon__Billing__CancelRequest creq =
        KOWLOON__BILLING__CANCEL_REQUEST__INIT;
    if (s_call(t, "CancelAtPeriodEnd", &creq, &b, &st) != 0)
        fail_msg("CancelAtPeriodEnd: %s", st.message);
    assert_true(b->cancel_at_period_end);
    protobuf_c_message_free_unpacked(&b->base, NULL);

    Kowloon__Billing__SessionUrl *u = NULL;
    if (s_call(t, "CreatePortalSession", &preq, &u, &st) != 0)
        fail_msg("CreatePortalSession: %s", st.message);
    assert_true(strncmp(u->id, "bps_", 4) == 0);
    assert_true(strncmp(u->url, "https://billing.stripe.com/", 27) == 0);
    protobuf_c_message_free_unpacked(&u->base, NULL);

    /* GetBilling reads the caller's own tenant only. */
    Kowloon__Billing__GetBillingRequest g =
        KOWLOON__BILLING__GET_BILLING_REQUEST__INIT;
    if (s_call(t, "GetBilling", &g, &b, &st) != 0)
        fail_msg("GetBilling: %s", st.message);
    assert_string_equal(b->tenant_id, t);
    assert_string_equal(b->subscription_id, sub);
    protobuf_c_message_free_unpacked(&b->base, NULL);
    S_EXPECT_FAIL("", "GetBilling", &g, KL_PERMISSION_DENIED,
                  "this method is called on behalf of a tenant");
    S_EXPECT_FAIL("not-a-uuid", "CreatePortalSession", &preq,
                  KL_PERMISSION_DENIED,
                  "this method is called on behalf of a tenant");
    Kowloon__Billing__TenantBillingRequest tb =
        KOWLOON__BILLING__TENANT_BILLING_REQUEST__INIT;
    tb.tenant_id = "x";
    S_EXPECT_FAIL("", "GetTenantBilling", &tb, KL_INVALID_ARGUMENT,
                  "tenant_id \"x\" is not a UUID");
}

/* The invoice-paid option: no card, Stripe emails invoices. */
static void
test_send_invoice(void **state)
{
    char t[37];
    s_new_tenant("invoice", t);
    Kowloon__Billing__StartSubscriptionRequest req =
        KOWLOON__BILLING__START_SUBSCRIPTION_REQUEST__INIT;
    req.plan = "starter";
    req.collection_method = "send_invoice";
    req.days_until_due = 10;
    req.trial_days = -1;
    Kowloon__Billing__Billing *b = NULL;
    kl_status_t st;
    if (s_call(t, "StartSubscription", &req, &b, &st) != 0)
        fail_msg("StartSubscription: %s", st.message);
    assert_string_equal(b->collection_method, "send_invoice");
    assert_string_equal(b->subscription_status, "active");
    protobuf_c_message_free_unpacked(&b->base, NULL);
    s_wait_tenant(t, "active", "starter", 1000);
    req.collection_method = "cash";
    S_EXPECT_FAIL(t, "StartSubscription", &req, KL_INVALID_ARGUMENT,
                  "collection_method \"cash\" is invalid: want "
                  "charge_automatically or send_invoice");
}

/* The tenant service down: the webhook is still recorded, the outbox row
 * waits and is applied once the tenant service is back. */
static void
test_tenant_service_down(void **state)
{
    char t[37];
    s_new_tenant("tdown", t);
    Kowloon__Billing__Billing *b = s_subscribe(t, "starter");
    char sub[64], cus[64];
    snprintf(sub, sizeof sub, "%s", b->subscription_id);
    snprintf(cus, sizeof cus, "%s", b->customer_id);
    protobuf_c_message_free_unpacked(&b->base, NULL);
    s_wait_tenant(t, "trialing", NULL, 1000);
    /* A new tenant is trialing already, so wait for the subscription's
     * outbox row itself to be applied before taking the service down. */
    int64_t drained_by = kl_now_mono_ms() + 3000;
    while (s_db_count("SELECT count(*) FROM billing.outbox WHERE "
                      "tenant_id = '%s' AND done_at IS NULL",
                      t) != 0 &&
           kl_now_mono_ms() < drained_by)
        usleep(20 * 1000);
    assert_int_equal(s_db_count("SELECT count(*) FROM billing.outbox WHERE "
                                "tenant_id = '%s' AND done_at IS NULL",
                                t),
                     0);

    char endpoint[128];
    snprintf(endpoint, sizeof endpoint, "%s",
             kl_rpc_server_endpoint(s_tenant_srv.server));
    s_unserve(&s_tenant_srv);
    s_event("invoice.payment_failed", (long long)time(NULL) + 1,
            "{\"id\":\"in_td\",\"object\":\"invoice\",\"customer\":"
            "\"%s\",\"subscription\":\"%s\",\"amount_paid\":0}",
            cus, sub);
    /* Recorded at once; the tenant change waits, retried with backoff. */
    int64_t until = kl_now_mono_ms() + 5000;
    while (s_db_count("SELECT count(*) FROM billing.outbox WHERE tenant_id = "
                      "'%s' AND done_at IS NULL AND attempts > 0",
                      t) == 0) {
        if (kl_now_mono_ms() > until)
            fail_msg("the outbox row was never attempted");
        usleep(50000);
    }
    char *err = s_db_value("SELECT last_error FROM billing.outbox WHERE "
                           "tenant_id = '%s' AND done_at IS NULL",
                           t);
    assert_true(err[0] != '\0');
    free(err);
    s_serve_on(&s_tenant_srv, endpoint, tenant_service_base(s_tenant_svc),
               s_tenant_opts, s_tenant_svc);
    s_wait_tenant(t, "past_due", NULL, 10000);
    assert_int_equal(s_db_count("SELECT count(*) FROM billing.outbox WHERE "
                                "tenant_id = '%s' AND done_at IS NULL",
                                t),
                     0);
}

/* The sweeper prunes what the retention has expired: an event received
 * 31 days ago and an outbox row applied then go (KOWLOON_BILLING_
 * RETENTION_DAYS 30 here); a pending row of that age and a recent event
 * stay. */
static void
test_retention_prunes(void **state)
{
    (void)state;
    char *ok = s_db_value(
        "WITH e AS (INSERT INTO billing.events (id, type, created,"
        " received_at) VALUES ('evt_ret_old', 'x', 1, now() - interval"
        " '31 days'), ('evt_ret_new', 'x', 1, now() - interval '29 days')"
        " RETURNING 1), o AS (INSERT INTO billing.outbox (tenant_id, status,"
        " reason, created_at, done_at, next_attempt_at) VALUES"
        " (gen_random_uuid(), 'active', 'ret_done', now() - interval"
        " '40 days', now() - interval '31 days', now()),"
        " (gen_random_uuid(), 'active', 'ret_pending', now() - interval"
        " '40 days', NULL, now() + interval '1 day') RETURNING 1)"
        " SELECT (SELECT count(*) FROM e) + (SELECT count(*) FROM o)%s",
        "");
    assert_string_equal(ok, "4");
    free(ok);
    int64_t until = kl_now_mono_ms() + 10000;
    while (s_db_count("SELECT count(*) FROM billing.events WHERE id ="
                      " '%s'",
                      "evt_ret_old") > 0 ||
           s_db_count("SELECT count(*) FROM billing.outbox WHERE reason ="
                      " '%s'",
                      "ret_done") > 0) {
        if (kl_now_mono_ms() > until)
            fail_msg("expired rows were not pruned within 10 s");
        usleep(50 * 1000);
    }
    assert_int_equal(s_db_count("SELECT count(*) FROM billing.events WHERE"
                                " id = '%s'",
                                "evt_ret_new"),
                     1);
    assert_int_equal(s_db_count("SELECT count(*) FROM billing.outbox WHERE"
                                " reason = '%s'",
                                "ret_pending"),
                     1);
    char *del = s_db_value("DELETE FROM billing.outbox WHERE reason ="
                           " 'ret_pending' RETURNING 1%s",
                           "");
    free(del);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lifecycle),
        cmocka_unit_test(test_grace_not_early),
        cmocka_unit_test(test_duplicates_concurrent),
        cmocka_unit_test(test_reverse_order),
        cmocka_unit_test(test_webhook_refusals),
        cmocka_unit_test(test_stripe_500_then_ok),
        cmocka_unit_test(test_crash_between_stripe_and_db),
        cmocka_unit_test(test_stripe_unreachable),
        cmocka_unit_test(test_alipay),
        cmocka_unit_test(test_plan_portal_cancel),
        cmocka_unit_test(test_send_invoice),
        cmocka_unit_test(test_tenant_service_down),
        cmocka_unit_test(test_retention_prunes),
    };
    return cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
}
