/*
 * kl_rpc_client against in-process servers on tcp://127.0.0.1:*: pairing
 * under concurrency, timeouts, spreading over endpoints, failover and
 * retries, and shutdown.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "kl_rpc_test_echo.h"

#define S_THREADS 8
#define S_CALLS 200

typedef struct {
    kl_rpc_client_t *client; /* shared by all threads */
    int index;               /* thread number */
    int ok;                  /* calls answered with their own text */
    int wrong;               /* calls that failed or got another's reply */
} s_worker_arg_t;

static void *
s_caller(void *arg)
{
    s_worker_arg_t *a = arg;
    for (int i = 0; i < S_CALLS; i++) {
        char text[64];
        snprintf(text, sizeof text, "thread %d call %d", a->index, i);
        kl_status_t st;
        if (ts_call_echo(a->client, "Echo", text, 0, 5000, false, NULL, 0,
                         &st) == 0)
            a->ok++;
        else
            a->wrong++;
    }
    return NULL;
}

static void
test_concurrent_calls_pair_correctly(void **state)
{
    ts_server_t *ts = ts_start("A", 4, 0);
    const char *eps[] = {kl_rpc_server_endpoint(ts->server)};
    kl_rpc_client_t *c = ts_client(&kowloon__test__echo__descriptor, eps, 1);
    pthread_t th[S_THREADS];
    s_worker_arg_t args[S_THREADS];
    for (int i = 0; i < S_THREADS; i++) {
        args[i] = (s_worker_arg_t){.client = c, .index = i};
        pthread_create(&th[i], NULL, s_caller, &args[i]);
    }
    for (int i = 0; i < S_THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].wrong, 0);
        assert_int_equal(args[i].ok, S_CALLS);
    }
    assert_int_equal(atomic_load(&ts->invocations), S_THREADS * S_CALLS);
    kl_rpc_client_stats_t stats;
    kl_rpc_client_stats(c, &stats);
    assert_int_equal(stats.calls, S_THREADS * S_CALLS);
    assert_int_equal(stats.failures, 0);
    assert_int_equal(stats.retries, 0);
    kl_rpc_client_destroy(&c);
    assert_null(c);
    ts_destroy(&ts);
}

static void
test_timeout(void **state)
{
    ts_server_t *ts = ts_start("A", 1, 0);
    const char *eps[] = {kl_rpc_server_endpoint(ts->server)};
    kl_rpc_client_t *c = ts_client(&kowloon__test__echo__descriptor, eps, 1);
    kl_status_t st;
    int64_t t0 = kl_now_mono_ms();
    assert_int_equal(ts_call_echo(c, "Sleep", "", 600, 150, true, NULL, 0, &st),
                     -KL_DEADLINE_EXCEEDED);
    int64_t took = kl_now_mono_ms() - t0;
    assert_true(took >= 150 && took < 1000);
    assert_string_equal(st.message,
                        "kowloon.test.Echo/Sleep: no reply within 150 ms");
    kl_rpc_client_stats_t stats;
    kl_rpc_client_stats(c, &stats);
    assert_int_equal(stats.timeouts, 1);
    assert_int_equal(stats.failures, 1);
    /* One endpoint: an idempotent call has nowhere else to go. */
    assert_int_equal(stats.retries, 0);

    /* The late reply is dropped; the next call pairs with its own. */
    assert_int_equal(
        ts_call_echo(c, "Echo", "next", 0, 2000, false, NULL, 0, &st), 0);
    ts_sleep_ms(600);
    assert_int_equal(
        ts_call_echo(c, "Echo", "after", 0, 2000, false, NULL, 0, &st), 0);
    kl_rpc_client_destroy(&c);
    ts_destroy(&ts);
}

static void
test_bad_arguments(void **state)
{
    kl_status_t st;
    kl_rpc_client_opts_t o = {.endpoints = NULL, .n_endpoints = 0};
    assert_null(kl_rpc_client_new(&kowloon__test__echo__descriptor, &o, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    const char *bad[] = {"nonsense://x"};
    o = (kl_rpc_client_opts_t){.endpoints = bad, .n_endpoints = 1};
    assert_null(kl_rpc_client_new(&kowloon__test__echo__descriptor, &o, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_non_null(strstr(st.message, "nonsense://x"));

    const char *eps[] = {"tcp://127.0.0.1:1"};
    kl_rpc_client_t *c = ts_client(&kowloon__test__echo__descriptor, eps, 1);
    uint8_t *out = (uint8_t *)"x";
    size_t out_len = 9;
    kl_call_opts_t co = {.timeout_ms = 0};
    assert_int_equal(
        kl_rpc_client_call_raw(c, "Echo", NULL, 0, &co, &out, &out_len, &st),
        -KL_INVALID_ARGUMENT);
    assert_null(out);
    assert_int_equal(out_len, 0);
    co.timeout_ms = 100;
    assert_int_equal(
        kl_rpc_client_call_raw(c, "Missing", NULL, 0, &co, &out, &out_len, &st),
        -KL_UNIMPLEMENTED);
    assert_string_equal(st.message, "unknown method kowloon.test.Echo/Missing");
    /* A message of the wrong type for the method. */
    Kowloon__Test__EchoReply wrong = KOWLOON__TEST__ECHO_REPLY__INIT;
    ProtobufCMessage *msg;
    assert_int_equal(kl_rpc_client_call(c, "Echo", &wrong.base, &co, &msg, &st),
                     -KL_INVALID_ARGUMENT);
    kl_rpc_client_destroy(&c);
    kl_rpc_client_destroy(&c);
}

static void
test_no_server_is_unavailable(void **state)
{
    /* Bind and stop a server to get a port nobody listens on. */
    ts_server_t *ts = ts_start("A", 1, 0);
    char ep[64];
    snprintf(ep, sizeof ep, "%s", kl_rpc_server_endpoint(ts->server));
    ts_destroy(&ts);

    const char *eps[] = {ep};
    kl_rpc_client_t *c = ts_client(&kowloon__test__echo__descriptor, eps, 1);
    kl_status_t st;
    /* The first call waits out the connect grace (1 s), not its timeout. */
    int64_t t0 = kl_now_mono_ms();
    assert_int_equal(ts_call_echo(c, "Echo", "x", 0, 5000, true, NULL, 0, &st),
                     -KL_UNAVAILABLE);
    assert_true(kl_now_mono_ms() - t0 < 2000);
    assert_string_equal(st.message, "no connected instance of "
                                    "kowloon.test.Echo");
    /* After it, UNAVAILABLE comes at once. */
    t0 = kl_now_mono_ms();
    assert_int_equal(ts_call_echo(c, "Echo", "x", 0, 5000, true, NULL, 0, &st),
                     -KL_UNAVAILABLE);
    assert_true(kl_now_mono_ms() - t0 < 500);
    kl_rpc_client_destroy(&c);
}

static void
test_spread_and_failover(void **state)
{
    ts_server_t *a = ts_start("A", 2, 0);
    ts_server_t *b = ts_start("B", 2, 0);
    const char *eps[] = {kl_rpc_server_endpoint(a->server),
                         kl_rpc_server_endpoint(b->server)};
    kl_rpc_client_t *c = ts_client(&kowloon__test__echo__descriptor, eps, 2);
    kl_status_t st;
    /* Let both connect so neither call below fails for a slow handshake. */
    ts_sleep_ms(200);
    int on_a = 0, on_b = 0;
    for (int i = 0; i < 100; i++) {
        char text[32], tag[16];
        snprintf(text, sizeof text, "spread %d", i);
        assert_int_equal(
            ts_call_echo(c, "Echo", text, 0, 2000, false, tag, sizeof tag, &st),
            0);
        if (strcmp(tag, "A") == 0)
            on_a++;
        else if (strcmp(tag, "B") == 0)
            on_b++;
    }
    assert_int_equal(on_a + on_b, 100);
    assert_true(on_a >= 30 && on_b >= 30);

    /* A stops. Its connection goes away; calls go to B only. */
    assert_int_equal(ts_stop(a), 0);
    int a_count = atomic_load(&a->invocations);
    ts_sleep_ms(200);
    int b_before = atomic_load(&b->invocations);
    int ok = 0, unavailable = 0;
    for (int i = 0; i < 50; i++) {
        char text[32], tag[16] = "";
        snprintf(text, sizeof text, "after stop %d", i);
        int rc =
            ts_call_echo(c, "Echo", text, 0, 1000, false, tag, sizeof tag, &st);
        if (rc == 0) {
            assert_string_equal(tag, "B");
            ok++;
        } else {
            assert_int_equal(rc, -KL_UNAVAILABLE);
            unavailable++;
        }
    }
    assert_int_equal(ok + unavailable, 50);
    /* Never run twice, never run on the stopped server. */
    assert_int_equal(atomic_load(&b->invocations) - b_before, ok);
    assert_int_equal(atomic_load(&a->invocations), a_count);
    for (int i = 0; i < 20; i++) {
        char text[32], tag[16];
        snprintf(text, sizeof text, "idempotent %d", i);
        assert_int_equal(
            ts_call_echo(c, "Echo", text, 0, 2000, true, tag, sizeof tag, &st),
            0);
        assert_string_equal(tag, "B");
    }
    kl_rpc_client_destroy(&c);
    ts_destroy(&a);
    ts_destroy(&b);
}

static void
test_idempotent_retry_after_timeout(void **state)
{
    ts_server_t *a = ts_start("A", 2, 0);
    ts_server_t *b = ts_start("B", 2, 0);
    const char *eps[] = {kl_rpc_server_endpoint(a->server),
                         kl_rpc_server_endpoint(b->server)};
    kl_rpc_client_t *c = ts_client(&kowloon__test__echo__descriptor, eps, 2);
    kl_status_t st;
    ts_sleep_ms(200);
    /* Sleep "A" hangs on A (2 s) and is instant on B. Calls alternate, so
     * of two calls at least one meets A first: an idempotent call then
     * times out its first attempt (half of the 1 s) and is answered by B. */
    for (int i = 0; i < 2; i++) {
        char tag[16];
        int64_t t0 = kl_now_mono_ms();
        assert_int_equal(ts_call_echo(c, "Sleep", "A", 2000, 1000, true, tag,
                                      sizeof tag, &st),
                         0);
        assert_string_equal(tag, "B");
        /* Within the original deadline (plus scheduling slack). */
        assert_true(kl_now_mono_ms() - t0 < 1200);
    }
    kl_rpc_client_stats_t stats;
    kl_rpc_client_stats(c, &stats);
    assert_true(stats.retries >= 1);
    assert_int_equal(stats.timeouts, stats.retries);
    assert_int_equal(stats.failures, 0);
    assert_int_equal(atomic_load(&a->invocations), (int)stats.retries);
    uint64_t retries = stats.retries;

    /* Not idempotent: the call that meets A times out, no retry. */
    int timeouts = 0;
    for (int i = 0; i < 2; i++) {
        int rc = ts_call_echo(c, "Sleep", "A", 2000, 400, false, NULL, 0, &st);
        if (rc == -KL_DEADLINE_EXCEEDED)
            timeouts++;
        else
            assert_int_equal(rc, 0);
    }
    assert_int_equal(timeouts, 1);
    kl_rpc_client_stats(c, &stats);
    assert_int_equal(stats.retries, retries);
    kl_rpc_client_destroy(&c);
    ts_destroy(&a);
    ts_destroy(&b);
}

typedef struct {
    kl_rpc_client_t *client; /* shared */
    int rc;                  /* outcome */
    kl_status_t st;          /* its status */
} s_pending_arg_t;

static void *
s_pending_call(void *arg)
{
    s_pending_arg_t *p = arg;
    p->rc = ts_call_echo(p->client, "Sleep", "", 1500, 10000, false, NULL, 0,
                         &p->st);
    return NULL;
}

static void
test_destroy_cancels_pending(void **state)
{
    ts_server_t *ts = ts_start("A", 2, 0);
    const char *eps[] = {kl_rpc_server_endpoint(ts->server)};
    kl_rpc_client_t *c = ts_client(&kowloon__test__echo__descriptor, eps, 1);
    s_pending_arg_t p[2] = {{.client = c, .rc = 1}, {.client = c, .rc = 1}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, s_pending_call, &p[i]);
    ts_sleep_ms(300);
    int64_t t0 = kl_now_mono_ms();
    kl_rpc_client_destroy(&c);
    assert_true(kl_now_mono_ms() - t0 < 1000);
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(p[i].rc, -KL_CANCELLED);
        assert_string_equal(p[i].st.message, "rpc client destroyed");
    }
    ts_destroy(&ts);
}

static void
test_request_over_limit_not_sent(void **state)
{
    ts_server_t *ts = ts_start("A", 1, 0);
    const char *eps[] = {kl_rpc_server_endpoint(ts->server)};
    kl_rpc_client_opts_t o = {
        .endpoints = eps, .n_endpoints = 1, .max_message_bytes = 1024};
    kl_status_t st;
    kl_rpc_client_t *c =
        kl_rpc_client_new(&kowloon__test__echo__descriptor, &o, &st);
    uint8_t in[2048] = {0};
    uint8_t *out;
    size_t out_len;
    kl_call_opts_t co = {.timeout_ms = 1000};
    assert_int_equal(kl_rpc_client_call_raw(c, "Echo", in, sizeof in, &co, &out,
                                            &out_len, &st),
                     -KL_RESOURCE_EXHAUSTED);
    assert_int_equal(atomic_load(&ts->invocations), 0);
    /* Raw bytes straight through: an empty EchoRequest answers too. */
    assert_int_equal(
        kl_rpc_client_call_raw(c, "Echo", NULL, 0, &co, &out, &out_len, &st),
        0);
    Kowloon__Test__EchoReply *r =
        kowloon__test__echo_reply__unpack(NULL, out_len, out);
    assert_non_null(r);
    assert_string_equal(r->server, "A");
    kowloon__test__echo_reply__free_unpacked(r, NULL);
    free(out);
    kl_rpc_client_destroy(&c);
    ts_destroy(&ts);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_calls_pair_correctly),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_no_server_is_unavailable),
        cmocka_unit_test(test_spread_and_failover),
        cmocka_unit_test(test_idempotent_retry_after_timeout),
        cmocka_unit_test(test_destroy_cancels_pending),
        cmocka_unit_test(test_request_over_limit_not_sent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
