/*
 * Creating a schema or database tenant when the creating process can die
 * half way (docs/isolation.md, "Creating a tenant"), in process against a
 * database made in KLTEST_PG_URL: the real tenant service, provisioning
 * through the workspace migrations (ws_fixture).
 *
 * Checked: a tenant being provisioned is invisible (Get, GetBySubdomain,
 * List) until it is ready, and a recovery leaves it alone while its
 * creator holds the claim, however old its record; a creation a dead
 * process left (its record still provisioning, its schema half made,
 * nobody holding its claim) is removed by the next start, and by a Create
 * of the same subdomain, which then succeeds — also one left a second ago
 * (the claim is taken before the record is made, so no age is needed).
 */
#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_rpc.h"
#include "kl_rpc_server.h"
#include "kl_tenant_db.h"
#include "kl_test_server.h"
#include "kowloon/tenant.pb-c.h"
#include "tenant_service.h"
#include "ws_fixture.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define S_TIMEOUT_MS 20000

static tenant_service_t *s_svc;
static kl_test_server_t *s_srv;
static char *s_main_owner; /* "main=<owner url>" */
static char s_channel[64];

/* The migrate hook can hold the next provisioning until released. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool armed; /* hold the next one */
    bool held;  /* one is waiting */
} s_hold = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false};

static int
s_migrate(void *arg, const kl_tenant_place_t *place, kl_status_t *status)
{
    pthread_mutex_lock(&s_hold.mu);
    if (s_hold.armed) {
        s_hold.held = true;
        pthread_cond_broadcast(&s_hold.cv);
        while (s_hold.armed)
            pthread_cond_wait(&s_hold.cv, &s_hold.mu);
        s_hold.held = false;
    }
    pthread_mutex_unlock(&s_hold.mu);
    return ws_apply_migrations(arg, place, status);
}

static tenant_service_t *
s_service(void)
{
    const char *owners[] = {s_main_owner};
    tenant_service_opts_t topts = {
        .database_url = ws.super_url,
        .redis_url = "",
        .events_channel = s_channel,
        .default_plan = "starter",
        .default_isolation = "row",
        .owner_servers = owners,
        .n_owner_servers = 1,
        .app_role = ws.app,
        .shared_schema = "workspace",
        .migrate = s_migrate,
    };
    kl_status_t st;
    tenant_service_t *svc = tenant_service_new(&topts, &st);
    if (!svc || tenant_service_migrate(svc, &st) < 0)
        fail_msg("tenant service: %s", st.message);
    return svc;
}

/* What kowloon-tenant does when it starts, before it serves. */
static void
s_restart(void)
{
    tenant_service_t *svc = s_service();
    kl_status_t st;
    if (tenant_service_recover(svc, &st) < 0)
        fail_msg("tenant_service_recover: %s", st.message);
    tenant_service_destroy(&svc);
}

static int
s_setup(void **state)
{
    (void)state;
    kl_log_init("create-recovery-test", KL_WARN);
    if (ws_fixture_setup("create_recovery") < 0)
        return -1;
    ws_prepare_shared();
    snprintf(s_channel, sizeof s_channel, "kltest:createrec:%d", (int)getpid());
    s_main_owner = kl_asprintf("main=%s", ws.owner_url);
    s_svc = s_service();
    kl_rpc_server_opts_t sopts = {.workers = 3};
    tenant_service_server_opts(s_svc, &sopts);
    s_srv = kl_test_server_start(tenant_service_base(s_svc), &sopts);
    return s_srv ? 0 : -1;
}

static int
s_teardown(void **state)
{
    (void)state;
    kl_test_server_stop(&s_srv);
    tenant_service_destroy(&s_svc);
    KL_FREE(&s_main_owner);
    ws_fixture_teardown();
    return 0;
}

/* --- calls ---------------------------------------------------------------- */

typedef struct {
    char subdomain[64];
    int rc;
    char message[KL_STATUS_MESSAGE_MAX];
    char id[37];
} s_create_t;

static void
s_create(s_create_t *c)
{
    Kowloon__Tenant__CreateTenantRequest req =
        KOWLOON__TENANT__CREATE_TENANT_REQUEST__INIT;
    req.subdomain = c->subdomain;
    req.name = c->subdomain;
    req.plan = "starter";
    req.isolation = "schema";
    Kowloon__Tenant__Tenant *t = NULL;
    kl_status_t st;
    kl_status_clear(&st);
    c->rc = kl_test_server_call(s_srv, "Create", &req, &t, S_TIMEOUT_MS, &st);
    snprintf(c->message, sizeof c->message, "%s", st.message);
    if (t) {
        snprintf(c->id, sizeof c->id, "%s", t->id);
        protobuf_c_message_free_unpacked(&t->base, NULL);
    }
}

static void *
s_create_main(void *arg)
{
    s_create(arg);
    return NULL;
}

/* GetBySubdomain's code (0 found). */
static int
s_by_subdomain(const char *subdomain)
{
    Kowloon__Tenant__GetBySubdomainRequest req =
        KOWLOON__TENANT__GET_BY_SUBDOMAIN_REQUEST__INIT;
    req.subdomain = (char *)subdomain;
    Kowloon__Tenant__Tenant *t = NULL;
    kl_status_t st;
    int rc = kl_test_server_call(s_srv, "GetBySubdomain", &req, &t,
                                 S_TIMEOUT_MS, &st);
    if (t)
        protobuf_c_message_free_unpacked(&t->base, NULL);
    return rc;
}

static int
s_get(const char *id)
{
    Kowloon__Tenant__GetTenantRequest req =
        KOWLOON__TENANT__GET_TENANT_REQUEST__INIT;
    req.id = (char *)id;
    Kowloon__Tenant__Tenant *t = NULL;
    kl_status_t st;
    int rc = kl_test_server_call(s_srv, "Get", &req, &t, S_TIMEOUT_MS, &st);
    if (t)
        protobuf_c_message_free_unpacked(&t->base, NULL);
    return rc;
}

/* Whether List (first 500) names the subdomain. */
static bool
s_listed(const char *subdomain)
{
    Kowloon__Tenant__ListTenantsRequest req =
        KOWLOON__TENANT__LIST_TENANTS_REQUEST__INIT;
    req.page_size = 500;
    Kowloon__Tenant__ListTenantsResponse *out = NULL;
    kl_status_t st;
    if (kl_test_server_call(s_srv, "List", &req, &out, S_TIMEOUT_MS, &st) < 0)
        fail_msg("List: %s", st.message);
    bool found = false;
    for (size_t i = 0; i < out->n_tenants; i++)
        found = found || strcmp(out->tenants[i]->subdomain, subdomain) == 0;
    protobuf_c_message_free_unpacked(&out->base, NULL);
    return found;
}

static long
s_count(const char *fmt, const char *arg)
{
    char *sql = kl_asprintf(fmt, arg);
    char *v = ws_value(ws.super_url, sql);
    long n = strtol(v, NULL, 10);
    free(v);
    free(sql);
    return n;
}

/* The schema name of a schema tenant. */
static void
s_schema_of(const char *id, char out[64])
{
    size_t o = (size_t)snprintf(out, 64, "t_");
    for (const char *c = id; *c; c++)
        if (*c != '-')
            out[o++] = *c;
    out[o] = '\0';
}

/* What a process that died mid-creation leaves: a record still
 * provisioning, made age_s ago, and a schema with part of the tables.
 * The id into id. */
static void
s_dead_creation(const char *subdomain, int age_s, char id[37])
{
    ws_uuid(id);
    char schema[64];
    s_schema_of(id, schema);
    char *sql = kl_asprintf(
        "INSERT INTO tenant.tenants (id, subdomain, name, plan, status,"
        " isolation, provisioning, created_at) VALUES ('%s', '%s', '%s',"
        " 'starter', 'trialing', 'schema', true, now() - interval '%d"
        " seconds')",
        id, subdomain, subdomain, age_s);
    ws_exec(ws.super_url, sql);
    free(sql);
    sql = kl_asprintf("CREATE SCHEMA %s; CREATE TABLE %s.half (a int)", schema,
                      schema);
    ws_exec(ws.owner_url, sql);
    free(sql);
}

static long
s_schemas(const char *id)
{
    char schema[64];
    s_schema_of(id, schema);
    return s_count("SELECT count(*) FROM pg_namespace WHERE nspname = '%s'",
                   schema);
}

/* --- tests ---------------------------------------------------------------- */

/* Invisible while provisioned, and safe from a recovery while its creator
 * lives, however old its record. */
static void
test_invisible_while_provisioned(void **state)
{
    (void)state;
    pthread_mutex_lock(&s_hold.mu);
    s_hold.armed = true;
    pthread_mutex_unlock(&s_hold.mu);
    s_create_t c = {.subdomain = "slowprov"};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, s_create_main, &c), 0);
    pthread_mutex_lock(&s_hold.mu);
    while (!s_hold.held)
        pthread_cond_wait(&s_hold.cv, &s_hold.mu);
    pthread_mutex_unlock(&s_hold.mu);

    char *id = ws_value(ws.super_url, "SELECT id FROM tenant.tenants WHERE"
                                      " subdomain = 'slowprov' AND"
                                      " provisioning");
    bool hidden = s_by_subdomain("slowprov") == -KL_NOT_FOUND &&
                  s_get(id) == -KL_NOT_FOUND && !s_listed("slowprov");
    /* Old: only the claim keeps a recovery off it. */
    char *sql = kl_asprintf("UPDATE tenant.tenants SET created_at = now() -"
                            " interval '5 minutes' WHERE id = '%s'",
                            id);
    ws_exec(ws.super_url, sql);
    free(sql);
    s_restart();
    long kept =
        s_count("SELECT count(*) FROM tenant.tenants WHERE id = '%s'", id);
    s_create_t again = {.subdomain = "slowprov"};
    s_create(&again);

    pthread_mutex_lock(&s_hold.mu);
    s_hold.armed = false;
    pthread_cond_broadcast(&s_hold.cv);
    pthread_mutex_unlock(&s_hold.mu);
    pthread_join(th, NULL);

    assert_true(hidden);
    assert_int_equal(kept, 1);
    assert_int_equal(again.rc, -KL_ALREADY_EXISTS);
    assert_string_equal(again.message, "subdomain \"slowprov\" is taken");
    if (c.rc != 0)
        fail_msg("Create: %s", c.message);
    assert_string_equal(c.id, id);
    assert_int_equal(s_by_subdomain("slowprov"), 0);
    assert_int_equal(s_get(id), 0);
    assert_true(s_listed("slowprov"));
    assert_int_equal(s_schemas(id), 1);
    free(id);
}

/* A dead process's creation: removed by the next start (record and
 * schema), or by a Create of its subdomain, which then succeeds, however
 * recent. */
static void
test_dead_creation_removed(void **state)
{
    (void)state;
    char dead1[37], dead2[37], fresh[37];
    s_dead_creation("deadone", 120, dead1);
    s_dead_creation("deadtwo", 120, dead2);
    s_dead_creation("deadnew", 1, fresh);
    assert_int_equal(s_by_subdomain("deadone"), -KL_NOT_FOUND);

    /* A Create of the subdomain clears the way. */
    s_create_t c = {.subdomain = "deadone"};
    s_create(&c);
    if (c.rc != 0)
        fail_msg("Create over a dead creation: %s", c.message);
    assert_string_not_equal(c.id, dead1);
    assert_int_equal(
        s_count("SELECT count(*) FROM tenant.tenants WHERE id = '%s'", dead1),
        0);
    assert_int_equal(s_schemas(dead1), 0);
    assert_int_equal(s_by_subdomain("deadone"), 0);
    assert_int_equal(s_schemas(c.id), 1);

    /* Left a second ago: a retry right after the creator died succeeds. */
    s_create_t f = {.subdomain = "deadnew"};
    s_create(&f);
    if (f.rc != 0)
        fail_msg("Create over a fresh dead creation: %s", f.message);
    assert_int_equal(
        s_count("SELECT count(*) FROM tenant.tenants WHERE id = '%s'", fresh),
        0);
    assert_int_equal(s_schemas(fresh), 0);
    assert_int_equal(s_schemas(f.id), 1);

    /* The next start removes the other one; the live tenants stay. */
    s_restart();
    assert_int_equal(
        s_count("SELECT count(*) FROM tenant.tenants WHERE id = '%s'", dead2),
        0);
    assert_int_equal(s_schemas(dead2), 0);
    assert_int_equal(s_by_subdomain("deadone"), 0);
    assert_int_equal(s_by_subdomain("deadnew"), 0);
}

int
main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invisible_while_provisioned),
        cmocka_unit_test(test_dead_creation_removed),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
