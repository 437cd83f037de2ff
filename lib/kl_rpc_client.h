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
 * only when opts.idempotent, within the same deadline. A reply that comes
 * after its caller gave up is dropped.
 *
 * Thread-safe: one client serves all threads of a process.
 */
#ifndef KL_RPC_CLIENT_H
#define KL_RPC_CLIENT_H

#include "kl_code.h"
#include "kl_rpc.h"

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kl_rpc_client kl_rpc_client_t;

typedef struct {
    const char *const *endpoints; /* every instance, "tcp://host:port" */
    size_t n_endpoints;
    size_t max_message_bytes; /* replies larger are dropped; 0 = 4 MiB */
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

/* Counters since start, for /metrics. */
typedef struct {
    uint64_t calls, failures, retries, timeouts;
} kl_rpc_client_stats_t;
void kl_rpc_client_stats(const kl_rpc_client_t *self,
                         kl_rpc_client_stats_t *stats);

#endif
