/*
 * The flags service end to end, in process: its server on
 * tcp://127.0.0.1:* against a fresh database made in KLTEST_PG_URL and the
 * Redis of KLTEST_REDIS_URL, called through kl_rpc_client.
 */
#include "flags_service.h"
#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_pg.h"
#include "kl_redis.h"
#include "kl_rpc_client.h"
#include "kl_rpc_server.h"
#include "kl_test_db.h"
#include "kl_test_events.h"
#include "kl_test_server.h"
#include "kowloon/flags.pb-c.h"
#include "kowloon/rpc.pb-c.h"

#include <hiredis/hiredis.h>
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

#define S_TIMEOUT_MS 20000

static kl_test_db_t *s_db;      /* this run's database */
static const char *s_redis_url; /* KLTEST_REDIS_URL */
static const char *s_db_url;    /* its conninfo */
static char s_channel[64];      /* this run's events channel */

/* --- databases --------------------------------------------------------- */

static void
s_exec(const char *url, const char *sql)
{
    assert_int_equal(kl_test_db_exec(url, sql), 0);
}

/* One value from the test database; caller frees. */
static char *
s_db_value(const char *sql)
{
    char *v = kl_test_db_value(s_db_url, sql);
    assert_non_null(v);
    return v;
}

/* --- redis ------------------------------------------------------------- */

/* A connection to KLTEST_REDIS_URL (host, port, db). */
static redisContext *
s_redis_connect(void)
{
    char host[64] = "127.0.0.1";
    int port = 6379;
    if (sscanf(s_redis_url, "redis://%63[^:/]:%d", host, &port) < 1)
        fail_msg("cannot read KLTEST_REDIS_URL %s", s_redis_url);
    redisContext *c = redisConnect(host, port);
    if (!c || c->err)
        fail_msg("redisConnect: %s", c ? c->errstr : "?");
    int db = 0;
    const char *slash = strrchr(s_redis_url + 8, '/');
    if (slash)
        db = atoi(slash + 1);
    redisReply *r = redisCommand(c, "SELECT %d", db);
    assert_non_null(r);
    freeReplyObject(r);
    return c;
}

/* GET key; NULL when absent. Caller frees. */
static char *
s_redis_get(const char *key)
{
    redisContext *c = s_redis_connect();
    redisReply *r = redisCommand(c, "GET %s", key);
    assert_non_null(r);
    char *v = r->type == REDIS_REPLY_STRING ? kl_strdup(r->str) : NULL;
    freeReplyObject(r);
    redisFree(c);
    return v;
}

static void
s_assert_mirror(const char *plan, const char *want)
{
    char key[128];
    snprintf(key, sizeof key, "plan:%s:features", plan);
    /* Written after commit, before the reply: no waiting needed. */
    char *got = s_redis_get(key);
    if (!want && got)
        fail_msg("%s: want no key, got %s", key, got);
    if (want && (!got || strcmp(got, want) != 0))
        fail_msg("%s: want %s, got %s", key, want, got ? got : "(nil)");
    free(got);
}

/* --- events ------------------------------------------------------------ */

static kl_test_events_t *s_events; /* events the service publishes */

/* Waits up to 5 s for an event; tenant_id "" means none. */
static void
s_expect_event(const char *kind, const char *id, const char *tenant_id,
               const char *action)
{
    if (kl_test_events_wait(s_events, kind, id, tenant_id, NULL, action, 5000) <
        0)
        fail_msg("no %s %s event for %s", kind, action, id);
}

/* --- a service instance ------------------------------------------------ */

typedef struct {
    flags_service_t *svc;
    kl_test_server_t *srv;   /* serves svc; its client and health */
    kl_rpc_client_t *health; /* borrowed from srv */
} s_instance_t;

static s_instance_t s_main; /* the one most tests call */

static void
s_start(s_instance_t *in, const char *db_url, const char *redis_url,
        int workers)
{
    kl_status_t st;
    flags_service_opts_t opts = {
        .database_url = db_url,
        .redis_url = redis_url,
        .events_channel = s_channel,
    };
    memset(in, 0, sizeof *in);
    in->svc = flags_service_new(&opts, &st);
    if (!in->svc)
        fail_msg("flags_service_new: %s", st.message);
    if (flags_service_migrate(in->svc, &st) < 0)
        fail_msg("migrate: %s", st.message);
    kl_rpc_server_opts_t sopts = {.workers = workers};
    flags_service_server_opts(in->svc, &sopts);
    in->srv = kl_test_server_start(flags_service_base(in->svc), &sopts);
    assert_non_null(in->srv);
    in->health = kl_test_server_health(in->srv);
}

static void
s_stop(s_instance_t *in)
{
    if (!in->srv)
        return;
    kl_test_server_stop(&in->srv);
    flags_service_destroy(&in->svc);
}

static int
s_call_on(s_instance_t *in, const char *method, const void *input,
          void *output_p, kl_status_t *st)
{
    return kl_test_server_call(in->srv, method, input, output_p, S_TIMEOUT_MS,
                               st);
}

static int
s_call(const char *method, const void *input, void *output_p, kl_status_t *st)
{
    return s_call_on(&s_main, method, input, output_p, st);
}

/* Calls method and fails the test unless it answers OK. */
#define S_OK(method, input, output_p)                                          \
    do {                                                                       \
        kl_status_t st_;                                                       \
        if (s_call(method, input, output_p, &st_) != 0)                        \
            fail_msg("%s: %s %s", method, kl_code_name(st_.code),              \
                     st_.message);                                             \
    } while (0)

/* Expects method to fail with code and exactly message. */
#define S_EXPECT_FAIL(method, input, code, ...)                                \
    do {                                                                       \
        kl_status_t st_;                                                       \
        char want_[KL_STATUS_MESSAGE_MAX];                                     \
        snprintf(want_, sizeof want_, __VA_ARGS__);                            \
        int rc_ = s_call(method, input, NULL, &st_);                           \
        if (rc_ != -(code) || strcmp(st_.message, want_) != 0)                 \
            fail_msg("%s: want %s \"%s\", got %s \"%s\"", method,              \
                     kl_code_name(code), want_, kl_strerror(rc_),              \
                     st_.message);                                             \
    } while (0)

static void
s_free(void *msg)
{
    if (msg)
        protobuf_c_message_free_unpacked(msg, NULL);
}

/* --- message helpers --------------------------------------------------- */

/* A plan message over caller-owned arrays. */
typedef struct {
    Kowloon__Flags__Plan plan;
    Kowloon__Flags__Plan__LimitsEntry entries[8];
    Kowloon__Flags__Plan__LimitsEntry *ptrs[8];
} s_plan_t;

static void
s_plan_init(s_plan_t *p, const char *name, const char *display,
            const char **features, size_t n_features, const char **prices,
            size_t n_prices)
{
    memset(p, 0, sizeof *p);
    kowloon__flags__plan__init(&p->plan);
    p->plan.name = (char *)name;
    p->plan.display_name = (char *)(display ? display : "");
    p->plan.features = (char **)features;
    p->plan.n_features = n_features;
    p->plan.stripe_price_ids = (char **)prices;
    p->plan.n_stripe_price_ids = n_prices;
    p->plan.limits = p->ptrs;
}

static void
s_plan_limit(s_plan_t *p, const char *key, int64_t value)
{
    size_t i = p->plan.n_limits++;
    kowloon__flags__plan__limits_entry__init(&p->entries[i]);
    p->entries[i].key = (char *)key;
    p->entries[i].value = value;
    p->ptrs[i] = &p->entries[i];
}

/* The four limits every plan needs. */
static void
s_plan_std_limits(s_plan_t *p, int64_t rpm, int64_t projects, int64_t keys,
                  int64_t storage)
{
    s_plan_limit(p, "api_requests_per_minute", rpm);
    s_plan_limit(p, "max_projects", projects);
    s_plan_limit(p, "max_api_keys", keys);
    s_plan_limit(p, "storage_mb", storage);
}

static int64_t
s_plan_get_limit(const Kowloon__Flags__Plan *p, const char *key)
{
    for (size_t i = 0; i < p->n_limits; i++)
        if (strcmp(p->limits[i]->key, key) == 0)
            return p->limits[i]->value;
    fail_msg("plan %s has no limit %s", p->name, key);
    return 0;
}

static int64_t
s_ent_limit(const Kowloon__Flags__Entitlements *e, const char *key)
{
    for (size_t i = 0; i < e->n_limits; i++)
        if (strcmp(e->limits[i]->key, key) == 0)
            return e->limits[i]->value;
    fail_msg("entitlements have no limit %s", key);
    return 0;
}

static bool
s_has(char **items, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(items[i], s) == 0)
            return true;
    return false;
}

/* "a,b,c" of a string list. */
static void
s_join(char **items, size_t n, char *out, size_t size)
{
    out[0] = '\0';
    for (size_t i = 0; i < n; i++)
        snprintf(out + strlen(out), size - strlen(out), "%s%s", i ? "," : "",
                 items[i]);
}

static void
s_assert_list(char **items, size_t n, const char *want)
{
    char got[1024];
    s_join(items, n, got, sizeof got);
    if (strcmp(got, want) != 0)
        fail_msg("want [%s], got [%s]", want, got);
}

static Kowloon__Flags__Entitlements *
s_evaluate(const char *tenant, const char *plan)
{
    Kowloon__Flags__EvaluateRequest req =
        KOWLOON__FLAGS__EVALUATE_REQUEST__INIT;
    req.tenant_id = (char *)tenant;
    req.plan = (char *)plan;
    Kowloon__Flags__Entitlements *e = NULL;
    S_OK("Evaluate", &req, &e);
    return e;
}

static int64_t
s_version(void)
{
    Kowloon__Flags__Entitlements *e =
        s_evaluate("00000000-0000-0000-0000-000000000000", "starter");
    int64_t v = e->version;
    s_free(e);
    return v;
}

/* A fresh random tenant id. */
static void
s_tenant(char out[37])
{
    static unsigned counter;
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&mu);
    unsigned n = ++counter;
    pthread_mutex_unlock(&mu);
    unsigned r1 = (unsigned)rand(), r2 = (unsigned)rand();
    snprintf(out, 37, "%08x-%04x-4%03x-8%03x-%04x%08x", r1, n & 0xffff,
             r2 & 0xfff, (r2 >> 12) & 0xfff, (unsigned)getpid() & 0xffff, n);
}

static void
s_set_override(const char *tenant, const char *key, int kind, int64_t value,
               const char *expires_at)
{
    Kowloon__Flags__Override o = KOWLOON__FLAGS__OVERRIDE__INIT;
    o.tenant_id = (char *)tenant;
    o.key = (char *)key;
    if (kind == 'f') {
        o.value_case = KOWLOON__FLAGS__OVERRIDE__VALUE_ENABLED;
        o.enabled = value != 0;
    } else {
        o.value_case = KOWLOON__FLAGS__OVERRIDE__VALUE_LIMIT;
        o.limit = value;
    }
    o.expires_at = (char *)(expires_at ? expires_at : "");
    Kowloon__Flags__Override *out = NULL;
    S_OK("SetOverride", &o, &out);
    assert_string_equal(out->key, key);
    assert_int_equal(out->value_case, o.value_case);
    s_free(out);
}

/* RFC 3339 UTC, seconds from now. */
static void
s_time_in(int seconds, char out[32])
{
    time_t t = time(NULL) + seconds;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* --- fixture ----------------------------------------------------------- */

static int
s_group_setup(void **state)
{
    s_redis_url = kl_test_db_redis_url("test_flags_service");
    if (!s_redis_url)
        return -1;
    kl_log_init("flags-test", KL_ERROR);
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    snprintf(s_channel, sizeof s_channel, "kltest:flags:%d", (int)getpid());
    s_db = kl_test_db_new("test_flags_service", "kltest_flags");
    if (!s_db)
        return -1;
    s_db_url = kl_test_db_url(s_db);

    s_events = kl_test_events_new(s_redis_url, s_channel);
    if (!s_events)
        return -1;
    s_start(&s_main, s_db_url, s_redis_url, 4);
    return 0;
}

static int
s_group_teardown(void **state)
{
    s_stop(&s_main);
    /* The mirrors of the plans the tests made (the seeded ones stay). */
    if (s_redis_url) {
        redisContext *c = s_redis_connect();
        const char *plans[] = {"team", "other", "offline"};
        for (int i = 0; i < 3; i++) {
            redisReply *r = redisCommand(
                c, "DEL plan:%s:features kowloon:flags:plan_mirror:%s",
                plans[i], plans[i]);
            if (r)
                freeReplyObject(r);
        }
        redisFree(c);
    }
    kl_test_events_destroy(&s_events);
    kl_test_db_destroy(&s_db);
    return 0;
}

/* --- plans ------------------------------------------------------------- */

static void
test_seeded_plans(void **state)
{
    Kowloon__Flags__ListPlansRequest req =
        KOWLOON__FLAGS__LIST_PLANS_REQUEST__INIT;
    Kowloon__Flags__ListPlansResponse *list = NULL;
    S_OK("ListPlans", &req, &list);
    assert_true(list->n_plans >= 3);
    struct {
        const char *name, *display, *features;
        int64_t rpm, projects, keys, storage;
    } want[] = {
        {"enterprise", "Enterprise",
         "basic,data_export,advanced_reports,sso,audit_log", 30000, -1, 100,
         102400},
        {"pro", "Pro", "basic,data_export,advanced_reports", 3000, 50, 10,
         10240},
        {"starter", "Starter", "basic", 600, 3, 2, 1024},
    };
    for (int i = 0; i < 3; i++) {
        const Kowloon__Flags__Plan *p = list->plans[i];
        assert_string_equal(p->name, want[i].name);
        assert_string_equal(p->display_name, want[i].display);
        s_assert_list(p->features, p->n_features, want[i].features);
        assert_int_equal(p->n_limits, 4);
        assert_int_equal(s_plan_get_limit(p, "api_requests_per_minute"),
                         want[i].rpm);
        assert_int_equal(s_plan_get_limit(p, "max_projects"), want[i].projects);
        assert_int_equal(s_plan_get_limit(p, "max_api_keys"), want[i].keys);
        assert_int_equal(s_plan_get_limit(p, "storage_mb"), want[i].storage);
        assert_int_equal(p->n_stripe_price_ids, 0);
        assert_int_equal(strlen(p->created_at), 24);
        assert_true(p->builtin);
    }
    s_free(list);

    Kowloon__Flags__PlanName name = KOWLOON__FLAGS__PLAN_NAME__INIT;
    name.name = "pro";
    Kowloon__Flags__Plan *pro = NULL;
    S_OK("GetPlan", &name, &pro);
    assert_string_equal(pro->name, "pro");
    assert_int_equal(s_plan_get_limit(pro, "max_projects"), 50);
    s_free(pro);

    /* The seed's layout, exactly. */
    s_assert_mirror("starter", "[\"basic\"]");
    s_assert_mirror("pro", "[\"basic\",\"data_export\",\"advanced_reports\"]");
    s_assert_mirror("enterprise", "[\"basic\",\"data_export\",\"advanced_"
                                  "reports\",\"sso\",\"audit_log\"]");
}

static void
test_plan_crud(void **state)
{
    int64_t v0 = s_version();
    const char *features[] = {"basic", "data_export"};
    const char *prices[] = {"price_team_monthly", "price_team_yearly"};
    s_plan_t p;
    s_plan_init(&p, "team", "Team", features, 2, prices, 2);
    s_plan_std_limits(&p, 1200, 10, 5, 4096);
    s_plan_limit(&p, "max_seats", 25);
    Kowloon__Flags__Plan *out = NULL;
    S_OK("CreatePlan", &p.plan, &out);
    assert_string_equal(out->name, "team");
    assert_string_equal(out->display_name, "Team");
    s_assert_list(out->features, out->n_features, "basic,data_export");
    s_assert_list(out->stripe_price_ids, out->n_stripe_price_ids,
                  "price_team_monthly,price_team_yearly");
    assert_int_equal(out->n_limits, 5);
    assert_int_equal(s_plan_get_limit(out, "max_seats"), 25);
    assert_false(out->builtin);
    s_free(out);
    s_expect_event("plan", "team", "", "created");
    s_assert_mirror("team", "[\"basic\",\"data_export\"]");
    int64_t v1 = s_version();
    assert_true(v1 > v0);

    S_EXPECT_FAIL("CreatePlan", &p.plan, KL_ALREADY_EXISTS,
                  "plan \"team\" already exists");

    /* Update replaces everything; an empty display name is the name. */
    const char *features2[] = {"basic", "data_export", "advanced_reports"};
    s_plan_t u;
    s_plan_init(&u, "team", "", features2, 3, prices, 1);
    s_plan_std_limits(&u, 1500, 20, 5, 8192);
    S_OK("UpdatePlan", &u.plan, &out);
    assert_string_equal(out->display_name, "team");
    s_assert_list(out->features, out->n_features,
                  "basic,data_export,advanced_reports");
    s_assert_list(out->stripe_price_ids, out->n_stripe_price_ids,
                  "price_team_monthly");
    assert_int_equal(out->n_limits, 4);
    assert_int_equal(s_plan_get_limit(out, "max_projects"), 20);
    s_free(out);
    s_expect_event("plan", "team", "", "updated");
    s_assert_mirror("team", "[\"basic\",\"data_export\",\"advanced_reports\"]");
    int64_t v2 = s_version();
    assert_true(v2 > v1);

    /* The freed price may go to another plan; a taken one may not. */
    const char *taken[] = {"price_team_monthly"};
    const char *freed[] = {"price_team_yearly"};
    s_plan_t o;
    s_plan_init(&o, "other", "Other", features, 1, taken, 1);
    s_plan_std_limits(&o, 1, 1, 1, 1);
    S_EXPECT_FAIL("CreatePlan", &o.plan, KL_ALREADY_EXISTS,
                  "stripe price id \"price_team_monthly\" is already used by "
                  "plan \"team\"");
    o.plan.stripe_price_ids = (char **)freed;
    S_OK("CreatePlan", &o.plan, &out);
    s_free(out);
    o.plan.stripe_price_ids = (char **)taken;
    S_EXPECT_FAIL("UpdatePlan", &o.plan, KL_ALREADY_EXISTS,
                  "stripe price id \"price_team_monthly\" is already used by "
                  "plan \"team\"");
    /* A failed update changes nothing. */
    Kowloon__Flags__PlanName name = KOWLOON__FLAGS__PLAN_NAME__INIT;
    name.name = "other";
    S_OK("GetPlan", &name, &out);
    s_assert_list(out->stripe_price_ids, out->n_stripe_price_ids,
                  "price_team_yearly");
    s_free(out);

    /* Delete: the mirror key goes; tenants on it get NOT_FOUND. */
    Kowloon__Flags__DeletePlanResponse *del = NULL;
    S_OK("DeletePlan", &name, &del);
    s_free(del);
    s_expect_event("plan", "other", "", "deleted");
    s_assert_mirror("other", NULL);
    S_EXPECT_FAIL("GetPlan", &name, KL_NOT_FOUND, "plan \"other\" not found");
    S_EXPECT_FAIL("DeletePlan", &name, KL_NOT_FOUND,
                  "plan \"other\" not found");
    Kowloon__Flags__EvaluateRequest ev = KOWLOON__FLAGS__EVALUATE_REQUEST__INIT;
    ev.tenant_id = "6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
    ev.plan = "other";
    S_EXPECT_FAIL("Evaluate", &ev, KL_NOT_FOUND, "plan \"other\" not found");
    assert_true(s_version() > v2);

    /* Built-in plans can be edited but not deleted. */
    name.name = "starter";
    S_EXPECT_FAIL("DeletePlan", &name, KL_FAILED_PRECONDITION,
                  "plan \"starter\" is built in and cannot be deleted");
    name.name = "enterprise";
    S_EXPECT_FAIL("DeletePlan", &name, KL_FAILED_PRECONDITION,
                  "plan \"enterprise\" is built in and cannot be deleted");

    s_plan_t missing;
    s_plan_init(&missing, "nosuch", "", features, 1, NULL, 0);
    s_plan_std_limits(&missing, 1, 1, 1, 1);
    S_EXPECT_FAIL("UpdatePlan", &missing.plan, KL_NOT_FOUND,
                  "plan \"nosuch\" not found");
}

static void
test_plan_validation(void **state)
{
    const char *ok_features[] = {"basic"};
    s_plan_t p;

    s_plan_init(&p, "", "", ok_features, 1, NULL, 0);
    s_plan_std_limits(&p, 1, 1, 1, 1);
    S_EXPECT_FAIL("CreatePlan", &p.plan, KL_INVALID_ARGUMENT,
                  "name is required");
    p.plan.name = "Gold Plan";
    S_EXPECT_FAIL("CreatePlan", &p.plan, KL_INVALID_ARGUMENT,
                  "name \"Gold Plan\" is invalid: want 1 to 63 of a-z, 0-9, _ "
                  "and -");

    char long_name[202];
    memset(long_name, 'x', 201);
    long_name[201] = '\0';
    s_plan_init(&p, "gold", long_name, ok_features, 1, NULL, 0);
    s_plan_std_limits(&p, 1, 1, 1, 1);
    S_EXPECT_FAIL("CreatePlan", &p.plan, KL_INVALID_ARGUMENT,
                  "display_name must be at most 200 characters, got 201");

    const char *bad_features[] = {"basic", "Data-Export"};
    s_plan_init(&p, "gold", "Gold", bad_features, 2, NULL, 0);
    s_plan_std_limits(&p, 1, 1, 1, 1);
    S_EXPECT_FAIL("CreatePlan", &p.plan, KL_INVALID_ARGUMENT,
                  "feature \"Data-Export\" is invalid: want 1 to 63 of a-z, "
                  "0-9 and _");
    const char *dup_features[] = {"basic", "sso", "basic"};
    s_plan_init(&p, "gold", "Gold", dup_features, 3, NULL, 0);
    s_plan_std_limits(&p, 1, 1, 1, 1);
    S_EXPECT_FAIL("CreatePlan", &p.plan, KL_INVALID_ARGUMENT,
                  "feature \"basic\" is listed twice");

    s_plan_init(&p, "gold", "Gold", ok_features, 1, NULL, 0);
    s_plan_std_limits(&p, 1, -5, 1, 1);
    S_EXPECT_FAIL("CreatePlan", &p.plan, KL_INVALID_ARGUMENT,
                  "limit \"max_projects\": -5 is out of range (want "
                  "-1..1000000000000)");
    s_plan_init(&p, "gold", "Gold", ok_features, 1, NULL, 0);
    s_plan_std_limits(&p, 1, 1, 1, 1000000000001LL);
    S_EXPECT_FAIL("CreatePlan", &p.plan, KL_INVALID_ARGUMENT,
                  "limit \"storage_mb\": 1000000000001 is out of range (want "
                  "-1..1000000000000)");
    s_plan_init(&p, "gold", "Gold", ok_features, 1, NULL, 0);
    s_plan_std_limits(&p, 1, 1, 1, 1);
    s_plan_limit(&p, "Max-Seats", 1);
    S_EXPECT_FAIL("CreatePlan", &p.plan, KL_INVALID_ARGUMENT,
                  "limit \"Max-Seats\" is invalid: want 1 to 63 of a-z, 0-9 "
                  "and _");
    s_plan_init(&p, "gold", "Gold", ok_features, 1, NULL, 0);
    s_plan_std_limits(&p, 1, 1, 1, 1);
    s_plan_limit(&p, "max_projects", 2);
    S_EXPECT_FAIL("CreatePlan", &p.plan, KL_INVALID_ARGUMENT,
                  "limit \"max_projects\" is listed twice");
    s_plan_init(&p, "gold", "Gold", ok_features, 1, NULL, 0);
    s_plan_limit(&p, "api_requests_per_minute", 1);
    s_plan_limit(&p, "max_projects", 1);
    s_plan_limit(&p, "max_api_keys", 1);
    S_EXPECT_FAIL("CreatePlan", &p.plan, KL_INVALID_ARGUMENT,
                  "limit \"storage_mb\" is required");

    const char *bad_price[] = {"price-1"};
    s_plan_init(&p, "gold", "Gold", ok_features, 1, bad_price, 1);
    s_plan_std_limits(&p, 1, 1, 1, 1);
    S_EXPECT_FAIL("CreatePlan", &p.plan, KL_INVALID_ARGUMENT,
                  "stripe price id \"price-1\" is invalid: want 1 to 255 of "
                  "A-Z, a-z, 0-9 and _");
    const char *dup_price[] = {"price_a", "price_a"};
    s_plan_init(&p, "gold", "Gold", ok_features, 1, dup_price, 2);
    s_plan_std_limits(&p, 1, 1, 1, 1);
    S_EXPECT_FAIL("CreatePlan", &p.plan, KL_INVALID_ARGUMENT,
                  "stripe price id \"price_a\" is listed twice");

    Kowloon__Flags__PlanName name = KOWLOON__FLAGS__PLAN_NAME__INIT;
    name.name = "NoSuch";
    S_EXPECT_FAIL("GetPlan", &name, KL_INVALID_ARGUMENT,
                  "name \"NoSuch\" is invalid: want 1 to 63 of a-z, 0-9, _ "
                  "and -");
    name.name = "nosuch";
    S_EXPECT_FAIL("GetPlan", &name, KL_NOT_FOUND, "plan \"nosuch\" not found");
    /* Nothing of the failed creates was stored. */
    name.name = "gold";
    S_EXPECT_FAIL("GetPlan", &name, KL_NOT_FOUND, "plan \"gold\" not found");
}

/* --- overrides --------------------------------------------------------- */

static void
test_overrides(void **state)
{
    char t[37];
    s_tenant(t);
    Kowloon__Flags__Entitlements *e = s_evaluate(t, "starter");
    s_assert_list(e->features, e->n_features, "basic");
    assert_int_equal(s_ent_limit(e, "max_projects"), 3);
    assert_string_equal(e->tenant_id, t);
    assert_string_equal(e->plan, "starter");
    assert_string_equal(e->expires_at, "");
    int64_t v0 = e->version;
    s_free(e);

    s_set_override(t, "sso", 'f', 1, NULL);
    s_expect_event("override", "sso", t, "set");
    s_set_override(t, "basic", 'f', 0, NULL);
    s_set_override(t, "max_projects", 'l', 10, NULL);
    s_set_override(t, "max_widgets", 'l', -1, NULL);
    e = s_evaluate(t, "starter");
    s_assert_list(e->features, e->n_features, "sso");
    assert_int_equal(s_ent_limit(e, "max_projects"), 10);
    assert_int_equal(s_ent_limit(e, "max_widgets"), -1);
    assert_int_equal(s_ent_limit(e, "storage_mb"), 1024);
    assert_true(e->version > v0);
    int64_t v1 = e->version;
    s_free(e);

    /* Another tenant on the same plan is untouched. */
    char other[37];
    s_tenant(other);
    e = s_evaluate(other, "starter");
    s_assert_list(e->features, e->n_features, "basic");
    assert_int_equal(s_ent_limit(e, "max_projects"), 3);
    s_free(e);

    /* Upper-case ids are the same tenant. */
    char upper[37];
    for (int i = 0; i < 37; i++)
        upper[i] = (t[i] >= 'a' && t[i] <= 'f') ? (char)(t[i] - 32) : t[i];
    e = s_evaluate(upper, "starter");
    s_assert_list(e->features, e->n_features, "sso");
    assert_string_equal(e->tenant_id, t);
    s_free(e);

    Kowloon__Flags__TenantRequest lr = KOWLOON__FLAGS__TENANT_REQUEST__INIT;
    lr.tenant_id = t;
    Kowloon__Flags__ListOverridesResponse *list = NULL;
    S_OK("ListOverrides", &lr, &list);
    assert_int_equal(list->n_overrides, 4);
    assert_string_equal(list->overrides[0]->key, "basic");
    assert_int_equal(list->overrides[0]->value_case,
                     KOWLOON__FLAGS__OVERRIDE__VALUE_ENABLED);
    assert_false(list->overrides[0]->enabled);
    assert_string_equal(list->overrides[1]->key, "max_projects");
    assert_int_equal(list->overrides[1]->value_case,
                     KOWLOON__FLAGS__OVERRIDE__VALUE_LIMIT);
    assert_int_equal(list->overrides[1]->limit, 10);
    assert_string_equal(list->overrides[3]->key, "sso");
    assert_true(list->overrides[3]->enabled);
    assert_string_equal(list->overrides[3]->tenant_id, t);
    assert_string_equal(list->overrides[3]->expires_at, "");
    assert_int_equal(strlen(list->overrides[3]->created_at), 24);
    s_free(list);

    /* Upsert: setting again replaces. */
    s_set_override(t, "max_projects", 'l', 7, NULL);
    e = s_evaluate(t, "starter");
    assert_int_equal(s_ent_limit(e, "max_projects"), 7);
    s_free(e);

    Kowloon__Flags__ClearOverrideRequest cr =
        KOWLOON__FLAGS__CLEAR_OVERRIDE_REQUEST__INIT;
    cr.tenant_id = t;
    cr.key = "sso";
    S_OK("ClearOverride", &cr, NULL);
    s_expect_event("override", "sso", t, "cleared");
    S_EXPECT_FAIL("ClearOverride", &cr, KL_NOT_FOUND,
                  "override \"sso\" of tenant %s not found", t);
    cr.key = "basic";
    S_OK("ClearOverride", &cr, NULL);
    cr.key = "max_projects";
    S_OK("ClearOverride", &cr, NULL);
    e = s_evaluate(t, "starter");
    s_assert_list(e->features, e->n_features, "basic");
    assert_int_equal(s_ent_limit(e, "max_projects"), 3);
    assert_true(e->version > v1);
    s_free(e);
}

static void
test_override_validation(void **state)
{
    Kowloon__Flags__Override o = KOWLOON__FLAGS__OVERRIDE__INIT;
    o.tenant_id = "";
    o.key = "sso";
    o.value_case = KOWLOON__FLAGS__OVERRIDE__VALUE_ENABLED;
    o.enabled = 1;
    S_EXPECT_FAIL("SetOverride", &o, KL_INVALID_ARGUMENT,
                  "tenant_id is required");
    o.tenant_id = "acme";
    S_EXPECT_FAIL("SetOverride", &o, KL_INVALID_ARGUMENT,
                  "tenant_id \"acme\" is not a UUID");
    o.tenant_id = "6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
    o.key = "";
    S_EXPECT_FAIL("SetOverride", &o, KL_INVALID_ARGUMENT, "key is required");
    o.key = "Single-Sign-On";
    S_EXPECT_FAIL("SetOverride", &o, KL_INVALID_ARGUMENT,
                  "key \"Single-Sign-On\" is invalid: want 1 to 63 of a-z, 0-9 "
                  "and _");
    o.key = "sso";
    o.value_case = KOWLOON__FLAGS__OVERRIDE__VALUE__NOT_SET;
    S_EXPECT_FAIL("SetOverride", &o, KL_INVALID_ARGUMENT,
                  "value is required: set enabled or limit");
    o.key = "max_projects";
    o.value_case = KOWLOON__FLAGS__OVERRIDE__VALUE_LIMIT;
    o.limit = -5;
    S_EXPECT_FAIL("SetOverride", &o, KL_INVALID_ARGUMENT,
                  "limit \"max_projects\": -5 is out of range (want "
                  "-1..1000000000000)");
    o.limit = 5;
    o.expires_at = "next week";
    S_EXPECT_FAIL("SetOverride", &o, KL_INVALID_ARGUMENT,
                  "expires_at \"next week\" is not an RFC 3339 time");
    o.expires_at = "2030-02-31T00:00:00Z";
    S_EXPECT_FAIL("SetOverride", &o, KL_INVALID_ARGUMENT,
                  "expires_at \"2030-02-31T00:00:00Z\" is not an RFC 3339 "
                  "time");
    o.expires_at = "2001-01-01T00:00:00Z";
    S_EXPECT_FAIL("SetOverride", &o, KL_INVALID_ARGUMENT,
                  "expires_at \"2001-01-01T00:00:00Z\" is in the past");

    Kowloon__Flags__ClearOverrideRequest cr =
        KOWLOON__FLAGS__CLEAR_OVERRIDE_REQUEST__INIT;
    cr.tenant_id = "x";
    cr.key = "sso";
    S_EXPECT_FAIL("ClearOverride", &cr, KL_INVALID_ARGUMENT,
                  "tenant_id \"x\" is not a UUID");
    Kowloon__Flags__TenantRequest lr = KOWLOON__FLAGS__TENANT_REQUEST__INIT;
    S_EXPECT_FAIL("ListOverrides", &lr, KL_INVALID_ARGUMENT,
                  "tenant_id is required");
}

static void
test_override_expiry(void **state)
{
    char t[37], soon[32], later[32];
    s_tenant(t);
    s_time_in(2, soon);
    s_time_in(3600, later);
    s_set_override(t, "data_export", 'f', 1, soon);
    s_set_override(t, "max_projects", 'l', 9, later);
    Kowloon__Flags__Entitlements *e = s_evaluate(t, "starter");
    s_assert_list(e->features, e->n_features, "basic,data_export");
    assert_int_equal(s_ent_limit(e, "max_projects"), 9);
    /* The earliest expiry of what was applied, as stored (ms, UTC). */
    char want[40];
    snprintf(want, sizeof want, "%.19s.000Z", soon);
    assert_string_equal(e->expires_at, want);
    s_free(e);

    /* Wait past the expiry: gone from Evaluate, then pruned. */
    sleep(3);
    e = s_evaluate(t, "starter");
    s_assert_list(e->features, e->n_features, "basic");
    assert_int_equal(s_ent_limit(e, "max_projects"), 9);
    snprintf(want, sizeof want, "%.19s.000Z", later);
    assert_string_equal(e->expires_at, want);
    s_free(e);
    char *sql = kl_asprintf(
        "SELECT count(*) FROM flags.overrides WHERE tenant_id = '%s'", t);
    char *n = s_db_value(sql);
    assert_string_equal(n, "2");
    free(n);
    Kowloon__Flags__TenantRequest lr = KOWLOON__FLAGS__TENANT_REQUEST__INIT;
    lr.tenant_id = t;
    Kowloon__Flags__ListOverridesResponse *list = NULL;
    S_OK("ListOverrides", &lr, &list);
    assert_int_equal(list->n_overrides, 1);
    assert_string_equal(list->overrides[0]->key, "max_projects");
    s_free(list);
    n = s_db_value(sql);
    assert_string_equal(n, "1");
    free(n);
    free(sql);
}

/* --- flags ------------------------------------------------------------- */

static Kowloon__Flags__Flag *
s_flag_write(const char *method, const char *key, bool killed, int percent,
             const char **allow, size_t n_allow, const char **deny,
             size_t n_deny)
{
    Kowloon__Flags__Flag f = KOWLOON__FLAGS__FLAG__INIT;
    f.key = (char *)key;
    f.description = "test flag";
    f.killed = killed;
    f.rollout_percent = percent;
    f.allow_tenants = (char **)allow;
    f.n_allow_tenants = n_allow;
    f.deny_tenants = (char **)deny;
    f.n_deny_tenants = n_deny;
    Kowloon__Flags__Flag *out = NULL;
    S_OK(method, &f, &out);
    return out;
}

static bool
s_flag_on(const char *tenant, const char *key)
{
    Kowloon__Flags__Entitlements *e = s_evaluate(tenant, "pro");
    bool on = s_has(e->flags, e->n_flags, key);
    s_free(e);
    return on;
}

static void
test_flag_crud(void **state)
{
    int64_t v0 = s_version();
    const char *allow[] = {"6F1C2A7E-3B4D-4E5F-8A9B-0C1D2E3F4A5B",
                           "00000000-0000-0000-0000-000000000001"};
    Kowloon__Flags__Flag *f =
        s_flag_write("CreateFlag", "crud.flag", false, 25, allow, 2, NULL, 0);
    assert_string_equal(f->key, "crud.flag");
    assert_string_equal(f->description, "test flag");
    assert_false(f->killed);
    assert_int_equal(f->rollout_percent, 25);
    /* Stored canonical (lower case) and sorted. */
    s_assert_list(f->allow_tenants, f->n_allow_tenants,
                  "00000000-0000-0000-0000-000000000001,"
                  "6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b");
    assert_int_equal(f->n_deny_tenants, 0);
    assert_int_equal(strlen(f->created_at), 24);
    s_free(f);
    s_expect_event("flag", "crud.flag", "", "created");
    int64_t v1 = s_version();
    assert_true(v1 > v0);

    Kowloon__Flags__Flag dup = KOWLOON__FLAGS__FLAG__INIT;
    dup.key = "crud.flag";
    S_EXPECT_FAIL("CreateFlag", &dup, KL_ALREADY_EXISTS,
                  "flag \"crud.flag\" already exists");

    const char *deny[] = {"6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"};
    f = s_flag_write("UpdateFlag", "crud.flag", true, 50, NULL, 0, deny, 1);
    assert_true(f->killed);
    assert_int_equal(f->rollout_percent, 50);
    assert_int_equal(f->n_allow_tenants, 0);
    s_assert_list(f->deny_tenants, f->n_deny_tenants,
                  "6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b");
    s_free(f);
    s_expect_event("flag", "crud.flag", "", "updated");
    int64_t v2 = s_version();
    assert_true(v2 > v1);

    Kowloon__Flags__FlagKey key = KOWLOON__FLAGS__FLAG_KEY__INIT;
    key.key = "crud.flag";
    S_OK("GetFlag", &key, &f);
    assert_true(f->killed);
    s_free(f);
    Kowloon__Flags__ListFlagsRequest lreq =
        KOWLOON__FLAGS__LIST_FLAGS_REQUEST__INIT;
    Kowloon__Flags__ListFlagsResponse *list = NULL;
    S_OK("ListFlags", &lreq, &list);
    bool found = false;
    for (size_t i = 0; i < list->n_flags; i++)
        found |= strcmp(list->flags[i]->key, "crud.flag") == 0;
    assert_true(found);
    s_free(list);

    S_OK("DeleteFlag", &key, NULL);
    s_expect_event("flag", "crud.flag", "", "deleted");
    assert_true(s_version() > v2);
    S_EXPECT_FAIL("GetFlag", &key, KL_NOT_FOUND,
                  "flag \"crud.flag\" not found");
    S_EXPECT_FAIL("DeleteFlag", &key, KL_NOT_FOUND,
                  "flag \"crud.flag\" not found");
    Kowloon__Flags__Flag missing = KOWLOON__FLAGS__FLAG__INIT;
    missing.key = "crud.flag";
    S_EXPECT_FAIL("UpdateFlag", &missing, KL_NOT_FOUND,
                  "flag \"crud.flag\" not found");
}

static void
test_flag_validation(void **state)
{
    Kowloon__Flags__Flag f = KOWLOON__FLAGS__FLAG__INIT;
    S_EXPECT_FAIL("CreateFlag", &f, KL_INVALID_ARGUMENT, "key is required");
    f.key = "New UI";
    S_EXPECT_FAIL("CreateFlag", &f, KL_INVALID_ARGUMENT,
                  "key \"New UI\" is invalid: want 1 to 63 of a-z, 0-9, _, . "
                  "and -");
    f.key = "v.flag";
    f.rollout_percent = 150;
    S_EXPECT_FAIL("CreateFlag", &f, KL_INVALID_ARGUMENT,
                  "rollout_percent: 150 is out of range (want 0..100)");
    f.rollout_percent = -1;
    S_EXPECT_FAIL("CreateFlag", &f, KL_INVALID_ARGUMENT,
                  "rollout_percent: -1 is out of range (want 0..100)");
    f.rollout_percent = 10;
    char desc[1002];
    memset(desc, 'd', 1001);
    desc[1001] = '\0';
    f.description = desc;
    S_EXPECT_FAIL("CreateFlag", &f, KL_INVALID_ARGUMENT,
                  "description must be at most 1000 characters, got 1001");
    f.description = "";
    const char *bad[] = {"00000000-0000-0000-0000-000000000001", "acme"};
    f.allow_tenants = (char **)bad;
    f.n_allow_tenants = 2;
    S_EXPECT_FAIL("CreateFlag", &f, KL_INVALID_ARGUMENT,
                  "allow_tenants[1] \"acme\" is not a UUID");
    f.n_allow_tenants = 0;
    f.deny_tenants = (char **)bad;
    f.n_deny_tenants = 2;
    S_EXPECT_FAIL("CreateFlag", &f, KL_INVALID_ARGUMENT,
                  "deny_tenants[1] \"acme\" is not a UUID");
    const char *twice[] = {"00000000-0000-0000-0000-0000000000AA",
                           "00000000-0000-0000-0000-0000000000aa"};
    f.deny_tenants = (char **)twice;
    S_EXPECT_FAIL("CreateFlag", &f, KL_INVALID_ARGUMENT,
                  "deny_tenants: tenant 00000000-0000-0000-0000-0000000000aa "
                  "is listed twice");
    const char *a[] = {"00000000-0000-0000-0000-000000000002",
                       "00000000-0000-0000-0000-000000000003"};
    const char *d[] = {"00000000-0000-0000-0000-000000000003"};
    f.allow_tenants = (char **)a;
    f.n_allow_tenants = 2;
    f.deny_tenants = (char **)d;
    f.n_deny_tenants = 1;
    S_EXPECT_FAIL("CreateFlag", &f, KL_INVALID_ARGUMENT,
                  "tenant 00000000-0000-0000-0000-000000000003 is on both "
                  "allow_tenants and deny_tenants");
    Kowloon__Flags__FlagKey key = KOWLOON__FLAGS__FLAG_KEY__INIT;
    key.key = "v.flag";
    S_EXPECT_FAIL("GetFlag", &key, KL_NOT_FOUND, "flag \"v.flag\" not found");
    key.key = "V";
    S_EXPECT_FAIL("GetFlag", &key, KL_INVALID_ARGUMENT,
                  "key \"V\" is invalid: want 1 to 63 of a-z, 0-9, _, . and -");
}

static void
test_flag_rollout(void **state)
{
    enum { N = 1000 };
    static char tenants[N][37];
    static bool on10[N];
    for (int i = 0; i < N; i++)
        s_tenant(tenants[i]);
    Kowloon__Flags__Flag *f =
        s_flag_write("CreateFlag", "rollout", false, 10, NULL, 0, NULL, 0);
    s_free(f);
    int n10 = 0;
    for (int i = 0; i < N; i++) {
        on10[i] = s_flag_on(tenants[i], "rollout");
        n10 += on10[i];
    }
    /* Binomial(1000, 0.1): sd 9.5, so 60..140 is over 4 sd. */
    if (n10 < 60 || n10 > 140)
        fail_msg("%d of %d tenants on at 10%%", n10, N);
    f = s_flag_write("UpdateFlag", "rollout", false, 20, NULL, 0, NULL, 0);
    s_free(f);
    int n20 = 0;
    for (int i = 0; i < N; i++) {
        bool on = s_flag_on(tenants[i], "rollout");
        if (on10[i] && !on)
            fail_msg("tenant %s on at 10%% but off at 20%%", tenants[i]);
        n20 += on;
    }
    if (n20 < 150 || n20 > 250)
        fail_msg("%d of %d tenants on at 20%%", n20, N);
    /* 0% and 100%. */
    f = s_flag_write("UpdateFlag", "rollout", false, 0, NULL, 0, NULL, 0);
    s_free(f);
    for (int i = 0; i < 20; i++)
        assert_false(s_flag_on(tenants[i], "rollout"));
    f = s_flag_write("UpdateFlag", "rollout", false, 100, NULL, 0, NULL, 0);
    s_free(f);
    for (int i = 0; i < 20; i++)
        assert_true(s_flag_on(tenants[i], "rollout"));
}

static void
test_flag_precedence(void **state)
{
    char a[37], d[37], x[37];
    s_tenant(a);
    s_tenant(d);
    s_tenant(x);
    const char *allow[] = {a};
    const char *deny[] = {d};
    /* Allow beats a 0% rollout. */
    Kowloon__Flags__Flag *f =
        s_flag_write("CreateFlag", "prec", false, 0, allow, 1, deny, 1);
    s_free(f);
    assert_true(s_flag_on(a, "prec"));
    assert_false(s_flag_on(d, "prec"));
    assert_false(s_flag_on(x, "prec"));
    /* Deny beats a 100% rollout. */
    f = s_flag_write("UpdateFlag", "prec", false, 100, allow, 1, deny, 1);
    s_free(f);
    assert_true(s_flag_on(a, "prec"));
    assert_false(s_flag_on(d, "prec"));
    assert_true(s_flag_on(x, "prec"));
    /* The kill switch beats everything, the allow list included. */
    f = s_flag_write("UpdateFlag", "prec", true, 100, allow, 1, deny, 1);
    s_free(f);
    assert_false(s_flag_on(a, "prec"));
    assert_false(s_flag_on(d, "prec"));
    assert_false(s_flag_on(x, "prec"));
    /* Un-killing restores the same answers. */
    f = s_flag_write("UpdateFlag", "prec", false, 100, allow, 1, deny, 1);
    s_free(f);
    assert_true(s_flag_on(a, "prec"));
    assert_true(s_flag_on(x, "prec"));
    Kowloon__Flags__FlagKey key = KOWLOON__FLAGS__FLAG_KEY__INIT;
    key.key = "prec";
    S_OK("DeleteFlag", &key, NULL);
    assert_false(s_flag_on(a, "prec"));
}

/* --- evaluate and consume ---------------------------------------------- */

static void
test_evaluate_validation(void **state)
{
    Kowloon__Flags__EvaluateRequest req =
        KOWLOON__FLAGS__EVALUATE_REQUEST__INIT;
    req.plan = "pro";
    S_EXPECT_FAIL("Evaluate", &req, KL_INVALID_ARGUMENT,
                  "tenant_id is required");
    req.tenant_id = "6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5";
    S_EXPECT_FAIL("Evaluate", &req, KL_INVALID_ARGUMENT,
                  "tenant_id \"6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5\" is not a "
                  "UUID");
    req.tenant_id = "6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
    req.plan = "";
    S_EXPECT_FAIL("Evaluate", &req, KL_INVALID_ARGUMENT, "plan is required");
    req.plan = "Pro";
    S_EXPECT_FAIL("Evaluate", &req, KL_INVALID_ARGUMENT,
                  "plan \"Pro\" is invalid: want 1 to 63 of a-z, 0-9, _ and -");
    req.plan = "x";
    S_EXPECT_FAIL("Evaluate", &req, KL_NOT_FOUND, "plan \"x\" not found");
}

static Kowloon__Flags__Usage *
s_consume(const char *tenant, const char *plan, const char *limit, int64_t n,
          kl_status_t *st)
{
    Kowloon__Flags__ConsumeRequest req = KOWLOON__FLAGS__CONSUME_REQUEST__INIT;
    req.tenant_id = (char *)tenant;
    req.plan = (char *)plan;
    req.limit = (char *)limit;
    req.n = n;
    Kowloon__Flags__ConsumeResponse *out = NULL;
    if (s_call("Consume", &req, &out, st) != 0)
        return NULL;
    Kowloon__Flags__Usage *u = out->usage;
    out->usage = NULL;
    s_free(out);
    assert_non_null(u);
    return u;
}

static void
s_expect_used(const char *tenant, const char *plan, const char *limit,
              int64_t n, int64_t used, int64_t max)
{
    kl_status_t st;
    Kowloon__Flags__Usage *u = s_consume(tenant, plan, limit, n, &st);
    if (!u)
        fail_msg("Consume %s %lld: %s", limit, (long long)n, st.message);
    assert_string_equal(u->limit, limit);
    assert_int_equal(u->used, used);
    assert_int_equal(u->max, max);
    s_free(u);
}

static void
s_expect_exhausted(const char *tenant, const char *plan, const char *limit,
                   int64_t n, const char *want)
{
    kl_status_t st;
    Kowloon__Flags__Usage *u = s_consume(tenant, plan, limit, n, &st);
    if (u || st.code != KL_RESOURCE_EXHAUSTED || strcmp(st.message, want))
        fail_msg("want RESOURCE_EXHAUSTED \"%s\", got %s \"%s\"", want,
                 kl_code_name(st.code), st.message);
}

static void
test_consume(void **state)
{
    char t[37];
    s_tenant(t);
    int64_t v0 = s_version();
    s_expect_used(t, "starter", "max_projects", 1, 1, 3);
    s_expect_used(t, "starter", "max_projects", 1, 2, 3);
    s_expect_exhausted(t, "starter", "max_projects", 2,
                       "limit \"max_projects\" reached: 2 of 3 used");
    s_expect_used(t, "starter", "max_projects", 1, 3, 3);
    s_expect_exhausted(t, "starter", "max_projects", 1,
                       "limit \"max_projects\" reached: 3 of 3 used");
    /* Release, never below 0. */
    s_expect_used(t, "starter", "max_projects", -1, 2, 3);
    s_expect_used(t, "starter", "max_projects", -10, 0, 3);
    s_expect_exhausted(t, "starter", "max_projects", 4,
                       "limit \"max_projects\" reached: 0 of 3 used");
    /* Counting is not a change of entitlements. */
    assert_int_equal(s_version(), v0);

    /* Unlimited is still counted. */
    s_expect_used(t, "enterprise", "max_projects", 1000, 1000, -1);
    /* The counter is the tenant's, whatever its plan: back on starter,
     * 1000 projects are over the limit and only releases pass. */
    s_expect_exhausted(t, "starter", "max_projects", 1,
                       "limit \"max_projects\" reached: 1000 of 3 used");
    s_expect_used(t, "starter", "max_projects", -998, 2, 3);

    /* A limit override moves the maximum. */
    s_set_override(t, "max_projects", 'l', 5, NULL);
    s_expect_used(t, "starter", "max_projects", 3, 5, 5);
    s_set_override(t, "max_seats", 'l', 2, NULL);
    s_expect_used(t, "starter", "max_seats", 2, 2, 2);

    Kowloon__Flags__UsageRequest ureq = KOWLOON__FLAGS__USAGE_REQUEST__INIT;
    ureq.tenant_id = t;
    ureq.plan = "starter";
    Kowloon__Flags__UsageResponse *usage = NULL;
    S_OK("GetUsage", &ureq, &usage);
    /* Countable limits only (no api_requests_per_minute), by name. */
    assert_int_equal(usage->n_usage, 4);
    const char *names[] = {"max_api_keys", "max_projects", "max_seats",
                           "storage_mb"};
    int64_t used[] = {0, 5, 2, 0}, max[] = {2, 5, 2, 1024};
    for (int i = 0; i < 4; i++) {
        assert_string_equal(usage->usage[i]->limit, names[i]);
        assert_int_equal(usage->usage[i]->used, used[i]);
        assert_int_equal(usage->usage[i]->max, max[i]);
    }
    s_free(usage);
    ureq.plan = "nosuch";
    S_EXPECT_FAIL("GetUsage", &ureq, KL_NOT_FOUND, "plan \"nosuch\" not found");
    ureq.tenant_id = "nope";
    S_EXPECT_FAIL("GetUsage", &ureq, KL_INVALID_ARGUMENT,
                  "tenant_id \"nope\" is not a UUID");

    Kowloon__Flags__ConsumeRequest req = KOWLOON__FLAGS__CONSUME_REQUEST__INIT;
    req.tenant_id = t;
    req.plan = "starter";
    req.limit = "api_requests_per_minute";
    req.n = 1;
    S_EXPECT_FAIL("Consume", &req, KL_INVALID_ARGUMENT,
                  "limit \"api_requests_per_minute\" is a rate, not a "
                  "countable limit");
    req.limit = "Max";
    S_EXPECT_FAIL("Consume", &req, KL_INVALID_ARGUMENT,
                  "limit \"Max\" is invalid: want 1 to 63 of a-z, 0-9 and _");
    req.limit = "max_widgets";
    S_EXPECT_FAIL("Consume", &req, KL_NOT_FOUND,
                  "limit \"max_widgets\" not found in plan \"starter\"");
    req.limit = "max_projects";
    req.n = 0;
    S_EXPECT_FAIL("Consume", &req, KL_INVALID_ARGUMENT, "n must not be 0");
    req.n = 1000000000001LL;
    S_EXPECT_FAIL("Consume", &req, KL_INVALID_ARGUMENT,
                  "n: 1000000000001 is out of range (want "
                  "-1000000000000..1000000000000)");
    req.n = 1;
    req.plan = "nosuch";
    S_EXPECT_FAIL("Consume", &req, KL_NOT_FOUND, "plan \"nosuch\" not found");
}

typedef struct {
    const char *tenant;
    int ok, exhausted, other;
} s_racer_t;

static void *
s_race(void *arg)
{
    s_racer_t *r = arg;
    for (int i = 0; i < 50; i++) {
        kl_status_t st;
        Kowloon__Flags__Usage *u =
            s_consume(r->tenant, "starter", "max_projects", 1, &st);
        if (u) {
            r->ok++;
            s_free(u);
        } else if (st.code == KL_RESOURCE_EXHAUSTED) {
            r->exhausted++;
        } else {
            r->other++;
        }
    }
    return NULL;
}

static void
test_consume_concurrent(void **state)
{
    char t[37];
    s_tenant(t);
    s_racer_t racers[8];
    pthread_t threads[8];
    for (int i = 0; i < 8; i++) {
        racers[i] = (s_racer_t){.tenant = t};
        assert_int_equal(pthread_create(&threads[i], NULL, s_race, &racers[i]),
                         0);
    }
    int ok = 0, exhausted = 0, other = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(threads[i], NULL);
        ok += racers[i].ok;
        exhausted += racers[i].exhausted;
        other += racers[i].other;
    }
    assert_int_equal(other, 0);
    assert_int_equal(ok, 3);
    assert_int_equal(exhausted, 397);
    char *sql = kl_asprintf("SELECT used FROM flags.usage WHERE tenant_id = "
                            "'%s' AND limit_name = 'max_projects'",
                            t);
    char *used = s_db_value(sql);
    assert_string_equal(used, "3");
    free(used);
    free(sql);
}

/* --- versions, health, Redis down -------------------------------------- */

static void
test_version_grows(void **state)
{
    char t[37];
    s_tenant(t);
    int64_t v = s_version();
    /* Reads change nothing. */
    assert_int_equal(s_version(), v);

    s_plan_t p;
    const char *features[] = {"basic"};
    s_plan_init(&p, "starter", "Starter", features, 1, NULL, 0);
    s_plan_std_limits(&p, 600, 3, 2, 1024);
    Kowloon__Flags__Plan *out = NULL;
    S_OK("UpdatePlan", &p.plan, &out);
    s_free(out);
    int64_t v1 = s_version();
    assert_true(v1 > v);
    s_set_override(t, "sso", 'f', 1, NULL);
    int64_t v2 = s_version();
    assert_true(v2 > v1);
    Kowloon__Flags__ClearOverrideRequest cr =
        KOWLOON__FLAGS__CLEAR_OVERRIDE_REQUEST__INIT;
    cr.tenant_id = t;
    cr.key = "sso";
    S_OK("ClearOverride", &cr, NULL);
    int64_t v3 = s_version();
    assert_true(v3 > v2);
    Kowloon__Flags__Flag *f =
        s_flag_write("CreateFlag", "version.flag", false, 5, NULL, 0, NULL, 0);
    s_free(f);
    assert_true(s_version() > v3);
    /* A failed write changes nothing. */
    int64_t v4 = s_version();
    Kowloon__Flags__Flag dup = KOWLOON__FLAGS__FLAG__INIT;
    dup.key = "version.flag";
    S_EXPECT_FAIL("CreateFlag", &dup, KL_ALREADY_EXISTS,
                  "flag \"version.flag\" already exists");
    assert_int_equal(s_version(), v4);
}

static void
test_health(void **state)
{
    Kowloon__Rpc__HealthCheckRequest req =
        KOWLOON__RPC__HEALTH_CHECK_REQUEST__INIT;
    Kowloon__Rpc__HealthCheckResponse *out = NULL;
    kl_call_opts_t opts = {.timeout_ms = S_TIMEOUT_MS};
    kl_status_t st;
    assert_int_equal(kl_rpc_client_call(s_main.health, "Check", &req.base,
                                        &opts, (ProtobufCMessage **)&out, &st),
                     0);
    assert_int_equal(
        out->status,
        KOWLOON__RPC__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    s_free(out);
}

static void
test_redis_down(void **state)
{
    /* Nothing listens on port 1: every Redis call fails at once. */
    s_instance_t down;
    s_start(&down, s_db_url, "redis://127.0.0.1:1/0", 2);
    const char *features[] = {"basic", "sso"};
    s_plan_t p;
    s_plan_init(&p, "offline", "Offline", features, 2, NULL, 0);
    s_plan_std_limits(&p, 10, 1, 1, 1);
    Kowloon__Flags__Plan *out = NULL;
    kl_status_t st;
    if (s_call_on(&down, "CreatePlan", &p.plan, &out, &st) != 0)
        fail_msg("CreatePlan with Redis down: %s", st.message);
    s_free(out);
    Kowloon__Flags__EvaluateRequest ev = KOWLOON__FLAGS__EVALUATE_REQUEST__INIT;
    ev.tenant_id = "6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
    ev.plan = "offline";
    Kowloon__Flags__Entitlements *e = NULL;
    if (s_call_on(&down, "Evaluate", &ev, &e, &st) != 0)
        fail_msg("Evaluate with Redis down: %s", st.message);
    s_assert_list(e->features, e->n_features, "basic,sso");
    s_free(e);
    s_stop(&down);
    /* Not mirrored while Redis was away... */
    s_assert_mirror("offline", NULL);
    /* ...and mirrored on the next change, */
    p.plan.n_features = 1;
    S_OK("UpdatePlan", &p.plan, &out);
    s_free(out);
    s_assert_mirror("offline", "[\"basic\"]");
    /* or at the next start (which also drops mirrors of deleted plans). */
    s_instance_t again;
    s_exec(s_db_url, "UPDATE flags.plans SET features = '{basic,sso}' WHERE "
                     "name = 'offline'");
    s_start(&again, s_db_url, s_redis_url, 1);
    s_assert_mirror("offline", "[\"basic\",\"sso\"]");
    s_exec(s_db_url, "DELETE FROM flags.plans WHERE name = 'offline'");
    s_stop(&again);
    s_start(&again, s_db_url, s_redis_url, 1);
    s_assert_mirror("offline", NULL);
    s_assert_mirror("starter", "[\"basic\"]");
    s_stop(&again);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seeded_plans),
        cmocka_unit_test(test_plan_crud),
        cmocka_unit_test(test_plan_validation),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_override_validation),
        cmocka_unit_test(test_override_expiry),
        cmocka_unit_test(test_flag_crud),
        cmocka_unit_test(test_flag_validation),
        cmocka_unit_test(test_flag_rollout),
        cmocka_unit_test(test_flag_precedence),
        cmocka_unit_test(test_evaluate_validation),
        cmocka_unit_test(test_consume),
        cmocka_unit_test(test_consume_concurrent),
        cmocka_unit_test(test_version_grows),
        cmocka_unit_test(test_health),
        cmocka_unit_test(test_redis_down),
    };
    return cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
}
