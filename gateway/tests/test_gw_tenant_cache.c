/* gw_tenant_cache and gw_tenant: hits without backend calls, TTL, negative
 * entries, eviction, invalidation by events, concurrency, access rules. */
#include "gw_tenant_cache.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

/* A fake tenant service: tenants "t<N>" for subdomains "sub<N>" with
 * N < s_n_known; keys "key-<N>" belong to tenant t<N>, key id "k<N>". */
static atomic_int s_subdomain_calls;
static atomic_int s_key_calls;
static int s_n_known = 100000;
static int s_fail_unavailable;
static char s_status[32] = "active";

static int
s_get_by_subdomain(void *user, const char *subdomain, const kl_call_ctx_t *ctx,
                   Kowloon__Tenant__Tenant **out, kl_status_t *status)
{
    int n;
    atomic_fetch_add(&s_subdomain_calls, 1);
    if (s_fail_unavailable)
        return kl_status_set(status, KL_UNAVAILABLE, "no tenant service");
    if (sscanf(subdomain, "sub%d", &n) != 1 || n >= s_n_known)
        return kl_status_set(status, KL_NOT_FOUND, "no tenant %s", subdomain);
    Kowloon__Tenant__Tenant t = KOWLOON__TENANT__TENANT__INIT;
    char id[32];
    snprintf(id, sizeof id, "t%d", n);
    t.id = id;
    t.subdomain = (char *)subdomain;
    t.name = "Acme";
    t.plan = "starter";
    t.status = s_status;
    t.status_changed_at = "2026-01-01T00:00:00Z";
    /* hand back a heap copy, as the rpc client does */
    size_t len = kowloon__tenant__tenant__get_packed_size(&t);
    uint8_t buf[512];
    kowloon__tenant__tenant__pack(&t, buf);
    *out = kowloon__tenant__tenant__unpack(NULL, len, buf);
    return 0;
}

static int
s_resolve_api_key(void *user, const char *key, const kl_call_ctx_t *ctx,
                  Kowloon__Tenant__ResolveApiKeyResponse **out,
                  kl_status_t *status)
{
    int n;
    atomic_fetch_add(&s_key_calls, 1);
    if (s_fail_unavailable)
        return kl_status_set(status, KL_UNAVAILABLE, "no tenant service");
    if (sscanf(key, "key-%d", &n) != 1)
        return kl_status_set(status, KL_UNAUTHENTICATED, "invalid API key");
    Kowloon__Tenant__ResolveApiKeyResponse r =
        KOWLOON__TENANT__RESOLVE_API_KEY_RESPONSE__INIT;
    char tid[32], kid[32];
    snprintf(tid, sizeof tid, "t%d", n);
    snprintf(kid, sizeof kid, "k%d", n);
    r.tenant_id = tid;
    r.key_id = kid;
    uint8_t buf[128];
    size_t len = kowloon__tenant__resolve_api_key_response__pack(&r, buf);
    *out = kowloon__tenant__resolve_api_key_response__unpack(NULL, len, buf);
    return 0;
}

static gw_tenant_cache_t *
s_cache(int64_t ttl, int64_t neg_ttl, size_t max)
{
    gw_tenant_cache_opts_t o = {ttl, neg_ttl, max, 0};
    gw_tenant_backend_t b = {s_get_by_subdomain, s_resolve_api_key, NULL};
    atomic_store(&s_subdomain_calls, 0);
    atomic_store(&s_key_calls, 0);
    s_fail_unavailable = 0;
    s_n_known = 100000;
    strcpy(s_status, "active");
    return gw_tenant_cache_new(&o, &b);
}

static void
s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void
test_hit_makes_no_call(void **state)
{
    gw_tenant_cache_t *c = s_cache(60000, 2000, 1000);
    gw_tenant_t *t = NULL;
    kl_status_t st;
    gw_tenant_cache_stats_t stats;

    assert_int_equal(gw_tenant_cache_get(c, "sub7", NULL, &t, &st), 0);
    assert_string_equal(t->msg->id, "t7");
    assert_string_equal(t->msg->subdomain, "sub7");
    assert_non_null(strstr(t->json, "\"subdomain\":\"sub7\""));
    gw_tenant_release(&t);
    assert_null(t);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(gw_tenant_cache_get(c, "sub7", NULL, &t, &st), 0);
        assert_string_equal(t->msg->id, "t7");
        gw_tenant_release(&t);
    }
    assert_int_equal(atomic_load(&s_subdomain_calls), 1);
    gw_tenant_cache_stats(c, &stats);
    assert_int_equal(stats.hits, 100);
    assert_int_equal(stats.misses, 1);
    assert_int_equal(stats.tenants, 1);
    gw_tenant_cache_destroy(&c);
    assert_null(c);
}

static void
test_ttl_expires(void **state)
{
    gw_tenant_cache_t *c = s_cache(60, 60, 1000);
    gw_tenant_t *t = NULL;
    kl_status_t st;
    assert_int_equal(gw_tenant_cache_get(c, "sub1", NULL, &t, &st), 0);
    gw_tenant_release(&t);
    assert_int_equal(gw_tenant_cache_get(c, "sub1", NULL, &t, &st), 0);
    gw_tenant_release(&t);
    assert_int_equal(atomic_load(&s_subdomain_calls), 1);
    s_sleep_ms(120);
    assert_int_equal(gw_tenant_cache_get(c, "sub1", NULL, &t, &st), 0);
    gw_tenant_release(&t);
    assert_int_equal(atomic_load(&s_subdomain_calls), 2);
    gw_tenant_cache_destroy(&c);
}

static void
test_ttl_zero_caches_nothing(void **state)
{
    gw_tenant_cache_t *c = s_cache(0, 2000, 1000);
    gw_tenant_t *t = NULL;
    kl_status_t st;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(gw_tenant_cache_get(c, "sub1", NULL, &t, &st), 0);
        gw_tenant_release(&t);
    }
    assert_int_equal(atomic_load(&s_subdomain_calls), 3);
    gw_tenant_cache_destroy(&c);
}

static void
test_negative_entries(void **state)
{
    gw_tenant_cache_t *c = s_cache(60000, 80, 1000);
    gw_tenant_t *t = NULL;
    kl_status_t st;
    for (int i = 0; i < 10; i++) {
        assert_int_equal(gw_tenant_cache_get(c, "nosuch", NULL, &t, &st),
                         -KL_NOT_FOUND);
        assert_string_equal(st.message, "tenant not found");
        assert_null(t);
    }
    assert_int_equal(atomic_load(&s_subdomain_calls), 1);
    /* short: gone after the negative ttl */
    s_sleep_ms(150);
    assert_int_equal(gw_tenant_cache_get(c, "nosuch", NULL, &t, &st),
                     -KL_NOT_FOUND);
    assert_int_equal(atomic_load(&s_subdomain_calls), 2);

    /* a "tenant created" event drops the negative entry at once */
    s_n_known = 100000;
    assert_int_equal(gw_tenant_cache_get(c, "sub100001", NULL, &t, &st),
                     -KL_NOT_FOUND);
    s_n_known = 200000;
    Kowloon__Events__ChangeEvent ev = KOWLOON__EVENTS__CHANGE_EVENT__INIT;
    ev.kind = "tenant";
    ev.action = "created";
    ev.id = "t100001";
    ev.subdomain = "sub100001";
    gw_tenant_cache_on_event(c, &ev);
    assert_int_equal(gw_tenant_cache_get(c, "sub100001", NULL, &t, &st), 0);
    assert_string_equal(t->msg->id, "t100001");
    gw_tenant_release(&t);
    gw_tenant_cache_destroy(&c);
}

static void
test_backend_errors_not_cached(void **state)
{
    gw_tenant_cache_t *c = s_cache(60000, 2000, 1000);
    gw_tenant_t *t = NULL;
    gw_api_key_t k;
    kl_status_t st;
    s_fail_unavailable = 1;
    assert_int_equal(gw_tenant_cache_get(c, "sub1", NULL, &t, &st),
                     -KL_UNAVAILABLE);
    assert_int_equal(gw_tenant_cache_resolve_key(c, "key-1", 5, NULL, &k, &st),
                     -KL_UNAVAILABLE);
    s_fail_unavailable = 0;
    assert_int_equal(gw_tenant_cache_get(c, "sub1", NULL, &t, &st), 0);
    gw_tenant_release(&t);
    assert_int_equal(gw_tenant_cache_resolve_key(c, "key-1", 5, NULL, &k, &st),
                     0);
    assert_int_equal(atomic_load(&s_subdomain_calls), 2);
    assert_int_equal(atomic_load(&s_key_calls), 2);
    gw_tenant_cache_destroy(&c);
}

static void
test_eviction_bounded(void **state)
{
    gw_tenant_cache_t *c = s_cache(60000, 2000, 50);
    gw_tenant_t *t = NULL;
    kl_status_t st;
    gw_tenant_cache_stats_t stats;
    char sub[32];

    /* sub0 is read between inserts, so CLOCK keeps it */
    for (int i = 0; i < 500; i++) {
        snprintf(sub, sizeof sub, "sub%d", i);
        assert_int_equal(gw_tenant_cache_get(c, sub, NULL, &t, &st), 0);
        gw_tenant_release(&t);
        assert_int_equal(gw_tenant_cache_get(c, "sub0", NULL, &t, &st), 0);
        gw_tenant_release(&t);
    }
    gw_tenant_cache_stats(c, &stats);
    assert_true(stats.tenants <= 50);
    assert_int_equal(stats.evictions, 500 - 50);
    int before = atomic_load(&s_subdomain_calls);
    assert_int_equal(before, 500);
    assert_int_equal(gw_tenant_cache_get(c, "sub0", NULL, &t, &st), 0);
    gw_tenant_release(&t);
    assert_int_equal(atomic_load(&s_subdomain_calls), before);
    /* the most recent one is there too; an early one is gone */
    assert_int_equal(gw_tenant_cache_get(c, "sub499", NULL, &t, &st), 0);
    gw_tenant_release(&t);
    assert_int_equal(atomic_load(&s_subdomain_calls), before);
    assert_int_equal(gw_tenant_cache_get(c, "sub5", NULL, &t, &st), 0);
    gw_tenant_release(&t);
    assert_int_equal(atomic_load(&s_subdomain_calls), before + 1);
    gw_tenant_cache_destroy(&c);
}

/* A snapshot handed out stays valid after the cache dropped it. */
static void
test_reference_outlives_eviction(void **state)
{
    gw_tenant_cache_t *c = s_cache(60000, 2000, 1000);
    gw_tenant_t *t = NULL;
    kl_status_t st;
    assert_int_equal(gw_tenant_cache_get(c, "sub3", NULL, &t, &st), 0);
    gw_tenant_cache_on_event(c, NULL);
    gw_tenant_cache_destroy(&c);
    assert_string_equal(t->msg->subdomain, "sub3");
    gw_tenant_release(&t);
}

static void
test_api_keys(void **state)
{
    gw_tenant_cache_t *c = s_cache(60000, 2000, 1000);
    gw_api_key_t k;
    kl_status_t st;

    assert_int_equal(gw_tenant_cache_resolve_key(c, "key-42", 6, NULL, &k, &st),
                     0);
    assert_string_equal(k.tenant_id, "t42");
    assert_string_equal(k.key_id, "k42");
    assert_int_equal(gw_tenant_cache_resolve_key(c, "key-42", 6, NULL, &k, &st),
                     0);
    assert_int_equal(atomic_load(&s_key_calls), 1);
    /* a wrong key: UNAUTHENTICATED, the same message, negatively cached */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(
            gw_tenant_cache_resolve_key(c, "wrong", 5, NULL, &k, &st),
            -KL_UNAUTHENTICATED);
        assert_string_equal(st.message, "invalid API key");
    }
    assert_int_equal(atomic_load(&s_key_calls), 2);
    /* a key with a NUL in it never reaches the backend */
    assert_int_equal(
        gw_tenant_cache_resolve_key(c, "key-1\0x", 7, NULL, &k, &st),
        -KL_UNAUTHENTICATED);

    /* api_key event: drops that key only */
    assert_int_equal(gw_tenant_cache_resolve_key(c, "key-43", 6, NULL, &k, &st),
                     0);
    int calls = atomic_load(&s_key_calls);
    Kowloon__Events__ChangeEvent ev = KOWLOON__EVENTS__CHANGE_EVENT__INIT;
    ev.kind = "api_key";
    ev.id = "k42";
    ev.tenant_id = "t42";
    gw_tenant_cache_on_event(c, &ev);
    assert_int_equal(gw_tenant_cache_resolve_key(c, "key-43", 6, NULL, &k, &st),
                     0);
    assert_int_equal(atomic_load(&s_key_calls), calls);
    assert_int_equal(gw_tenant_cache_resolve_key(c, "key-42", 6, NULL, &k, &st),
                     0);
    assert_int_equal(atomic_load(&s_key_calls), calls + 1);

    /* tenant event: drops the tenant's keys too */
    ev.kind = "tenant";
    ev.id = "t43";
    ev.subdomain = "sub43";
    gw_tenant_cache_on_event(c, &ev);
    assert_int_equal(gw_tenant_cache_resolve_key(c, "key-43", 6, NULL, &k, &st),
                     0);
    assert_int_equal(atomic_load(&s_key_calls), calls + 2);
    gw_tenant_cache_destroy(&c);
}

static void
test_tenant_events(void **state)
{
    gw_tenant_cache_t *c = s_cache(60000, 2000, 1000);
    gw_tenant_t *t = NULL;
    kl_status_t st;
    Kowloon__Events__ChangeEvent ev = KOWLOON__EVENTS__CHANGE_EVENT__INIT;

    for (int i = 1; i <= 3; i++) {
        char sub[16];
        snprintf(sub, sizeof sub, "sub%d", i);
        assert_int_equal(gw_tenant_cache_get(c, sub, NULL, &t, &st), 0);
        gw_tenant_release(&t);
    }
    /* by id only (no subdomain in the event) */
    ev.kind = "tenant";
    ev.id = "t1";
    gw_tenant_cache_on_event(c, &ev);
    /* by subdomain only */
    ev.id = "";
    ev.subdomain = "sub2";
    gw_tenant_cache_on_event(c, &ev);
    /* other kinds are ignored */
    ev.kind = "flag";
    ev.id = "t3";
    ev.subdomain = "sub3";
    gw_tenant_cache_on_event(c, &ev);
    assert_int_equal(atomic_load(&s_subdomain_calls), 3);
    for (int i = 1; i <= 3; i++) {
        char sub[16];
        snprintf(sub, sizeof sub, "sub%d", i);
        assert_int_equal(gw_tenant_cache_get(c, sub, NULL, &t, &st), 0);
        gw_tenant_release(&t);
    }
    assert_int_equal(atomic_load(&s_subdomain_calls), 5);
    /* NULL: events may have been missed, everything goes */
    gw_tenant_cache_on_event(c, NULL);
    gw_tenant_cache_stats_t stats;
    gw_tenant_cache_stats(c, &stats);
    assert_int_equal(stats.tenants, 0);
    assert_int_equal(stats.keys, 0);
    assert_int_equal(gw_tenant_cache_get(c, "sub3", NULL, &t, &st), 0);
    gw_tenant_release(&t);
    assert_int_equal(atomic_load(&s_subdomain_calls), 6);
    gw_tenant_cache_destroy(&c);
}

typedef struct {
    gw_tenant_cache_t *cache;
    int seed;
    atomic_int *errors;
} s_worker_t;

static void *
s_worker(void *arg)
{
    s_worker_t *w = arg;
    unsigned r = (unsigned)w->seed;
    for (int i = 0; i < 20000; i++) {
        char sub[32], want[32];
        gw_tenant_t *t = NULL;
        kl_status_t st;
        r = r * 1103515245u + 12345u;
        int n = (int)((r >> 8) % 300);
        snprintf(sub, sizeof sub, "sub%d", n);
        snprintf(want, sizeof want, "t%d", n);
        if (gw_tenant_cache_get(w->cache, sub, NULL, &t, &st) != 0 ||
            strcmp(t->msg->id, want) != 0 ||
            strcmp(t->msg->subdomain, sub) != 0)
            atomic_fetch_add(w->errors, 1);
        gw_tenant_release(&t);
        if (i % 97 == 0) {
            char key[32];
            gw_api_key_t k;
            snprintf(key, sizeof key, "key-%d", n);
            if (gw_tenant_cache_resolve_key(w->cache, key, strlen(key), NULL,
                                            &k, &st) != 0 ||
                strcmp(k.tenant_id, want) != 0)
                atomic_fetch_add(w->errors, 1);
        }
    }
    return NULL;
}

static void *
s_invalidator(void *arg)
{
    s_worker_t *w = arg;
    for (int i = 0; i < 200; i++) {
        Kowloon__Events__ChangeEvent ev = KOWLOON__EVENTS__CHANGE_EVENT__INIT;
        char id[32], sub[32];
        snprintf(id, sizeof id, "t%d", i % 300);
        snprintf(sub, sizeof sub, "sub%d", i % 300);
        ev.kind = i % 3 ? "tenant" : "api_key";
        ev.id = id;
        ev.subdomain = sub;
        gw_tenant_cache_on_event(w->cache, i % 50 == 49 ? NULL : &ev);
        s_sleep_ms(1);
    }
    return NULL;
}

/* Readers, writers (misses and evictions: 300 names over 128 entries) and
 * invalidations at once: every answer is the right tenant, nothing leaks or
 * crashes (run under ASan, and under TSan with KOWLOON_TSAN). */
static void
test_concurrency(void **state)
{
    gw_tenant_cache_t *c = s_cache(60000, 2000, 128);
    atomic_int errors = 0;
    pthread_t th[5];
    s_worker_t w[5];
    for (int i = 0; i < 5; i++) {
        w[i] = (s_worker_t){c, i + 1, &errors};
        pthread_create(&th[i], NULL, i == 4 ? s_invalidator : s_worker, &w[i]);
    }
    for (int i = 0; i < 5; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&errors), 0);
    gw_tenant_cache_stats_t stats;
    gw_tenant_cache_stats(c, &stats);
    assert_true(stats.tenants <= 128);
    assert_true(stats.hits > 0);
    assert_int_equal(stats.hits + stats.misses,
                     4 * 20000 + 4 * ((20000 + 96) / 97));
    gw_tenant_cache_destroy(&c);
}

static void
test_access_rules(void **state)
{
    Kowloon__Tenant__Tenant m = KOWLOON__TENANT__TENANT__INIT;
    kl_status_t st;
    int64_t changed = gw_tenant_parse_time("2026-01-01T00:00:00Z");
    int64_t grace = 7 * 86400 * 1000LL;
    m.id = "t1";
    m.subdomain = "acme";
    m.status_changed_at = "2026-01-01T00:00:00Z";

    m.status = "active";
    gw_tenant_t *t = gw_tenant_new(&m);
    assert_int_equal(gw_tenant_access(t, changed, grace, &st), 0);
    gw_tenant_release(&t);
    m.status = "trialing";
    t = gw_tenant_new(&m);
    assert_int_equal(gw_tenant_access(t, changed, grace, &st), 0);
    gw_tenant_release(&t);

    m.status = "past_due";
    t = gw_tenant_new(&m);
    assert_int_equal(gw_tenant_access(t, changed + grace, grace, &st), 0);
    assert_int_equal(gw_tenant_access(t, changed + grace + 1, grace, &st),
                     -KL_FAILED_PRECONDITION);
    assert_string_equal(st.message, "payment overdue");
    gw_tenant_release(&t);

    m.status = "suspended";
    t = gw_tenant_new(&m);
    assert_int_equal(gw_tenant_access(t, changed, grace, &st),
                     -KL_FAILED_PRECONDITION);
    assert_string_equal(st.message, "tenant is suspended");
    gw_tenant_release(&t);

    m.status = "deleted";
    t = gw_tenant_new(&m);
    assert_int_equal(gw_tenant_access(t, changed, grace, &st), -KL_NOT_FOUND);
    assert_string_equal(st.message, "tenant not found");
    gw_tenant_release(&t);

    /* past_due without a usable timestamp: no grace */
    m.status = "past_due";
    m.status_changed_at = "";
    t = gw_tenant_new(&m);
    assert_int_equal(gw_tenant_access(t, changed, grace, &st),
                     -KL_FAILED_PRECONDITION);
    gw_tenant_release(&t);
}

static void
test_parse_time(void **state)
{
    assert_int_equal(gw_tenant_parse_time("1970-01-01T00:00:00Z"), 0);
    assert_int_equal(gw_tenant_parse_time("1970-01-01T00:00:01.5Z"), 1500);
    assert_int_equal(gw_tenant_parse_time("1970-01-01T08:00:00+08:00"), 0);
    assert_int_equal(gw_tenant_parse_time("1970-01-01 00:00:00.123456+00"),
                     123);
    assert_int_equal(gw_tenant_parse_time("2026-11-27T17:03:05Z"),
                     1795798985000LL);
    assert_int_equal(gw_tenant_parse_time(""), -1);
    assert_int_equal(gw_tenant_parse_time(NULL), -1);
    assert_int_equal(gw_tenant_parse_time("2026-11-27"), -1);
    assert_int_equal(gw_tenant_parse_time("2026-13-27T17:03:05Z"), -1);
    assert_int_equal(gw_tenant_parse_time("2026-11-27T17:03:05Zjunk"), -1);
}

static void
test_stale_if_error(void **state)
{
    gw_tenant_cache_t *c = s_cache(30, 30, 1000);
    gw_tenant_t *t = NULL;
    gw_api_key_t k;
    kl_status_t st;
    gw_tenant_cache_stats_t stats;
    (void)state;

    assert_int_equal(gw_tenant_cache_get(c, "sub1", NULL, &t, &st), 0);
    gw_tenant_release(&t);
    assert_int_equal(gw_tenant_cache_resolve_key(c, "key-1", 5, NULL, &k, &st),
                     0);
    s_sleep_ms(40); /* both expired */
    s_fail_unavailable = 1;
    assert_int_equal(gw_tenant_cache_get(c, "sub1", NULL, &t, &st), 0);
    assert_string_equal(t->msg->id, "t1");
    gw_tenant_release(&t);
    assert_int_equal(gw_tenant_cache_resolve_key(c, "key-1", 5, NULL, &k, &st),
                     0);
    assert_string_equal(k.tenant_id, "t1");
    gw_tenant_cache_stats(c, &stats);
    assert_int_equal(stats.stale, 2);
    /* Never cached: the error. */
    assert_int_equal(gw_tenant_cache_get(c, "sub2", NULL, &t, &st),
                     -KL_UNAVAILABLE);
    /* Dropped by an event: gone, never served stale. */
    Kowloon__Events__ChangeEvent ev = KOWLOON__EVENTS__CHANGE_EVENT__INIT;
    ev.kind = "tenant";
    ev.id = "t1";
    ev.subdomain = "sub1";
    gw_tenant_cache_on_event(c, &ev);
    assert_int_equal(gw_tenant_cache_get(c, "sub1", NULL, &t, &st),
                     -KL_UNAVAILABLE);
    gw_tenant_cache_destroy(&c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hit_makes_no_call),
        cmocka_unit_test(test_ttl_expires),
        cmocka_unit_test(test_ttl_zero_caches_nothing),
        cmocka_unit_test(test_negative_entries),
        cmocka_unit_test(test_backend_errors_not_cached),
        cmocka_unit_test(test_eviction_bounded),
        cmocka_unit_test(test_reference_outlives_eviction),
        cmocka_unit_test(test_api_keys),
        cmocka_unit_test(test_tenant_events),
        cmocka_unit_test(test_concurrency),
        cmocka_unit_test(test_access_rules),
        cmocka_unit_test(test_parse_time),
        cmocka_unit_test(test_stale_if_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
