/*
 * Shared by test_kl_rpc_server.c and test_kl_rpc_client.c: the
 * kowloon.test.Echo service (proto/test/rpc_test.proto), an in-process
 * server on its own thread, and a raw DEALER for hand-made frames.
 */
#ifndef KL_RPC_TEST_ECHO_H
#define KL_RPC_TEST_ECHO_H

#include "kl_alloc.h"
#include "kl_rpc_client.h"
#include "kl_rpc_server.h"
#include "kowloon/rpc.pb-c.h"
#include "test/rpc_test.pb-c.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

/* Each test file uses only some of these helpers. */
#pragma GCC diagnostic ignored "-Wunused-function"

#if defined(__SANITIZE_THREAD__)
/* libzmq is not built with ThreadSanitizer: its I/O threads hand message
 * buffers over through lock-free pipes TSan cannot see, so every receive
 * looks like a race between libzmq's recv() and our read of the data.
 * Reports with a libzmq frame are those; our own code is still checked. */
const char *__tsan_default_suppressions(void);
const char *
__tsan_default_suppressions(void)
{
    return "race:libzmq.so\n";
}
#endif

/* One in-process server; it is also every worker's state. */
typedef struct {
    char tag[16];                /* answered in EchoReply.server */
    kl_rpc_server_t *server;     /* the server */
    pthread_t thread;            /* runs kl_rpc_server_run */
    int run_rc;                  /* what run returned */
    bool running;                /* thread is to be joined */
    atomic_int invocations;      /* handler runs, all methods */
    atomic_int inits;            /* worker_init calls */
    atomic_int finis;            /* worker_fini calls */
    atomic_int ready_calls;      /* opts.ready calls */
    atomic_bool not_ready;       /* ready answers false */
    atomic_bool ready_on_worker; /* ready got this as its worker state */
} ts_server_t;

static void
ts_sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static ts_server_t *
ts_of(void *closure_data)
{
    return kl_call_worker(kl_call_from(closure_data));
}

static void
ts_reply(void *cd, const char *text, Kowloon__Test__EchoReply_Closure closure)
{
    const kl_call_ctx_t *ctx = kl_call_ctx(kl_call_from(cd));
    Kowloon__Test__EchoReply out = KOWLOON__TEST__ECHO_REPLY__INIT;
    out.text = (char *)text;
    out.server = ts_of(cd)->tag;
    out.request_id = (char *)ctx->request_id;
    out.tenant_id = (char *)ctx->tenant_id;
    closure(&out, cd);
}

static void
ts_echo(Kowloon__Test__Echo_Service *svc, const Kowloon__Test__EchoRequest *in,
        Kowloon__Test__EchoReply_Closure closure, void *cd)
{
    atomic_fetch_add(&ts_of(cd)->invocations, 1);
    ts_reply(cd, in->text, closure);
}

static void
ts_sleep(Kowloon__Test__Echo_Service *svc, const Kowloon__Test__EchoRequest *in,
         Kowloon__Test__EchoReply_Closure closure, void *cd)
{
    ts_server_t *ts = ts_of(cd);
    atomic_fetch_add(&ts->invocations, 1);
    if (!in->text[0] || strcmp(in->text, ts->tag) == 0)
        ts_sleep_ms(in->sleep_ms);
    ts_reply(cd, in->text, closure);
}

static void
ts_fail(Kowloon__Test__Echo_Service *svc, const Kowloon__Test__EchoRequest *in,
        Kowloon__Test__EchoReply_Closure closure, void *cd)
{
    atomic_fetch_add(&ts_of(cd)->invocations, 1);
    kl_call_fail(kl_call_from(cd), (kl_code_t)in->code, "%s", in->message);
    closure(NULL, cd);
}

static void
ts_silent(Kowloon__Test__Echo_Service *svc,
          const Kowloon__Test__EchoRequest *in,
          Kowloon__Test__EchoReply_Closure closure, void *cd)
{
    atomic_fetch_add(&ts_of(cd)->invocations, 1);
}

static Kowloon__Test__Echo_Service ts_echo_service =
    KOWLOON__TEST__ECHO__INIT(ts_);

static void *
ts_worker_init(int index, void *user)
{
    ts_server_t *ts = user;
    atomic_fetch_add(&ts->inits, 1);
    return ts;
}

static void
ts_worker_fini(void *state, void *user)
{
    ts_server_t *ts = user;
    if (state == ts)
        atomic_fetch_add(&ts->finis, 1);
}

static bool
ts_ready(void *state, void *user)
{
    ts_server_t *ts = user;
    atomic_fetch_add(&ts->ready_calls, 1);
    atomic_store(&ts->ready_on_worker, state == ts);
    return !atomic_load(&ts->not_ready);
}

static void *
ts_run(void *arg)
{
    ts_server_t *ts = arg;
    ts->run_rc = kl_rpc_server_run(ts->server);
    return NULL;
}

/* A server tagged tag on tcp://127.0.0.1:*, bound and running. */
static ts_server_t *
ts_start(const char *tag, int workers, size_t max_message_bytes)
{
    ts_server_t *ts = kl_calloc(1, sizeof *ts);
    snprintf(ts->tag, sizeof ts->tag, "%s", tag);
    kl_rpc_server_opts_t opts = {
        .bind = "tcp://127.0.0.1:*",
        .workers = workers,
        .max_message_bytes = max_message_bytes,
        .worker_init = ts_worker_init,
        .worker_fini = ts_worker_fini,
        .ready = ts_ready,
        .user = ts,
        .no_signal_handlers = true,
    };
    kl_status_t st;
    ts->server = kl_rpc_server_new(&opts, &st);
    if (!ts->server) {
        fprintf(stderr, "kl_rpc_server_new: %s\n", st.message);
        return NULL;
    }
    if (kl_rpc_server_add_service(ts->server, &ts_echo_service.base) != 0 ||
        kl_rpc_server_bind(ts->server, &st) != 0) {
        fprintf(stderr, "server setup failed: %s\n", st.message);
        return NULL;
    }
    if (pthread_create(&ts->thread, NULL, ts_run, ts) != 0)
        return NULL;
    ts->running = true;
    return ts;
}

/* Stops the server, waits for run() and returns what it returned. */
static int
ts_stop(ts_server_t *ts)
{
    if (ts->running) {
        kl_rpc_server_stop(ts->server);
        pthread_join(ts->thread, NULL);
        ts->running = false;
    }
    return ts->run_rc;
}

static void
ts_destroy(ts_server_t **ts_p)
{
    ts_server_t *ts = *ts_p;
    if (!ts)
        return;
    ts_stop(ts);
    kl_rpc_server_destroy(&ts->server);
    KL_FREE(ts_p);
}

static kl_rpc_client_t *
ts_client(const ProtobufCServiceDescriptor *svc, const char *const *eps,
          size_t n)
{
    kl_rpc_client_opts_t opts = {.endpoints = eps, .n_endpoints = n};
    kl_status_t st;
    kl_rpc_client_t *c = kl_rpc_client_new(svc, &opts, &st);
    if (!c)
        fprintf(stderr, "kl_rpc_client_new: %s\n", st.message);
    return c;
}

/* Echo(text) through client; returns 0 or -code, reply tag in server. */
static int
ts_call_echo(kl_rpc_client_t *c, const char *method, const char *text,
             uint32_t sleep_ms, int64_t timeout_ms, bool idempotent,
             char *server, size_t server_size, kl_status_t *st)
{
    Kowloon__Test__EchoRequest in = KOWLOON__TEST__ECHO_REQUEST__INIT;
    in.text = (char *)text;
    in.sleep_ms = sleep_ms;
    kl_call_opts_t o = {.timeout_ms = timeout_ms, .idempotent = idempotent};
    ProtobufCMessage *out = NULL;
    int rc = kl_rpc_client_call(c, method, &in.base, &o, &out, st);
    if (rc == 0) {
        Kowloon__Test__EchoReply *r = (Kowloon__Test__EchoReply *)out;
        if (strcmp(r->text, text) != 0)
            rc = -KL_DATA_LOSS; /* paired with another call's reply */
        if (server)
            snprintf(server, server_size, "%s", r->server);
        protobuf_c_message_free_unpacked(out, NULL);
    }
    return rc;
}

/* --- raw frames -------------------------------------------------------- */

/* A DEALER connected to endpoint, receive timeout 2 s. */
static void *
ts_dealer(void *zctx, const char *endpoint)
{
    void *s = zmq_socket(zctx, ZMQ_DEALER);
    int v = 2000, linger = 0;
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &v, sizeof v);
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_connect(s, endpoint);
    return s;
}

/* Packs a Request for kowloon.test.Echo; caller frees *buf_p. */
static size_t
ts_pack_request(uint32_t version, uint64_t corr, const char *service,
                const char *method, int64_t deadline, const uint8_t *payload,
                size_t payload_len, uint8_t **buf_p)
{
    Kowloon__Rpc__Request r = KOWLOON__RPC__REQUEST__INIT;
    r.version = version;
    r.correlation_id = corr;
    r.service = (char *)service;
    r.method = (char *)method;
    r.deadline_unix_ms = deadline;
    r.payload.data = (uint8_t *)payload;
    r.payload.len = payload_len;
    size_t len = kowloon__rpc__request__get_packed_size(&r);
    *buf_p = kl_malloc(len + 1);
    return kowloon__rpc__request__pack(&r, *buf_p);
}

/* Receives one Response on a raw DEALER; NULL on timeout. Caller frees
 * with kowloon__rpc__response__free_unpacked. */
static Kowloon__Rpc__Response *
ts_recv_response(void *dealer)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, dealer, 0) < 0) {
        zmq_msg_close(&m);
        return NULL;
    }
    Kowloon__Rpc__Response *r = kowloon__rpc__response__unpack(
        NULL, zmq_msg_size(&m), zmq_msg_data(&m));
    zmq_msg_close(&m);
    return r;
}

#endif
