/*
 * kl_rpc_client: calls one service, over every instance of it.
 *
 * One DEALER socket per endpoint, owned by the client's own I/O thread;
 * callers on any thread submit calls and wait on their own condition, so
 * many calls are in flight on each socket, paired with replies by
 * correlation id. Calls are spread across endpoints by least outstanding
 * calls. A call goes out with deadline = now + timeout.
 *
 * Failures: no endpoint connected -> UNAVAILABLE at once (a message that
 * could not be handed to any peer was never sent, so trying another
 * endpoint is safe for every call); timeout -> DEADLINE_EXCEEDED. A call
 * that timed out or was answered UNAVAILABLE is retried on another endpoint
 * only when opts.idempotent, within the same deadline. A call the server
 * refused with Response.not_executed (draining, queue full) is sent to
 * another endpoint whatever the method: it provably did not run. A reply
 * that comes after its caller gave up is dropped.
 *
 * Health: an endpoint that keeps failing (timeouts, UNAVAILABLE, no
 * connection: ZeroMQ heartbeats drop a peer that stops answering) or says
 * it is draining is ejected and probed with Health.Check until it answers
 * SERVING (kl_rpc_balancer.h). kl_rpc_client_set_endpoints replaces the
 * set of endpoints at run time (config reload).
 *
 * Thread-safe: one client serves all threads of a process.
 */
#ifndef KL_RPC_CLIENT_H
#define KL_RPC_CLIENT_H

#include "kl_code.h"
#include "kl_curve.h"
#include "kl_rpc.h"
#include "kl_rpc_balancer.h"

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kl_rpc_client kl_rpc_client_t;

typedef struct {
    /* Every instance, "tcp://host:port", or "tcp://host:port?key=<Z85>"
     * to reach it over Curve with that server public key. */
    const char *const *endpoints;
    size_t n_endpoints;
    size_t max_message_bytes; /* replies larger are dropped; 0 = 4 MiB */
    /* This process's Curve key pair, used as client key (kl_curve.h). Not
     * owned, must outlive the client. NULL: no endpoint may have a key. */
    const kl_curve_t *curve;
    /* Server public key (Z85) of endpoints written without "?key=";
     * NULL or "": such endpoints are plaintext. */
    const char *server_public_key;
    /* Ejection of failing instances (kl_rpc_balancer.h); zeros: defaults
     * (3 failures, 1 s first backoff, 30 s longest). */
    kl_rpc_balancer_opts_t balancer;
} kl_rpc_client_opts_t;

/* A client of service (the generated descriptor, e.g.
 * &kowloon__tenant__tenant_service__descriptor). Connects lazily; NULL +
 * status on bad options. */
kl_rpc_client_t *kl_rpc_client_new(const ProtobufCServiceDescriptor *service,
                                   const kl_rpc_client_opts_t *opts,
                                   kl_status_t *status);
void kl_rpc_client_destroy(kl_rpc_client_t **self_p);

typedef struct {
    int64_t timeout_ms;       /* > 0 */
    bool idempotent;          /* may be retried on another instance */
    const kl_call_ctx_t *ctx; /* may be NULL */
} kl_call_opts_t;

/*
 * Calls method (its name in the .proto, "GetBySubdomain") with input.
 * On OK returns 0 and *output is the unpacked reply (caller frees it with
 * protobuf_c_message_free_unpacked(*output, NULL)). Otherwise returns -code,
 * *output is NULL and status says why (the server's status, or the
 * client's: UNAVAILABLE, DEADLINE_EXCEEDED, UNIMPLEMENTED for an unknown
 * method name, INTERNAL for a reply that does not unpack).
 */
int kl_rpc_client_call(kl_rpc_client_t *self, const char *method,
                       const ProtobufCMessage *input,
                       const kl_call_opts_t *opts, ProtobufCMessage **output,
                       kl_status_t *status);

/* As kl_rpc_client_call, with packed payloads (the gateway transcodes JSON
 * straight to bytes). *out is malloc'd, caller frees; may be empty. */
int kl_rpc_client_call_raw(kl_rpc_client_t *self, const char *method,
                           const uint8_t *in, size_t in_len,
                           const kl_call_opts_t *opts, uint8_t **out,
                           size_t *out_len, kl_status_t *status);

/*
 * Replaces the endpoints (same syntax as opts.endpoints). Endpoints in both
 * sets keep their connection, state and calls; new ones are connected;
 * calls in flight on a removed one fail UNAVAILABLE (retried elsewhere when
 * idempotent). Nothing changes on error (INVALID_ARGUMENT naming the bad
 * endpoint). Thread-safe; returns once the I/O thread has applied it.
 */
int kl_rpc_client_set_endpoints(kl_rpc_client_t *self,
                                const char *const *endpoints, size_t n,
                                kl_status_t *status);

/* Endpoints now, and how many of them are in rotation (not ejected). */
size_t kl_rpc_client_endpoint_count(const kl_rpc_client_t *self, size_t *up);

/* Counters since start, for /metrics. */
typedef struct {
    uint64_t calls, failures, retries, timeouts;
} kl_rpc_client_stats_t;
void kl_rpc_client_stats(const kl_rpc_client_t *self,
                         kl_rpc_client_stats_t *stats);

#endif
