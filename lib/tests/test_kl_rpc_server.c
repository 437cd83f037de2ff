/*
 * kl_rpc_server: an in-process server on tcp://127.0.0.1:*, driven by
 * kl_rpc_client and by a raw DEALER for frames no client would send.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "kl_rpc_test_echo.h"

static const char *const *
s_eps(ts_server_t *ts)
{
    static const char *one[1];
    one[0] = kl_rpc_server_endpoint(ts->server);
    return one;
}

static void
test_bind_reports_real_endpoint(void **state)
{
    ts_server_t *ts = ts_start("A", 1, 0);
    assert_non_null(ts);
    const char *ep = kl_rpc_server_endpoint(ts->server);
    assert_non_null(ep);
    assert_int_equal(strncmp(ep, "tcp://127.0.0.1:", 16), 0);
    int port = atoi(ep + 16);
    assert_true(port > 0 && port < 65536);

    /* A second server on the same port cannot bind. */
    kl_rpc_server_opts_t o = {
        .bind = ep, .workers = 1, .no_signal_handlers = true};
    kl_status_t st;
    kl_rpc_server_t *other = kl_rpc_server_new(&o, &st);
    assert_non_null(other);
    assert_int_equal(kl_rpc_server_bind(other, &st), -KL_UNAVAILABLE);
    assert_non_null(strstr(st.message, "zmq_bind"));
    kl_rpc_server_destroy(&other);
    assert_null(other);

    /* Port 0 picks a free port too. */
    o.bind = "tcp://127.0.0.1:0";
    other = kl_rpc_server_new(&o, &st);
    assert_int_equal(kl_rpc_server_bind(other, &st), 0);
    assert_true(atoi(kl_rpc_server_endpoint(other) + 16) > 0);
    kl_rpc_server_destroy(&other);
    ts_destroy(&ts);
}

static void
test_bad_options(void **state)
{
    kl_status_t st;
    kl_rpc_server_opts_t o = {.bind = "tcp://127.0.0.1:*", .workers = 0};
    assert_null(kl_rpc_server_new(&o, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    o.workers = 1;
    o.bind = NULL;
    assert_null(kl_rpc_server_new(&o, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);

    /* Health is built in; registering a second one is refused, as is
     * registering the same service twice. */
    o.bind = "tcp://127.0.0.1:*";
    kl_rpc_server_t *s = kl_rpc_server_new(&o, &st);
    Kowloon__Rpc__Health_Service h;
    kowloon__rpc__health__init(&h, NULL);
    assert_int_equal(kl_rpc_server_add_service(s, &h.base), -KL_ALREADY_EXISTS);
    assert_int_equal(kl_rpc_server_add_service(s, &ts_echo_service.base), 0);
    assert_int_equal(kl_rpc_server_add_service(s, &ts_echo_service.base),
                     -KL_ALREADY_EXISTS);
    kl_rpc_server_destroy(&s);
}

static void
test_round_trip_with_context(void **state)
{
    ts_server_t *ts = ts_start("A", 2, 0);
    kl_rpc_client_t *c =
        ts_client(&kowloon__test__echo__descriptor, s_eps(ts), 1);
    Kowloon__Test__EchoRequest in = KOWLOON__TEST__ECHO_REQUEST__INIT;
    in.text = "hello";
    kl_call_ctx_t ctx = {.request_id = "req-1", .tenant_id = "t-42"};
    kl_call_opts_t o = {.timeout_ms = 2000, .ctx = &ctx};
    ProtobufCMessage *out = NULL;
    kl_status_t st;
    assert_int_equal(kl_rpc_client_call(c, "Echo", &in.base, &o, &out, &st), 0);
    Kowloon__Test__EchoReply *r = (Kowloon__Test__EchoReply *)out;
    assert_ptr_equal(out->descriptor, &kowloon__test__echo_reply__descriptor);
    assert_string_equal(r->text, "hello");
    assert_string_equal(r->server, "A");
    assert_string_equal(r->request_id, "req-1");
    assert_string_equal(r->tenant_id, "t-42");
    protobuf_c_message_free_unpacked(out, NULL);

    /* No context: the handler sees "". */
    o.ctx = NULL;
    assert_int_equal(kl_rpc_client_call(c, "Echo", &in.base, &o, &out, &st), 0);
    r = (Kowloon__Test__EchoReply *)out;
    assert_string_equal(r->request_id, "");
    protobuf_c_message_free_unpacked(out, NULL);

    kl_rpc_client_destroy(&c);
    assert_int_equal(ts_stop(ts), 0);
    /* Each worker ran worker_init and worker_fini once. */
    assert_int_equal(atomic_load(&ts->inits), 2);
    assert_int_equal(atomic_load(&ts->finis), 2);
    ts_destroy(&ts);
}

static void
test_handler_errors(void **state)
{
    ts_server_t *ts = ts_start("A", 1, 0);
    kl_rpc_client_t *c =
        ts_client(&kowloon__test__echo__descriptor, s_eps(ts), 1);
    Kowloon__Test__EchoRequest in = KOWLOON__TEST__ECHO_REQUEST__INIT;
    in.code = KL_NOT_FOUND;
    in.message = "tenant acme not found";
    kl_call_opts_t o = {.timeout_ms = 2000};
    ProtobufCMessage *out = (ProtobufCMessage *)&in;
    kl_status_t st;
    assert_int_equal(kl_rpc_client_call(c, "Fail", &in.base, &o, &out, &st),
                     -KL_NOT_FOUND);
    assert_null(out);
    assert_int_equal(st.code, KL_NOT_FOUND);
    assert_string_equal(st.message, "tenant acme not found");

    in.code = KL_PERMISSION_DENIED;
    in.message = "no";
    assert_int_equal(kl_rpc_client_call(c, "Fail", &in.base, &o, &out, &st),
                     -KL_PERMISSION_DENIED);
    assert_string_equal(st.message, "no");

    /* A handler that never answers is an INTERNAL error. */
    assert_int_equal(kl_rpc_client_call(c, "Silent", &in.base, &o, &out, &st),
                     -KL_INTERNAL);
    assert_string_equal(st.message,
                        "kowloon.test.Echo/Silent returned no reply");

    /* Unknown method: refused by the client without sending. */
    int before = atomic_load(&ts->invocations);
    assert_int_equal(kl_rpc_client_call(c, "Nope", &in.base, &o, &out, &st),
                     -KL_UNIMPLEMENTED);
    assert_string_equal(st.message, "unknown method kowloon.test.Echo/Nope");
    assert_int_equal(atomic_load(&ts->invocations), before);

    kl_rpc_client_destroy(&c);
    ts_destroy(&ts);
}

static void
test_health_check(void **state)
{
    ts_server_t *ts = ts_start("A", 1, 0);
    kl_rpc_client_t *c =
        ts_client(&kowloon__rpc__health__descriptor, s_eps(ts), 1);
    Kowloon__Rpc__HealthCheckRequest in =
        KOWLOON__RPC__HEALTH_CHECK_REQUEST__INIT;
    kl_call_opts_t o = {.timeout_ms = 2000};
    ProtobufCMessage *out = NULL;
    kl_status_t st;
    assert_int_equal(kl_rpc_client_call(c, "Check", &in.base, &o, &out, &st),
                     0);
    assert_int_equal(
        ((Kowloon__Rpc__HealthCheckResponse *)out)->status,
        KOWLOON__RPC__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    protobuf_c_message_free_unpacked(out, NULL);
    assert_int_equal(atomic_load(&ts->ready_calls), 1);
    assert_true(atomic_load(&ts->ready_on_worker));

    atomic_store(&ts->not_ready, true);
    assert_int_equal(kl_rpc_client_call(c, "Check", &in.base, &o, &out, &st),
                     0);
    assert_int_equal(
        ((Kowloon__Rpc__HealthCheckResponse *)out)->status,
        KOWLOON__RPC__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
    protobuf_c_message_free_unpacked(out, NULL);

    /* Per service: a served one answers, an unknown one is NOT_FOUND. */
    atomic_store(&ts->not_ready, false);
    in.service = "kowloon.test.Echo";
    assert_int_equal(kl_rpc_client_call(c, "Check", &in.base, &o, &out, &st),
                     0);
    protobuf_c_message_free_unpacked(out, NULL);
    in.service = "kowloon.test.Missing";
    assert_int_equal(kl_rpc_client_call(c, "Check", &in.base, &o, &out, &st),
                     -KL_NOT_FOUND);
    assert_string_equal(st.message, "unknown service kowloon.test.Missing");
    kl_rpc_client_destroy(&c);
    ts_destroy(&ts);
}

/* Sends one hand-made request on a raw DEALER and returns the reply. */
static Kowloon__Rpc__Response *
s_raw_call(void *dealer, uint32_t version, uint64_t corr, const char *service,
           const char *method, int64_t deadline, const uint8_t *payload,
           size_t payload_len)
{
    uint8_t *buf;
    size_t len = ts_pack_request(version, corr, service, method, deadline,
                                 payload, payload_len, &buf);
    assert_int_equal(zmq_send(dealer, buf, len, 0), (int)len);
    free(buf);
    return ts_recv_response(dealer);
}

static void
test_raw_refusals(void **state)
{
    ts_server_t *ts = ts_start("A", 1, 0);
    void *zctx = zmq_ctx_new();
    void *d = ts_dealer(zctx, kl_rpc_server_endpoint(ts->server));
    Kowloon__Test__EchoRequest in = KOWLOON__TEST__ECHO_REQUEST__INIT;
    in.text = "x";
    uint8_t payload[64];
    size_t plen = kowloon__test__echo_request__pack(&in, payload);

    /* A good one first: the raw framing is right. */
    Kowloon__Rpc__Response *r = s_raw_call(
        d, KL_RPC_VERSION, 7, "kowloon.test.Echo", "Echo", 0, payload, plen);
    assert_non_null(r);
    assert_int_equal(r->correlation_id, 7);
    assert_int_equal(r->version, KL_RPC_VERSION);
    assert_int_equal(r->status->code, KL_OK);
    Kowloon__Test__EchoReply *er = kowloon__test__echo_reply__unpack(
        NULL, r->payload.len, r->payload.data);
    assert_string_equal(er->text, "x");
    kowloon__test__echo_reply__free_unpacked(er, NULL);
    kowloon__rpc__response__free_unpacked(r, NULL);

    /* Deadline already passed: DEADLINE_EXCEEDED, handler not run. */
    int before = atomic_load(&ts->invocations);
    r = s_raw_call(d, KL_RPC_VERSION, 8, "kowloon.test.Echo", "Echo",
                   kl_now_unix_ms() - 1, payload, plen);
    assert_int_equal(r->correlation_id, 8);
    assert_int_equal(r->status->code, KL_DEADLINE_EXCEEDED);
    assert_int_equal(r->payload.len, 0);
    kowloon__rpc__response__free_unpacked(r, NULL);
    assert_int_equal(atomic_load(&ts->invocations), before);

    /* Unknown service and method. */
    r = s_raw_call(d, KL_RPC_VERSION, 9, "kowloon.test.Nope", "Echo", 0,
                   payload, plen);
    assert_int_equal(r->status->code, KL_UNIMPLEMENTED);
    assert_string_equal(r->status->message,
                        "unknown service kowloon.test.Nope");
    kowloon__rpc__response__free_unpacked(r, NULL);
    r = s_raw_call(d, KL_RPC_VERSION, 10, "kowloon.test.Echo", "Nope", 0,
                   payload, plen);
    assert_int_equal(r->status->code, KL_UNIMPLEMENTED);
    assert_string_equal(r->status->message,
                        "unknown method kowloon.test.Echo/Nope");
    kowloon__rpc__response__free_unpacked(r, NULL);

    /* Another protocol version. */
    r = s_raw_call(d, 2, 11, "kowloon.test.Echo", "Echo", 0, payload, plen);
    assert_int_equal(r->correlation_id, 11);
    assert_int_equal(r->status->code, KL_FAILED_PRECONDITION);
    assert_string_equal(r->status->message,
                        "unsupported rpc version 2, this server speaks 1");
    kowloon__rpc__response__free_unpacked(r, NULL);

    /* A payload that is not an EchoRequest. */
    const uint8_t junk[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
    r = s_raw_call(d, KL_RPC_VERSION, 12, "kowloon.test.Echo", "Echo", 0, junk,
                   sizeof junk);
    assert_int_equal(r->status->code, KL_INVALID_ARGUMENT);
    assert_string_equal(r->status->message,
                        "malformed kowloon.test.EchoRequest request");
    kowloon__rpc__response__free_unpacked(r, NULL);
    assert_int_equal(atomic_load(&ts->invocations), before);

    /* An envelope that does not unpack but whose correlation id can be
     * read: INVALID_ARGUMENT to that id. */
    const uint8_t bad_env[] = {0x08, 0x01, 0x10, 0x2a, 0x1a, 0x7f, 'x'};
    assert_int_equal(zmq_send(d, bad_env, sizeof bad_env, 0),
                     (int)sizeof bad_env);
    r = ts_recv_response(d);
    assert_non_null(r);
    assert_int_equal(r->correlation_id, 42);
    assert_int_equal(r->status->code, KL_INVALID_ARGUMENT);
    assert_string_equal(r->status->message, "malformed request envelope");
    kowloon__rpc__response__free_unpacked(r, NULL);

    zmq_close(d);
    zmq_ctx_term(zctx);
    ts_destroy(&ts);
}

/* Writes random bytes to the server's TCP port. */
static void
s_random_tcp(const char *endpoint)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_port = htons((uint16_t)atoi(strrchr(endpoint, ':') + 1));
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    uint8_t buf[4096];
    srand(1234);
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)rand();
    ssize_t n = write(fd, buf, sizeof buf);
    (void)n;
    ts_sleep_ms(50);
    close(fd);
}

static void
test_garbage_then_normal_call(void **state)
{
    const size_t max = 64 * 1024;
    ts_server_t *ts = ts_start("A", 2, max);
    const char *ep = kl_rpc_server_endpoint(ts->server);
    s_random_tcp(ep);

    void *zctx = zmq_ctx_new();
    /* Bigger than max_message_bytes plus the envelope allowance: libzmq
     * drops the peer before the server sees any of it. */
    void *d = ts_dealer(zctx, ep);
    size_t big = max + 64 * 1024;
    uint8_t *blob = kl_calloc(1, big);
    assert_int_equal(zmq_send(d, blob, big, 0), (int)big);
    assert_null(ts_recv_response(d));
    zmq_close(d);

    /* Within the socket cap but a payload over max_message_bytes:
     * RESOURCE_EXHAUSTED, before the payload is parsed. */
    d = ts_dealer(zctx, ep);
    Kowloon__Rpc__Response *r = s_raw_call(
        d, KL_RPC_VERSION, 5, "kowloon.test.Echo", "Echo", 0, blob, max + 1);
    assert_non_null(r);
    assert_int_equal(r->status->code, KL_RESOURCE_EXHAUSTED);
    kowloon__rpc__response__free_unpacked(r, NULL);
    free(blob);

    /* Garbage single frame (nothing to answer), then a two-frame message
     * (dropped): no reply, no crash. */
    const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    zmq_send(d, garbage, sizeof garbage, 0);
    zmq_send(d, "a", 1, ZMQ_SNDMORE);
    zmq_send(d, "b", 1, 0);
    int t = 300;
    zmq_setsockopt(d, ZMQ_RCVTIMEO, &t, sizeof t);
    assert_null(ts_recv_response(d));
    zmq_close(d);
    zmq_ctx_term(zctx);

    /* The server still serves. */
    kl_rpc_client_t *c =
        ts_client(&kowloon__test__echo__descriptor, s_eps(ts), 1);
    kl_status_t st;
    assert_int_equal(
        ts_call_echo(c, "Echo", "still here", 0, 2000, false, NULL, 0, &st), 0);
    kl_rpc_client_destroy(&c);
    assert_int_equal(ts_stop(ts), 0);
    ts_destroy(&ts);
}

static void
test_queue_full_is_unavailable(void **state)
{
    ts_server_t *ts = ts_start("A", 1, 0);
    void *zctx = zmq_ctx_new();
    void *d = ts_dealer(zctx, kl_rpc_server_endpoint(ts->server));
    int t = 10000;
    zmq_setsockopt(d, ZMQ_RCVTIMEO, &t, sizeof t);
    /* One worker, a queue of 256: the first call holds the worker while
     * 400 more arrive. */
    const int n = 400;
    for (int i = 0; i < n; i++) {
        Kowloon__Test__EchoRequest in = KOWLOON__TEST__ECHO_REQUEST__INIT;
        in.sleep_ms = i == 0 ? 300 : 0;
        uint8_t payload[32];
        size_t plen = kowloon__test__echo_request__pack(&in, payload);
        uint8_t *buf;
        size_t len = ts_pack_request(KL_RPC_VERSION, (uint64_t)i + 1,
                                     "kowloon.test.Echo", "Sleep", 0, payload,
                                     plen, &buf);
        assert_int_equal(zmq_send(d, buf, len, 0), (int)len);
        free(buf);
    }
    int ok = 0, unavailable = 0;
    for (int i = 0; i < n; i++) {
        Kowloon__Rpc__Response *r = ts_recv_response(d);
        assert_non_null(r);
        if ((int)r->status->code == KL_OK) {
            assert_false(r->not_executed);
            ok++;
        } else if ((int)r->status->code == KL_UNAVAILABLE) {
            assert_string_equal(r->status->message, "server queue full");
            /* Refused before any of it ran: safe to send elsewhere. */
            assert_true(r->not_executed);
            unavailable++;
        }
        kowloon__rpc__response__free_unpacked(r, NULL);
    }
    assert_int_equal(ok + unavailable, n);
    assert_true(unavailable > 0);
    assert_true(ok >= 256);
    zmq_close(d);
    zmq_ctx_term(zctx);
    ts_destroy(&ts);
}

typedef struct {
    kl_rpc_client_t *client; /* shared */
    int rc;                  /* outcome */
} s_sleeper_t;

static void *
s_sleeper(void *arg)
{
    s_sleeper_t *s = arg;
    kl_status_t st;
    /* Text "A": sleep on the server tagged A. */
    s->rc =
        ts_call_echo(s->client, "Sleep", "A", 400, 5000, false, NULL, 0, &st);
    return NULL;
}

/* Sends Sleep(sleep_ms) or Echo with correlation id corr on a raw
 * DEALER. */
static void
s_send_raw(void *d, uint64_t corr, const char *method, uint32_t sleep_ms)
{
    Kowloon__Test__EchoRequest in = KOWLOON__TEST__ECHO_REQUEST__INIT;
    in.sleep_ms = sleep_ms;
    uint8_t payload[32];
    size_t plen = kowloon__test__echo_request__pack(&in, payload);
    uint8_t *buf;
    size_t len = ts_pack_request(KL_RPC_VERSION, corr, "kowloon.test.Echo",
                                 method, 0, payload, plen, &buf);
    assert_int_equal(zmq_send(d, buf, len, 0), (int)len);
    free(buf);
}

static void
test_draining_refuses_not_executed(void **state)
{
    ts_server_t *ts = ts_start("A", 1, 0);
    void *zctx = zmq_ctx_new();
    void *d = ts_dealer(zctx, kl_rpc_server_endpoint(ts->server));
    s_send_raw(d, 1, "Sleep", 400);
    ts_sleep_ms(100);
    /* Stop without waiting: the server drains while Sleep runs. */
    kl_rpc_server_stop(ts->server);
    ts_sleep_ms(50);
    s_send_raw(d, 2, "Echo", 0);
    Kowloon__Rpc__Response *r = ts_recv_response(d);
    assert_non_null(r);
    assert_int_equal(r->correlation_id, 2);
    assert_int_equal((int)r->status->code, KL_UNAVAILABLE);
    assert_string_equal(r->status->message, "server is shutting down");
    assert_true(r->not_executed);
    kowloon__rpc__response__free_unpacked(r, NULL);
    /* The call in flight is finished and answered, as run. */
    r = ts_recv_response(d);
    assert_non_null(r);
    assert_int_equal(r->correlation_id, 1);
    assert_int_equal((int)r->status->code, KL_OK);
    assert_false(r->not_executed);
    kowloon__rpc__response__free_unpacked(r, NULL);
    assert_int_equal(ts_stop(ts), 0);
    assert_int_equal(atomic_load(&ts->invocations), 1);
    zmq_close(d);
    zmq_ctx_term(zctx);
    ts_destroy(&ts);
}

static void
test_stop_drains_in_flight_calls(void **state)
{
    ts_server_t *ts = ts_start("A", 2, 0);
    kl_rpc_client_t *c =
        ts_client(&kowloon__test__echo__descriptor, s_eps(ts), 1);
    /* Six 400 ms calls on two workers: two running, four queued when the
     * stop comes. */
    enum { N = 6 };
    s_sleeper_t s[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        s[i] = (s_sleeper_t){.client = c, .rc = 1};
        pthread_create(&th[i], NULL, s_sleeper, &s[i]);
    }
    /* Wait until every call was submitted and two are running, so that the
     * stop finds two in flight and four queued even on a loaded machine. */
    kl_rpc_client_stats_t cs = {0};
    for (int i = 0; i < 500; i++) {
        kl_rpc_client_stats(c, &cs);
        if (cs.calls == N && atomic_load(&ts->invocations) >= 2)
            break;
        ts_sleep_ms(10);
    }
    assert_int_equal(cs.calls, N);
    ts_sleep_ms(300); /* the submitted calls reach the server's queue */
    int64_t t0 = kl_now_mono_ms();
    assert_int_equal(ts_stop(ts), 0);
    assert_true(kl_now_mono_ms() - t0 >= 500);
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(s[i].rc, 0);
    }
    assert_int_equal(atomic_load(&ts->invocations), N);
    assert_int_equal(atomic_load(&ts->finis), 2);

    /* Stopped: the next call finds no server. */
    kl_status_t st;
    int rc = ts_call_echo(c, "Echo", "late", 0, 500, false, NULL, 0, &st);
    assert_true(rc == -KL_UNAVAILABLE || rc == -KL_DEADLINE_EXCEEDED);
    kl_rpc_client_destroy(&c);
    ts_destroy(&ts);
}

static void
test_sigterm_stops_run(void **state)
{
    ts_server_t *ts = kl_calloc(1, sizeof *ts);
    snprintf(ts->tag, sizeof ts->tag, "S");
    kl_rpc_server_opts_t opts = {.bind = "tcp://127.0.0.1:*",
                                 .workers = 1,
                                 .worker_init = ts_worker_init,
                                 .worker_fini = ts_worker_fini,
                                 .user = ts};
    kl_status_t st;
    ts->server = kl_rpc_server_new(&opts, &st);
    assert_int_equal(
        kl_rpc_server_add_service(ts->server, &ts_echo_service.base), 0);
    assert_int_equal(kl_rpc_server_bind(ts->server, &st), 0);
    /* The signal goes to the run() thread alone. */
    pthread_create(&ts->thread, NULL, ts_run, ts);
    ts->running = true;
    kl_rpc_client_t *c =
        ts_client(&kowloon__test__echo__descriptor, s_eps(ts), 1);
    /* Once a call is answered, run() has installed its handlers. */
    assert_int_equal(
        ts_call_echo(c, "Echo", "up", 0, 2000, false, NULL, 0, &st), 0);
    pthread_kill(ts->thread, SIGTERM);
    pthread_join(ts->thread, NULL);
    ts->running = false;
    assert_int_equal(ts->run_rc, 0);
    assert_int_equal(atomic_load(&ts->finis), 1);
    kl_rpc_client_destroy(&c);
    ts_destroy(&ts);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bind_reports_real_endpoint),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_round_trip_with_context),
        cmocka_unit_test(test_handler_errors),
        cmocka_unit_test(test_health_check),
        cmocka_unit_test(test_raw_refusals),
        cmocka_unit_test(test_garbage_then_normal_call),
        cmocka_unit_test(test_queue_full_is_unavailable),
        cmocka_unit_test(test_stop_drains_in_flight_calls),
        cmocka_unit_test(test_draining_refuses_not_executed),
        cmocka_unit_test(test_sigterm_stops_run),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
