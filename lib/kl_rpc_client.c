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
 *
 * Endpoints sit in the balancer's slots (kl_rpc_balancer.h): eps[slot].
 * Sockets belong to the I/O thread once it runs; a new endpoint set is
 * handed to it (set_req) and applied there, while the caller waits.
 *
 * Each DEALER has a socket monitor (zmq_socket_monitor) whose PAIR the I/O
 * thread polls beside it: when a connection drops (a crashed instance, a
 * heartbeat timeout), the calls sent on that endpoint fail UNAVAILABLE at
 * once instead of waiting out their deadline in a pipe that is gone.
 */
#include "kl_rpc_client.h"

#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_rpc_balancer.h"
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
#define S_MAX_ENDPOINTS KL_RPC_BALANCER_SLOTS
/* Attempts of one idempotent call, the first included. */
#define S_MAX_ATTEMPTS 3
/* Sends of one call refused as not executed (draining instances). */
#define S_MAX_NOT_EXECUTED 8
#define S_BUCKETS 1024
#define S_RECV_BATCH 256
#define S_HEARTBEAT_IVL_MS 1000
#define S_HEARTBEAT_TIMEOUT_MS 3000
/* A new endpoint may take this long to finish its first connection; until
 * then a call that finds no connected endpoint waits for one (within its
 * deadline) instead of failing UNAVAILABLE at once, and a send that finds
 * no connection does not count against it. */
#define S_CONNECT_GRACE_MS 1000
/* Poll tick while calls wait for a first connection. */
#define S_HOLD_TICK_MS 5
/* How long a Health.Check probe of an ejected endpoint may take. */
#define S_PROBE_TIMEOUT_MS 1000
/* Correlation ids of probes have this bit; calls never reach it. */
#define S_PROBE_BIT (UINT64_C(1) << 63)
#define S_ADDR_MAX 512

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
    bool not_executed;       /* the server refused it unrun */
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
    bool used;            /* slot holds an endpoint */
    char *spec;           /* as configured, "tcp://h:p?key=...", owned */
    char *addr;           /* what is connected, "tcp://h:p", owned */
    void *sock;           /* DEALER, I/O thread after start */
    void *mon;            /* PAIR reading sock's monitor, same owner */
    bool ever_sent;       /* some send succeeded: it did connect */
    int64_t created_mono; /* when connect was called */
    uint64_t probe_corr;  /* correlation id of the probe out, 0 none */
    int64_t probe_end;    /* when that probe times out */
} s_endpoint_t;

/* An endpoint set waiting for the I/O thread, and its outcome. */
typedef struct {
    char **specs;       /* the new set, borrowed from the caller */
    size_t n;           /* entries in specs */
    bool done;          /* applied or refused */
    kl_status_t status; /* the outcome */
} s_set_req_t;

struct kl_rpc_client {
    const ProtobufCServiceDescriptor *service; /* not owned */
    size_t max_bytes;                          /* payload cap */
    const kl_curve_t *curve;                   /* not owned; NULL */
    char *default_key;                         /* server key, Z85; NULL */
    void *zctx;                                /* ZeroMQ context */
    int wake_fd;                               /* eventfd to the I/O thread */
    pthread_t thread;                          /* the I/O thread */
    bool thread_started;                       /* thread is to be joined */
    atomic_uint_fast64_t next_corr;            /* correlation ids */
    atomic_uint_fast64_t n_calls;              /* stats */
    atomic_uint_fast64_t n_failures;           /* stats */
    atomic_uint_fast64_t n_retries;            /* stats */
    atomic_uint_fast64_t n_timeouts;           /* stats */

    pthread_mutex_t mu;                /* guards everything below */
    pthread_cond_t idle;               /* active_callers reached 0 */
    pthread_cond_t set_done;           /* a set_req was applied */
    s_endpoint_t eps[S_MAX_ENDPOINTS]; /* by balancer slot */
    size_t n_eps;                      /* used slots */
    kl_rpc_balancer_t *lb;             /* choice and ejection */
    s_set_req_t *set_req;              /* endpoint set to apply */
    uint64_t next_probe;               /* probe correlation ids */
    uint64_t next_monitor;             /* monitor inproc names */
    s_call_t *q_head;                  /* calls to send, oldest first */
    s_call_t *q_tail;                  /* last queued */
    s_call_t *pending[S_BUCKETS];      /* queued or sent calls by corr */
    bool closing;                      /* destroy has begun */
    int active_callers;                /* threads inside a call */
};

static void *s_io_main(void *arg);
static s_call_t *s_pending_take(kl_rpc_client_t *self, uint64_t corr);
static void s_finish(kl_rpc_client_t *self, s_call_t *c, kl_code_t code,
                     const char *message);

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

/* Splits "tcp://h:p?key=Z85" into addr and key (the default key when the
 * spec has none; NULL when neither). Checks the syntax only. */
static int
s_parse_spec(kl_rpc_client_t *self, const char *spec, char *addr,
             size_t addr_size, const char **key, kl_status_t *status)
{
    if (!spec || !*spec)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "rpc client for %s: an endpoint is empty",
                             self->service->name);
    const char *q = strchr(spec, '?');
    size_t alen = q ? (size_t)(q - spec) : strlen(spec);
    if (alen == 0 || alen >= addr_size)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "rpc client for %s: bad endpoint \"%s\"",
                             self->service->name, spec);
    memcpy(addr, spec, alen);
    addr[alen] = '\0';
    *key = self->default_key;
    if (q) {
        if (strncmp(q, "?key=", 5) != 0 || !kl_curve_key_valid(q + 5))
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "rpc client for %s: endpoint \"%s\": want "
                                 "\"?key=\" and a 40-character Z85 server "
                                 "key after the address",
                                 self->service->name, spec);
        *key = q + 5;
    }
    if (*key && !self->curve)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "rpc client for %s: endpoint %s has a Curve "
                             "server key but this process has no key pair "
                             "(set KOWLOON_CURVE_SECRET_KEY_FILE)",
                             self->service->name, addr);
    return 0;
}

/* A PAIR receiving sock's ZMQ_EVENT_DISCONNECTED events, or NULL +
 * status. Mutex held (next_monitor). */
static void *
s_monitor(kl_rpc_client_t *self, void *sock, kl_status_t *status)
{
    char name[64];
    snprintf(name, sizeof name, "inproc://kl-rpc-client-monitor-%llu",
             (unsigned long long)++self->next_monitor);
    if (zmq_socket_monitor(sock, name, ZMQ_EVENT_DISCONNECTED) != 0) {
        kl_status_set(status, KL_INTERNAL, "zmq_socket_monitor() failed: %s",
                      zmq_strerror(zmq_errno()));
        return NULL;
    }
    void *mon = zmq_socket(self->zctx, ZMQ_PAIR);
    if (!mon) {
        kl_status_set(status, KL_INTERNAL, "zmq_socket() failed: %s",
                      zmq_strerror(zmq_errno()));
        return NULL;
    }
    s_setsockopt_int(mon, ZMQ_LINGER, 0);
    if (zmq_connect(mon, name) != 0) {
        kl_status_set(status, KL_INTERNAL, "zmq_connect(%s) failed: %s", name,
                      zmq_strerror(zmq_errno()));
        zmq_close(mon);
        return NULL;
    }
    return mon;
}

/* Closes a DEALER and its monitor's PAIR (either may be NULL). Closing
 * the DEALER stops its monitor. */
static void
s_close_endpoint_socks(void *sock, void *mon)
{
    if (sock)
        zmq_close(sock);
    if (mon)
        zmq_close(mon);
}

/* A connected DEALER for spec, watched by *mon_out, or NULL + status.
 * Mutex held. */
static void *
s_connect(kl_rpc_client_t *self, const char *spec, char **addr_out,
          void **mon_out, kl_status_t *status)
{
    char addr[S_ADDR_MAX];
    const char *key = NULL;
    if (s_parse_spec(self, spec, addr, sizeof addr, &key, status) < 0)
        return NULL;
    void *sock = zmq_socket(self->zctx, ZMQ_DEALER);
    if (!sock) {
        kl_status_set(status, KL_INTERNAL, "zmq_socket() failed: %s",
                      zmq_strerror(zmq_errno()));
        return NULL;
    }
    /* IMMEDIATE: a send with no live connection fails EAGAIN instead of
     * queueing for a peer that may never come. */
    s_setsockopt_int(sock, ZMQ_IMMEDIATE, 1);
    s_setsockopt_int(sock, ZMQ_LINGER, 0);
    s_setsockopt_int(sock, ZMQ_HEARTBEAT_IVL, S_HEARTBEAT_IVL_MS);
    s_setsockopt_int(sock, ZMQ_HEARTBEAT_TIMEOUT, S_HEARTBEAT_TIMEOUT_MS);
    s_setsockopt_int(sock, ZMQ_HEARTBEAT_TTL, S_HEARTBEAT_TIMEOUT_MS);
    int64_t maxmsg = (int64_t)(self->max_bytes + S_ENVELOPE_ALLOWANCE);
    zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (key && kl_curve_setup_client(self->curve, sock, key, status) < 0) {
        zmq_close(sock);
        return NULL;
    }
    /* Watched before it connects, so no drop goes unseen. */
    void *mon = s_monitor(self, sock, status);
    if (!mon) {
        zmq_close(sock);
        return NULL;
    }
    if (zmq_connect(sock, addr) != 0) {
        kl_status_set(status, KL_INVALID_ARGUMENT, "zmq_connect(%s) failed: %s",
                      addr, zmq_strerror(zmq_errno()));
        s_close_endpoint_socks(sock, mon);
        return NULL;
    }
    *addr_out = kl_strdup(addr);
    *mon_out = mon;
    return sock;
}

/* Fails UNAVAILABLE with message the calls sent on slot and not yet
 * answered (it is being removed, or its connection was lost). Returns how
 * many. Mutex held. */
static int
s_fail_slot_calls(kl_rpc_client_t *self, int slot, const char *message)
{
    int n = 0;
    for (size_t b = 0; b < S_BUCKETS; b++) {
        s_call_t **p = &self->pending[b];
        while (*p) {
            s_call_t *c = *p;
            if (c->state == S_SENT && c->endpoint == slot) {
                *p = c->hnext;
                c->hnext = NULL;
                s_finish(self, c, KL_UNAVAILABLE, message);
                n++;
            } else {
                p = &c->hnext;
            }
        }
    }
    return n;
}

/* Replaces the endpoint set with specs. All new sockets are made first, so
 * a failure changes nothing. Mutex held; on the I/O thread (or before it
 * starts). */
static int
s_apply_endpoints(kl_rpc_client_t *self, char *const *specs, size_t n,
                  kl_status_t *status)
{
    if (n == 0)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "rpc client for %s: at least one endpoint is "
                             "required",
                             self->service->name);
    if (n > S_MAX_ENDPOINTS)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "rpc client for %s: %zu endpoints, at most %d",
                             self->service->name, n, S_MAX_ENDPOINTS);
    /* keep[i]: the slot already serving specs[i], or -1. */
    int keep[S_MAX_ENDPOINTS];
    void *socks[S_MAX_ENDPOINTS] = {0};
    void *mons[S_MAX_ENDPOINTS] = {0};
    char *addrs[S_MAX_ENDPOINTS] = {0};
    bool wanted[S_MAX_ENDPOINTS] = {0};
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        keep[i] = -1;
        for (int s = 0; s < S_MAX_ENDPOINTS; s++)
            if (self->eps[s].used && !wanted[s] &&
                strcmp(self->eps[s].spec, specs[i] ? specs[i] : "") == 0) {
                keep[i] = s;
                wanted[s] = true;
                break;
            }
        if (keep[i] < 0) {
            socks[i] = s_connect(self, specs[i], &addrs[i], &mons[i], status);
            if (!socks[i])
                rc = -status->code;
        }
    }
    if (rc < 0) {
        for (size_t i = 0; i < n; i++) {
            s_close_endpoint_socks(socks[i], mons[i]);
            free(addrs[i]);
        }
        return rc;
    }
    for (int s = 0; s < S_MAX_ENDPOINTS; s++) {
        s_endpoint_t *ep = &self->eps[s];
        if (!ep->used || wanted[s])
            continue;
        s_fail_slot_calls(self, s, "instance removed from the configuration");
        kl_rpc_balancer_remove(self->lb, s);
        s_close_endpoint_socks(ep->sock, ep->mon);
        free(ep->spec);
        free(ep->addr);
        memset(ep, 0, sizeof *ep);
        self->n_eps--;
    }
    int64_t now = kl_now_mono_ms();
    for (size_t i = 0; i < n; i++) {
        if (keep[i] >= 0)
            continue;
        /* n <= S_MAX_ENDPOINTS and every unwanted slot was freed, so a
         * slot is always free here. */
        int s = kl_rpc_balancer_add(self->lb);
        s_endpoint_t *ep = &self->eps[s];
        ep->used = true;
        ep->spec = kl_strdup(specs[i]);
        ep->addr = addrs[i];
        ep->sock = socks[i];
        ep->mon = mons[i];
        ep->created_mono = now;
        self->n_eps++;
    }
    return 0;
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
    if (opts->server_public_key && *opts->server_public_key &&
        !kl_curve_key_valid(opts->server_public_key)) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "rpc client for %s: the server public key is not a "
                      "40-character Z85 key",
                      service->name);
        return NULL;
    }
    kl_rpc_client_t *self = kl_calloc(1, sizeof *self);
    self->service = service;
    self->max_bytes =
        opts->max_message_bytes ? opts->max_message_bytes : S_DEFAULT_MAX_BYTES;
    self->curve = opts->curve;
    if (opts->server_public_key && *opts->server_public_key)
        self->default_key = kl_strdup(opts->server_public_key);
    self->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    atomic_init(&self->next_corr, 1);
    atomic_init(&self->n_calls, 0);
    atomic_init(&self->n_failures, 0);
    atomic_init(&self->n_retries, 0);
    atomic_init(&self->n_timeouts, 0);
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->idle, NULL);
    pthread_cond_init(&self->set_done, NULL);
    self->lb = kl_rpc_balancer_new(&opts->balancer);
    self->zctx = zmq_ctx_new();
    if (self->wake_fd < 0 || !self->zctx) {
        kl_status_set(status, KL_INTERNAL, "rpc client: %s failed: %s",
                      self->wake_fd < 0 ? "eventfd()" : "zmq_ctx_new()",
                      strerror(errno));
        kl_rpc_client_destroy(&self);
        return NULL;
    }
    pthread_mutex_lock(&self->mu);
    int rc = s_apply_endpoints(self, (char *const *)opts->endpoints,
                               opts->n_endpoints, status);
    pthread_mutex_unlock(&self->mu);
    if (rc < 0) {
        kl_rpc_client_destroy(&self);
        return NULL;
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

int
kl_rpc_client_set_endpoints(kl_rpc_client_t *self, const char *const *endpoints,
                            size_t n, kl_status_t *status)
{
    if (!self || (!endpoints && n))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "set endpoints: missing argument");
    s_set_req_t req = {.specs = (char **)endpoints, .n = n};
    pthread_mutex_lock(&self->mu);
    /* One change at a time: wait for an earlier one to be applied. */
    while (self->set_req && !self->closing)
        pthread_cond_wait(&self->set_done, &self->mu);
    if (self->closing) {
        pthread_mutex_unlock(&self->mu);
        return kl_status_set(status, KL_CANCELLED, "rpc client destroyed");
    }
    self->set_req = &req;
    s_wake(self);
    while (!req.done)
        pthread_cond_wait(&self->set_done, &self->mu);
    pthread_mutex_unlock(&self->mu);
    if (req.status.code != KL_OK) {
        if (status)
            *status = req.status;
        return -req.status.code;
    }
    kl_status_clear(status);
    return 0;
}

size_t
kl_rpc_client_endpoint_count(const kl_rpc_client_t *self, size_t *up)
{
    if (up)
        *up = 0;
    if (!self)
        return 0;
    kl_rpc_client_t *s = (kl_rpc_client_t *)self;
    pthread_mutex_lock(&s->mu);
    size_t n = s->n_eps;
    if (up)
        *up = kl_rpc_balancer_up_count(s->lb);
    pthread_mutex_unlock(&s->mu);
    return n;
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

/* Marks c finished (already unlinked) and wakes its caller. The balancer
 * hears how the endpoint did: a timeout or UNAVAILABLE is a failure. */
static void
s_finish(kl_rpc_client_t *self, s_call_t *c, kl_code_t code,
         const char *message)
{
    if (c->state == S_SENT && c->endpoint >= 0) {
        int64_t now = kl_now_mono_ms();
        if (c->not_executed) {
            kl_rpc_balancer_finished(self->lb, c->endpoint, true, now);
            kl_rpc_balancer_eject(self->lb, c->endpoint, now);
        } else {
            bool ok = code != KL_UNAVAILABLE && code != KL_DEADLINE_EXCEEDED;
            kl_rpc_balancer_finished(self->lb, c->endpoint, ok, now);
        }
    }
    c->state = S_DONE;
    c->code = code;
    snprintf(c->message, sizeof c->message, "%s", message ? message : "");
    pthread_cond_signal(&c->cond);
}

/* Sends c on the best endpoint that takes it (kl_rpc_balancer_order).
 * Returns the endpoint or -1 when none has a live connection. */
static int
s_send(kl_rpc_client_t *self, s_call_t *c, int64_t now)
{
    int order[S_MAX_ENDPOINTS];
    size_t n = kl_rpc_balancer_order(self->lb, c->tried, order);
    for (size_t k = 0; k < n; k++) {
        s_endpoint_t *ep = &self->eps[order[k]];
        if (zmq_send(ep->sock, c->req, c->req_len, ZMQ_DONTWAIT) >= 0) {
            ep->ever_sent = true;
            kl_rpc_balancer_sent(self->lb, order[k]);
            return order[k];
        }
        if (zmq_errno() != EAGAIN)
            KL_LOG(KL_DEBUG, "zmq_send() to %s failed: %s", ep->addr,
                   zmq_strerror(zmq_errno()));
        /* No live connection (or heartbeats dropped it): a failure, once
         * the endpoint has had its chance to connect. */
        if (ep->ever_sent || now - ep->created_mono >= S_CONNECT_GRACE_MS)
            kl_rpc_balancer_failed(self->lb, order[k], now);
    }
    return -1;
}

/* Whether some endpoint is still making its first connection. */
static bool
s_any_connecting(kl_rpc_client_t *self, int64_t now)
{
    for (size_t i = 0; i < S_MAX_ENDPOINTS; i++)
        if (self->eps[i].used && !self->eps[i].ever_sent &&
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
        int ep = s_send(self, c, now);
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

/* --- probes of ejected endpoints (mutex held) ------------------------ */

/* Sends Health.Check to every endpoint whose backoff ended, and fails the
 * probes that timed out. Returns when the next one is due (mono ms). */
static int64_t
s_probe(kl_rpc_client_t *self, int64_t now)
{
    for (int slot; (slot = kl_rpc_balancer_probe_due(self->lb, now)) >= 0;) {
        s_endpoint_t *ep = &self->eps[slot];
        Kowloon__Rpc__Request req = KOWLOON__RPC__REQUEST__INIT;
        uint64_t corr = S_PROBE_BIT | ++self->next_probe;
        req.version = KL_RPC_VERSION;
        req.correlation_id = corr;
        req.service = (char *)kowloon__rpc__health__descriptor.name;
        req.method = "Check";
        req.deadline_unix_ms = kl_now_unix_ms() + S_PROBE_TIMEOUT_MS;
        uint8_t buf[256];
        size_t len = kowloon__rpc__request__pack(&req, buf);
        if (zmq_send(ep->sock, buf, len, ZMQ_DONTWAIT) >= 0) {
            ep->probe_corr = corr;
            ep->probe_end = now + S_PROBE_TIMEOUT_MS;
        } else {
            kl_rpc_balancer_probe_result(self->lb, slot, false, now);
        }
    }
    int64_t next = kl_rpc_balancer_next_probe_ms(self->lb);
    for (int s = 0; s < S_MAX_ENDPOINTS; s++) {
        s_endpoint_t *ep = &self->eps[s];
        if (!ep->used || !ep->probe_corr)
            continue;
        if (now >= ep->probe_end) {
            ep->probe_corr = 0;
            kl_rpc_balancer_probe_result(self->lb, s, false, now);
            int64_t again = kl_rpc_balancer_next_probe_ms(self->lb);
            if (again < next)
                next = again;
        } else if (ep->probe_end < next) {
            next = ep->probe_end;
        }
    }
    return next;
}

/* A reply to a probe: SERVING brings the endpoint back. */
static void
s_on_probe_reply(kl_rpc_client_t *self, int slot,
                 const Kowloon__Rpc__Response *resp)
{
    bool ok = false;
    if ((!resp->status || resp->status->code == 0) && !resp->not_executed) {
        Kowloon__Rpc__HealthCheckResponse *h =
            kowloon__rpc__health_check_response__unpack(NULL, resp->payload.len,
                                                        resp->payload.data);
        ok = h &&
             h->status ==
                 KOWLOON__RPC__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
        if (h)
            kowloon__rpc__health_check_response__free_unpacked(h, NULL);
    }
    pthread_mutex_lock(&self->mu);
    s_endpoint_t *ep = &self->eps[slot];
    if (ep->used && ep->probe_corr == resp->correlation_id) {
        ep->probe_corr = 0;
        kl_rpc_balancer_probe_result(self->lb, slot, ok, kl_now_mono_ms());
        if (ok)
            KL_LOG(KL_INFO, "%s instance %s answers again, back in rotation",
                   self->service->name, ep->addr);
    }
    pthread_mutex_unlock(&self->mu);
}

/* --- the I/O thread --------------------------------------------------- */

static void
s_on_reply(kl_rpc_client_t *self, int slot, const uint8_t *data, size_t len)
{
    s_endpoint_t *ep = &self->eps[slot];
    Kowloon__Rpc__Response *resp =
        kowloon__rpc__response__unpack(NULL, len, data);
    if (!resp) {
        KL_LOG(KL_WARN, "malformed rpc reply of %zu bytes from %s, dropped",
               len, ep->addr);
        return;
    }
    if (resp->correlation_id & S_PROBE_BIT) {
        s_on_probe_reply(self, slot, resp);
        kowloon__rpc__response__free_unpacked(resp, NULL);
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
        /* Only a refusal can be "not executed"; an OK is taken as run. */
        c->not_executed = code != KL_OK && resp->not_executed;
        if (c->not_executed)
            KL_LOG(KL_DEBUG, "%s instance %s refused a call unrun: %s",
                   self->service->name, ep->addr, msg);
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

/* Reads up to S_RECV_BATCH replies from slot, or every one there when
 * all (its connection dropped: what it delivered is taken before the
 * calls still out are failed). */
static void
s_read_endpoint(kl_rpc_client_t *self, int slot, bool all)
{
    s_endpoint_t *ep = &self->eps[slot];
    for (int n = 0; all || n < S_RECV_BATCH; n++) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, ep->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&msg);
            return;
        }
        bool more = zmq_msg_more(&msg);
        if (!more) {
            s_on_reply(self, slot, zmq_msg_data(&msg), zmq_msg_size(&msg));
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

/* Reads what slot's monitor has; true when a connection dropped. A
 * monitor message is two frames: the event (uint16, host order) and its
 * value (uint32), then the peer's address. */
static bool
s_read_monitor(kl_rpc_client_t *self, int slot)
{
    void *mon = self->eps[slot].mon;
    bool lost = false;
    for (int n = 0; n < S_RECV_BATCH; n++) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&msg);
            break;
        }
        uint16_t event = 0;
        if (zmq_msg_size(&msg) >= sizeof event + sizeof(uint32_t))
            memcpy(&event, zmq_msg_data(&msg), sizeof event);
        bool more = zmq_msg_more(&msg);
        zmq_msg_close(&msg);
        /* The rest of a message is there once its first frame is. */
        while (more) {
            zmq_msg_init(&msg);
            if (zmq_msg_recv(&msg, mon, 0) < 0)
                more = false;
            else
                more = zmq_msg_more(&msg);
            zmq_msg_close(&msg);
        }
        if (event == ZMQ_EVENT_DISCONNECTED)
            lost = true;
    }
    return lost;
}

/* The connection of slot dropped. Replies that made it before are taken
 * first; the calls still sent there then fail UNAVAILABLE at once (they
 * may have run, so they are not marked not executed: the retry rules for
 * UNAVAILABLE apply), each counting as a failure of the instance (the
 * loss itself counts one when no call was out). A probe out there has
 * failed too. On the I/O thread. */
static void
s_on_lost(kl_rpc_client_t *self, int slot)
{
    s_read_endpoint(self, slot, true);
    const char *addr = self->eps[slot].addr;
    char msg[S_ADDR_MAX + 32];
    snprintf(msg, sizeof msg, "connection to %s lost", addr);
    pthread_mutex_lock(&self->mu);
    s_endpoint_t *ep = &self->eps[slot];
    int64_t now = kl_now_mono_ms();
    int n = s_fail_slot_calls(self, slot, msg);
    if (n == 0)
        kl_rpc_balancer_failed(self->lb, slot, now);
    if (ep->probe_corr) {
        ep->probe_corr = 0;
        kl_rpc_balancer_probe_result(self->lb, slot, false, now);
    }
    pthread_mutex_unlock(&self->mu);
    KL_LOG(n ? KL_WARN : KL_DEBUG,
           "%s instance %s: connection lost, %d call(s) in flight failed",
           self->service->name, addr, n);
}

static void *
s_io_main(void *arg)
{
    kl_rpc_client_t *self = arg;
    /* Each endpoint's DEALER (0..n-1), its monitor (n..2n-1), the
     * eventfd (2n). */
    zmq_pollitem_t items[2 * S_MAX_ENDPOINTS + 1];
    int slots[S_MAX_ENDPOINTS];

    for (;;) {
        pthread_mutex_lock(&self->mu);
        if (self->closing) {
            s_cancel_all(self);
            if (self->set_req) {
                kl_status_set(&self->set_req->status, KL_CANCELLED,
                              "rpc client destroyed");
                self->set_req->done = true;
                self->set_req = NULL;
                pthread_cond_broadcast(&self->set_done);
            }
            pthread_mutex_unlock(&self->mu);
            break;
        }
        if (self->set_req) {
            s_set_req_t *req = self->set_req;
            kl_status_clear(&req->status);
            s_apply_endpoints(self, req->specs, req->n, &req->status);
            req->done = true;
            self->set_req = NULL;
            pthread_cond_broadcast(&self->set_done);
        }
        int held = s_send_queued(self);
        int64_t now = kl_now_mono_ms();
        int64_t next_probe = s_probe(self, now);
        int n = 0;
        for (int s = 0; s < S_MAX_ENDPOINTS; s++)
            if (self->eps[s].used)
                slots[n++] = s;
        for (int i = 0; i < n; i++) {
            items[i] = (zmq_pollitem_t){.socket = self->eps[slots[i]].sock,
                                        .events = ZMQ_POLLIN};
            items[n + i] = (zmq_pollitem_t){.socket = self->eps[slots[i]].mon,
                                            .events = ZMQ_POLLIN};
        }
        pthread_mutex_unlock(&self->mu);
        items[2 * n] =
            (zmq_pollitem_t){.fd = self->wake_fd, .events = ZMQ_POLLIN};

        long timeout = -1;
        if (next_probe != INT64_MAX)
            timeout = next_probe > now ? (long)(next_probe - now) : 0;
        if (held && (timeout < 0 || timeout > S_HOLD_TICK_MS))
            timeout = S_HOLD_TICK_MS;
        int rc = zmq_poll(items, 2 * n + 1, timeout);
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
        if (items[2 * n].revents & ZMQ_POLLIN) {
            uint64_t v;
            ssize_t r = read(self->wake_fd, &v, sizeof v);
            (void)r;
        }
        /* Only this thread changes the endpoint set, so the slots polled
         * are still the same sockets. Replies first: a drop seen in the
         * same round must not fail a call whose reply is here. */
        for (int i = 0; i < n; i++)
            if (items[i].revents & ZMQ_POLLIN)
                s_read_endpoint(self, slots[i], false);
        for (int i = 0; i < n; i++)
            if ((items[n + i].revents & ZMQ_POLLIN) &&
                s_read_monitor(self, slots[i]))
                s_on_lost(self, slots[i]);
    }
    for (int s = 0; s < S_MAX_ENDPOINTS; s++) {
        s_close_endpoint_socks(self->eps[s].sock, self->eps[s].mon);
        self->eps[s].sock = NULL;
        self->eps[s].mon = NULL;
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
    pthread_cond_broadcast(&self->set_done);
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
    for (int s = 0; s < S_MAX_ENDPOINTS; s++) {
        s_close_endpoint_socks(self->eps[s].sock, self->eps[s].mon);
        free(self->eps[s].spec);
        free(self->eps[s].addr);
    }
    kl_rpc_balancer_destroy(&self->lb);
    if (self->zctx)
        zmq_ctx_term(self->zctx);
    if (self->wake_fd >= 0)
        close(self->wake_fd);
    free(self->default_key);
    pthread_mutex_destroy(&self->mu);
    pthread_cond_destroy(&self->idle);
    pthread_cond_destroy(&self->set_done);
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
    pthread_mutex_lock(&self->mu);
    size_t n_eps = self->n_eps;
    pthread_mutex_unlock(&self->mu);
    int max_attempts = 1;
    if (opts->idempotent && n_eps > 1)
        max_attempts = n_eps < S_MAX_ATTEMPTS ? (int)n_eps : S_MAX_ATTEMPTS;
    uint64_t tried = 0;
    int rc;
    /* attempt counts the sends that may have run (they share the
     * deadline); refusals marked not executed are counted apart. */
    int refused = 0;
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
        bool retry;
        if (c.not_executed) {
            /* It did not run there: any call may go elsewhere, but only to
             * an instance this call has not tried yet; with none left the
             * refusal is the answer now, not a wait for the deadline. */
            uint64_t after = tried;
            if (c.endpoint >= 0)
                after |= UINT64_C(1) << c.endpoint;
            pthread_mutex_lock(&self->mu);
            size_t untried = kl_rpc_balancer_untried(self->lb, after);
            pthread_mutex_unlock(&self->mu);
            retry = untried > 0 && ++refused < S_MAX_NOT_EXECUTED &&
                    end - kl_now_mono_ms() > 0;
            attempt--;
        } else {
            retry = !c.never_sent && attempt + 1 < max_attempts &&
                    (timed_out || c.code == KL_UNAVAILABLE) &&
                    end - kl_now_mono_ms() > 0;
        }
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
