/*
 * flags_rules: names, limits, times, the rollout bucket and the precedence
 * of a flag's kill switch, allow list, deny list and rollout.
 */
#include "flags_rules.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

/* Expects rc to be INVALID_ARGUMENT with exactly want. */
static void
s_expect(int rc, const kl_status_t *st, const char *want)
{
    if (rc != -KL_INVALID_ARGUMENT || strcmp(st->message, want) != 0)
        fail_msg("want INVALID_ARGUMENT \"%s\", got %s \"%s\"", want,
                 kl_strerror(rc), st->message);
}

static void
test_names(void **state)
{
    char s63[64], s64[65];
    memset(s63, 'a', 63);
    s63[63] = '\0';
    memset(s64, 'a', 64);
    s64[64] = '\0';

    assert_true(flags_rules_plan_name_valid("pro"));
    assert_true(flags_rules_plan_name_valid("team-2_x"));
    assert_true(flags_rules_plan_name_valid(s63));
    assert_false(flags_rules_plan_name_valid(s64));
    assert_false(flags_rules_plan_name_valid(""));
    assert_false(flags_rules_plan_name_valid(NULL));
    assert_false(flags_rules_plan_name_valid("Pro"));
    assert_false(flags_rules_plan_name_valid("pro plan"));
    assert_false(flags_rules_plan_name_valid("pro.plan"));

    assert_true(flags_rules_feature_name_valid("data_export"));
    assert_true(flags_rules_feature_name_valid(s63));
    assert_false(flags_rules_feature_name_valid(s64));
    assert_false(flags_rules_feature_name_valid("data-export"));
    assert_false(flags_rules_feature_name_valid("Data"));
    assert_false(flags_rules_feature_name_valid(""));

    assert_true(flags_rules_flag_key_valid("new-ui.v2_beta"));
    assert_false(flags_rules_flag_key_valid("new ui"));
    assert_false(flags_rules_flag_key_valid("NewUI"));
    assert_false(flags_rules_flag_key_valid(s64));

    assert_true(flags_rules_price_id_valid("price_1MoBy5LkdIwHu7ix"));
    assert_false(flags_rules_price_id_valid("price-1"));
    assert_false(flags_rules_price_id_valid(""));

    assert_true(flags_rules_uuid_valid("6F1C2A7E-3b4d-4e5f-8a9b-0c1d2e3f4a5b"));
    assert_false(flags_rules_uuid_valid("6f1c2a7e3b4d4e5f8a9b0c1d2e3f4a5b"));
    assert_false(
        flags_rules_uuid_valid("6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5g"));
    char canon[37];
    flags_rules_uuid_canonical("6F1C2A7E-3B4D-4E5F-8A9B-0C1D2E3F4A5B", canon);
    assert_string_equal(canon, "6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b");
}

static void
test_messages(void **state)
{
    kl_status_t st;
    s_expect(flags_rules_check_plan_name("name", "", &st), &st,
             "name is required");
    s_expect(flags_rules_check_plan_name("plan", "Pro!", &st), &st,
             "plan \"Pro!\" is invalid: want 1 to 63 of a-z, 0-9, _ and -");
    assert_int_equal(flags_rules_check_plan_name("plan", "pro", &st), 0);

    s_expect(flags_rules_check_uuid("tenant_id", NULL, &st), &st,
             "tenant_id is required");
    s_expect(flags_rules_check_uuid("tenant_id", "abc", &st), &st,
             "tenant_id \"abc\" is not a UUID");

    s_expect(flags_rules_check_feature_name("feature", "Data-Export", &st), &st,
             "feature \"Data-Export\" is invalid: want 1 to 63 of a-z, 0-9 "
             "and _");

    s_expect(flags_rules_check_limit("max_projects", -5, &st), &st,
             "limit \"max_projects\": -5 is out of range (want "
             "-1..1000000000000)");
    s_expect(flags_rules_check_limit("storage_mb", 1000000000001LL, &st), &st,
             "limit \"storage_mb\": 1000000000001 is out of range (want "
             "-1..1000000000000)");
    assert_int_equal(flags_rules_check_limit("x", -1, &st), 0);
    assert_int_equal(flags_rules_check_limit("x", 1000000000000LL, &st), 0);

    s_expect(flags_rules_check_rollout(150, &st), &st,
             "rollout_percent: 150 is out of range (want 0..100)");
    s_expect(flags_rules_check_rollout(-1, &st), &st,
             "rollout_percent: -1 is out of range (want 0..100)");
    assert_int_equal(flags_rules_check_rollout(0, &st), 0);
    assert_int_equal(flags_rules_check_rollout(100, &st), 0);

    char long_text[202];
    memset(long_text, 'x', 201);
    long_text[201] = '\0';
    s_expect(flags_rules_check_text("display_name", long_text, 200, &st), &st,
             "display_name must be at most 200 characters, got 201");
    s_expect(flags_rules_check_text("display_name", "\xc3\x28", 200, &st), &st,
             "display_name must be valid UTF-8");
    /* 200 three-byte characters are 200 characters. */
    char cjk[601];
    for (int i = 0; i < 200; i++)
        memcpy(cjk + 3 * i, "\xe4\xb9\x9d", 3);
    cjk[600] = '\0';
    assert_int_equal(flags_rules_check_text("display_name", cjk, 200, &st), 0);
}

static void
test_times(void **state)
{
    kl_status_t st;
    const char *good[] = {"2030-01-02T03:04:05Z", "2030-01-02t03:04:05z",
                          "2030-01-02T03:04:05.123Z",
                          "2030-01-02T03:04:05.123456789+08:00",
                          "2030-12-31T23:59:59-05:30"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (flags_rules_check_time("expires_at", good[i], &st) != 0)
            fail_msg("%s: %s", good[i], st.message);
    const char *bad[] = {"tomorrow",
                         "2030-01-02",
                         "2030-01-02 03:04:05Z",
                         "2030-01-02T03:04:05",
                         "2030-13-02T03:04:05Z",
                         "2030-01-02T24:04:05Z",
                         "2030-01-02T03:04:05.Z",
                         "2030-01-02T03:04:05+0800",
                         "2030-01-02T03:04:05Zjunk",
                         ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char want[128];
        snprintf(want, sizeof want, "expires_at \"%s\" is not an RFC 3339 time",
                 bad[i]);
        s_expect(flags_rules_check_time("expires_at", bad[i], &st), &st, want);
    }
}

static void
test_countable(void **state)
{
    assert_true(flags_rules_limit_countable("max_projects"));
    assert_true(flags_rules_limit_countable("storage_mb"));
    assert_true(flags_rules_limit_countable("max_api_keys"));
    assert_false(flags_rules_limit_countable("api_requests_per_minute"));
    assert_false(flags_rules_limit_countable("emails_per_day"));
    assert_false(flags_rules_limit_countable("calls_per_second"));
    assert_false(flags_rules_limit_countable("exports_per_hour"));
}

static void
test_bucket_pinned(void **state)
{
    /* Pinned against an independent SHA-256 (Python hashlib): the bucket
     * must never change between releases, or rollouts would reshuffle. */
    assert_int_equal(
        flags_rules_bucket("00000000-0000-0000-0000-000000000001", "new_ui"),
        3);
    assert_int_equal(flags_rules_bucket("6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
                                        "beta.reports"),
                     46);
}

/* xorshift64*: a fixed sequence of "random" UUIDs, the same every run. */
static uint64_t
s_next(uint64_t *x)
{
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    return *x * 0x2545F4914F6CDD1DULL;
}

static void
s_uuid(uint64_t *seed, char out[37])
{
    uint64_t a = s_next(seed), b = s_next(seed);
    snprintf(out, 37, "%08x-%04x-4%03x-a%03x-%012llx", (unsigned)(a >> 32),
             (unsigned)(a >> 16 & 0xffff), (unsigned)(a & 0xfff),
             (unsigned)(b >> 48 & 0xfff),
             (unsigned long long)(b & 0xffffffffffffULL));
}

static void
test_rollout_stable(void **state)
{
    uint64_t seed = 0x9E3779B97F4A7C15ULL;
    int on10 = 0, on20 = 0;
    for (int i = 0; i < 1000; i++) {
        char t[37];
        s_uuid(&seed, t);
        assert_true(flags_rules_uuid_valid(t));
        flags_rules_flag_t f = {.key = "new_checkout", .rollout_percent = 10};
        bool at10 = flags_rules_flag_on(&f, t);
        f.rollout_percent = 20;
        bool at20 = flags_rules_flag_on(&f, t);
        /* Growing the rollout never turns a tenant off. */
        if (at10 && !at20)
            fail_msg("tenant %s on at 10%% but off at 20%%", t);
        on10 += at10;
        on20 += at20;
        /* Same answer every time. */
        f.rollout_percent = 10;
        assert_int_equal(flags_rules_flag_on(&f, t), at10);
        int b = flags_rules_bucket(t, "new_checkout");
        assert_true(b >= 0 && b < 100);
    }
    /* Binomial(1000, 0.1): sd 9.5, so 60..140 is over 4 sd. */
    if (on10 < 60 || on10 > 140)
        fail_msg("%d of 1000 on at 10%%", on10);
    if (on20 < 150 || on20 > 250)
        fail_msg("%d of 1000 on at 20%%", on20);
}

static void
test_precedence(void **state)
{
    const char *t = "00000000-0000-0000-0000-000000000001";
    /* bucket(t, "new_ui") is 3. */
    flags_rules_flag_t f = {.key = "new_ui", .rollout_percent = 4};
    assert_true(flags_rules_flag_on(&f, t));
    f.rollout_percent = 3;
    assert_false(flags_rules_flag_on(&f, t));
    f.rollout_percent = 0;
    assert_false(flags_rules_flag_on(&f, t));

    /* Allow beats rollout 0. */
    f.allowed = true;
    assert_true(flags_rules_flag_on(&f, t));
    /* Allow beats deny (the service refuses a tenant on both lists; the
     * rule stays defined). */
    f.denied = true;
    assert_true(flags_rules_flag_on(&f, t));
    /* Deny beats rollout 100. */
    f.allowed = false;
    f.rollout_percent = 100;
    assert_false(flags_rules_flag_on(&f, t));
    /* The kill switch beats everything. */
    f.denied = false;
    f.killed = true;
    assert_false(flags_rules_flag_on(&f, t));
    f.allowed = true;
    assert_false(flags_rules_flag_on(&f, t));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_messages),
        cmocka_unit_test(test_times),
        cmocka_unit_test(test_countable),
        cmocka_unit_test(test_bucket_pinned),
        cmocka_unit_test(test_rollout_stable),
        cmocka_unit_test(test_precedence),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
