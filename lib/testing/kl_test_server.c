/*
 * kl_test_server: a service served in process for a test
 * (kl_test_server.h).
 */
#include "kl_test_server.h"

#include "kl_alloc.h"
#include "kowloon/rpc.pb-c.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

struct kl_test_server {
    kl_rpc_server_t *server; /* owned */
    pthread_t thread;        /* runs kl_rpc_server_run */
    bool running;            /* thread is to be joined */
    kl_rpc_client_t *client; /* owned; the service's */
    kl_rpc_client_t *health; /* owned; kowloon.rpc.Health */
};

static void *
s_run(void *arg)
{
    kl_rpc_server_run(arg);
    return NULL;
}

kl_test_server_t *
kl_test_server_start(ProtobufCService *service,
                     const kl_rpc_server_opts_t *opts)
{
    kl_status_t st;
    kl_rpc_server_opts_t sopts = *opts;
    sopts.bind = "tcp://127.0.0.1:*";
    sopts.no_signal_handlers = true;
    kl_test_server_t *self = kl_calloc(1, sizeof *self);
    self->server = kl_rpc_server_new(&sopts, &st);
    if (!self->server) {
        fprintf(stderr, "kl_rpc_server_new: %s\n", st.message);
        goto fail;
    }
    if (kl_rpc_server_add_service(self->server, service) != 0) {
        fprintf(stderr, "kl_rpc_server_add_service failed\n");
        goto fail;
    }
    if (kl_rpc_server_bind(self->server, &st) < 0) {
        fprintf(stderr, "kl_rpc_server_bind: %s\n", st.message);
        goto fail;
    }
    if (pthread_create(&self->thread, NULL, s_run, self->server) != 0) {
        fprintf(stderr, "pthread_create failed\n");
        goto fail;
    }
    self->running = true;
    const char *endpoint = kl_rpc_server_endpoint(self->server);
    kl_rpc_client_opts_t copts = {.endpoints = &endpoint, .n_endpoints = 1};
    self->client = kl_rpc_client_new(service->descriptor, &copts, &st);
    if (!self->client) {
        fprintf(stderr, "kl_rpc_client_new: %s\n", st.message);
        goto fail;
    }
    self->health =
        kl_rpc_client_new(&kowloon__rpc__health__descriptor, &copts, &st);
    if (!self->health) {
        fprintf(stderr, "kl_rpc_client_new (health): %s\n", st.message);
        goto fail;
    }
    return self;
fail:
    kl_test_server_stop(&self);
    return NULL;
}

void
kl_test_server_stop(kl_test_server_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kl_test_server_t *self = *self_p;
    kl_rpc_client_destroy(&self->client);
    kl_rpc_client_destroy(&self->health);
    if (self->running) {
        kl_rpc_server_stop(self->server);
        pthread_join(self->thread, NULL);
    }
    kl_rpc_server_destroy(&self->server);
    free(self);
    *self_p = NULL;
}

const char *
kl_test_server_endpoint(const kl_test_server_t *self)
{
    return kl_rpc_server_endpoint(self->server);
}

kl_rpc_client_t *
kl_test_server_client(kl_test_server_t *self)
{
    return self->client;
}

kl_rpc_client_t *
kl_test_server_health(kl_test_server_t *self)
{
    return self->health;
}

int
kl_test_server_call(kl_test_server_t *self, const char *method,
                    const void *input, void *output_p, int64_t timeout_ms,
                    kl_status_t *st)
{
    kl_call_opts_t opts = {.timeout_ms = timeout_ms};
    ProtobufCMessage **out = output_p;
    ProtobufCMessage *ignored = NULL;
    kl_status_clear(st);
    int rc = kl_rpc_client_call(self->client, method, input, &opts,
                                out ? out : &ignored, st);
    if (ignored)
        protobuf_c_message_free_unpacked(ignored, NULL);
    return rc;
}
