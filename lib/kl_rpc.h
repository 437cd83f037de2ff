/*
 * kl_rpc: what the RPC server and client share — the protocol version, the
 * call context, and the ZeroMQ framing (docs/wire.md).
 *
 * Framing: the client's DEALER sends one frame, a packed kowloon.rpc.Request;
 * the server's ROUTER sees [peer identity][request] and answers
 * [peer identity][packed kowloon.rpc.Response]. No empty delimiter frame.
 * A message with any other number of frames is dropped.
 */
#ifndef KL_RPC_H
#define KL_RPC_H

#include <stdint.h>

#define KL_RPC_VERSION 1u

/* Who is calling and on whose behalf. Strings are borrowed; NULL = empty. */
typedef struct {
    const char *request_id;
    const char *tenant_id;
    const char *subdomain;
    const char *plan;
    const char *principal;
} kl_call_ctx_t;

/* Milliseconds since the Unix epoch, wall clock (deadlines cross hosts). */
int64_t kl_now_unix_ms(void);

/* Monotonic milliseconds, for measuring durations and local timeouts. */
int64_t kl_now_mono_ms(void);

#endif
