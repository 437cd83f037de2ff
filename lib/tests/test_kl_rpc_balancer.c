/*
 * kl_rpc_balancer: the choice (least outstanding, rotation on ties, tried
 * slots last), ejection after consecutive failures, probes with backoff,
 * recovery, and panic when everything is ejected.
 */
#include "kl_rpc_balancer.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static kl_rpc_balancer_t *
s_new(int n)
{
    kl_rpc_balancer_opts_t o = {
        .eject_after = 3, .backoff_ms = 100, .backoff_max_ms = 400};
    kl_rpc_balancer_t *lb = kl_rpc_balancer_new(&o);
    for (int i = 0; i < n; i++)
        assert_int_equal(kl_rpc_balancer_add(lb), i);
    return lb;
}

static int
s_first(kl_rpc_balancer_t *lb, uint64_t tried)
{
    int order[KL_RPC_BALANCER_SLOTS];
    size_t n = kl_rpc_balancer_order(lb, tried, order);
    return n ? order[0] : -1;
}

static void
test_ties_rotate(void **state)
{
    kl_rpc_balancer_t *lb = s_new(3);
    int hits[3] = {0};
    /* Nothing outstanding anywhere: equal load, so the first choice goes
     * round all three, not always to slot 0. */
    for (int i = 0; i < 30; i++)
        hits[s_first(lb, 0)]++;
    assert_int_equal(hits[0], 10);
    assert_int_equal(hits[1], 10);
    assert_int_equal(hits[2], 10);
    kl_rpc_balancer_destroy(&lb);
    assert_null(lb);
}

static void
test_least_outstanding(void **state)
{
    kl_rpc_balancer_t *lb = s_new(3);
    kl_rpc_balancer_sent(lb, 0);
    kl_rpc_balancer_sent(lb, 0);
    kl_rpc_balancer_sent(lb, 1);
    /* Slot 2 has none: it is first whatever the rotation. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(s_first(lb, 0), 2);
    int order[KL_RPC_BALANCER_SLOTS];
    assert_int_equal(kl_rpc_balancer_order(lb, 0, order), 3);
    assert_int_equal(order[0], 2);
    assert_int_equal(order[1], 1);
    assert_int_equal(order[2], 0);
    /* Tried slots come last even when less busy. */
    assert_int_equal(kl_rpc_balancer_order(lb, 1u << 2, order), 3);
    assert_int_equal(order[0], 1);
    assert_int_equal(order[2], 2);
    kl_rpc_balancer_finished(lb, 0, true, 0);
    kl_rpc_balancer_finished(lb, 0, true, 0);
    assert_int_equal(kl_rpc_balancer_outstanding(lb, 0), 0);
    assert_int_equal(kl_rpc_balancer_outstanding(lb, 1), 1);
    kl_rpc_balancer_destroy(&lb);
}

static void
test_ejection_after_consecutive_failures(void **state)
{
    kl_rpc_balancer_t *lb = s_new(2);
    int64_t now = 1000;
    /* Two failures, a success: the count starts again. */
    kl_rpc_balancer_failed(lb, 1, now);
    kl_rpc_balancer_failed(lb, 1, now);
    kl_rpc_balancer_sent(lb, 1);
    kl_rpc_balancer_finished(lb, 1, true, now);
    kl_rpc_balancer_failed(lb, 1, now);
    kl_rpc_balancer_failed(lb, 1, now);
    assert_int_equal(kl_rpc_balancer_state(lb, 1), KL_RPC_LB_UP);
    /* The third in a row ejects it: calls go to slot 0 only. */
    kl_rpc_balancer_sent(lb, 1);
    kl_rpc_balancer_finished(lb, 1, false, now);
    assert_int_equal(kl_rpc_balancer_state(lb, 1), KL_RPC_LB_EJECTED);
    assert_int_equal(kl_rpc_balancer_up_count(lb), 1);
    int order[KL_RPC_BALANCER_SLOTS];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(kl_rpc_balancer_order(lb, 0, order), 1);
        assert_int_equal(order[0], 0);
    }
    /* No probe before the backoff ends. */
    assert_int_equal(kl_rpc_balancer_next_probe_ms(lb), now + 100);
    assert_int_equal(kl_rpc_balancer_probe_due(lb, now + 99), -1);
    kl_rpc_balancer_destroy(&lb);
}

static void
test_probe_backoff_and_recovery(void **state)
{
    kl_rpc_balancer_t *lb = s_new(2);
    int64_t now = 0;
    kl_rpc_balancer_eject(lb, 0, now);
    assert_int_equal(kl_rpc_balancer_state(lb, 0), KL_RPC_LB_EJECTED);
    /* Backoff over: one probe, and the slot is PROBING (still no calls). */
    assert_int_equal(kl_rpc_balancer_probe_due(lb, 100), 0);
    assert_int_equal(kl_rpc_balancer_state(lb, 0), KL_RPC_LB_PROBING);
    assert_int_equal(kl_rpc_balancer_probe_due(lb, 100), -1);
    assert_int_equal(s_first(lb, 0), 1);
    /* A failed probe doubles the backoff: 200, then 400, capped at 400. */
    kl_rpc_balancer_probe_result(lb, 0, false, 100);
    assert_int_equal(kl_rpc_balancer_next_probe_ms(lb), 300);
    assert_int_equal(kl_rpc_balancer_probe_due(lb, 300), 0);
    kl_rpc_balancer_probe_result(lb, 0, false, 300);
    assert_int_equal(kl_rpc_balancer_next_probe_ms(lb), 700);
    assert_int_equal(kl_rpc_balancer_probe_due(lb, 700), 0);
    kl_rpc_balancer_probe_result(lb, 0, false, 700);
    assert_int_equal(kl_rpc_balancer_next_probe_ms(lb), 1100);
    /* A good probe: back in rotation, and the next ejection starts again
     * from the first backoff. */
    assert_int_equal(kl_rpc_balancer_probe_due(lb, 1100), 0);
    kl_rpc_balancer_probe_result(lb, 0, true, 1100);
    assert_int_equal(kl_rpc_balancer_state(lb, 0), KL_RPC_LB_UP);
    assert_int_equal(kl_rpc_balancer_up_count(lb), 2);
    assert_int_equal(kl_rpc_balancer_next_probe_ms(lb), INT64_MAX);
    kl_rpc_balancer_eject(lb, 0, 2000);
    assert_int_equal(kl_rpc_balancer_next_probe_ms(lb), 2100);
    kl_rpc_balancer_destroy(&lb);
}

static void
test_panic_when_all_ejected(void **state)
{
    kl_rpc_balancer_t *lb = s_new(2);
    kl_rpc_balancer_eject(lb, 0, 0);
    kl_rpc_balancer_eject(lb, 1, 0);
    int order[KL_RPC_BALANCER_SLOTS];
    /* Nothing UP: both are offered rather than failing every call. */
    assert_int_equal(kl_rpc_balancer_order(lb, 0, order), 2);
    /* A call answered by an ejected slot brings it back. */
    kl_rpc_balancer_sent(lb, order[0]);
    kl_rpc_balancer_finished(lb, order[0], true, 10);
    assert_int_equal(kl_rpc_balancer_state(lb, order[0]), KL_RPC_LB_UP);
    assert_int_equal(kl_rpc_balancer_order(lb, 0, order), 1);
    kl_rpc_balancer_destroy(&lb);
}

/* A retry that has tried every UP slot gets the untried ejected ones
 * before the UP slot that just failed; a fresh call never sees them. */
static void
test_retry_prefers_untried_ejected(void **state)
{
    kl_rpc_balancer_t *lb = s_new(3);
    kl_rpc_balancer_eject(lb, 1, 0);
    kl_rpc_balancer_eject(lb, 2, 0);
    int order[KL_RPC_BALANCER_SLOTS];
    assert_int_equal(kl_rpc_balancer_order(lb, 0, order), 1);
    assert_int_equal(order[0], 0);
    assert_int_equal(kl_rpc_balancer_order(lb, 1u << 0, order), 3);
    assert_true(order[0] == 1 || order[0] == 2);
    assert_true(order[1] == 1 || order[1] == 2);
    assert_int_equal(order[2], 0);
    /* Every slot tried: only the UP one is offered again. */
    assert_int_equal(kl_rpc_balancer_order(lb, 7u, order), 1);
    assert_int_equal(order[0], 0);
    assert_int_equal(kl_rpc_balancer_untried(lb, 7u), 0);
    assert_int_equal(kl_rpc_balancer_untried(lb, 1u), 2);
    kl_rpc_balancer_destroy(&lb);
}

static void
test_slots_add_remove(void **state)
{
    kl_rpc_balancer_t *lb = s_new(3);
    kl_rpc_balancer_sent(lb, 1);
    kl_rpc_balancer_remove(lb, 1);
    assert_int_equal(kl_rpc_balancer_state(lb, 1), KL_RPC_LB_FREE);
    int order[KL_RPC_BALANCER_SLOTS];
    assert_int_equal(kl_rpc_balancer_order(lb, 0, order), 2);
    for (int i = 0; i < 2; i++)
        assert_int_not_equal(order[i], 1);
    /* The freed slot is reused, fresh. */
    assert_int_equal(kl_rpc_balancer_add(lb), 1);
    assert_int_equal(kl_rpc_balancer_outstanding(lb, 1), 0);
    for (int i = 3; i < KL_RPC_BALANCER_SLOTS; i++)
        assert_int_equal(kl_rpc_balancer_add(lb), i);
    assert_int_equal(kl_rpc_balancer_add(lb), -1);
    /* Bad slots are ignored, not crashed on. */
    kl_rpc_balancer_sent(lb, -1);
    kl_rpc_balancer_finished(lb, 99, false, 0);
    kl_rpc_balancer_destroy(&lb);
    kl_rpc_balancer_destroy(NULL);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ties_rotate),
        cmocka_unit_test(test_least_outstanding),
        cmocka_unit_test(test_ejection_after_consecutive_failures),
        cmocka_unit_test(test_probe_backoff_and_recovery),
        cmocka_unit_test(test_panic_when_all_ejected),
        cmocka_unit_test(test_retry_prefers_untried_ejected),
        cmocka_unit_test(test_slots_add_remove),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
