/*
 * The tenant service end to end, in process: its server on
 * tcp://127.0.0.1:* against a fresh database made in KLTEST_PG_URL and the
 * Redis of KLTEST_REDIS_URL, called through kl_rpc_client.
 */
#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_pg.h"
#include "kl_redis.h"
#include "kl_rpc_client.h"
#include "kl_rpc_server.h"
#include "kl_test_db.h"
#include "kl_test_events.h"
#include "kl_test_server.h"
#include "kowloon/rpc.pb-c.h"
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

#define S_TIMEOUT_MS 10000

static kl_test_db_t *s_db;      /* this run's database */
static const char *s_admin_url; /* KLTEST_PG_URL */
static const char *s_redis_url; /* KLTEST_REDIS_URL */
static const char *s_db_name;   /* this run's database's name */
static const char *s_db_url;    /* its conninfo */
static char s_channel[64];      /* this run's events channel */

static const char *const s_reserved[] = {"www", "api", "admin"};

/* --- databases --------------------------------------------------------- */

static void
s_admin_exec(const char *sql)
{
    assert_int_equal(kl_test_db_exec(s_admin_url, sql), 0);
}

/* One value from the test database. */
static char *
s_db_value(const char *url, const char *sql)
{
    char *v = kl_test_db_value(url, sql);
    assert_non_null(v);
    return v;
}

/* --- events ------------------------------------------------------------ */

static kl_test_events_t *s_events; /* events the service publishes */

/* Waits up to 5 s for an event; subdomain and tenant_id may be NULL
 * (not checked). */
static void
s_expect_event(const char *kind, const char *id, const char *tenant_id,
               const char *subdomain, const char *action)
{
    if (kl_test_events_wait(s_events, kind, id, tenant_id, subdomain, action,
                            5000) < 0)
        fail_msg("no %s %s event for %s", kind, action, id);
}

/* --- a service instance ------------------------------------------------ */

typedef struct {
    tenant_service_t *svc;
    kl_test_server_t *srv;   /* serves svc; its client and health */
    kl_rpc_client_t *health; /* borrowed from srv */
} s_instance_t;

static s_instance_t s_main; /* the one most tests call */

/* Starts an instance on database url and redis_url (migrating first when
 * migrate). */
static void
s_start(s_instance_t *in, const char *db_url, const char *redis_url,
        bool migrate)
{
    kl_status_t st;
    tenant_service_opts_t opts = {
        .database_url = db_url,
        .redis_url = redis_url,
        .events_channel = s_channel,
        .default_plan = "starter",
        .default_isolation = "row",
        .reserved = s_reserved,
        .n_reserved = 3,
    };
    memset(in, 0, sizeof *in);
    in->svc = tenant_service_new(&opts, &st);
    if (!in->svc)
        fail_msg("tenant_service_new: %s", st.message);
    if (migrate && tenant_service_migrate(in->svc, &st) < 0)
        fail_msg("migrate: %s", st.message);
    kl_rpc_server_opts_t sopts = {.workers = 2};
    tenant_service_server_opts(in->svc, &sopts);
    in->srv = kl_test_server_start(tenant_service_base(in->svc), &sopts);
    assert_non_null(in->srv);
    in->health = kl_test_server_health(in->srv);
}

static void
s_stop(s_instance_t *in)
{
    if (!in->srv)
        return;
    kl_test_server_stop(&in->srv);
    tenant_service_destroy(&in->svc);
}

/* Calls method on an instance; returns 0 or -code with st set. */
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

static Kowloon__Tenant__Tenant *
s_create(const char *subdomain, const char *name, const char *plan,
         const char *isolation, const char *status)
{
    Kowloon__Tenant__CreateTenantRequest req =
        KOWLOON__TENANT__CREATE_TENANT_REQUEST__INIT;
    req.subdomain = (char *)subdomain;
    req.name = (char *)name;
    req.plan = (char *)(plan ? plan : "");
    req.isolation = (char *)(isolation ? isolation : "");
    req.status = (char *)(status ? status : "");
    Kowloon__Tenant__Tenant *t = NULL;
    kl_status_t st;
    if (s_call("Create", &req, &t, &st) != 0)
        fail_msg("Create %s: %s", subdomain, st.message);
    return t;
}

static void
s_free(void *msg)
{
    if (msg)
        protobuf_c_message_free_unpacked(msg, NULL);
}

/* "2026-11-27T17:03:05.123Z" */
static void
s_assert_time(const char *s)
{
    int y, mo, d, h, mi, sec, ms;
    char z = 0;
    assert_int_equal(strlen(s), 24);
    assert_int_equal(sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%c", &y, &mo, &d, &h,
                            &mi, &sec, &ms, &z),
                     8);
    assert_int_equal(z, 'Z');
}

static Kowloon__Tenant__Tenant *
s_get(const char *id)
{
    Kowloon__Tenant__GetTenantRequest req =
        KOWLOON__TENANT__GET_TENANT_REQUEST__INIT;
    req.id = (char *)id;
    Kowloon__Tenant__Tenant *t = NULL;
    kl_status_t st;
    if (s_call("Get", &req, &t, &st) != 0)
        fail_msg("Get %s: %s", id, st.message);
    return t;
}

/* --- fixture ----------------------------------------------------------- */

static int
s_group_setup(void **state)
{
    s_redis_url = kl_test_db_redis_url("test_tenant_service");
    if (!s_redis_url)
        return -1;
    kl_log_init("tenant-test", KL_WARN);
    snprintf(s_channel, sizeof s_channel, "kltest:tenant:%d", (int)getpid());
    s_db = kl_test_db_new("test_tenant_service", "kltest_tenant");
    if (!s_db)
        return -1;
    s_admin_url = kl_test_db_admin_url(s_db);
    s_db_name = kl_test_db_name(s_db);
    s_db_url = kl_test_db_url(s_db);

    s_events = kl_test_events_new(s_redis_url, s_channel);
    if (!s_events)
        return -1;
    s_start(&s_main, s_db_url, s_redis_url, true);
    return 0;
}

static int
s_group_teardown(void **state)
{
    s_stop(&s_main);
    kl_test_events_destroy(&s_events);
    kl_test_db_destroy(&s_db);
    return 0;
}

/* --- tests ------------------------------------------------------------- */

static void
test_create_get(void **state)
{
    Kowloon__Tenant__Tenant *t = s_create("acme", "Acme Ltd", NULL, NULL, NULL);
    assert_int_equal(strlen(t->id), 36);
    assert_string_equal(t->subdomain, "acme");
    assert_string_equal(t->name, "Acme Ltd");
    assert_string_equal(t->plan, "starter");
    assert_string_equal(t->isolation, "row");
    assert_string_equal(t->status, "trialing");
    s_assert_time(t->created_at);
    s_assert_time(t->updated_at);
    s_assert_time(t->status_changed_at);
    s_expect_event("tenant", t->id, t->id, "acme", "created");

    Kowloon__Tenant__Tenant *g = s_get(t->id);
    assert_string_equal(g->id, t->id);
    assert_string_equal(g->subdomain, "acme");
    assert_string_equal(g->created_at, t->created_at);
    s_free(g);

    Kowloon__Tenant__GetBySubdomainRequest bs =
        KOWLOON__TENANT__GET_BY_SUBDOMAIN_REQUEST__INIT;
    bs.subdomain = "acme";
    kl_status_t st;
    assert_int_equal(s_call("GetBySubdomain", &bs, &g, &st), 0);
    assert_string_equal(g->id, t->id);
    s_free(g);

    Kowloon__Tenant__Tenant *e =
        s_create("globex", "Globex", "pro_2024", "schema", "active");
    assert_string_equal(e->plan, "pro_2024");
    assert_string_equal(e->isolation, "schema");
    assert_string_equal(e->status, "active");
    s_free(e);
    e = s_create("initech", "Initech", NULL, "database", NULL);
    assert_string_equal(e->isolation, "database");
    s_free(e);
    s_free(t);
}

static void
test_create_validation(void **state)
{
    Kowloon__Tenant__CreateTenantRequest req =
        KOWLOON__TENANT__CREATE_TENANT_REQUEST__INIT;
    req.name = "Name";

    req.subdomain = "www";
    S_EXPECT_FAIL("Create", &req, KL_INVALID_ARGUMENT,
                  "subdomain \"www\" is reserved");
    req.subdomain = "Acme";
    S_EXPECT_FAIL("Create", &req, KL_INVALID_ARGUMENT,
                  "subdomain \"Acme\": only lowercase letters, digits and "
                  "inner hyphens are allowed");
    req.subdomain = "ab";
    S_EXPECT_FAIL("Create", &req, KL_INVALID_ARGUMENT,
                  "subdomain must be 3 to 63 characters long, got 2");
    req.subdomain = "";
    S_EXPECT_FAIL("Create", &req, KL_INVALID_ARGUMENT,
                  "subdomain must be 3 to 63 characters long, got 0");
    req.subdomain = "-abc";
    S_EXPECT_FAIL("Create", &req, KL_INVALID_ARGUMENT,
                  "subdomain \"-abc\": may not start or end with a hyphen");

    req.subdomain = "valid-one";
    req.name = "";
    S_EXPECT_FAIL("Create", &req, KL_INVALID_ARGUMENT, "name is required");
    char long_name[202];
    memset(long_name, 'x', 201);
    long_name[201] = '\0';
    req.name = long_name;
    S_EXPECT_FAIL("Create", &req, KL_INVALID_ARGUMENT,
                  "name must be at most 200 characters, got 201");
    req.name = "bad \xc3\x28 utf8";
    S_EXPECT_FAIL("Create", &req, KL_INVALID_ARGUMENT,
                  "name must be valid UTF-8");
    req.name = "Name";

    req.plan = "Pro";
    S_EXPECT_FAIL("Create", &req, KL_INVALID_ARGUMENT,
                  "plan \"Pro\" is invalid: want 1 to 63 of a-z, 0-9, _ and "
                  "-");
    req.plan = "";
    req.isolation = "shared";
    S_EXPECT_FAIL("Create", &req, KL_INVALID_ARGUMENT,
                  "isolation \"shared\" is invalid: want row, schema or "
                  "database");
    req.isolation = "";
    req.status = "suspended";
    S_EXPECT_FAIL("Create", &req, KL_INVALID_ARGUMENT,
                  "status \"suspended\" is invalid at creation: want trialing "
                  "or active");
    req.status = "deleted";
    S_EXPECT_FAIL("Create", &req, KL_INVALID_ARGUMENT,
                  "status \"deleted\" is invalid at creation: want trialing "
                  "or active");

    /* 200 characters of two bytes each is within the limit. */
    char wide[401];
    for (int i = 0; i < 200; i++)
        memcpy(wide + 2 * i, "\xc3\xa9", 2);
    wide[400] = '\0';
    Kowloon__Tenant__Tenant *t = s_create("wide-name", wide, NULL, NULL, NULL);
    assert_string_equal(t->name, wide);
    s_free(t);

    /* Taken, by a live tenant. */
    t = s_create("taken", "First", NULL, NULL, NULL);
    s_free(t);
    req.subdomain = "taken";
    req.status = "";
    S_EXPECT_FAIL("Create", &req, KL_ALREADY_EXISTS,
                  "subdomain \"taken\" is taken");
}

static void
test_ids(void **state)
{
    Kowloon__Tenant__GetTenantRequest req =
        KOWLOON__TENANT__GET_TENANT_REQUEST__INIT;
    req.id = "not-a-uuid";
    S_EXPECT_FAIL("Get", &req, KL_INVALID_ARGUMENT,
                  "id \"not-a-uuid\" is not a UUID");
    req.id = "";
    S_EXPECT_FAIL("Get", &req, KL_INVALID_ARGUMENT, "id is required");
    req.id = "00000000-0000-4000-8000-00000000000g";
    S_EXPECT_FAIL("Get", &req, KL_INVALID_ARGUMENT,
                  "id \"00000000-0000-4000-8000-00000000000g\" is not a UUID");
    req.id = "00000000-0000-4000-8000-000000000000";
    S_EXPECT_FAIL("Get", &req, KL_NOT_FOUND,
                  "tenant 00000000-0000-4000-8000-000000000000 not found");

    Kowloon__Tenant__TenantIdRequest idr =
        KOWLOON__TENANT__TENANT_ID_REQUEST__INIT;
    idr.id = "00000000-0000-4000-8000-000000000000";
    S_EXPECT_FAIL("Suspend", &idr, KL_NOT_FOUND,
                  "tenant 00000000-0000-4000-8000-000000000000 not found");
    S_EXPECT_FAIL("Resume", &idr, KL_NOT_FOUND,
                  "tenant 00000000-0000-4000-8000-000000000000 not found");
    S_EXPECT_FAIL("Delete", &idr, KL_NOT_FOUND,
                  "tenant 00000000-0000-4000-8000-000000000000 not found");
    S_EXPECT_FAIL("ListApiKeys", &idr, KL_NOT_FOUND,
                  "tenant 00000000-0000-4000-8000-000000000000 not found");
    idr.id = "x";
    S_EXPECT_FAIL("Suspend", &idr, KL_INVALID_ARGUMENT,
                  "id \"x\" is not a UUID");
    S_EXPECT_FAIL("Delete", &idr, KL_INVALID_ARGUMENT,
                  "id \"x\" is not a UUID");

    Kowloon__Tenant__GetBySubdomainRequest bs =
        KOWLOON__TENANT__GET_BY_SUBDOMAIN_REQUEST__INIT;
    bs.subdomain = "nobody-here";
    S_EXPECT_FAIL("GetBySubdomain", &bs, KL_NOT_FOUND,
                  "no tenant with subdomain \"nobody-here\"");
    bs.subdomain = "NO";
    S_EXPECT_FAIL("GetBySubdomain", &bs, KL_INVALID_ARGUMENT,
                  "subdomain must be 3 to 63 characters long, got 2");
}

static void
test_update_lifecycle(void **state)
{
    kl_status_t st;
    Kowloon__Tenant__Tenant *t =
        s_create("lifecycle", "Life", NULL, NULL, NULL);
    char id[37];
    snprintf(id, sizeof id, "%s", t->id);

    Kowloon__Tenant__UpdateTenantRequest up =
        KOWLOON__TENANT__UPDATE_TENANT_REQUEST__INIT;
    up.id = id;
    S_EXPECT_FAIL("Update", &up, KL_INVALID_ARGUMENT,
                  "nothing to update: set name, plan or status");
    up.status = "deleted";
    S_EXPECT_FAIL("Update", &up, KL_INVALID_ARGUMENT,
                  "status cannot be set to deleted: use Delete");
    up.status = "gone";
    S_EXPECT_FAIL("Update", &up, KL_INVALID_ARGUMENT,
                  "status \"gone\" is invalid: want trialing, active, "
                  "past_due or suspended");
    up.status = "";
    up.plan = "Pro Plan";
    S_EXPECT_FAIL("Update", &up, KL_INVALID_ARGUMENT,
                  "plan \"Pro Plan\" is invalid: want 1 to 63 of a-z, 0-9, _ "
                  "and -");
    up.plan = "";
    up.id = "bad";
    up.name = "x";
    S_EXPECT_FAIL("Update", &up, KL_INVALID_ARGUMENT,
                  "id \"bad\" is not a UUID");
    up.id = id;

    /* Name and plan: status_changed_at stays. */
    usleep(5000);
    up.name = "Life Renamed";
    up.plan = "growth";
    Kowloon__Tenant__Tenant *u = NULL;
    assert_int_equal(s_call("Update", &up, &u, &st), 0);
    assert_string_equal(u->name, "Life Renamed");
    assert_string_equal(u->plan, "growth");
    assert_string_equal(u->status, "trialing");
    assert_string_equal(u->status_changed_at, t->status_changed_at);
    assert_true(strcmp(u->updated_at, t->updated_at) > 0);
    s_expect_event("tenant", id, id, "lifecycle", "updated");
    s_free(u);

    /* Status: status_changed_at moves. */
    usleep(5000);
    up.name = "";
    up.plan = "";
    up.status = "past_due";
    assert_int_equal(s_call("Update", &up, &u, &st), 0);
    assert_string_equal(u->status, "past_due");
    assert_string_equal(u->name, "Life Renamed");
    assert_true(strcmp(u->status_changed_at, t->status_changed_at) > 0);
    s_free(u);

    Kowloon__Tenant__TenantIdRequest idr =
        KOWLOON__TENANT__TENANT_ID_REQUEST__INIT;
    idr.id = id;
    assert_int_equal(s_call("Suspend", &idr, &u, &st), 0);
    assert_string_equal(u->status, "suspended");
    s_free(u);
    s_expect_event("tenant", id, id, "lifecycle", "suspended");
    assert_int_equal(s_call("Resume", &idr, &u, &st), 0);
    assert_string_equal(u->status, "active");
    s_free(u);
    s_expect_event("tenant", id, id, "lifecycle", "resumed");

    /* A key, to be revoked with the tenant. */
    Kowloon__Tenant__CreateApiKeyRequest kr =
        KOWLOON__TENANT__CREATE_API_KEY_REQUEST__INIT;
    kr.tenant_id = id;
    kr.name = "ci";
    Kowloon__Tenant__NewApiKey *key = NULL;
    assert_int_equal(s_call("CreateApiKey", &kr, &key, &st), 0);

    assert_int_equal(s_call("Delete", &idr, &u, &st), 0);
    assert_string_equal(u->status, "deleted");
    s_free(u);
    s_expect_event("tenant", id, id, "lifecycle", "deleted");
    s_expect_event("api_key", key->id, id, NULL, "revoked");

    /* Get still finds it; GetBySubdomain does not. */
    u = s_get(id);
    assert_string_equal(u->status, "deleted");
    assert_string_equal(u->subdomain, "lifecycle");
    s_free(u);
    Kowloon__Tenant__GetBySubdomainRequest bs =
        KOWLOON__TENANT__GET_BY_SUBDOMAIN_REQUEST__INIT;
    bs.subdomain = "lifecycle";
    S_EXPECT_FAIL("GetBySubdomain", &bs, KL_NOT_FOUND,
                  "no tenant with subdomain \"lifecycle\"");

    /* Its key no longer works. */
    Kowloon__Tenant__ResolveApiKeyRequest rr =
        KOWLOON__TENANT__RESOLVE_API_KEY_REQUEST__INIT;
    rr.key = key->secret;
    S_EXPECT_FAIL("ResolveApiKey", &rr, KL_UNAUTHENTICATED, "invalid API key");

    /* Everything else refuses a deleted tenant. */
    up.status = "active";
    S_EXPECT_FAIL("Update", &up, KL_FAILED_PRECONDITION, "tenant %s is deleted",
                  id);
    S_EXPECT_FAIL("Suspend", &idr, KL_FAILED_PRECONDITION,
                  "tenant %s is deleted", id);
    S_EXPECT_FAIL("Resume", &idr, KL_FAILED_PRECONDITION,
                  "tenant %s is deleted", id);
    S_EXPECT_FAIL("Delete", &idr, KL_FAILED_PRECONDITION,
                  "tenant %s is deleted", id);
    S_EXPECT_FAIL("CreateApiKey", &kr, KL_FAILED_PRECONDITION,
                  "tenant %s is deleted", id);
    S_EXPECT_FAIL("ListApiKeys", &idr, KL_FAILED_PRECONDITION,
                  "tenant %s is deleted", id);
    Kowloon__Tenant__DeleteApiKeyRequest dk =
        KOWLOON__TENANT__DELETE_API_KEY_REQUEST__INIT;
    dk.tenant_id = id;
    dk.key_id = key->id;
    S_EXPECT_FAIL("DeleteApiKey", &dk, KL_FAILED_PRECONDITION,
                  "tenant %s is deleted", id);

    /* The subdomain is free again. */
    Kowloon__Tenant__Tenant *again =
        s_create("lifecycle", "Life Again", NULL, NULL, NULL);
    assert_string_not_equal(again->id, id);
    assert_string_equal(again->status, "trialing");
    s_free(again);
    s_free(key);
    s_free(t);
}

/* Lists every page with page_size and status; returns the ids in order. */
static size_t
s_list_all(int page_size, const char *status, char ids[][37], size_t max,
           int *pages)
{
    char token[256] = "";
    size_t n = 0;
    *pages = 0;
    for (;;) {
        Kowloon__Tenant__ListTenantsRequest req =
            KOWLOON__TENANT__LIST_TENANTS_REQUEST__INIT;
        req.page_size = page_size;
        req.page_token = token;
        req.status = (char *)(status ? status : "");
        Kowloon__Tenant__ListTenantsResponse *resp = NULL;
        kl_status_t st;
        if (s_call("List", &req, &resp, &st) != 0)
            fail_msg("List: %s", st.message);
        (*pages)++;
        assert_true(resp->n_tenants <= (size_t)(page_size ? page_size : 50));
        for (size_t i = 0; i < resp->n_tenants; i++) {
            Kowloon__Tenant__Tenant *t = resp->tenants[i];
            if (status)
                assert_string_equal(t->status, status);
            else
                assert_string_not_equal(t->status, "deleted");
            assert_true(n < max);
            snprintf(ids[n++], 37, "%s", t->id);
        }
        snprintf(token, sizeof token, "%s", resp->next_page_token);
        if (!token[0])
            assert_true(resp->n_tenants > 0 || *pages == 1);
        s_free(resp);
        if (!token[0])
            break;
        assert_true(*pages < 1000);
    }
    return n;
}

static void
test_list_pagination(void **state)
{
    kl_status_t st;
    for (int i = 0; i < 7; i++) {
        char sub[32];
        snprintf(sub, sizeof sub, "page-%d", i);
        s_free(s_create(sub, "Paged", NULL, NULL, NULL));
    }
    static char all[600][37], paged[600][37];
    int pages = 0;
    size_t n_all = s_list_all(500, NULL, all, 600, &pages);
    assert_int_equal(pages, 1);
    assert_true(n_all >= 7);
    size_t n_paged = s_list_all(3, NULL, paged, 600, &pages);
    assert_int_equal(n_paged, n_all);
    assert_int_equal(pages, (int)((n_all + 2) / 3));
    for (size_t i = 0; i < n_all; i++)
        assert_string_equal(paged[i], all[i]);
    for (size_t i = 1; i < n_all; i++)
        assert_string_not_equal(all[i - 1], all[i]);

    /* Default page size 50, never more. */
    n_paged = s_list_all(0, NULL, paged, 600, &pages);
    assert_int_equal(n_paged, n_all);

    /* A status filter, and deleted ones only on request. */
    Kowloon__Tenant__Tenant *t = s_create("page-susp", "S", NULL, NULL, NULL);
    Kowloon__Tenant__TenantIdRequest idr =
        KOWLOON__TENANT__TENANT_ID_REQUEST__INIT;
    idr.id = t->id;
    assert_int_equal(s_call("Suspend", &idr, NULL, &st), 0);
    size_t n_susp = s_list_all(2, "suspended", paged, 600, &pages);
    bool found = false;
    for (size_t i = 0; i < n_susp; i++)
        found = found || strcmp(paged[i], t->id) == 0;
    assert_true(found);
    assert_int_equal(s_call("Delete", &idr, NULL, &st), 0);
    size_t n_del = s_list_all(2, "deleted", paged, 600, &pages);
    found = false;
    for (size_t i = 0; i < n_del; i++)
        found = found || strcmp(paged[i], t->id) == 0;
    assert_true(found);
    n_paged = s_list_all(500, NULL, paged, 600, &pages);
    for (size_t i = 0; i < n_paged; i++)
        assert_string_not_equal(paged[i], t->id);
    s_free(t);

    Kowloon__Tenant__ListTenantsRequest req =
        KOWLOON__TENANT__LIST_TENANTS_REQUEST__INIT;
    req.page_size = 501;
    S_EXPECT_FAIL("List", &req, KL_INVALID_ARGUMENT,
                  "page_size must be 1 to 500, got 501");
    req.page_size = -1;
    S_EXPECT_FAIL("List", &req, KL_INVALID_ARGUMENT,
                  "page_size must be 1 to 500, got -1");
    req.page_size = 10;
    req.status = "gone";
    S_EXPECT_FAIL("List", &req, KL_INVALID_ARGUMENT,
                  "status \"gone\" is invalid: want trialing, active, "
                  "past_due, suspended or deleted");
    req.status = "";
    static const char *const garbage[] = {
        "!!!", "aGVsbG8", "MTIzOmFiYw", "eA=", "a",
        /* "123:" + a uuid with a bad character */
        "MTIzOjAwMDAwMDAwLTAwMDAtNDAwMC04MDAwLTAwMDAwMDAwMDAweA"};
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
        req.page_token = (char *)garbage[i];
        S_EXPECT_FAIL("List", &req, KL_INVALID_ARGUMENT, "invalid page_token");
    }
}

static void
test_api_keys(void **state)
{
    kl_status_t st;
    Kowloon__Tenant__Tenant *a = s_create("keys-a", "A", NULL, NULL, NULL);
    Kowloon__Tenant__Tenant *b = s_create("keys-b", "B", NULL, NULL, NULL);

    Kowloon__Tenant__CreateApiKeyRequest kr =
        KOWLOON__TENANT__CREATE_API_KEY_REQUEST__INIT;
    kr.tenant_id = a->id;
    kr.name = "deploy bot";
    Kowloon__Tenant__NewApiKey *k = NULL;
    assert_int_equal(s_call("CreateApiKey", &kr, &k, &st), 0);
    assert_int_equal(strlen(k->id), 16);
    assert_int_equal(strlen(k->secret), 84);
    assert_memory_equal(k->secret, "kl_", 3);
    assert_memory_equal(k->secret + 3, k->id, 16);
    assert_int_equal(k->secret[19], '_');
    for (int i = 20; i < 84; i++)
        assert_non_null(strchr("0123456789abcdef", k->secret[i]));
    assert_string_equal(k->tenant_id, a->id);
    assert_string_equal(k->name, "deploy bot");
    s_assert_time(k->created_at);
    s_expect_event("api_key", k->id, a->id, NULL, "created");

    /* Listing never shows the secret. */
    Kowloon__Tenant__TenantIdRequest idr =
        KOWLOON__TENANT__TENANT_ID_REQUEST__INIT;
    idr.id = a->id;
    Kowloon__Tenant__ListApiKeysResponse *list = NULL;
    assert_int_equal(s_call("ListApiKeys", &idr, &list, &st), 0);
    assert_int_equal(list->n_keys, 1);
    assert_string_equal(list->keys[0]->id, k->id);
    assert_string_equal(list->keys[0]->name, "deploy bot");
    s_free(list);

    /* The secret never reached the database. */
    char *q = kl_asprintf("SELECT count(*) FROM tenant.api_keys WHERE "
                          "encode(secret_hash, 'hex') = '%s' OR name LIKE "
                          "'%%%s%%'",
                          k->secret + 20, k->secret + 20);
    char *count = s_db_value(s_db_url, q);
    assert_string_equal(count, "0");
    free(count);
    free(q);

    Kowloon__Tenant__ResolveApiKeyRequest rr =
        KOWLOON__TENANT__RESOLVE_API_KEY_REQUEST__INIT;
    rr.key = k->secret;
    Kowloon__Tenant__ResolveApiKeyResponse *res = NULL;
    assert_int_equal(s_call("ResolveApiKey", &rr, &res, &st), 0);
    assert_string_equal(res->tenant_id, a->id);
    assert_string_equal(res->key_id, k->id);
    s_free(res);

    /* Every bad key gets the same answer. */
    char wrong[128];
    snprintf(wrong, sizeof wrong, "%s", k->secret);
    wrong[83] = wrong[83] == '0' ? '1' : '0';
    const char *bad[] = {wrong, "", "kl_abc",
                         "kl_0123456789abcdef_"
                         "00000000000000000000000000000000000000000000000000000"
                         "00000000000",
                         "garbage"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rr.key = (char *)bad[i];
        S_EXPECT_FAIL("ResolveApiKey", &rr, KL_UNAUTHENTICATED,
                      "invalid API key");
    }
    /* Upper-case spelling of the right key is not the key. */
    snprintf(wrong, sizeof wrong, "%s", k->secret);
    for (int i = 20; i < 84; i++)
        if (wrong[i] >= 'a' && wrong[i] <= 'f') {
            wrong[i] = (char)(wrong[i] - 'a' + 'A');
            break;
        }
    if (strcmp(wrong, k->secret) != 0) {
        rr.key = wrong;
        S_EXPECT_FAIL("ResolveApiKey", &rr, KL_UNAUTHENTICATED,
                      "invalid API key");
    }

    /* Another tenant cannot revoke it. */
    Kowloon__Tenant__DeleteApiKeyRequest dk =
        KOWLOON__TENANT__DELETE_API_KEY_REQUEST__INIT;
    dk.tenant_id = b->id;
    dk.key_id = k->id;
    S_EXPECT_FAIL("DeleteApiKey", &dk, KL_NOT_FOUND, "API key %s not found",
                  k->id);
    dk.key_id = "XYZ";
    S_EXPECT_FAIL("DeleteApiKey", &dk, KL_INVALID_ARGUMENT,
                  "key_id \"XYZ\" is not an API key id: want 16 lowercase hex "
                  "characters");
    dk.key_id = "";
    S_EXPECT_FAIL("DeleteApiKey", &dk, KL_INVALID_ARGUMENT,
                  "key_id is required");
    dk.tenant_id = "nope";
    dk.key_id = k->id;
    S_EXPECT_FAIL("DeleteApiKey", &dk, KL_INVALID_ARGUMENT,
                  "tenant_id \"nope\" is not a UUID");
    rr.key = k->secret;
    assert_int_equal(s_call("ResolveApiKey", &rr, NULL, &st), 0);

    /* Its own tenant can. */
    dk.tenant_id = a->id;
    assert_int_equal(s_call("DeleteApiKey", &dk, NULL, &st), 0);
    s_expect_event("api_key", k->id, a->id, NULL, "revoked");
    S_EXPECT_FAIL("ResolveApiKey", &rr, KL_UNAUTHENTICATED, "invalid API key");
    S_EXPECT_FAIL("DeleteApiKey", &dk, KL_NOT_FOUND, "API key %s not found",
                  k->id);
    assert_int_equal(s_call("ListApiKeys", &idr, &list, &st), 0);
    assert_int_equal(list->n_keys, 0);
    s_free(list);

    /* Create errors. */
    kr.tenant_id = "00000000-0000-4000-8000-000000000000";
    S_EXPECT_FAIL("CreateApiKey", &kr, KL_NOT_FOUND,
                  "tenant 00000000-0000-4000-8000-000000000000 not found");
    kr.tenant_id = "";
    S_EXPECT_FAIL("CreateApiKey", &kr, KL_INVALID_ARGUMENT,
                  "tenant_id is required");
    char long_name[202];
    memset(long_name, 'k', 201);
    long_name[201] = '\0';
    kr.tenant_id = a->id;
    kr.name = long_name;
    S_EXPECT_FAIL("CreateApiKey", &kr, KL_INVALID_ARGUMENT,
                  "name must be at most 200 characters, got 201");

    /* Two keys of one tenant, both listed, oldest first. */
    kr.name = "";
    Kowloon__Tenant__NewApiKey *k1 = NULL, *k2 = NULL;
    assert_int_equal(s_call("CreateApiKey", &kr, &k1, &st), 0);
    assert_int_equal(s_call("CreateApiKey", &kr, &k2, &st), 0);
    assert_string_not_equal(k1->id, k2->id);
    assert_int_equal(s_call("ListApiKeys", &idr, &list, &st), 0);
    assert_int_equal(list->n_keys, 2);
    assert_string_equal(list->keys[0]->id, k1->id);
    assert_string_equal(list->keys[1]->id, k2->id);
    s_free(list);
    rr.key = k2->secret;
    assert_int_equal(s_call("ResolveApiKey", &rr, &res, &st), 0);
    assert_string_equal(res->key_id, k2->id);
    s_free(res);

    s_free(k1);
    s_free(k2);
    s_free(k);
    s_free(a);
    s_free(b);
}

static void
test_health(void **state)
{
    Kowloon__Rpc__HealthCheckRequest req =
        KOWLOON__RPC__HEALTH_CHECK_REQUEST__INIT;
    Kowloon__Rpc__HealthCheckResponse *resp = NULL;
    kl_call_opts_t opts = {.timeout_ms = S_TIMEOUT_MS};
    kl_status_t st;
    assert_int_equal(kl_rpc_client_call(s_main.health, "Check", &req.base,
                                        &opts, (ProtobufCMessage **)&resp, &st),
                     0);
    assert_int_equal(
        resp->status,
        KOWLOON__RPC__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    s_free(resp);
}

/* Redis down: writes still succeed. Database down: UNAVAILABLE and not
 * ready. */
static void
test_dependencies_down(void **state)
{
    kl_status_t st;
    s_instance_t no_redis;
    s_start(&no_redis, s_db_url, "redis://127.0.0.1:1/0", false);
    Kowloon__Tenant__CreateTenantRequest req =
        KOWLOON__TENANT__CREATE_TENANT_REQUEST__INIT;
    req.subdomain = "no-redis";
    req.name = "No Redis";
    Kowloon__Tenant__Tenant *t = NULL;
    assert_int_equal(s_call_on(&no_redis, "Create", &req, &t, &st), 0);
    assert_string_equal(t->subdomain, "no-redis");
    s_free(t);
    s_stop(&no_redis);

    s_instance_t no_db;
    s_start(&no_db, "host=127.0.0.1 port=1 dbname=x user=x", s_redis_url,
            false);
    req.subdomain = "no-db";
    assert_int_equal(s_call_on(&no_db, "Create", &req, &t, &st),
                     -KL_UNAVAILABLE);
    assert_non_null(strstr(st.message, "cannot connect to database"));
    Kowloon__Rpc__HealthCheckRequest hreq =
        KOWLOON__RPC__HEALTH_CHECK_REQUEST__INIT;
    Kowloon__Rpc__HealthCheckResponse *hresp = NULL;
    kl_call_opts_t opts = {.timeout_ms = S_TIMEOUT_MS};
    assert_int_equal(kl_rpc_client_call(no_db.health, "Check", &hreq.base,
                                        &opts, (ProtobufCMessage **)&hresp,
                                        &st),
                     0);
    assert_int_equal(
        hresp->status,
        KOWLOON__RPC__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
    s_free(hresp);
    s_stop(&no_db);
}

typedef struct {
    const char *db_url;
    int rc;
    char message[KL_STATUS_MESSAGE_MAX];
    s_instance_t *in;
} s_starter_t;

static void *
s_start_thread(void *arg)
{
    s_starter_t *s = arg;
    kl_status_t st;
    tenant_service_opts_t opts = {
        .database_url = s->db_url,
        .redis_url = "",
        .events_channel = s_channel,
        .default_plan = "starter",
        .default_isolation = "row",
    };
    tenant_service_t *svc = tenant_service_new(&opts, &st);
    s->rc = svc ? tenant_service_migrate(svc, &st) : -1;
    snprintf(s->message, sizeof s->message, "%s", st.message);
    tenant_service_destroy(&svc);
    return NULL;
}

/* Two instances starting at once on an empty database: one migrates, the
 * other waits and finds nothing to do; both then serve. */
static void
test_concurrent_start(void **state)
{
    char name[128];
    snprintf(name, sizeof name, "%s_twin", s_db_name);
    char *sql = kl_asprintf("CREATE DATABASE %s", name);
    s_admin_exec(sql);
    free(sql);
    char *url = kl_test_db_conninfo(s_admin_url, name, NULL);
    assert_non_null(url);

    s_starter_t a = {.db_url = url}, b = {.db_url = url};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, s_start_thread, &a);
    pthread_create(&tb, NULL, s_start_thread, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    if (a.rc != 0 || b.rc != 0)
        fail_msg("migrate: %s / %s", a.message, b.message);
    char *n = s_db_value(url, "SELECT count(*) FROM tenant.schema_migrations");
    /* 1: tenants and keys, 2: placement, 3: unsettled moves, 4: creations
     * being provisioned */
    assert_string_equal(n, "4");
    free(n);

    s_instance_t one, two;
    s_start(&one, url, "", false);
    s_start(&two, url, "", false);
    Kowloon__Tenant__CreateTenantRequest req =
        KOWLOON__TENANT__CREATE_TENANT_REQUEST__INIT;
    req.subdomain = "twin";
    req.name = "Twin";
    kl_status_t st;
    assert_int_equal(s_call_on(&one, "Create", &req, NULL, &st), 0);
    assert_int_equal(s_call_on(&two, "Create", &req, NULL, &st),
                     -KL_ALREADY_EXISTS);
    assert_string_equal(st.message, "subdomain \"twin\" is taken");
    s_stop(&one);
    s_stop(&two);

    sql = kl_asprintf("DROP DATABASE %s WITH (FORCE)", name);
    s_admin_exec(sql);
    free(sql);
    free(url);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_get),
        cmocka_unit_test(test_create_validation),
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_update_lifecycle),
        cmocka_unit_test(test_list_pagination),
        cmocka_unit_test(test_api_keys),
        cmocka_unit_test(test_health),
        cmocka_unit_test(test_dependencies_down),
        cmocka_unit_test(test_concurrent_start),
    };
    return cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
}
