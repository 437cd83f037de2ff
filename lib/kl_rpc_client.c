/*
 * kl_rpc_client: one I/O thread owns a DEALER per endpoint; callers on any
 * thread queue a call, wake the I/O thread through an eventfd, and wait on
 * the call's own condition variable until the reply or their timeout.
 *
 * Everything shared (the submit queue, the table of pending calls, the
 * per-endpoint outstanding counts) is guarded by one mutex. A call lives on
 * its caller's stack: whoever finishes it (the I/O thread on a reply, the
 * caller on a timeout, destroy on shutdown) unlinks it under the mutex, so
 * the I/O thread never sees a call whose caller has left.
 */
#include "kl_rpc_client.h"

#include "kl_alloc.h"
#include "kl_log.h"
#include "kowloon/rpc.pb-c.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define S_DEFAULT_MAX_BYTES (4u * 1024 * 1024)
/* Room for the envelope around a payload of max_message_bytes. */
#define S_ENVELOPE_ALLOWANCE 4096
/* Endpoints of one client; the tried-endpoints set is a 64-bit mask. */
#define S_MAX_ENDPOINTS 64
/* Attempts of one idempotent call, the first included. */
#define S_MAX_ATTEMPTS 3
#define S_BUCKETS 1024
#define S_RECV_BATCH 256
#define S_HEARTBEAT_IVL_MS 1000
#define S_HEARTBEAT_TIMEOUT_MS 3000
/* A new endpoint may take this long to finish its first connection; until
 * then a call that finds no connected endpoint waits for one (within its
 * deadline) instead of failing UNAVAILABLE at once. */
#define S_CONNECT_GRACE_MS 1000
/* Poll tick while calls wait for a first connection. */
#define S_HOLD_TICK_MS 5

typedef enum { S_QUEUED, S_SENT, S_DONE } s_state_t;

/* One attempt of a call; lives on the caller's stack. */
typedef struct s_call {
    uint64_t corr;           /* correlation id of this attempt */
    const uint8_t *req;      /* packed Request, caller's */
    size_t req_len;          /* bytes in req */
    uint64_t tried;          /* endpoints tried by earlier attempts */
    int64_t hold_until_mono; /* when waiting for a connection ends */
    s_state_t state;         /* where the call is */
    int endpoint;            /* where it went, -1 before */
    bool never_sent;         /* no endpoint took it */
    bool timed_out;          /* the caller stopped waiting */
    kl_code_t code;          /* outcome, once S_DONE */
    char message[KL_STATUS_MESSAGE_MAX]; /* outcome message */
    uint8_t *payload;     /* reply payload, owned; NULL if empty */
    size_t payload_len;   /* bytes in payload */
    pthread_cond_t cond;  /* signalled on S_DONE */
    struct s_call *qnext; /* submit queue link */
    struct s_call *hnext; /* pending table chain */
} s_call_t;

typedef struct {
    char *addr;           /* "tcp://host:port", owned */
    void *sock;           /* DEALER, I/O thread after start */
    uint64_t outstanding; /* calls sent and not finished */
    bool ever_sent;       /* some send succeeded: it did connect */
    int64_t created_mono; /* when connect was called */
} s_endpoint_t;

struct kl_rpc_client {
    const ProtobufCServiceDescriptor *service; /* not owned */
    size_t max_bytes;                          /* payload cap */
    void *zctx;                                /* ZeroMQ context */
    s_endpoint_t *eps;                         /* n_eps endpoints */
    size_t n_eps;                              /* count of eps */
    int wake_fd;                               /* eventfd to the I/O thread */
    pthread_t thread;                          /* the I/O thread */
    bool thread_started;                       /* thread is to be joined */
    atomic_uint_fast64_t next_corr;            /* correlation ids */
    atomic_uint_fast64_t n_calls;              /* stats */
    atomic_uint_fast64_t n_failures;           /* stats */
    atomic_uint_fast64_t n_retries;            /* stats */
    atomic_uint_fast64_t n_timeouts;           /* stats */

    pthread_mutex_t mu;           /* guards everything below, and eps[] */
    pthread_cond_t idle;          /* active_callers reached 0 */
    s_call_t *q_head;             /* calls to send, oldest first */
    s_call_t *q_tail;             /* last queued */
    s_call_t *pending[S_BUCKETS]; /* queued or sent calls by corr */
    unsigned rr;                  /* rotation among equal endpoints */
    bool closing;                 /* destroy has begun */
    int active_callers;           /* threads inside a call */
};

static void *s_io_main(void *arg);

static void
s_setsockopt_int(void *sock, int option, int value)
{
    if (zmq_setsockopt(sock, option, &value, sizeof value) != 0)
        KL_LOG(KL_DEBUG, "zmq_setsockopt(%d) failed: %s", option,
               zmq_strerror(zmq_errno()));
}

static void
s_wake(kl_rpc_client_t *self)
{
    uint64_t one = 1;
    ssize_t n = write(self->wake_fd, &one, sizeof one);
    (void)n;
}

kl_rpc_client_t *
kl_rpc_client_new(const ProtobufCServiceDescriptor *service,
                  const kl_rpc_client_opts_t *opts, kl_status_t *status)
{
    if (!service || !opts || !opts->endpoints || opts->n_endpoints == 0) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "rpc client: a service and at least one endpoint are "
                      "required");
        return NULL;
    }
    if (opts->n_endpoints > S_MAX_ENDPOINTS) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "rpc client for %s: %zu endpoints, at most %d",
                      service->name, opts->n_endpoints, S_MAX_ENDPOINTS);
        return NULL;
    }
    kl_rpc_client_t *self = kl_calloc(1, sizeof *self);
    self->service = service;
    self->max_bytes =
        opts->max_message_bytes ? opts->max_message_bytes : S_DEFAULT_MAX_BYTES;
    self->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    atomic_init(&self->next_corr, 1);
    atomic_init(&self->n_calls, 0);
    atomic_init(&self->n_failures, 0);
    atomic_init(&self->n_retries, 0);
    atomic_init(&self->n_timeouts, 0);
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->idle, NULL);
    self->zctx = zmq_ctx_new();
    self->eps = kl_calloc(opts->n_endpoints, sizeof *self->eps);
    self->n_eps = opts->n_endpoints;
    if (self->wake_fd < 0 || !self->zctx) {
        kl_status_set(status, KL_INTERNAL, "rpc client: %s failed: %s",
                      self->wake_fd < 0 ? "eventfd()" : "zmq_ctx_new()",
                      strerror(errno));
        kl_rpc_client_destroy(&self);
        return NULL;
    }
    int64_t maxmsg = (int64_t)(self->max_bytes + S_ENVELOPE_ALLOWANCE);
    for (size_t i = 0; i < self->n_eps; i++) {
        s_endpoint_t *ep = &self->eps[i];
        const char *addr = opts->endpoints[i];
        if (!addr || !*addr) {
            kl_status_set(status, KL_INVALID_ARGUMENT,
                          "rpc client for %s: endpoint %zu is empty",
                          service->name, i);
            kl_rpc_client_destroy(&self);
            return NULL;
        }
        ep->addr = kl_strdup(addr);
        ep->sock = zmq_socket(self->zctx, ZMQ_DEALER);
        if (!ep->sock) {
            kl_status_set(status, KL_INTERNAL, "zmq_socket() failed: %s",
                          zmq_strerror(zmq_errno()));
            kl_rpc_client_destroy(&self);
            return NULL;
        }
        /* IMMEDIATE: a send with no live connection fails EAGAIN instead
         * of queueing for a peer that may never come. */
        s_setsockopt_int(ep->sock, ZMQ_IMMEDIATE, 1);
        s_setsockopt_int(ep->sock, ZMQ_LINGER, 0);
        s_setsockopt_int(ep->sock, ZMQ_HEARTBEAT_IVL, S_HEARTBEAT_IVL_MS);
        s_setsockopt_int(ep->sock, ZMQ_HEARTBEAT_TIMEOUT,
                         S_HEARTBEAT_TIMEOUT_MS);
        s_setsockopt_int(ep->sock, ZMQ_HEARTBEAT_TTL, S_HEARTBEAT_TIMEOUT_MS);
        zmq_setsockopt(ep->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
        if (zmq_connect(ep->sock, addr) != 0) {
            kl_status_set(status, KL_INVALID_ARGUMENT,
                          "zmq_connect(%s) failed: %s", addr,
                          zmq_strerror(zmq_errno()));
            kl_rpc_client_destroy(&self);
            return NULL;
        }
        ep->created_mono = kl_now_mono_ms();
    }
    /* The sockets move to the I/O thread here; pthread_create is the full
     * memory barrier libzmq asks for when a socket changes threads. */
    if (pthread_create(&self->thread, NULL, s_io_main, self) != 0) {
        kl_status_set(status, KL_INTERNAL,
                      "rpc client: pthread_create() failed");
        kl_rpc_client_destroy(&self);
        return NULL;
    }
    self->thread_started = true;
    return self;
}

/* --- the pending table and queue (mutex held) ------------------------ */

static void
s_pending_add(kl_rpc_client_t *self, s_call_t *c)
{
    s_call_t **b = &self->pending[c->corr % S_BUCKETS];
    c->hnext = *b;
    *b = c;
}

static s_call_t *
s_pending_take(kl_rpc_client_t *self, uint64_t corr)
{
    for (s_call_t **p = &self->pending[corr % S_BUCKETS]; *p; p = &(*p)->hnext)
        if ((*p)->corr == corr) {
            s_call_t *c = *p;
            *p = c->hnext;
            c->hnext = NULL;
            return c;
        }
    return NULL;
}

static void
s_queue_remove(kl_rpc_client_t *self, s_call_t *c)
{
    s_call_t *prev = NULL;
    for (s_call_t *q = self->q_head; q; prev = q, q = q->qnext)
        if (q == c) {
            if (prev)
                prev->qnext = q->qnext;
            else
                self->q_head = q->qnext;
            if (self->q_tail == q)
                self->q_tail = prev;
            q->qnext = NULL;
            return;
        }
}

/* Marks c finished (already unlinked) and wakes its caller. */
static void
s_finish(kl_rpc_client_t *self, s_call_t *c, kl_code_t code,
         const char *message)
{
    if (c->state == S_SENT && c->endpoint >= 0)
        self->eps[c->endpoint].outstanding--;
    c->state = S_DONE;
    c->code = code;
    snprintf(c->message, sizeof c->message, "%s", message ? message : "");
    pthread_cond_signal(&c->cond);
}

/* Sends c on the least busy endpoint that takes it: endpoints not tried
 * before come first, then fewer outstanding calls, ties in rotation.
 * Returns the endpoint or -1 when none has a live connection. */
static int
s_send(kl_rpc_client_t *self, s_call_t *c)
{
    int order[S_MAX_ENDPOINTS];
    size_t n = self->n_eps;
    for (size_t k = 0; k < n; k++) {
        int idx = (int)((self->rr + k) % n);
        uint64_t key = ((c->tried >> idx) & 1 ? (UINT64_C(1) << 62) : 0) +
                       self->eps[idx].outstanding;
        /* Insertion sort keeps the rotation order among equal keys. */
        size_t j = k;
        while (j > 0) {
            int prev = order[j - 1];
            uint64_t pkey = ((c->tried >> prev) & 1 ? (UINT64_C(1) << 62) : 0) +
                            self->eps[prev].outstanding;
            if (pkey <= key)
                break;
            order[j] = prev;
            j--;
        }
        order[j] = idx;
    }
    self->rr++;
    for (size_t k = 0; k < n; k++) {
        s_endpoint_t *ep = &self->eps[order[k]];
        if (zmq_send(ep->sock, c->req, c->req_len, ZMQ_DONTWAIT) >= 0) {
            ep->ever_sent = true;
            ep->outstanding++;
            return order[k];
        }
        if (zmq_errno() != EAGAIN)
            KL_LOG(KL_DEBUG, "zmq_send() to %s failed: %s", ep->addr,
                   zmq_strerror(zmq_errno()));
    }
    return -1;
}

/* Whether some endpoint is still making its first connection. */
static bool
s_any_connecting(kl_rpc_client_t *self, int64_t now)
{
    for (size_t i = 0; i < self->n_eps; i++)
        if (!self->eps[i].ever_sent &&
            now - self->eps[i].created_mono < S_CONNECT_GRACE_MS)
            return true;
    return false;
}

/* Sends what is queued. Returns how many calls wait for a connection. */
static int
s_send_queued(kl_rpc_client_t *self)
{
    int held = 0;
    int64_t now = kl_now_mono_ms();
    s_call_t *prev = NULL;
    s_call_t *c = self->q_head;
    while (c) {
        s_call_t *next = c->qnext;
        int ep = s_send(self, c);
        bool hold =
            ep < 0 && now < c->hold_until_mono && s_any_connecting(self, now);
        if (hold) {
            held++;
            prev = c;
        } else {
            if (prev)
                prev->qnext = next;
            else
                self->q_head = next;
            if (self->q_tail == c)
                self->q_tail = prev;
            c->qnext = NULL;
            if (ep >= 0) {
                c->state = S_SENT;
                c->endpoint = ep;
            } else {
                char msg[160];
                snprintf(msg, sizeof msg, "no connected instance of %s",
                         self->service->name);
                s_pending_take(self, c->corr);
                c->never_sent = true;
                s_finish(self, c, KL_UNAVAILABLE, msg);
            }
        }
        c = next;
    }
    return held;
}

/* Fails every queued and sent call; destroy is under way. */
static void
s_cancel_all(kl_rpc_client_t *self)
{
    self->q_head = self->q_tail = NULL;
    for (size_t b = 0; b < S_BUCKETS; b++) {
        while (self->pending[b]) {
            s_call_t *c = self->pending[b];
            self->pending[b] = c->hnext;
            c->hnext = NULL;
            c->qnext = NULL;
            s_finish(self, c, KL_CANCELLED, "rpc client destroyed");
        }
    }
}

/* --- the I/O thread --------------------------------------------------- */

static void
s_on_reply(kl_rpc_client_t *self, s_endpoint_t *ep, const uint8_t *data,
           size_t len)
{
    Kowloon__Rpc__Response *resp =
        kowloon__rpc__response__unpack(NULL, len, data);
    if (!resp) {
        KL_LOG(KL_WARN, "malformed rpc reply of %zu bytes from %s, dropped",
               len, ep->addr);
        return;
    }
    pthread_mutex_lock(&self->mu);
    s_call_t *c = s_pending_take(self, resp->correlation_id);
    if (c && c->state == S_SENT) {
        kl_code_t code =
            resp->status ? kl_code_from_int((int)resp->status->code) : KL_OK;
        const char *msg =
            resp->status && resp->status->message ? resp->status->message : "";
        if (code == KL_OK && resp->payload.len) {
            c->payload = kl_memdup(resp->payload.data, resp->payload.len);
            c->payload_len = resp->payload.len;
        }
        s_finish(self, c, code, msg);
    } else if (c) {
        /* Not sent yet: cannot be its reply; put it back. */
        s_pending_add(self, c);
        c = NULL;
    }
    pthread_mutex_unlock(&self->mu);
    if (!c)
        KL_LOG(KL_DEBUG, "rpc reply %llu from %s has no caller, dropped",
               (unsigned long long)resp->correlation_id, ep->addr);
    kowloon__rpc__response__free_unpacked(resp, NULL);
}

static void
s_read_endpoint(kl_rpc_client_t *self, s_endpoint_t *ep)
{
    for (int n = 0; n < S_RECV_BATCH; n++) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, ep->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&msg);
            return;
        }
        bool more = zmq_msg_more(&msg);
        if (!more) {
            s_on_reply(self, ep, zmq_msg_data(&msg), zmq_msg_size(&msg));
        } else {
            while (more) {
                zmq_msg_t extra;
                zmq_msg_init(&extra);
                zmq_msg_recv(&extra, ep->sock, 0);
                more = zmq_msg_more(&extra);
                zmq_msg_close(&extra);
            }
            KL_LOG(KL_WARN, "multi-frame rpc reply from %s, dropped", ep->addr);
        }
        zmq_msg_close(&msg);
    }
}

static void *
s_io_main(void *arg)
{
    kl_rpc_client_t *self = arg;
    zmq_pollitem_t *items = kl_calloc(self->n_eps + 1, sizeof *items);
    for (size_t i = 0; i < self->n_eps; i++) {
        items[i].socket = self->eps[i].sock;
        items[i].events = ZMQ_POLLIN;
    }
    items[self->n_eps].fd = self->wake_fd;
    items[self->n_eps].events = ZMQ_POLLIN;

    for (;;) {
        pthread_mutex_lock(&self->mu);
        if (self->closing) {
            s_cancel_all(self);
            pthread_mutex_unlock(&self->mu);
            break;
        }
        int held = s_send_queued(self);
        pthread_mutex_unlock(&self->mu);

        int rc =
            zmq_poll(items, (int)self->n_eps + 1, held ? S_HOLD_TICK_MS : -1);
        if (rc < 0) {
            if (zmq_errno() == EINTR)
                continue;
            KL_LOG(KL_ERROR, "zmq_poll() failed: %s",
                   zmq_strerror(zmq_errno()));
            pthread_mutex_lock(&self->mu);
            self->closing = true;
            pthread_mutex_unlock(&self->mu);
            continue;
        }
        if (items[self->n_eps].revents & ZMQ_POLLIN) {
            uint64_t v;
            ssize_t r = read(self->wake_fd, &v, sizeof v);
            (void)r;
        }
        for (size_t i = 0; i < self->n_eps; i++)
            if (items[i].revents & ZMQ_POLLIN)
                s_read_endpoint(self, &self->eps[i]);
    }
    free(items);
    for (size_t i = 0; i < self->n_eps; i++) {
        zmq_close(self->eps[i].sock);
        self->eps[i].sock = NULL;
    }
    return NULL;
}

void
kl_rpc_client_destroy(kl_rpc_client_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kl_rpc_client_t *self = *self_p;
    pthread_mutex_lock(&self->mu);
    self->closing = true;
    pthread_mutex_unlock(&self->mu);
    if (self->thread_started) {
        s_wake(self);
        pthread_join(self->thread, NULL);
    }
    /* Callers woken with CANCELLED still hold the mutex for a moment. */
    pthread_mutex_lock(&self->mu);
    while (self->active_callers > 0)
        pthread_cond_wait(&self->idle, &self->mu);
    pthread_mutex_unlock(&self->mu);
    for (size_t i = 0; i < self->n_eps; i++) {
        if (self->eps[i].sock)
            zmq_close(self->eps[i].sock);
        free(self->eps[i].addr);
    }
    free(self->eps);
    if (self->zctx)
        zmq_ctx_term(self->zctx);
    if (self->wake_fd >= 0)
        close(self->wake_fd);
    pthread_mutex_destroy(&self->mu);
    pthread_cond_destroy(&self->idle);
    free(self);
    *self_p = NULL;
}

/* --- calls ------------------------------------------------------------ */

static void
s_mono_timespec(int64_t ms, struct timespec *ts)
{
    ts->tv_sec = (time_t)(ms / 1000);
    ts->tv_nsec = (long)(ms % 1000) * 1000000L;
}

/* Packs the envelope of one attempt. Caller frees *buf_p. */
static size_t
s_pack_request(kl_rpc_client_t *self, const char *method, const uint8_t *in,
               size_t in_len, const kl_call_ctx_t *ctx, uint64_t corr,
               int64_t deadline_unix_ms, uint8_t **buf_p)
{
    Kowloon__Rpc__Request req = KOWLOON__RPC__REQUEST__INIT;
    Kowloon__Rpc__CallContext cc = KOWLOON__RPC__CALL_CONTEXT__INIT;
    req.version = KL_RPC_VERSION;
    req.correlation_id = corr;
    req.service = (char *)self->service->name;
    req.method = (char *)method;
    req.deadline_unix_ms = deadline_unix_ms;
    if (ctx) {
        cc.request_id = (char *)(ctx->request_id ? ctx->request_id : "");
        cc.tenant_id = (char *)(ctx->tenant_id ? ctx->tenant_id : "");
        cc.subdomain = (char *)(ctx->subdomain ? ctx->subdomain : "");
        cc.plan = (char *)(ctx->plan ? ctx->plan : "");
        cc.principal = (char *)(ctx->principal ? ctx->principal : "");
        req.context = &cc;
    }
    req.payload.data = (uint8_t *)in;
    req.payload.len = in_len;
    size_t len = kowloon__rpc__request__get_packed_size(&req);
    *buf_p = kl_malloc(len ? len : 1);
    return kowloon__rpc__request__pack(&req, *buf_p);
}

/* Runs one attempt to its end: reply, refusal or attempt_end. On return
 * c->state is S_DONE and c is unlinked everywhere. */
static void
s_attempt(kl_rpc_client_t *self, s_call_t *c, int64_t attempt_end)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cond, &ca);
    pthread_condattr_destroy(&ca);

    pthread_mutex_lock(&self->mu);
    if (self->closing) {
        c->state = S_DONE;
        c->code = KL_CANCELLED;
        snprintf(c->message, sizeof c->message, "rpc client destroyed");
    } else {
        c->state = S_QUEUED;
        if (self->q_tail)
            self->q_tail->qnext = c;
        else
            self->q_head = c;
        self->q_tail = c;
        s_pending_add(self, c);
        s_wake(self);
    }
    struct timespec ts;
    s_mono_timespec(attempt_end, &ts);
    while (c->state != S_DONE) {
        if (pthread_cond_timedwait(&c->cond, &self->mu, &ts) == ETIMEDOUT &&
            c->state != S_DONE) {
            /* Gave up: unlink, so a late reply finds no caller. */
            if (c->state == S_QUEUED)
                s_queue_remove(self, c);
            s_pending_take(self, c->corr);
            c->timed_out = true;
            s_finish(self, c, KL_DEADLINE_EXCEEDED, "");
            break;
        }
    }
    pthread_mutex_unlock(&self->mu);
    pthread_cond_destroy(&c->cond);
}

int
kl_rpc_client_call_raw(kl_rpc_client_t *self, const char *method,
                       const uint8_t *in, size_t in_len,
                       const kl_call_opts_t *opts, uint8_t **out,
                       size_t *out_len, kl_status_t *status)
{
    if (out)
        *out = NULL;
    if (out_len)
        *out_len = 0;
    if (!self || !method || !opts || !out || !out_len || (!in && in_len))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "rpc call: missing argument");
    if (opts->timeout_ms <= 0)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "rpc call %s/%s: timeout_ms must be > 0",
                             self->service->name, method);
    if (!protobuf_c_service_descriptor_get_method_by_name(self->service,
                                                          method))
        return kl_status_set(status, KL_UNIMPLEMENTED, "unknown method %s/%s",
                             self->service->name, method);
    atomic_fetch_add(&self->n_calls, 1);
    if (in_len > self->max_bytes) {
        atomic_fetch_add(&self->n_failures, 1);
        return kl_status_set(status, KL_RESOURCE_EXHAUSTED,
                             "%s/%s request of %zu bytes exceeds the %zu byte "
                             "limit",
                             self->service->name, method, in_len,
                             self->max_bytes);
    }
    pthread_mutex_lock(&self->mu);
    bool closing = self->closing;
    if (!closing)
        self->active_callers++;
    pthread_mutex_unlock(&self->mu);
    if (closing) {
        atomic_fetch_add(&self->n_failures, 1);
        return kl_status_set(status, KL_CANCELLED, "rpc client destroyed");
    }

    int64_t end = kl_now_mono_ms() + opts->timeout_ms;
    int max_attempts = 1;
    if (opts->idempotent && self->n_eps > 1)
        max_attempts =
            self->n_eps < S_MAX_ATTEMPTS ? (int)self->n_eps : S_MAX_ATTEMPTS;
    uint64_t tried = 0;
    int rc;
    for (int attempt = 0;; attempt++) {
        int64_t now = kl_now_mono_ms();
        int64_t remaining = end - now;
        if (remaining <= 0) {
            rc = kl_status_set(
                status, KL_DEADLINE_EXCEEDED, "%s/%s: no reply within %lld ms",
                self->service->name, method, (long long)opts->timeout_ms);
            break;
        }
        /* The deadline is shared by the attempts still possible, so a
         * retry has time left to run. */
        int64_t budget = remaining / (max_attempts - attempt);
        if (budget < 1)
            budget = 1;
        s_call_t c;
        memset(&c, 0, sizeof c);
        c.corr = atomic_fetch_add(&self->next_corr, 1);
        c.endpoint = -1;
        c.tried = tried;
        c.hold_until_mono = now + budget;
        uint8_t *req = NULL;
        c.req_len = s_pack_request(self, method, in, in_len, opts->ctx, c.corr,
                                   kl_now_unix_ms() + budget, &req);
        c.req = req;
        s_attempt(self, &c, now + budget);
        free(req);

        if (c.code == KL_OK) {
            *out = c.payload;
            *out_len = c.payload_len;
            kl_status_clear(status);
            rc = 0;
            break;
        }
        free(c.payload);
        bool timed_out = c.timed_out;
        if (timed_out)
            atomic_fetch_add(&self->n_timeouts, 1);
        bool retry = !c.never_sent && attempt + 1 < max_attempts &&
                     (timed_out || c.code == KL_UNAVAILABLE) &&
                     end - kl_now_mono_ms() > 0;
        if (retry) {
            if (c.endpoint >= 0)
                tried |= UINT64_C(1) << c.endpoint;
            atomic_fetch_add(&self->n_retries, 1);
            continue;
        }
        if (timed_out)
            rc = kl_status_set(
                status, KL_DEADLINE_EXCEEDED, "%s/%s: no reply within %lld ms",
                self->service->name, method, (long long)opts->timeout_ms);
        else
            rc = kl_status_set(status, c.code, "%s", c.message);
        break;
    }
    if (rc < 0)
        atomic_fetch_add(&self->n_failures, 1);

    pthread_mutex_lock(&self->mu);
    if (--self->active_callers == 0)
        pthread_cond_broadcast(&self->idle);
    pthread_mutex_unlock(&self->mu);
    return rc;
}

int
kl_rpc_client_call(kl_rpc_client_t *self, const char *method,
                   const ProtobufCMessage *input, const kl_call_opts_t *opts,
                   ProtobufCMessage **output, kl_status_t *status)
{
    if (output)
        *output = NULL;
    if (!self || !method || !input || !output)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "rpc call: missing argument");
    const ProtobufCMethodDescriptor *m =
        protobuf_c_service_descriptor_get_method_by_name(self->service, method);
    if (!m)
        return kl_status_set(status, KL_UNIMPLEMENTED, "unknown method %s/%s",
                             self->service->name, method);
    if (input->descriptor != m->input)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "%s/%s takes a %s, not a %s", self->service->name,
                             method, m->input->name, input->descriptor->name);
    size_t in_len = protobuf_c_message_get_packed_size(input);
    uint8_t *in = kl_malloc(in_len ? in_len : 1);
    protobuf_c_message_pack(input, in);
    uint8_t *out = NULL;
    size_t out_len = 0;
    int rc = kl_rpc_client_call_raw(self, method, in, in_len, opts, &out,
                                    &out_len, status);
    free(in);
    if (rc < 0)
        return rc;
    ProtobufCMessage *msg =
        protobuf_c_message_unpack(m->output, NULL, out_len, out);
    free(out);
    if (!msg) {
        atomic_fetch_add(&self->n_failures, 1);
        return kl_status_set(status, KL_INTERNAL, "malformed %s reply",
                             m->output->name);
    }
    *output = msg;
    return 0;
}

void
kl_rpc_client_stats(const kl_rpc_client_t *self, kl_rpc_client_stats_t *stats)
{
    if (!stats)
        return;
    memset(stats, 0, sizeof *stats);
    if (!self)
        return;
    /* The counters are atomics; reading them needs no lock. */
    kl_rpc_client_t *s = (kl_rpc_client_t *)self;
    stats->calls = atomic_load(&s->n_calls);
    stats->failures = atomic_load(&s->n_failures);
    stats->retries = atomic_load(&s->n_retries);
    stats->timeouts = atomic_load(&s->n_timeouts);
}
