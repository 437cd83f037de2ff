/*
 * flags_service: kowloon.flags.FlagsService (proto/kowloon/flags.proto) on
 * kl_rpc_server — request validation (flags_rules), the store calls
 * (flags_store), and after every committed write a change event on the
 * Redis channel and, for plans, the Redis mirror `plan:<plan>:features`.
 *
 * Each worker thread owns one kl_pg (the control database) and one
 * kl_redis; a Redis failure is logged at warn and never fails a call.
 * See docs/flags-service.md for the rules and every error.
 */
#ifndef FLAGS_SERVICE_H
#define FLAGS_SERVICE_H

#include "kl_code.h"
#include "kl_rpc_server.h"

#include <protobuf-c/protobuf-c.h>

typedef struct {
    const char *database_url;   /* libpq conninfo of the control DB */
    const char *redis_url;      /* "" disables events and the mirror */
    const char *events_channel; /* KOWLOON_EVENTS_CHANNEL */
} flags_service_opts_t;

typedef struct flags_service flags_service_t;

/* Copies opts. NULL + INVALID_ARGUMENT when the database URL or events
 * channel is missing or the Redis URL is malformed. */
flags_service_t *flags_service_new(const flags_service_opts_t *opts,
                                   kl_status_t *status);
void flags_service_destroy(flags_service_t **self_p);

/* Creates or upgrades schema "flags" (seeding the default plans once) over
 * a connection of its own, safe when several instances start at once;
 * then reads the schema's identity and writes the Redis mirror of every
 * plan (deleting the mirror of plans that are gone). Call once before
 * serving. A Redis failure here is logged, not returned. */
int flags_service_migrate(flags_service_t *self, kl_status_t *status);

/* The generated service to give kl_rpc_server_add_service; lives as long
 * as self. */
ProtobufCService *flags_service_base(flags_service_t *self);

/* Sets opts' worker_init, worker_fini, ready and user for this service
 * (ready: the worker's database answers SELECT 1). */
void flags_service_server_opts(flags_service_t *self,
                               kl_rpc_server_opts_t *opts);

#endif
