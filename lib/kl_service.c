/*
 * kl_service: the standard worker of a service (kl_service.h).
 */
#include "kl_service.h"

#include "kl_alloc.h"
#include "kl_log.h"

#include <stdlib.h>

struct kl_service {
    char *ready_name;   /* owned; "<name>_ready" */
    char *database_url; /* owned */
    char *redis_url;    /* owned; NULL: no Redis */
    void *(*extra_init)(int worker_index, void *extra_user);
    void (*extra_fini)(void *extra, void *extra_user);
    void *extra_user; /* borrowed */
};

kl_service_t *
kl_service_new(const kl_service_opts_t *opts)
{
    if (!opts || !opts->name || !*opts->name || !opts->database_url)
        return NULL;
    kl_service_t *self = kl_calloc(1, sizeof *self);
    self->ready_name = kl_asprintf("%s_ready", opts->name);
    self->database_url = kl_strdup(opts->database_url);
    self->redis_url = opts->redis_url ? kl_strdup(opts->redis_url) : NULL;
    self->extra_init = opts->extra_init;
    self->extra_fini = opts->extra_fini;
    self->extra_user = opts->extra_user;
    return self;
}

void
kl_service_destroy(kl_service_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kl_service_t *self = *self_p;
    free(self->ready_name);
    free(self->database_url);
    free(self->redis_url);
    free(self);
    *self_p = NULL;
}

void *
kl_service_worker_init(int worker_index, void *user)
{
    kl_service_t *self = user;
    kl_service_worker_t *w = kl_calloc(1, sizeof *w);
    w->pg = kl_pg_new(self->database_url);
    /* The owner checked the URL when it was configured. */
    if (self->redis_url)
        w->redis = kl_redis_new(self->redis_url, NULL);
    if (self->extra_init)
        w->extra = self->extra_init(worker_index, self->extra_user);
    return w;
}

void
kl_service_worker_fini(void *worker_state, void *user)
{
    kl_service_t *self = user;
    kl_service_worker_t *w = worker_state;
    if (!w)
        return;
    if (self->extra_fini)
        self->extra_fini(w->extra, self->extra_user);
    kl_pg_destroy(&w->pg);
    kl_redis_destroy(&w->redis);
    free(w);
}

bool
kl_service_ready(void *worker_state, void *user)
{
    kl_service_t *self = user;
    kl_service_worker_t *w = worker_state;
    PGresult *res =
        kl_pg_query(w->pg, self->ready_name, "SELECT 1", 0, NULL, NULL);
    bool ok = res != NULL;
    PQclear(res);
    return ok;
}

void
kl_service_server_opts(kl_service_t *self, kl_rpc_server_opts_t *opts)
{
    opts->worker_init = kl_service_worker_init;
    opts->worker_fini = kl_service_worker_fini;
    opts->ready = kl_service_ready;
    opts->user = self;
}

kl_service_worker_t *
kl_service_worker(void *closure_data)
{
    return kl_call_worker(kl_call_from(closure_data));
}

void
kl_service_fail(void *closure_data, const char *what, const kl_status_t *status)
{
    if (status->code == KL_INTERNAL || status->code == KL_UNAVAILABLE ||
        status->code == KL_ABORTED || status->code == KL_DEADLINE_EXCEEDED)
        KL_LOG(status->code == KL_INTERNAL ? KL_ERROR : KL_WARN,
               "%s failed: %s: %s", what, kl_code_name(status->code),
               status->message);
    kl_call_fail_status(kl_call_from(closure_data), status);
}
