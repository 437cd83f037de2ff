/* gw_entitlements: hits without backend calls, TTL and expires_at,
 * events (plan, flag, override, tenant, NULL), a refresh raced by an
 * event, stale-if-error, never-loaded tenants, rate limiting in the entry,
 * eviction. */
#include "gw_entitlements.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

/* A fake flags service: plan "pro" has data_export and 600 rpm, plan
 * "starter" nothing and 6 rpm; flag "beta" is on for everyone. */
static int s_calls;
static int s_fail; /* 0, or the -code Evaluate answers */
static int64_t s_now;
static char s_expires_at[64];
static gw_entitlements_t *s_race_cache; /* raise an event mid-call */

static int64_t
s_clock(void)
{
    return s_now;
}

static int
s_evaluate(void *user, const char *tenant_id, const char *plan,
           const kl_call_ctx_t *ctx, Kowloon__Flags__Entitlements **out,
           kl_status_t *status)
{
    (void)user;
    (void)ctx;
    s_calls++;
    if (s_race_cache) {
        Kowloon__Events__ChangeEvent ev = KOWLOON__EVENTS__CHANGE_EVENT__INIT;
        ev.kind = "flag";
        ev.id = "beta";
        gw_entitlements_on_event(s_race_cache, &ev);
    }
    if (s_fail)
        return kl_status_set(status, (kl_code_t)-s_fail, "flags down");
    Kowloon__Flags__Entitlements e = KOWLOON__FLAGS__ENTITLEMENTS__INIT;
    Kowloon__Flags__Entitlements__LimitsEntry lim =
        KOWLOON__FLAGS__ENTITLEMENTS__LIMITS_ENTRY__INIT;
    Kowloon__Flags__Entitlements__LimitsEntry *limits[1] = {&lim};
    char *features[1] = {"data_export"};
    char *flags[1] = {"beta"};
    bool pro = strcmp(plan, "pro") == 0;
    e.tenant_id = (char *)tenant_id;
    e.plan = (char *)plan;
    e.features = features;
    e.n_features = pro ? 1 : 0;
    e.flags = flags;
    e.n_flags = 1;
    lim.key = GW_ENTITLEMENTS_RATE_LIMIT;
    lim.value = pro ? 600 : 6;
    e.limits = limits;
    e.n_limits = 1;
    e.version = 7;
    e.expires_at = s_expires_at;
    uint8_t buf[512];
    size_t len = kowloon__flags__entitlements__pack(&e, buf);
    *out = kowloon__flags__entitlements__unpack(NULL, len, buf);
    return 0;
}

static gw_entitlements_t *
s_new(size_t max)
{
    gw_entitlements_opts_t o = {1000, 100, max, 1, s_clock};
    gw_entitlements_backend_t b = {s_evaluate, NULL};
    s_calls = 0;
    s_fail = 0;
    s_now = 1000000;
    s_expires_at[0] = '\0';
    s_race_cache = NULL;
    return gw_entitlements_new(&o, &b);
}

/* get without rate limiting; returns rc, *stale. */
static int
s_get(gw_entitlements_t *c, const char *tenant, const char *plan,
      gw_ent_t **out, bool *stale)
{
    int64_t retry;
    kl_status_t st;
    return gw_entitlements_get(c, tenant, plan, NULL, false, out, stale, &retry,
                               &st);
}

static void
test_hit_makes_no_call(void **state)
{
    (void)state;
    gw_entitlements_t *c = s_new(100);
    gw_ent_t *e = NULL;
    bool stale;
    assert_int_equal(s_get(c, "t1", "pro", &e, &stale), 0);
    assert_false(stale);
    assert_true(gw_ent_allows(e, "data_export"));
    assert_true(gw_ent_allows(e, "beta")); /* a flag gates like a feature */
    assert_false(gw_ent_allows(e, "advanced_reports"));
    assert_int_equal(e->rate_limit, 600);
    assert_non_null(strstr(e->json, "\"features\":[\"data_export\"]"));
    assert_non_null(strstr(e->json, "\"version\":\"7\""));
    gw_ent_release(&e);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(s_get(c, "t1", "pro", &e, &stale), 0);
        gw_ent_release(&e);
    }
    assert_int_equal(s_calls, 1);
    /* Another plan for the same tenant (its plan changed): asks again. */
    assert_int_equal(s_get(c, "t1", "starter", &e, &stale), 0);
    assert_false(gw_ent_allows(e, "data_export"));
    gw_ent_release(&e);
    assert_int_equal(s_calls, 2);
    gw_entitlements_destroy(&c);
    assert_null(c);
}

static void
test_ttl_and_expires_at(void **state)
{
    (void)state;
    gw_entitlements_t *c = s_new(100);
    gw_ent_t *e = NULL;
    bool stale;
    assert_int_equal(s_get(c, "t1", "pro", &e, &stale), 0);
    gw_ent_release(&e);
    s_now += 999;
    assert_int_equal(s_get(c, "t1", "pro", &e, &stale), 0);
    gw_ent_release(&e);
    assert_int_equal(s_calls, 1);
    s_now += 1;
    assert_int_equal(s_get(c, "t1", "pro", &e, &stale), 0);
    gw_ent_release(&e);
    assert_int_equal(s_calls, 2);

    /* An override that lapses in the past: never cached. */
    snprintf(s_expires_at, sizeof s_expires_at, "2000-01-01T00:00:00Z");
    assert_int_equal(s_get(c, "t2", "pro", &e, &stale), 0);
    gw_ent_release(&e);
    assert_int_equal(s_get(c, "t2", "pro", &e, &stale), 0);
    gw_ent_release(&e);
    assert_int_equal(s_calls, 4);
    /* One that lapses far ahead: the TTL bounds it. */
    snprintf(s_expires_at, sizeof s_expires_at, "2999-01-01T00:00:00Z");
    assert_int_equal(s_get(c, "t3", "pro", &e, &stale), 0);
    gw_ent_release(&e);
    assert_int_equal(s_get(c, "t3", "pro", &e, &stale), 0);
    gw_ent_release(&e);
    assert_int_equal(s_calls, 5);
    gw_entitlements_destroy(&c);
}

static void
s_event(gw_entitlements_t *c, const char *kind, const char *id,
        const char *tenant_id)
{
    Kowloon__Events__ChangeEvent ev = KOWLOON__EVENTS__CHANGE_EVENT__INIT;
    ev.kind = (char *)kind;
    ev.id = (char *)id;
    ev.tenant_id = (char *)tenant_id;
    gw_entitlements_on_event(c, &ev);
}

/* Loads t1 (pro), t2 (starter), t3 (pro); returns the call count. */
static int
s_load3(gw_entitlements_t *c)
{
    gw_ent_t *e = NULL;
    bool stale;
    s_get(c, "t1", "pro", &e, &stale);
    gw_ent_release(&e);
    s_get(c, "t2", "starter", &e, &stale);
    gw_ent_release(&e);
    s_get(c, "t3", "pro", &e, &stale);
    gw_ent_release(&e);
    return s_calls;
}

static void
test_events(void **state)
{
    (void)state;
    gw_entitlements_t *c = s_new(100);
    int n = s_load3(c);
    assert_int_equal(n, 3);
    assert_int_equal(s_load3(c), 3); /* all hits */

    s_event(c, "plan", "pro", "");
    assert_int_equal(s_load3(c), 5); /* t1, t3 asked again */

    s_event(c, "override", "data_export", "t2");
    assert_int_equal(s_load3(c), 6);

    s_event(c, "tenant", "t3", "t3");
    assert_int_equal(s_load3(c), 7);

    s_event(c, "flag", "beta", "");
    assert_int_equal(s_load3(c), 10);

    gw_entitlements_on_event(c, NULL);
    assert_int_equal(s_load3(c), 13);

    s_event(c, "api_key", "k1", "t1"); /* not ours */
    s_event(c, "plan", "enterprise", "");
    assert_int_equal(s_load3(c), 13);

    gw_entitlements_stats_t st;
    gw_entitlements_stats(c, &st);
    assert_int_equal(st.entries, 3);
    assert_int_equal(st.misses, 13);
    gw_entitlements_destroy(&c);
}

static void
test_answer_raced_by_event_is_not_fresh(void **state)
{
    (void)state;
    gw_entitlements_t *c = s_new(100);
    gw_ent_t *e = NULL;
    bool stale;
    s_race_cache = c;
    assert_int_equal(s_get(c, "t1", "pro", &e, &stale), 0);
    gw_ent_release(&e);
    s_race_cache = NULL;
    assert_int_equal(s_get(c, "t1", "pro", &e, &stale), 0);
    gw_ent_release(&e);
    assert_int_equal(s_calls, 2);
    assert_int_equal(s_get(c, "t1", "pro", &e, &stale), 0);
    gw_ent_release(&e);
    assert_int_equal(s_calls, 2);
    gw_entitlements_destroy(&c);
}

static void
test_stale_if_error(void **state)
{
    (void)state;
    gw_entitlements_t *c = s_new(100);
    gw_ent_t *e = NULL;
    bool stale;
    assert_int_equal(s_get(c, "t1", "pro", &e, &stale), 0);
    gw_ent_release(&e);

    s_fail = -KL_UNAVAILABLE;
    s_now += 5000; /* past the TTL */
    assert_int_equal(s_get(c, "t1", "pro", &e, &stale), 0);
    assert_true(stale);
    assert_true(gw_ent_allows(e, "data_export"));
    gw_ent_release(&e);
    assert_int_equal(s_calls, 2);
    /* Within retry_ms: served stale without asking. */
    s_now += 99;
    assert_int_equal(s_get(c, "t1", "pro", &e, &stale), 0);
    assert_true(stale);
    gw_ent_release(&e);
    assert_int_equal(s_calls, 2);
    /* After retry_ms: asks again, still down, still stale. */
    s_now += 1;
    s_fail = -KL_DEADLINE_EXCEEDED;
    assert_int_equal(s_get(c, "t1", "pro", &e, &stale), 0);
    assert_true(stale);
    gw_ent_release(&e);
    assert_int_equal(s_calls, 3);
    /* An event while down: still served stale. */
    s_event(c, "plan", "pro", "");
    s_now += 100;
    assert_int_equal(s_get(c, "t1", "pro", &e, &stale), 0);
    assert_true(stale);
    gw_ent_release(&e);
    /* Back: fresh again. */
    s_fail = 0;
    s_now += 100;
    assert_int_equal(s_get(c, "t1", "pro", &e, &stale), 0);
    assert_false(stale);
    gw_ent_release(&e);

    /* A definite refusal is not papered over. */
    s_now += 5000;
    s_fail = -KL_NOT_FOUND;
    kl_status_t st;
    int64_t retry;
    assert_int_equal(gw_entitlements_get(c, "t1", "pro", NULL, false, &e,
                                         &stale, &retry, &st),
                     -KL_NOT_FOUND);
    assert_null(e);
    gw_entitlements_stats_t s;
    gw_entitlements_stats(c, &s);
    assert_true(s.stale_served >= 4);
    gw_entitlements_destroy(&c);
}

static void
test_never_loaded_and_down(void **state)
{
    (void)state;
    gw_entitlements_t *c = s_new(100);
    gw_ent_t *e = NULL;
    bool stale;
    kl_status_t st;
    int64_t retry;
    s_fail = -KL_UNAVAILABLE;
    assert_int_equal(gw_entitlements_get(c, "t9", "pro", NULL, true, &e, &stale,
                                         &retry, &st),
                     -KL_UNAVAILABLE);
    assert_null(e);
    assert_string_equal(st.message, "flags down");
    /* Remembered for retry_ms: no second call. */
    assert_int_equal(gw_entitlements_get(c, "t9", "pro", NULL, true, &e, &stale,
                                         &retry, &st),
                     -KL_UNAVAILABLE);
    assert_int_equal(s_calls, 1);
    s_now += 100;
    s_fail = 0;
    assert_int_equal(gw_entitlements_get(c, "t9", "pro", NULL, true, &e, &stale,
                                         &retry, &st),
                     0);
    gw_ent_release(&e);
    gw_entitlements_destroy(&c);
}

static void
test_rate_limit_in_entry(void **state)
{
    (void)state;
    gw_entitlements_t *c = s_new(100);
    gw_ent_t *e = NULL;
    bool stale;
    kl_status_t st;
    int64_t retry = 0;
    int ok = 0;
    /* starter: 6/min, burst 1, one token per 10 s. */
    for (int i = 0; i < 5; i++) {
        int rc = gw_entitlements_get(c, "t2", "starter", NULL, true, &e, &stale,
                                     &retry, &st);
        assert_non_null(e);
        gw_ent_release(&e);
        if (rc == 0)
            ok++;
        else {
            assert_int_equal(rc, -KL_RESOURCE_EXHAUSTED);
            assert_string_equal(st.message,
                                "rate limit exceeded: 6 requests per minute");
            assert_int_equal(retry, 10);
        }
    }
    assert_int_equal(ok, 1);
    /* An event refreshes the entitlements but keeps the bucket. */
    s_event(c, "plan", "starter", "");
    assert_int_equal(gw_entitlements_get(c, "t2", "starter", NULL, true, &e,
                                         &stale, &retry, &st),
                     -KL_RESOURCE_EXHAUSTED);
    gw_ent_release(&e);
    /* Without rate_limit, nothing is taken. */
    assert_int_equal(gw_entitlements_get(c, "t2", "starter", NULL, false, &e,
                                         &stale, &retry, &st),
                     0);
    gw_ent_release(&e);
    s_now += 10000;
    assert_int_equal(gw_entitlements_get(c, "t2", "starter", NULL, true, &e,
                                         &stale, &retry, &st),
                     0);
    gw_ent_release(&e);
    gw_entitlements_destroy(&c);
}

static void
test_eviction_bounded(void **state)
{
    (void)state;
    gw_entitlements_t *c = s_new(16);
    gw_ent_t *e = NULL, *kept = NULL;
    bool stale;
    char id[32];
    assert_int_equal(s_get(c, "t0", "pro", &kept, &stale), 0);
    for (int i = 1; i < 1000; i++) {
        snprintf(id, sizeof id, "t%d", i);
        assert_int_equal(s_get(c, id, "pro", &e, &stale), 0);
        gw_ent_release(&e);
    }
    gw_entitlements_stats_t st;
    gw_entitlements_stats(c, &st);
    assert_true(st.entries <= 16);
    /* A reference outlives its entry's eviction. */
    assert_true(gw_ent_allows(kept, "data_export"));
    gw_ent_release(&kept);
    gw_entitlements_destroy(&c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hit_makes_no_call),
        cmocka_unit_test(test_ttl_and_expires_at),
        cmocka_unit_test(test_events),
        cmocka_unit_test(test_answer_raced_by_event_is_not_fresh),
        cmocka_unit_test(test_stale_if_error),
        cmocka_unit_test(test_never_loaded_and_down),
        cmocka_unit_test(test_rate_limit_in_entry),
        cmocka_unit_test(test_eviction_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
