/*
 * kl_test_server: a service served in process for a test (test support
 * only: library kowloon_testing). The server listens on
 * tcp://127.0.0.1:<free port>, runs on a thread of its own, and comes
 * with a client of the service and a kowloon.rpc.Health client.
 *
 *   kl_rpc_server_opts_t opts = {.workers = 2};
 *   flags_service_server_opts(svc, &opts);
 *   kl_test_server_t *srv = kl_test_server_start(flags_service_base(svc),
 *                                                &opts);
 *   ... kl_test_server_call(srv, "GetPlan", &req, &out, 10000, &st) ...
 *   kl_test_server_stop(&srv);
 */
#ifndef KL_TEST_SERVER_H
#define KL_TEST_SERVER_H

#include "kl_rpc_client.h"
#include "kl_rpc_server.h"

#include <protobuf-c/protobuf-c.h>

typedef struct kl_test_server kl_test_server_t;

/* Serves service (borrowed; must outlive the server) with opts, whose
 * bind and no_signal_handlers are overridden (loopback, free port; no
 * handlers). NULL after printing why. */
kl_test_server_t *kl_test_server_start(ProtobufCService *service,
                                       const kl_rpc_server_opts_t *opts);

/* Closes the clients, stops the server (it drains), joins its thread and
 * frees. Accepts NULL. */
void kl_test_server_stop(kl_test_server_t **self_p);

/* "tcp://127.0.0.1:PORT". */
const char *kl_test_server_endpoint(const kl_test_server_t *self);

/* The client of the service and the Health client; owned by self. */
kl_rpc_client_t *kl_test_server_client(kl_test_server_t *self);
kl_rpc_client_t *kl_test_server_health(kl_test_server_t *self);

/* Calls method with input on the service's client within timeout_ms. On
 * OK *output_p (a ProtobufCMessage **, caller frees) is the reply; with
 * output_p NULL the reply is dropped. Returns 0 or -code with st set. */
int kl_test_server_call(kl_test_server_t *self, const char *method,
                        const void *input, void *output_p, int64_t timeout_ms,
                        kl_status_t *st);

#endif
