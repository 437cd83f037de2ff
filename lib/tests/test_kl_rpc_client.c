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

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* A server like ts_start's, bound to bind, with a drain grace. */
static ts_server_t *
s_start_at(const char *tag, const char *bind, int drain_grace_ms)
{
    ts_server_t *ts = kl_calloc(1, sizeof *ts);
    snprintf(ts->tag, sizeof ts->tag, "%s", tag);
    kl_rpc_server_opts_t opts = {
        .bind = bind,
        .workers = 2,
        .worker_init = ts_worker_init,
        .worker_fini = ts_worker_fini,
        .user = ts,
        .no_signal_handlers = true,
        .drain_grace_ms = drain_grace_ms,
    };
    kl_status_t st;
    ts->server = kl_rpc_server_new(&opts, &st);
    assert_non_null(ts->server);
    assert_int_equal(
        kl_rpc_server_add_service(ts->server, &ts_echo_service.base), 0);
    assert_int_equal(kl_rpc_server_bind(ts->server, &st), 0);
    assert_int_equal(pthread_create(&ts->thread, NULL, ts_run, ts), 0);
    ts->running = true;
    return ts;
}

/* Calls Echo n times; counts answers per server tag (A, B, C). */
static void
s_count_tags(kl_rpc_client_t *c, int n, int counts[3])
{
    counts[0] = counts[1] = counts[2] = 0;
    for (int i = 0; i < n; i++) {
        char text[32], tag[16] = "";
        kl_status_t st;
        snprintf(text, sizeof text, "count %d", i);
        assert_int_equal(
            ts_call_echo(c, "Echo", text, 0, 2000, false, tag, sizeof tag, &st),
            0);
        assert_true(tag[0] >= 'A' && tag[0] <= 'C');
        counts[tag[0] - 'A']++;
    }
}

static void
test_set_endpoints_adds_and_removes(void **state)
{
    ts_server_t *a = ts_start("A", 2, 0);
    ts_server_t *b = ts_start("B", 2, 0);
    const char *ea = kl_rpc_server_endpoint(a->server);
    const char *eb = kl_rpc_server_endpoint(b->server);
    kl_rpc_client_t *c = ts_client(&kowloon__test__echo__descriptor, &ea, 1);
    int counts[3];
    s_count_tags(c, 20, counts);
    assert_int_equal(counts[0], 20);

    /* An instance added at run time gets its share of the calls. */
    const char *both[] = {ea, eb};
    kl_status_t st;
    assert_int_equal(kl_rpc_client_set_endpoints(c, both, 2, &st), 0);
    size_t up;
    assert_int_equal(kl_rpc_client_endpoint_count(c, &up), 2);
    assert_int_equal(up, 2);
    ts_sleep_ms(200);
    s_count_tags(c, 100, counts);
    assert_true(counts[0] >= 30 && counts[1] >= 30);

    /* A bad set changes nothing. */
    const char *bad[] = {eb, "tcp://127.0.0.1:1?key=short"};
    assert_int_equal(kl_rpc_client_set_endpoints(c, bad, 2, &st),
                     -KL_INVALID_ARGUMENT);
    assert_non_null(strstr(st.message, "?key="));
    const char *nokeys[] = {"tcp://127.0.0.1:1?key="
                            "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"};
    assert_int_equal(kl_rpc_client_set_endpoints(c, nokeys, 1, &st),
                     -KL_INVALID_ARGUMENT);
    assert_non_null(strstr(st.message, "KOWLOON_CURVE_SECRET_KEY_FILE"));
    assert_int_equal(kl_rpc_client_set_endpoints(c, NULL, 0, &st),
                     -KL_INVALID_ARGUMENT);
    assert_int_equal(kl_rpc_client_endpoint_count(c, NULL), 2);

    /* Removing A: everything goes to B. */
    assert_int_equal(kl_rpc_client_set_endpoints(c, &eb, 1, &st), 0);
    s_count_tags(c, 20, counts);
    assert_int_equal(counts[1], 20);
    kl_rpc_client_destroy(&c);
    ts_destroy(&a);
    ts_destroy(&b);
}

static void
test_ejected_instance_comes_back(void **state)
{
    ts_server_t *a = ts_start("A", 2, 0);
    ts_server_t *b = ts_start("B", 2, 0);
    char ea[128];
    snprintf(ea, sizeof ea, "%s", kl_rpc_server_endpoint(a->server));
    const char *eps[] = {ea, kl_rpc_server_endpoint(b->server)};
    kl_rpc_client_opts_t opts = {
        .endpoints = eps,
        .n_endpoints = 2,
        .balancer = {.eject_after = 2,
                     .backoff_ms = 100,
                     .backoff_max_ms = 200},
    };
    kl_status_t st;
    kl_rpc_client_t *c =
        kl_rpc_client_new(&kowloon__test__echo__descriptor, &opts, &st);
    assert_non_null(c);
    ts_sleep_ms(200);
    int counts[3];
    s_count_tags(c, 40, counts);
    assert_true(counts[0] > 0 && counts[1] > 0);

    /* A goes away: sends to it find no connection, it is ejected, and
     * every call is answered by B. */
    assert_int_equal(ts_stop(a), 0);
    ts_destroy(&a);
    ts_sleep_ms(100);
    s_count_tags(c, 40, counts);
    assert_int_equal(counts[1], 40);
    size_t up;
    assert_int_equal(kl_rpc_client_endpoint_count(c, &up), 2);
    assert_int_equal(up, 1);

    /* A new instance answers on A's address: a probe brings it back and
     * it gets calls again, without touching the client. */
    ts_server_t *a2 = s_start_at("C", ea, 0);
    for (int i = 0; i < 50 && up != 2; i++) {
        ts_sleep_ms(100);
        kl_rpc_client_endpoint_count(c, &up);
    }
    assert_int_equal(up, 2);
    s_count_tags(c, 40, counts);
    assert_true(counts[2] >= 10 && counts[1] >= 10);
    kl_rpc_client_destroy(&c);
    ts_destroy(&a2);
    ts_destroy(&b);
}

typedef struct {
    kl_rpc_client_t *client; /* shared */
    atomic_bool *stop;       /* set when the test is done */
    int index;               /* thread number */
    int ok;                  /* calls answered */
    int failed;              /* calls that failed */
} s_load_t;

static void *
s_load_main(void *arg)
{
    s_load_t *l = arg;
    for (int i = 0; !atomic_load(l->stop); i++) {
        char text[64];
        snprintf(text, sizeof text, "load %d/%d", l->index, i);
        kl_status_t st;
        /* Not idempotent: never retried unless provably not run. */
        if (ts_call_echo(l->client, "Echo", text, 0, 3000, false, NULL, 0,
                         &st) == 0)
            l->ok++;
        else {
            fprintf(stderr, "call failed: %s\n", st.message);
            l->failed++;
        }
    }
    return NULL;
}

static void
test_drain_under_load_fails_nothing(void **state)
{
    /* A rolling restart of A and B, under a steady load of
     * non-idempotent calls: each instance drains (refusing new calls as
     * not executed for its grace period), exits and comes back on the
     * same address. No call may fail, none may run twice. */
    ts_server_t *a = s_start_at("A", "tcp://127.0.0.1:*", 300);
    ts_server_t *b = s_start_at("B", "tcp://127.0.0.1:*", 300);
    char ea[128], eb[128];
    snprintf(ea, sizeof ea, "%s", kl_rpc_server_endpoint(a->server));
    snprintf(eb, sizeof eb, "%s", kl_rpc_server_endpoint(b->server));
    const char *eps[] = {ea, eb};
    kl_rpc_client_opts_t opts = {
        .endpoints = eps,
        .n_endpoints = 2,
        .balancer = {.backoff_ms = 100, .backoff_max_ms = 200},
    };
    kl_status_t st;
    kl_rpc_client_t *c =
        kl_rpc_client_new(&kowloon__test__echo__descriptor, &opts, &st);
    assert_non_null(c);
    ts_sleep_ms(200);
    atomic_bool stop;
    atomic_init(&stop, false);
    enum { N = 4 };
    s_load_t load[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        load[i] = (s_load_t){.client = c, .stop = &stop, .index = i};
        assert_int_equal(pthread_create(&th[i], NULL, s_load_main, &load[i]),
                         0);
    }
    int invoked = 0;
    ts_server_t *cur[2] = {a, b};
    char *addr[2] = {ea, eb};
    for (int round = 0; round < 2; round++) {
        for (int k = 0; k < 2; k++) {
            ts_sleep_ms(300);
            assert_int_equal(ts_stop(cur[k]), 0);
            invoked += atomic_load(&cur[k]->invocations);
            ts_destroy(&cur[k]);
            cur[k] = s_start_at(k ? "B" : "A", addr[k], 300);
        }
    }
    ts_sleep_ms(300);
    atomic_store(&stop, true);
    int ok = 0, failed = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ok += load[i].ok;
        failed += load[i].failed;
    }
    for (int k = 0; k < 2; k++) {
        assert_int_equal(ts_stop(cur[k]), 0);
        invoked += atomic_load(&cur[k]->invocations);
        ts_destroy(&cur[k]);
    }
    kl_rpc_client_stats_t stats;
    kl_rpc_client_stats(c, &stats);
    printf("rolling restart: %d calls ok, %d failed, %llu sent again after a "
           "not-executed refusal\n",
           ok, failed, (unsigned long long)stats.retries);
    assert_int_equal(failed, 0);
    assert_true(ok > 100);
    /* Every answered call ran exactly once. */
    assert_int_equal(invoked, ok);
    /* The drains were seen: some non-idempotent calls were refused unrun
     * and sent to the other instance. */
    assert_true(stats.retries >= 1);
    kl_rpc_client_destroy(&c);
}

/* --- an instance that crashes ------------------------------------------ */

/* A server tagged tag in a child process, so that SIGKILL can end it the
 * way a crash does: the kernel closes its connections, nothing is said on
 * the wire. Its endpoint is written to ep. Returns the child's pid. */
static pid_t
s_fork_server(const char *tag, char *ep, size_t ep_size)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        ts_server_t *ts = ts_start(tag, 2, 0);
        if (!ts)
            _exit(1);
        const char *e = kl_rpc_server_endpoint(ts->server);
        ssize_t w = write(fds[1], e, strlen(e));
        (void)w;
        close(fds[1]);
        for (;;)
            pause();
    }
    close(fds[1]);
    size_t len = 0;
    ssize_t r;
    while (len + 1 < ep_size &&
           (r = read(fds[0], ep + len, ep_size - 1 - len)) > 0)
        len += (size_t)r;
    ep[len] = '\0';
    close(fds[0]);
    assert_true(len > 0);
    return pid;
}

static void
s_kill_server(pid_t pid)
{
    assert_int_equal(kill(pid, SIGKILL), 0);
    int wst;
    assert_int_equal(waitpid(pid, &wst, 0), pid);
    assert_true(WIFSIGNALED(wst));
}

typedef struct {
    kl_rpc_client_t *client; /* shared */
    const char *text;        /* Sleep text: "" sleeps everywhere */
    bool idempotent;         /* the call's mark */
    int rc;                  /* outcome */
    kl_status_t st;          /* its status */
    char tag[16];            /* who answered */
    atomic_bool done;        /* rc, st and tag are set */
} s_sleep_arg_t;

static void *
s_sleep_call(void *arg)
{
    s_sleep_arg_t *p = arg;
    p->rc = ts_call_echo(p->client, "Sleep", p->text, 3000, 10000,
                         p->idempotent, p->tag, sizeof p->tag, &p->st);
    atomic_store(&p->done, true);
    return NULL;
}

static void
test_crashed_instance_fails_calls_at_once(void **state)
{
    char ep[128];
    pid_t pid = s_fork_server("A", ep, sizeof ep);
    const char *eps[] = {ep};
    kl_rpc_client_t *c = ts_client(&kowloon__test__echo__descriptor, eps, 1);
    assert_non_null(c);
    kl_status_t st;
    assert_int_equal(
        ts_call_echo(c, "Echo", "hello", 0, 2000, false, NULL, 0, &st), 0);

    /* A 3 s call with a 10 s timeout is running when the instance dies:
     * it fails UNAVAILABLE as soon as the connection is gone, not at its
     * deadline. */
    s_sleep_arg_t p = {.client = c, .text = "", .rc = 1};
    atomic_init(&p.done, false);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, s_sleep_call, &p), 0);
    ts_sleep_ms(500);
    assert_false(atomic_load(&p.done));
    int64_t t0 = kl_now_mono_ms();
    s_kill_server(pid);
    pthread_join(th, NULL);
    int64_t took = kl_now_mono_ms() - t0;
    assert_int_equal(p.rc, -KL_UNAVAILABLE);
    char want[200];
    snprintf(want, sizeof want, "connection to %s lost", ep);
    assert_string_equal(p.st.message, want);
    assert_true(took < 2000);
    kl_rpc_client_stats_t stats;
    kl_rpc_client_stats(c, &stats);
    assert_int_equal(stats.timeouts, 0);
    assert_int_equal(stats.retries, 0);
    assert_int_equal(stats.failures, 1);
    kl_rpc_client_destroy(&c);
}

static void
test_crashed_instance_idempotent_goes_elsewhere(void **state)
{
    /* Fork before this process starts any thread of its own. */
    char ep[128];
    pid_t pid = s_fork_server("A", ep, sizeof ep);
    ts_server_t *b = ts_start("B", 2, 0);
    const char *eps[] = {ep, kl_rpc_server_endpoint(b->server)};
    kl_rpc_client_t *c = ts_client(&kowloon__test__echo__descriptor, eps, 2);
    assert_non_null(c);
    ts_sleep_ms(200);

    /* Sleep "A" takes 3 s on A and no time on B: a call still running
     * after 500 ms is on A. Calls alternate, so one of the first few is. */
    s_sleep_arg_t p;
    pthread_t th;
    bool on_a = false;
    for (int i = 0; i < 4 && !on_a; i++) {
        p = (s_sleep_arg_t){
            .client = c, .text = "A", .idempotent = true, .rc = 1};
        atomic_init(&p.done, false);
        assert_int_equal(pthread_create(&th, NULL, s_sleep_call, &p), 0);
        ts_sleep_ms(500);
        on_a = !atomic_load(&p.done);
        if (!on_a) {
            pthread_join(th, NULL);
            assert_int_equal(p.rc, 0);
            assert_string_equal(p.tag, "B");
        }
    }
    assert_true(on_a);
    int b_before = atomic_load(&b->invocations);
    int64_t t0 = kl_now_mono_ms();
    s_kill_server(pid);
    pthread_join(th, NULL);
    int64_t took = kl_now_mono_ms() - t0;
    /* Retried on B within its deadline, long before it. */
    assert_int_equal(p.rc, 0);
    assert_string_equal(p.tag, "B");
    assert_true(took < 2000);
    assert_int_equal(atomic_load(&b->invocations), b_before + 1);
    kl_rpc_client_stats_t stats;
    kl_rpc_client_stats(c, &stats);
    assert_int_equal(stats.retries, 1);
    assert_int_equal(stats.timeouts, 0);
    assert_int_equal(stats.failures, 0);
    kl_rpc_client_destroy(&c);
    ts_destroy(&b);
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
        cmocka_unit_test(test_set_endpoints_adds_and_removes),
        cmocka_unit_test(test_ejected_instance_comes_back),
        cmocka_unit_test(test_drain_under_load_fails_nothing),
        cmocka_unit_test(test_crashed_instance_fails_calls_at_once),
        cmocka_unit_test(test_crashed_instance_idempotent_goes_elsewhere),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
