/*
 * kl_service: the standard per-worker state of a Kowloon service on
 * kl_rpc_server — one kl_pg (the control database) and one kl_redis per
 * worker thread, Health readiness as "the database answers SELECT 1", and
 * the kl_rpc_server_opts_t hooks that wire them up.
 *
 *   self->std = kl_service_new(&(kl_service_opts_t){
 *       .name = "flags", .database_url = url, .redis_url = redis});
 *   ...
 *   kl_service_server_opts(self->std, &server_opts);
 *   ...inside a handler:
 *   kl_service_worker_t *w = kl_service_worker(closure_data);
 *   flags_store_get(w->pg, ...);
 *
 * A service with more per-worker state hangs it on the worker with the
 * extra_init/extra_fini hooks (w->extra).
 */
#ifndef KL_SERVICE_H
#define KL_SERVICE_H

#include "kl_pg.h"
#include "kl_redis.h"
#include "kl_rpc_server.h"

#include <stdbool.h>

typedef struct kl_service kl_service_t;

typedef struct {
    /* Names the readiness statement "<name>_ready". Copied. */
    const char *name;
    /* Each worker's control database connection. Copied; required. */
    const char *database_url;
    /* Each worker's Redis connection: NULL for none (w->redis NULL); ""
     * for a kl_redis that is off (its calls answer UNAVAILABLE). The URL
     * must have been checked (kl_redis_new) by the caller. Copied. */
    const char *redis_url;
    /* Optional: more state per worker, made on the worker thread after
     * pg and redis (w->extra) and freed before them. */
    void *(*extra_init)(int worker_index, void *extra_user);
    void (*extra_fini)(void *extra, void *extra_user);
    void *extra_user; /* borrowed; must outlive the server */
} kl_service_opts_t;

/* One worker thread's state; owned by the worker. */
typedef struct {
    kl_pg_t *pg;       /* control database */
    kl_redis_t *redis; /* NULL when opts.redis_url was NULL */
    void *extra;       /* from opts.extra_init; NULL without */
} kl_service_worker_t;

/* Copies opts. NULL when name or database_url is missing. */
kl_service_t *kl_service_new(const kl_service_opts_t *opts);
void kl_service_destroy(kl_service_t **self_p);

/* The kl_rpc_server_opts_t hooks; user is the kl_service_t. */
void *kl_service_worker_init(int worker_index, void *user);
void kl_service_worker_fini(void *worker_state, void *user);
bool kl_service_ready(void *worker_state, void *user);

/* Sets opts' worker_init, worker_fini, ready and user (self, which must
 * outlive the server). Leaves the other fields alone. */
void kl_service_server_opts(kl_service_t *self, kl_rpc_server_opts_t *opts);

/* The worker state behind a handler's closure_data. */
kl_service_worker_t *kl_service_worker(void *closure_data);

/* Fails the call behind closure_data with status; the handler then calls
 * closure(NULL, closure_data). Server-side trouble is logged ("<what>
 * failed: CODE: message": INTERNAL as an error, UNAVAILABLE, ABORTED and
 * DEADLINE_EXCEEDED as warnings); client mistakes are not. */
void kl_service_fail(void *closure_data, const char *what,
                     const kl_status_t *status);

#endif
