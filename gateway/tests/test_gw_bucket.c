/* gw_bucket: burst, refill math, Retry-After, unlimited and zero limits,
 * the share of N gateways, concurrent takers. */
#include "gw_bucket.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#define SEC 1000000LL

/* Takes until refused at now; returns how many were allowed. */
static int
s_drain(gw_bucket_t *b, int64_t limit, int64_t n, int64_t now, int64_t *retry)
{
    int ok = 0;
    while (gw_bucket_take(b, limit, n, now, retry))
        ok++;
    return ok;
}

static void
test_burst_then_refill(void **state)
{
    (void)state;
    gw_bucket_t b;
    int64_t retry = 0;
    gw_bucket_init(&b);
    /* 600/min, one gateway: burst 100, 10 tokens per second. */
    assert_true(gw_bucket_burst(600, 1) == 100.0);
    assert_int_equal(s_drain(&b, 600, 1, 1000 * SEC, &retry), 100);
    assert_int_equal(retry, 1); /* 0.1 s to the next token: rounded up */
    /* Half a second later: 5 tokens. */
    assert_int_equal(s_drain(&b, 600, 1, 1000 * SEC + SEC / 2, &retry), 5);
    /* An hour later: capped at the burst. */
    assert_int_equal(s_drain(&b, 600, 1, 4600 * SEC, &retry), 100);
}

static void
test_retry_after_whole_seconds(void **state)
{
    (void)state;
    gw_bucket_t b;
    int64_t retry = 0;
    gw_bucket_init(&b);
    /* 6/min: one token every 10 s, burst 1. */
    assert_true(gw_bucket_burst(6, 1) == 1.0);
    assert_true(gw_bucket_take(&b, 6, 1, 0, &retry));
    assert_false(gw_bucket_take(&b, 6, 1, 0, &retry));
    assert_int_equal(retry, 10);
    assert_false(gw_bucket_take(&b, 6, 1, 2500000, &retry));
    assert_int_equal(retry, 8); /* 7.5 s left: rounded up */
    assert_true(gw_bucket_take(&b, 6, 1, 10 * SEC, &retry));
}

static void
test_unlimited_and_zero(void **state)
{
    (void)state;
    gw_bucket_t b;
    int64_t retry = 0;
    gw_bucket_init(&b);
    for (int i = 0; i < 100000; i++)
        assert_true(gw_bucket_take(&b, -1, 1, 0, &retry));
    assert_false(gw_bucket_take(&b, 0, 1, 0, &retry));
    assert_int_equal(retry, 60);
}

static void
test_share_of_n_gateways(void **state)
{
    (void)state;
    gw_bucket_t b;
    int64_t retry = 0;
    gw_bucket_init(&b);
    /* 600/min over 3 gateways: each 200/min, burst ceil(600/18) = 34,
     * 10/3 tokens per second. */
    assert_true(gw_bucket_burst(600, 3) == 34.0);
    assert_int_equal(s_drain(&b, 600, 3, 0, &retry), 34);
    assert_int_equal(s_drain(&b, 600, 3, 3 * SEC, &retry), 10);
    /* Over a minute of steady traffic one gateway admits its share plus
     * the burst it started with: 34 + 200 at most. */
    gw_bucket_t c;
    int total = 0;
    gw_bucket_init(&c);
    for (int64_t t = 0; t <= 60 * SEC; t += SEC / 100)
        total += gw_bucket_take(&c, 600, 3, t, &retry) ? 1 : 0;
    assert_true(total >= 200 + 34 - 1 && total <= 200 + 34 + 1);
}

static void
test_limit_change_caps_tokens(void **state)
{
    (void)state;
    gw_bucket_t b;
    int64_t retry = 0;
    gw_bucket_init(&b);
    assert_true(gw_bucket_take(&b, 6000, 1, 0, &retry)); /* burst 1000 */
    /* Downgraded to 60/min: burst 10 from now on. */
    assert_int_equal(s_drain(&b, 60, 1, 0, &retry), 10);
}

static gw_bucket_t s_shared;
static int64_t s_allowed[4];

static void *
s_taker(void *arg)
{
    int64_t *count = arg, retry;
    for (int i = 0; i < 50000; i++)
        if (gw_bucket_take(&s_shared, 60000, 1, 0, &retry))
            (*count)++;
    return NULL;
}

static void
test_concurrent_takers_never_overshoot(void **state)
{
    (void)state;
    pthread_t th[4];
    gw_bucket_init(&s_shared);
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, s_taker, &s_allowed[i]);
    int64_t total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        total += s_allowed[i];
    }
    /* Clock frozen: exactly the burst (10000) gets through. */
    assert_int_equal(total, 10000);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_refill),
        cmocka_unit_test(test_retry_after_whole_seconds),
        cmocka_unit_test(test_unlimited_and_zero),
        cmocka_unit_test(test_share_of_n_gateways),
        cmocka_unit_test(test_limit_change_caps_tokens),
        cmocka_unit_test(test_concurrent_takers_never_overshoot),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
