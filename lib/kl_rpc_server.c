/*
 * kl_rpc_server: a ROUTER socket owned by the I/O thread (the one in
 * kl_rpc_server_run), a bounded queue of calls, and a pool of workers.
 *
 * Only the I/O thread touches ZeroMQ. Workers take calls from a
 * mutex+condvar queue and hand packed replies back on a mutex-protected
 * list, then write to an eventfd that the I/O thread polls beside the
 * ROUTER; kl_rpc_server_stop writes to the same eventfd, which is what makes
 * it async-signal-safe.
 */
#include "kl_rpc_server.h"

#include "kl_alloc.h"
#include "kl_log.h"
#include "kowloon/rpc.pb-c.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <zmq.h>

/* Room for the envelope around a payload of max_message_bytes: version,
 * correlation id, deadline, service and method names, call context. */
#define S_ENVELOPE_ALLOWANCE 4096
#define S_DEFAULT_MAX_BYTES (4u * 1024 * 1024)
/* Queued calls per worker before new calls are refused UNAVAILABLE. */
#define S_QUEUE_PER_WORKER 128
#define S_QUEUE_MIN 256
/* Messages read from the ROUTER per loop turn, so replies keep flowing. */
#define S_RECV_BATCH 256
/* How long a closed socket may keep flushing replies. */
#define S_LINGER_MS 1000
#define S_SETTLE_MS 200 /* open after the last reply, see run() */
#define S_HEARTBEAT_IVL_MS 1000
#define S_HEARTBEAT_TIMEOUT_MS 3000
#define S_IDENTITY_MAX 256

/* A packed reply on its way to the I/O thread. */
typedef struct s_reply {
    uint8_t identity[S_IDENTITY_MAX]; /* ROUTER peer identity */
    size_t identity_len;              /* bytes used in identity */
    uint8_t *data;                    /* packed Response, owned */
    size_t len;                       /* bytes in data */
    struct s_reply *next;             /* FIFO link */
} s_reply_t;

struct kl_call {
    kl_rpc_server_t *server;          /* owner */
    void *worker_state;               /* worker_init result of the worker */
    Kowloon__Rpc__Request *req;       /* unpacked envelope, owned */
    kl_call_ctx_t ctx;                /* borrowed from req->context, "" unset */
    uint8_t identity[S_IDENTITY_MAX]; /* peer to answer */
    size_t identity_len;              /* bytes used in identity */
    const ProtobufCMethodDescriptor *method; /* the method being run */
    bool failed;                             /* kl_call_fail was called */
    kl_status_t status;                      /* set by kl_call_fail */
    bool answered;                           /* the closure ran */
    uint8_t *out;                            /* packed output, owned */
    size_t out_len;                          /* bytes in out */
};

/* One worker thread. */
typedef struct {
    kl_rpc_server_t *server; /* owner */
    int index;               /* 0..workers-1 */
    void *state;             /* worker_init result */
    pthread_t thread;        /* the thread */
    bool started;            /* thread was created */
} s_worker_t;

struct kl_rpc_server {
    kl_rpc_server_opts_t opts;           /* copy; opts.bind points at bind */
    char *bind;                          /* configured endpoint, owned */
    char *endpoint;                      /* real endpoint once bound, owned */
    size_t max_bytes;                    /* payload cap */
    ProtobufCService **services;         /* served, not owned */
    size_t n_services;                   /* used entries */
    Kowloon__Rpc__Health_Service health; /* the built-in Health */
    void *zctx;                          /* ZeroMQ context */
    void *router;                        /* ROUTER, I/O thread only */
    kl_curve_zap_t *zap;                 /* ZAP handler with opts.curve */
    int wake_fd;                         /* eventfd: replies, stop */
    atomic_int stop;                     /* stop was asked */
    bool ran;                            /* run() was entered */
    atomic_uint_fast64_t n_dropped;      /* frames dropped unanswered */

    pthread_mutex_t mu;  /* guards everything below */
    pthread_cond_t cond; /* queue not empty, or closed */
    kl_call_t **queue;   /* ring of queued calls */
    size_t q_cap;        /* ring size */
    size_t q_head;       /* index of the oldest call */
    size_t q_len;        /* calls queued */
    bool q_closed;       /* draining: workers exit when empty */
    s_reply_t *r_head;   /* replies to send, oldest first */
    s_reply_t *r_tail;   /* last reply */
    int workers_alive;   /* workers not yet exited */

    s_worker_t *workers; /* opts.workers of them */
};

/* The server SIGTERM/SIGINT stop; set while run() holds the handlers. */
static _Atomic(kl_rpc_server_t *) s_signal_server;

static void s_health_check(Kowloon__Rpc__Health_Service *svc,
                           const Kowloon__Rpc__HealthCheckRequest *in,
                           Kowloon__Rpc__HealthCheckResponse_Closure closure,
                           void *cd);

kl_rpc_server_t *
kl_rpc_server_new(const kl_rpc_server_opts_t *opts, kl_status_t *status)
{
    if (!opts || !opts->bind || !*opts->bind) {
        kl_status_set(status, KL_INVALID_ARGUMENT, "rpc server: bind not set");
        return NULL;
    }
    if (opts->workers < 1 || opts->workers > 4096) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "rpc server: workers must be 1 to 4096, got %d",
                      opts->workers);
        return NULL;
    }
    if (opts->drain_grace_ms < 0 || opts->drain_grace_ms > 600000) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "rpc server: drain_grace_ms must be 0 to 600000, got %d",
                      opts->drain_grace_ms);
        return NULL;
    }
    kl_rpc_server_t *self = kl_calloc(1, sizeof *self);
    self->opts = *opts;
    self->bind = kl_strdup(opts->bind);
    self->opts.bind = self->bind;
    self->max_bytes =
        opts->max_message_bytes ? opts->max_message_bytes : S_DEFAULT_MAX_BYTES;
    self->health =
        (Kowloon__Rpc__Health_Service)KOWLOON__RPC__HEALTH__INIT(s_health_);
    self->wake_fd = -1;
    atomic_init(&self->stop, 0);
    atomic_init(&self->n_dropped, 0);
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->cond, NULL);
    self->q_cap = (size_t)opts->workers * S_QUEUE_PER_WORKER;
    if (self->q_cap < S_QUEUE_MIN)
        self->q_cap = S_QUEUE_MIN;
    self->queue = kl_calloc(self->q_cap, sizeof *self->queue);
    self->workers = kl_calloc((size_t)opts->workers, sizeof *self->workers);

    self->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->zctx = zmq_ctx_new();
    if (self->wake_fd < 0 || !self->zctx) {
        kl_status_set(status, KL_INTERNAL, "rpc server: %s failed: %s",
                      self->wake_fd < 0 ? "eventfd()" : "zmq_ctx_new()",
                      strerror(errno));
        kl_rpc_server_destroy(&self);
        return NULL;
    }
    /* The built-in Health is served like any registered service. */
    kl_rpc_server_add_service(self, &self->health.base);
    return self;
}

int
kl_rpc_server_add_service(kl_rpc_server_t *self, ProtobufCService *service)
{
    if (!self || !service || !service->descriptor)
        return -KL_INVALID_ARGUMENT;
    for (size_t i = 0; i < self->n_services; i++)
        if (strcmp(self->services[i]->descriptor->name,
                   service->descriptor->name) == 0)
            return -KL_ALREADY_EXISTS;
    self->services = kl_realloc(self->services, (self->n_services + 1) *
                                                    sizeof *self->services);
    self->services[self->n_services++] = service;
    return 0;
}

static void
s_setsockopt_int(void *sock, int option, int value)
{
    /* These options exist in every libzmq we build against (4.3); a
     * failure would be a programming error, and is harmless anyway. */
    if (zmq_setsockopt(sock, option, &value, sizeof value) != 0)
        KL_LOG(KL_DEBUG, "zmq_setsockopt(%d) failed: %s", option,
               zmq_strerror(zmq_errno()));
}

/* Whether endpoint reaches this host only: tcp to 127.0.0.0/8, ::1 or
 * localhost, and ipc or inproc. */
static bool
s_is_loopback(const char *endpoint)
{
    if (strncmp(endpoint, "ipc://", 6) == 0 ||
        strncmp(endpoint, "inproc://", 9) == 0)
        return true;
    if (strncmp(endpoint, "tcp://", 6) != 0)
        return false;
    const char *host = endpoint + 6;
    const char *colon = strrchr(host, ':');
    if (!colon)
        return false;
    size_t len = (size_t)(colon - host);
    if (len > 4 && strncmp(host, "127.", 4) == 0) {
        for (size_t i = 4; i < len; i++)
            if (!(host[i] == '.' || (host[i] >= '0' && host[i] <= '9')))
                return false;
        return true;
    }
    return (len == 9 && strncmp(host, "localhost", 9) == 0) ||
           (len == 5 && strncmp(host, "[::1]", 5) == 0);
}

int
kl_rpc_server_bind(kl_rpc_server_t *self, kl_status_t *status)
{
    if (!self)
        return kl_status_set(status, KL_INVALID_ARGUMENT, "no server");
    if (self->router)
        return 0;
    if (!self->opts.curve && !s_is_loopback(self->bind))
        return kl_status_set(
            status, KL_FAILED_PRECONDITION,
            "rpc server: refusing to bind %s without Curve keys: only "
            "loopback may be plaintext; set KOWLOON_CURVE_SECRET_KEY_FILE and "
            "KOWLOON_CURVE_ALLOWED_CLIENTS_DIR (docs/operations/curve.md)",
            self->bind);
    if (self->opts.curve && !kl_curve_has_allow_list(self->opts.curve))
        return kl_status_set(
            status, KL_FAILED_PRECONDITION,
            "rpc server: Curve keys without a client allow-list: set "
            "KOWLOON_CURVE_ALLOWED_CLIENTS_DIR");
    /* The ZAP handler goes first: a Curve socket bound before it would
     * let in any client that knows the server key. */
    if (self->opts.curve && !self->zap) {
        self->zap = kl_curve_zap_new(self->opts.curve, self->zctx, status);
        if (!self->zap)
            return -status->code;
    }
    void *router = zmq_socket(self->zctx, ZMQ_ROUTER);
    if (!router)
        return kl_status_set(status, KL_INTERNAL, "zmq_socket() failed: %s",
                             zmq_strerror(zmq_errno()));
    if (self->opts.curve) {
        int crc = kl_curve_setup_server(self->opts.curve, router, status);
        if (crc < 0) {
            zmq_close(router);
            return crc;
        }
    }
    int64_t maxmsg = (int64_t)(self->max_bytes + S_ENVELOPE_ALLOWANCE);
    zmq_setsockopt(router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    s_setsockopt_int(router, ZMQ_LINGER, S_LINGER_MS);
    s_setsockopt_int(router, ZMQ_ROUTER_MANDATORY, 0);
    s_setsockopt_int(router, ZMQ_HEARTBEAT_IVL, S_HEARTBEAT_IVL_MS);
    s_setsockopt_int(router, ZMQ_HEARTBEAT_TIMEOUT, S_HEARTBEAT_TIMEOUT_MS);
    s_setsockopt_int(router, ZMQ_HEARTBEAT_TTL, S_HEARTBEAT_TIMEOUT_MS);

    /* "tcp://host:0" means any free port, as "tcp://host:*" does. */
    char *addr = kl_strdup(self->bind);
    size_t len = strlen(addr);
    if (strncmp(addr, "tcp://", 6) == 0 && len >= 2 &&
        strcmp(addr + len - 2, ":0") == 0)
        addr[len - 1] = '*';
    if (zmq_bind(router, addr) != 0) {
        int err = zmq_errno();
        free(addr);
        zmq_close(router);
        return kl_status_set(status, KL_UNAVAILABLE, "zmq_bind(%s) failed: %s",
                             self->bind, zmq_strerror(err));
    }
    free(addr);
    char last[256];
    size_t last_len = sizeof last;
    if (zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, last, &last_len) == 0 &&
        last_len > 0) {
        last[sizeof last - 1] = '\0';
        free(self->endpoint);
        self->endpoint = kl_strdup(last);
    }
    self->router = router;
    return 0;
}

const char *
kl_rpc_server_endpoint(const kl_rpc_server_t *self)
{
    if (!self)
        return NULL;
    return self->endpoint ? self->endpoint : self->bind;
}

void
kl_rpc_server_stop(kl_rpc_server_t *self)
{
    /* Async-signal-safe: a lock-free atomic store and write(2). */
    if (!self)
        return;
    int saved = errno;
    atomic_store(&self->stop, 1);
    uint64_t one = 1;
    ssize_t n = write(self->wake_fd, &one, sizeof one);
    (void)n;
    errno = saved;
}

static void
s_on_signal(int signo)
{
    (void)signo;
    kl_rpc_server_stop(atomic_load(&s_signal_server));
}

/* --- calls ------------------------------------------------------------ */

kl_call_t *
kl_call_from(void *closure_data)
{
    return closure_data;
}

const kl_call_ctx_t *
kl_call_ctx(const kl_call_t *call)
{
    return &call->ctx;
}

void *
kl_call_worker(const kl_call_t *call)
{
    return call->worker_state;
}

int64_t
kl_call_deadline_unix_ms(const kl_call_t *call)
{
    return call->req->deadline_unix_ms;
}

void
kl_call_fail(kl_call_t *call, kl_code_t code, const char *fmt, ...)
{
    if (!call)
        return;
    va_list ap;
    call->failed = true;
    call->status.code = code == KL_OK ? KL_UNKNOWN : code;
    va_start(ap, fmt);
    vsnprintf(call->status.message, sizeof call->status.message, fmt, ap);
    va_end(ap);
}

void
kl_call_fail_status(kl_call_t *call, const kl_status_t *status)
{
    if (!call || !status)
        return;
    kl_call_fail(call, status->code, "%s", status->message);
}

static void
s_call_destroy(kl_call_t **call_p)
{
    kl_call_t *call = *call_p;
    if (!call)
        return;
    if (call->req)
        kowloon__rpc__request__free_unpacked(call->req, NULL);
    free(call->out);
    free(call);
    *call_p = NULL;
}

/* Packs a Response into a new reply for identity. */
static s_reply_t *
s_reply_new(const uint8_t *identity, size_t identity_len, uint64_t corr,
            kl_code_t code, const char *message, const uint8_t *payload,
            size_t payload_len, bool not_executed)
{
    Kowloon__Rpc__Status st = KOWLOON__RPC__STATUS__INIT;
    Kowloon__Rpc__Response resp = KOWLOON__RPC__RESPONSE__INIT;
    st.code = (Kowloon__Rpc__Code)code;
    st.message = (char *)(message ? message : "");
    resp.version = KL_RPC_VERSION;
    resp.correlation_id = corr;
    resp.status = &st;
    resp.not_executed = not_executed;
    if (code == KL_OK && payload_len) {
        resp.payload.data = (uint8_t *)payload;
        resp.payload.len = payload_len;
    }
    s_reply_t *r = kl_calloc(1, sizeof *r);
    memcpy(r->identity, identity, identity_len);
    r->identity_len = identity_len;
    r->len = kowloon__rpc__response__get_packed_size(&resp);
    r->data = kl_malloc(r->len ? r->len : 1);
    kowloon__rpc__response__pack(&resp, r->data);
    return r;
}

static void
s_reply_destroy(s_reply_t **r_p)
{
    if (*r_p) {
        free((*r_p)->data);
        KL_FREE(r_p);
    }
}

/* Hands a reply to the I/O thread. Takes ownership of *r_p. */
static void
s_post_reply(kl_rpc_server_t *self, s_reply_t **r_p)
{
    s_reply_t *r = *r_p;
    *r_p = NULL;
    pthread_mutex_lock(&self->mu);
    if (self->r_tail)
        self->r_tail->next = r;
    else
        self->r_head = r;
    self->r_tail = r;
    pthread_mutex_unlock(&self->mu);
    uint64_t one = 1;
    ssize_t n = write(self->wake_fd, &one, sizeof one);
    (void)n;
}

/* The closure a handler answers through: packs the output at once, so the
 * handler may build it on its stack. */
static void
s_closure(const ProtobufCMessage *msg, void *closure_data)
{
    kl_call_t *call = closure_data;
    if (call->answered) {
        KL_LOG(KL_WARN, "%s: closure called twice, ignored",
               call->method->name);
        return;
    }
    call->answered = true;
    if (!msg)
        return;
    if (msg->descriptor != call->method->output) {
        kl_call_fail(call, KL_INTERNAL, "%s answered with a %s, not a %s",
                     call->method->name, msg->descriptor->name,
                     call->method->output->name);
        return;
    }
    size_t len = protobuf_c_message_get_packed_size(msg);
    if (len > call->server->max_bytes) {
        kl_call_fail(call, KL_RESOURCE_EXHAUSTED,
                     "reply of %zu bytes exceeds the %zu byte limit", len,
                     call->server->max_bytes);
        return;
    }
    call->out = kl_malloc(len ? len : 1);
    call->out_len = protobuf_c_message_pack(msg, call->out);
}

static ProtobufCService *
s_find_service(kl_rpc_server_t *self, const char *name)
{
    for (size_t i = 0; i < self->n_services; i++)
        if (strcmp(self->services[i]->descriptor->name, name) == 0)
            return self->services[i];
    return NULL;
}

typedef void (*s_handler_fn)(ProtobufCService *, const ProtobufCMessage *,
                             ProtobufCClosure, void *);

/* Runs one call on a worker and fills in its outcome. */
static void
s_dispatch(kl_rpc_server_t *self, kl_call_t *call)
{
    Kowloon__Rpc__Request *req = call->req;
    const char *svc_name = req->service ? req->service : "";
    const char *m_name = req->method ? req->method : "";

    if (req->deadline_unix_ms != 0 &&
        req->deadline_unix_ms <= kl_now_unix_ms()) {
        kl_call_fail(call, KL_DEADLINE_EXCEEDED,
                     "deadline passed before %s/%s started", svc_name, m_name);
        return;
    }
    ProtobufCService *svc = s_find_service(self, svc_name);
    if (!svc) {
        kl_call_fail(call, KL_UNIMPLEMENTED, "unknown service %s", svc_name);
        return;
    }
    const ProtobufCMethodDescriptor *method =
        protobuf_c_service_descriptor_get_method_by_name(svc->descriptor,
                                                         m_name);
    if (!method) {
        kl_call_fail(call, KL_UNIMPLEMENTED, "unknown method %s/%s", svc_name,
                     m_name);
        return;
    }
    /* The generated stubs pass the declaration-order index, which is the
     * method's position in descriptor->methods. */
    unsigned index = (unsigned)(method - svc->descriptor->methods);
    if (svc->invoke == protobuf_c_service_invoke_internal &&
        ((s_handler_fn *)(svc + 1))[index] == NULL) {
        kl_call_fail(call, KL_UNIMPLEMENTED, "method %s/%s not implemented",
                     svc_name, m_name);
        return;
    }
    ProtobufCMessage *input = protobuf_c_message_unpack(
        method->input, NULL, req->payload.len, req->payload.data);
    if (!input) {
        kl_call_fail(call, KL_INVALID_ARGUMENT, "malformed %s request",
                     method->input->name);
        return;
    }
    call->method = method;
    svc->invoke(svc, index, input, s_closure, call);
    protobuf_c_message_free_unpacked(input, NULL);
    if (!call->failed && (!call->answered || !call->out))
        kl_call_fail(call, KL_INTERNAL, "%s/%s returned no reply", svc_name,
                     m_name);
}

static void
s_run_call(kl_rpc_server_t *self, void *worker_state, kl_call_t *call)
{
    call->worker_state = worker_state;
    kl_log_set_context(call->ctx.request_id, call->ctx.tenant_id);
    s_dispatch(self, call);
    if (call->failed && call->status.code != KL_OK)
        KL_LOG(KL_DEBUG, "%s/%s failed: %s: %s", call->req->service,
               call->req->method, kl_code_name(call->status.code),
               call->status.message);
    kl_log_clear_context();
    s_reply_t *r = s_reply_new(call->identity, call->identity_len,
                               call->req->correlation_id,
                               call->failed ? call->status.code : KL_OK,
                               call->failed ? call->status.message : "",
                               call->out, call->out_len, false);
    s_post_reply(self, &r);
}

static void *
s_worker_main(void *arg)
{
    s_worker_t *w = arg;
    kl_rpc_server_t *self = w->server;
    if (self->opts.worker_init)
        w->state = self->opts.worker_init(w->index, self->opts.user);
    for (;;) {
        pthread_mutex_lock(&self->mu);
        while (self->q_len == 0 && !self->q_closed)
            pthread_cond_wait(&self->cond, &self->mu);
        if (self->q_len == 0) {
            pthread_mutex_unlock(&self->mu);
            break;
        }
        kl_call_t *call = self->queue[self->q_head];
        self->q_head = (self->q_head + 1) % self->q_cap;
        self->q_len--;
        pthread_mutex_unlock(&self->mu);
        s_run_call(self, w->state, call);
        s_call_destroy(&call);
    }
    if (self->opts.worker_fini)
        self->opts.worker_fini(w->state, self->opts.user);
    pthread_mutex_lock(&self->mu);
    self->workers_alive--;
    pthread_mutex_unlock(&self->mu);
    uint64_t one = 1;
    ssize_t n = write(self->wake_fd, &one, sizeof one);
    (void)n;
    return NULL;
}

/* --- the built-in Health service ------------------------------------- */

static void
s_health_check(Kowloon__Rpc__Health_Service *svc,
               const Kowloon__Rpc__HealthCheckRequest *in,
               Kowloon__Rpc__HealthCheckResponse_Closure closure, void *cd)
{
    (void)svc;
    kl_call_t *call = kl_call_from(cd);
    kl_rpc_server_t *self = call->server;
    if (in->service && *in->service && !s_find_service(self, in->service)) {
        kl_call_fail(call, KL_NOT_FOUND, "unknown service %s", in->service);
        closure(NULL, cd);
        return;
    }
    Kowloon__Rpc__HealthCheckResponse out =
        KOWLOON__RPC__HEALTH_CHECK_RESPONSE__INIT;
    bool ready = !self->opts.ready ||
                 self->opts.ready(call->worker_state, self->opts.user);
    out.status =
        ready
            ? KOWLOON__RPC__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
            : KOWLOON__RPC__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
    closure(&out, cd);
}

/* --- the I/O thread --------------------------------------------------- */

/* Finds field 2 (correlation_id, varint) in bytes that did not unpack as a
 * Request, walking the top-level fields until one does not parse. */
static bool
s_scan_correlation_id(const uint8_t *p, size_t len, uint64_t *id)
{
    size_t i = 0;
    while (i < len) {
        uint64_t key = 0;
        int shift = 0;
        while (i < len && shift < 64) {
            key |= (uint64_t)(p[i] & 0x7f) << shift;
            shift += 7;
            if (!(p[i++] & 0x80))
                goto have_key;
        }
        return false;
    have_key:;
        unsigned wire = (unsigned)(key & 7);
        uint64_t field = key >> 3;
        if (wire == 0) {
            uint64_t v = 0;
            shift = 0;
            while (i < len && shift < 64) {
                v |= (uint64_t)(p[i] & 0x7f) << shift;
                shift += 7;
                if (!(p[i++] & 0x80)) {
                    if (field == 2) {
                        *id = v;
                        return true;
                    }
                    goto next;
                }
            }
            return false;
        } else if (wire == 1) {
            if (len - i < 8)
                return false;
            i += 8;
        } else if (wire == 5) {
            if (len - i < 4)
                return false;
            i += 4;
        } else if (wire == 2) {
            uint64_t n = 0;
            shift = 0;
            while (i < len && shift < 64) {
                n |= (uint64_t)(p[i] & 0x7f) << shift;
                shift += 7;
                if (!(p[i++] & 0x80))
                    goto have_len;
            }
            return false;
        have_len:
            if (n > len - i)
                return false;
            i += (size_t)n;
        } else {
            return false;
        }
    next:;
    }
    return false;
}

static void
s_send_reply(kl_rpc_server_t *self, s_reply_t *r)
{
    /* ROUTER_MANDATORY is off: a reply to a departed peer is dropped by
     * libzmq, as is one to a peer whose pipe is full. */
    if (zmq_send(self->router, r->identity, r->identity_len,
                 ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(self->router, r->data, r->len, ZMQ_DONTWAIT) < 0)
        KL_LOG(KL_DEBUG, "zmq_send() of a reply failed: %s, dropped",
               zmq_strerror(zmq_errno()));
}

/* Answers right away from the I/O thread (refusals before queueing). */
static void
s_answer_now(kl_rpc_server_t *self, const uint8_t *identity,
             size_t identity_len, uint64_t corr, kl_code_t code,
             const char *message, bool not_executed)
{
    s_reply_t *r = s_reply_new(identity, identity_len, corr, code, message,
                               NULL, 0, not_executed);
    s_send_reply(self, r);
    s_reply_destroy(&r);
}

static void
s_drop(kl_rpc_server_t *self, const char *why)
{
    uint64_t n = atomic_fetch_add(&self->n_dropped, 1) + 1;
    KL_LOG(KL_WARN, "rpc frame dropped: %s (%llu dropped so far)", why,
           (unsigned long long)n);
}

/* Handles one request frame from identity. */
static void
s_on_request(kl_rpc_server_t *self, bool draining, const uint8_t *identity,
             size_t identity_len, const uint8_t *data, size_t len)
{
    char msg[160];
    if (len > self->max_bytes + S_ENVELOPE_ALLOWANCE) {
        s_drop(self, "oversized request");
        return;
    }
    Kowloon__Rpc__Request *req = kowloon__rpc__request__unpack(NULL, len, data);
    if (!req) {
        uint64_t corr;
        if (s_scan_correlation_id(data, len, &corr)) {
            KL_LOG(KL_WARN, "malformed rpc envelope of %zu bytes, refused",
                   len);
            s_answer_now(self, identity, identity_len, corr,
                         KL_INVALID_ARGUMENT, "malformed request envelope",
                         false);
        } else {
            s_drop(self, "malformed envelope without correlation id");
        }
        return;
    }
    uint64_t corr = req->correlation_id;
    kl_code_t code = KL_OK;
    if (req->version != KL_RPC_VERSION) {
        code = KL_FAILED_PRECONDITION;
        snprintf(msg, sizeof msg,
                 "unsupported rpc version %u, this server speaks %u",
                 req->version, KL_RPC_VERSION);
    } else if (req->payload.len > self->max_bytes) {
        code = KL_RESOURCE_EXHAUSTED;
        snprintf(msg, sizeof msg,
                 "request payload of %zu bytes exceeds the %zu byte limit",
                 req->payload.len, self->max_bytes);
    } else if (draining) {
        code = KL_UNAVAILABLE;
        snprintf(msg, sizeof msg, "server is shutting down");
    }
    if (code != KL_OK) {
        KL_LOG(KL_DEBUG, "rpc request refused: %s", msg);
        kowloon__rpc__request__free_unpacked(req, NULL);
        /* A draining server ran nothing of the call: the client may send
         * it elsewhere whatever the method. */
        s_answer_now(self, identity, identity_len, corr, code, msg, draining);
        return;
    }

    kl_call_t *call = kl_calloc(1, sizeof *call);
    call->server = self;
    call->req = req;
    memcpy(call->identity, identity, identity_len);
    call->identity_len = identity_len;
    Kowloon__Rpc__CallContext *c = req->context;
    call->ctx.request_id = c && c->request_id ? c->request_id : "";
    call->ctx.tenant_id = c && c->tenant_id ? c->tenant_id : "";
    call->ctx.subdomain = c && c->subdomain ? c->subdomain : "";
    call->ctx.plan = c && c->plan ? c->plan : "";
    call->ctx.principal = c && c->principal ? c->principal : "";

    pthread_mutex_lock(&self->mu);
    bool full = self->q_len == self->q_cap;
    if (!full) {
        self->queue[(self->q_head + self->q_len) % self->q_cap] = call;
        self->q_len++;
        pthread_cond_signal(&self->cond);
    }
    pthread_mutex_unlock(&self->mu);
    if (full) {
        KL_LOG(KL_WARN, "rpc queue full (%zu calls), %s/%s refused",
               self->q_cap, req->service, req->method);
        s_call_destroy(&call);
        s_answer_now(self, identity, identity_len, corr, KL_UNAVAILABLE,
                     "server queue full", true);
    }
}

/* Reads up to a batch of messages from the ROUTER without blocking. */
static void
s_read_router(kl_rpc_server_t *self, bool draining)
{
    for (int n = 0; n < S_RECV_BATCH; n++) {
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        if (zmq_msg_recv(&id, self->router, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&id);
            return;
        }
        int frames = 1;
        bool ok = zmq_msg_more(&id);
        zmq_msg_init(&body);
        if (ok) {
            zmq_msg_recv(&body, self->router, 0);
            frames++;
        }
        /* Drain and count anything past [identity][request]. */
        bool more = zmq_msg_more(&body);
        while (more) {
            zmq_msg_t extra;
            zmq_msg_init(&extra);
            zmq_msg_recv(&extra, self->router, 0);
            more = zmq_msg_more(&extra);
            zmq_msg_close(&extra);
            frames++;
        }
        if (frames != 2) {
            char why[64];
            snprintf(why, sizeof why, "message of %d frames, not 1",
                     frames - 1);
            s_drop(self, why);
        } else if (zmq_msg_size(&id) == 0 ||
                   zmq_msg_size(&id) > S_IDENTITY_MAX) {
            s_drop(self, "bad peer identity");
        } else {
            s_on_request(self, draining, zmq_msg_data(&id), zmq_msg_size(&id),
                         zmq_msg_data(&body), zmq_msg_size(&body));
        }
        zmq_msg_close(&body);
        zmq_msg_close(&id);
    }
}

/* Sends every reply the workers have posted. */
static void
s_flush_replies(kl_rpc_server_t *self)
{
    pthread_mutex_lock(&self->mu);
    s_reply_t *r = self->r_head;
    self->r_head = self->r_tail = NULL;
    pthread_mutex_unlock(&self->mu);
    while (r) {
        s_reply_t *next = r->next;
        s_send_reply(self, r);
        s_reply_destroy(&r);
        r = next;
    }
}

static bool
s_workers_done(kl_rpc_server_t *self)
{
    pthread_mutex_lock(&self->mu);
    bool done = self->workers_alive == 0;
    pthread_mutex_unlock(&self->mu);
    return done;
}

int
kl_rpc_server_run(kl_rpc_server_t *self)
{
    if (!self)
        return -KL_INVALID_ARGUMENT;
    if (self->ran)
        return -KL_FAILED_PRECONDITION;
    self->ran = true;
    kl_status_t st;
    int rc = kl_rpc_server_bind(self, &st);
    if (rc < 0) {
        KL_LOG(KL_ERROR, "%s", st.message);
        return rc;
    }

    struct sigaction old_term, old_int;
    bool signals = !self->opts.no_signal_handlers;
    if (signals) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = s_on_signal;
        sa.sa_flags = SA_RESTART; /* poll() still returns EINTR */
        sigemptyset(&sa.sa_mask);
        atomic_store(&s_signal_server, self);
        sigaction(SIGTERM, &sa, &old_term);
        sigaction(SIGINT, &sa, &old_int);
    }

    pthread_mutex_lock(&self->mu);
    self->workers_alive = self->opts.workers;
    pthread_mutex_unlock(&self->mu);
    for (int i = 0; i < self->opts.workers; i++) {
        s_worker_t *w = &self->workers[i];
        w->server = self;
        w->index = i;
        if (pthread_create(&w->thread, NULL, s_worker_main, w) == 0) {
            w->started = true;
        } else {
            KL_LOG(KL_ERROR, "pthread_create() failed for worker %d", i);
            pthread_mutex_lock(&self->mu);
            self->workers_alive--;
            pthread_mutex_unlock(&self->mu);
            kl_rpc_server_stop(self);
            rc = -KL_INTERNAL;
        }
    }

    /* Serve until stopped, then drain: new calls are answered UNAVAILABLE
     * while the workers finish what they hold and what is queued. */
    bool draining = false;
    int64_t grace_end = 0;
    for (;;) {
        if (!draining && atomic_load(&self->stop)) {
            draining = true;
            grace_end = kl_now_mono_ms() + self->opts.drain_grace_ms;
            pthread_mutex_lock(&self->mu);
            self->q_closed = true;
            pthread_cond_broadcast(&self->cond);
            pthread_mutex_unlock(&self->mu);
        }
        if (draining && s_workers_done(self) && kl_now_mono_ms() >= grace_end)
            break;
        zmq_pollitem_t items[2] = {
            {self->router, 0, ZMQ_POLLIN, 0},
            {NULL, self->wake_fd, ZMQ_POLLIN, 0},
        };
        int n = zmq_poll(items, 2, draining ? 50 : -1);
        if (n < 0) {
            if (zmq_errno() == EINTR)
                continue;
            KL_LOG(KL_ERROR, "zmq_poll() failed: %s",
                   zmq_strerror(zmq_errno()));
            kl_rpc_server_stop(self);
            rc = -KL_INTERNAL;
            continue;
        }
        if (items[1].revents & ZMQ_POLLIN) {
            uint64_t v;
            ssize_t r = read(self->wake_fd, &v, sizeof v);
            (void)r;
        }
        s_flush_replies(self);
        if (items[0].revents & ZMQ_POLLIN)
            s_read_router(self, draining);
    }
    for (int i = 0; i < self->opts.workers; i++)
        if (self->workers[i].started) {
            pthread_join(self->workers[i].thread, NULL);
            self->workers[i].started = false;
        }
    s_flush_replies(self);
    /* Keep the socket open a moment before closing it: replies handed to
     * libzmq just now were seen lost when the socket closed at once (their
     * calls had run, the caller never got the answer), linger or not. Calls
     * arriving meanwhile are refused as not executed. */
    int64_t settle_end = kl_now_mono_ms() + S_SETTLE_MS;
    while (kl_now_mono_ms() < settle_end) {
        zmq_pollitem_t item = {self->router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 10) > 0)
            s_read_router(self, true);
        s_flush_replies(self);
    }
    zmq_close(self->router);
    self->router = NULL;

    if (signals) {
        sigaction(SIGTERM, &old_term, NULL);
        sigaction(SIGINT, &old_int, NULL);
        kl_rpc_server_t *expected = self;
        atomic_compare_exchange_strong(&s_signal_server, &expected, NULL);
    }
    return rc;
}

void
kl_rpc_server_destroy(kl_rpc_server_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kl_rpc_server_t *self = *self_p;
    kl_rpc_server_t *expected = self;
    atomic_compare_exchange_strong(&s_signal_server, &expected, NULL);
    if (self->router)
        zmq_close(self->router);
    kl_curve_zap_destroy(&self->zap);
    if (self->zctx)
        zmq_ctx_term(self->zctx);
    if (self->wake_fd >= 0)
        close(self->wake_fd);
    /* Calls left queued happen only when run() never ran its workers. */
    while (self->q_len) {
        s_call_destroy(&self->queue[self->q_head]);
        self->q_head = (self->q_head + 1) % self->q_cap;
        self->q_len--;
    }
    s_reply_t *r = self->r_head;
    while (r) {
        s_reply_t *next = r->next;
        s_reply_destroy(&r);
        r = next;
    }
    pthread_mutex_destroy(&self->mu);
    pthread_cond_destroy(&self->cond);
    free(self->queue);
    free(self->workers);
    free(self->services);
    free(self->endpoint);
    free(self->bind);
    free(self);
    *self_p = NULL;
}
