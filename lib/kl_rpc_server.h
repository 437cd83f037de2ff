/*
 * kl_rpc_server: serves protoc-c generated services on a ZeroMQ ROUTER
 * socket with a pool of worker threads.
 *
 * Flow: the I/O thread receives [identity][request]; a message over
 * max_message_bytes is refused before any parsing (ZMQ_MAXMSGSIZE drops the
 * peer; a frame that still gets through oversized is dropped and counted);
 * the envelope is unpacked, its version checked, and the call queued for a
 * worker. The worker checks the deadline first (expired: DEADLINE_EXCEEDED,
 * handler not run), finds the service and method by the generated service
 * descriptor, unpacks the payload (malformed: INVALID_ARGUMENT), and invokes
 * the generated service's method. The handler answers through the closure:
 *
 *   static void s_get(Kowloon__Tenant__TenantService_Service *svc,
 *                     const Kowloon__Tenant__GetTenantRequest *in,
 *                     Kowloon__Tenant__Tenant_Closure closure, void *cd)
 *   {
 *       kl_call_t *call = kl_call_from(cd);
 *       if (...) {
 *           kl_call_fail(call, KL_NOT_FOUND, "tenant %s not found", in->id);
 *           closure(NULL, cd);
 *           return;
 *       }
 *       Kowloon__Tenant__Tenant t = KOWLOON__TENANT__TENANT__INIT;
 *       ...
 *       closure(&t, cd);   // packed at once: t may live on the stack
 *   }
 *
 * A handler that returns without calling the closure, or calls it with NULL
 * without kl_call_fail(), answers INTERNAL. Every server also answers
 * kowloon.rpc.Health/Check (SERVING when opts.ready says so).
 *
 * Shutdown: SIGTERM or SIGINT (or kl_rpc_server_stop) makes run() stop
 * taking calls, let the workers finish the calls they hold and those
 * already queued, send their replies, and return 0. While draining (and
 * for opts.drain_grace_ms at least) a new call is answered UNAVAILABLE with
 * Response.not_executed set, so the client sends it to another instance
 * even when it is not idempotent; so is a call refused for a full queue.
 *
 * Security: a server binds a non-loopback address only with opts.curve
 * (kl_rpc_server_bind fails FAILED_PRECONDITION naming
 * KOWLOON_CURVE_SECRET_KEY_FILE otherwise).
 */
#ifndef KL_RPC_SERVER_H
#define KL_RPC_SERVER_H

#include "kl_code.h"
#include "kl_curve.h"
#include "kl_rpc.h"

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kl_rpc_server kl_rpc_server_t;
typedef struct kl_call kl_call_t;

typedef struct {
    /* Endpoint to bind, "tcp://127.0.0.1:7101"; port "*" or 0 picks a free
     * one (see kl_rpc_server_endpoint). */
    const char *bind;
    int workers;              /* worker threads, >= 1 */
    size_t max_message_bytes; /* whole message cap; 0 means 4 MiB */
    /* Called on each worker thread before it takes calls; the result is
     * that worker's state (kl_call_worker). NULL init: state is NULL. */
    void *(*worker_init)(int worker_index, void *user);
    void (*worker_fini)(void *worker_state, void *user);
    /* Readiness for Health.Check, run on a worker (e.g. the database
     * answers). NULL: always SERVING. */
    bool (*ready)(void *worker_state, void *user);
    void *user;
    /* Do not install SIGTERM/SIGINT handlers (tests, embedding). */
    bool no_signal_handlers;
    /* This process's Curve keys and client allow-list (kl_curve.h); the
     * server runs a ZAP handler and serves Curve clients only. NULL:
     * plaintext, which is refused for any address but loopback. Not
     * owned; must outlive the server. */
    kl_curve_t *curve;
    /* Once stopped, keep answering new calls UNAVAILABLE + not_executed
     * for at least this many ms before closing, so that every caller
     * learns of the drain and sends elsewhere. 0: close as soon as the
     * calls in flight are done. */
    int drain_grace_ms;
} kl_rpc_server_opts_t;

/* Creates the server; binds nothing yet. NULL + status on bad options. */
kl_rpc_server_t *kl_rpc_server_new(const kl_rpc_server_opts_t *opts,
                                   kl_status_t *status);

/* Serves service (a protoc-c generated FooService_Service's .base, built
 * with its __INIT macro or _init function). Not owned; must outlive the
 * server. Call before run. Returns 0 or -KL_ALREADY_EXISTS. */
int kl_rpc_server_add_service(kl_rpc_server_t *self, ProtobufCService *service);

/* Binds the socket; after this kl_rpc_server_endpoint gives the real
 * endpoint. Returns 0, or -KL_UNAVAILABLE with status (address in use...).
 * run() binds by itself when this was not called. */
int kl_rpc_server_bind(kl_rpc_server_t *self, kl_status_t *status);

/* Serves until stopped, then drains as above. Returns 0 on a clean stop. */
int kl_rpc_server_run(kl_rpc_server_t *self);

/* Asks run() to stop; async-signal-safe and callable from any thread. */
void kl_rpc_server_stop(kl_rpc_server_t *self);

/* "tcp://127.0.0.1:40123" once bound, else the configured endpoint. */
const char *kl_rpc_server_endpoint(const kl_rpc_server_t *self);

void kl_rpc_server_destroy(kl_rpc_server_t **self_p);

/* --- inside a handler ------------------------------------------------- */

/* The call behind the closure_data a generated method receives. */
kl_call_t *kl_call_from(void *closure_data);

/* The caller's context (strings valid until the handler returns; "" when
 * unset). */
const kl_call_ctx_t *kl_call_ctx(const kl_call_t *call);

/* This worker's state, from opts.worker_init. */
void *kl_call_worker(const kl_call_t *call);

/* Absolute deadline, Unix ms (0 = none). */
int64_t kl_call_deadline_unix_ms(const kl_call_t *call);

/* Fails the call with code and message; the handler then calls
 * closure(NULL, closure_data). */
void kl_call_fail(kl_call_t *call, kl_code_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void kl_call_fail_status(kl_call_t *call, const kl_status_t *status);

#endif
