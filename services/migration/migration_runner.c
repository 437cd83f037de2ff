/*
 * migration_runner: worker threads claiming targets.
 */
#include "migration_runner.h"

#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_pg.h"
#include "kl_rpc.h"
#include "migration_apply.h"
#include "migration_store.h"
#include "migration_work.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct migration_runner {
    char *database_url;         /* copied */
    char *owner_url;            /* copied */
    const char *const *servers; /* borrowed owner servers */
    size_t n_servers;
    char *instance;                 /* copied */
    char *app_role;                 /* copied; "": no grants */
    const migration_files_t *files; /* borrowed */
    int poll_ms;                    /* idle wait */
    pthread_t *threads;             /* workers */
    int n_threads;                  /* started */
    pthread_mutex_t mu;             /* guards stop and wakes */
    pthread_cond_t cond;            /* signalled on wake and stop */
    bool stop;                      /* destroy asked */
    unsigned wakes;                 /* bumped by migration_runner_wake */
};

/* Waits up to poll_ms or until woken; returns false when stopping. */
static bool
s_idle(migration_runner_t *self, unsigned *seen)
{
    pthread_mutex_lock(&self->mu);
    if (!self->stop && self->wakes == *seen) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ns = ts.tv_nsec + (int64_t)self->poll_ms * 1000000;
        ts.tv_sec += (time_t)(ns / 1000000000);
        ts.tv_nsec = (long)(ns % 1000000000);
        pthread_cond_timedwait(&self->cond, &self->mu, &ts);
    }
    *seen = self->wakes;
    bool go = !self->stop;
    pthread_mutex_unlock(&self->mu);
    return go;
}

static bool
s_stopping(migration_runner_t *self)
{
    pthread_mutex_lock(&self->mu);
    bool stop = self->stop;
    pthread_mutex_unlock(&self->mu);
    return stop;
}

/* Claims and migrates one target. Returns 1 if it did one, 0 if there was
 * none, -1 on a control-database failure. */
static int
s_one(migration_runner_t *self, kl_pg_t *ctrl, migration_apply_t *ap)
{
    kl_status_t st;
    migration_target_t t;
    int64_t run_id = 0;
    int64_t t0 = kl_now_mono_ms();
    int rc = migration_store_claim(ctrl, &t, &run_id, &st);
    if (rc < 0) {
        KL_LOG(KL_WARN, "claiming work failed: %s", st.message);
        return -1;
    }
    if (rc == 0)
        return 0;
    kl_log_set_context(NULL, t.tenant_id[0] ? t.tenant_id : NULL);
    int64_t started = kl_now_unix_ms();
    int64_t t1 = kl_now_mono_ms();
    migration_work_result_t res;
    /* The claim took the target's lock; the ledger rows and the target's
     * state go in one statement. */
    migration_work_opts_t o = {.run_id = run_id,
                               .hold_tenant = true,
                               .target_locked = true,
                               .finish = true,
                               .instance = self->instance,
                               .started_ms = started};
    rc = migration_work_target(ctrl, ap, self->files, &t, &o, &res, &st);
    int64_t t2 = kl_now_mono_ms();
    if (rc == 0 && res.moving) {
        /* A move holds the tenant: the target stays pending, marked, and
         * goes to the back of its run; this worker rests a poll so that it
         * does not spin on it. */
        rc = migration_store_target_defer(ctrl, run_id, &t, res.error, &st);
        if (rc == 0)
            rc = kl_pg_commit(ctrl, &st);
        else
            kl_pg_rollback(ctrl);
        migration_work_result_free(&res);
        kl_log_clear_context();
        if (rc < 0) {
            KL_LOG(KL_WARN, "run %" PRId64 ": deferring %s failed: %s", run_id,
                   t.target, st.message);
            return -1;
        }
        KL_LOG(KL_INFO, "run %" PRId64 ": %s is being moved, left pending",
               run_id, t.target);
        return 0;
    }
    if (rc == 0 && res.moved)
        KL_LOG(KL_INFO, "run %" PRId64 ": %s", run_id, res.error);
    if (rc == 0) {
        rc = kl_pg_commit(ctrl, &st);
        if (rc == 0 && res.failed)
            KL_LOG(KL_WARN, "run %" PRId64 ": %s failed: %s", run_id, t.target,
                   res.error);
        migration_work_result_free(&res);
    } else {
        kl_pg_rollback(ctrl);
    }
    kl_log_clear_context();
    if (rc < 0) {
        KL_LOG(KL_WARN,
               "run %" PRId64 ": recording %s failed: %s, left for "
               "a retry",
               run_id, t.target, st.message);
        return -1;
    }
    if (migration_store_finish_run(ctrl, run_id, &st) < 0)
        KL_LOG(KL_WARN, "finishing run %" PRId64 " failed: %s, ignored", run_id,
               st.message);
    KL_LOG(KL_DEBUG,
           "run %" PRId64 ": %s claimed in %" PRId64 " ms, migrated in %" PRId64
           " ms, recorded in %" PRId64 " ms",
           run_id, t.target, t1 - t0, t2 - t1, kl_now_mono_ms() - t2);
    return 1;
}

static void *
s_worker(void *arg)
{
    migration_runner_t *self = arg;
    kl_status_t st;
    kl_pg_t *ctrl = kl_pg_new(self->database_url);
    migration_apply_t *ap = migration_apply_new(self->owner_url, self->servers,
                                                self->n_servers, &st);
    if (ap)
        migration_apply_set_app_role(ap, self->app_role);
    unsigned seen = 0;
    while (ap && !s_stopping(self)) {
        int rc = s_one(self, ctrl, ap);
        if (rc > 0)
            continue;
        if (!s_idle(self, &seen))
            break;
    }
    migration_apply_destroy(&ap);
    kl_pg_destroy(&ctrl);
    return NULL;
}

migration_runner_t *
migration_runner_new(const migration_runner_opts_t *opts, kl_status_t *status)
{
    if (!opts || !opts->database_url || !opts->owner_url || !opts->files ||
        opts->workers < 1) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "migration runner needs database and owner URLs, "
                      "files and at least one worker");
        return NULL;
    }
    /* Checks the owner URL once here rather than in every thread. */
    migration_apply_t *probe = migration_apply_new(
        opts->owner_url, opts->owner_servers, opts->n_owner_servers, status);
    if (!probe)
        return NULL;
    migration_apply_destroy(&probe);
    migration_runner_t *self = kl_calloc(1, sizeof *self);
    self->database_url = kl_strdup(opts->database_url);
    self->owner_url = kl_strdup(opts->owner_url);
    self->servers = opts->owner_servers;
    self->n_servers = opts->n_owner_servers;
    self->instance = kl_strdup(opts->instance ? opts->instance : "");
    self->app_role = kl_strdup(opts->app_role ? opts->app_role : "");
    self->files = opts->files;
    self->poll_ms = opts->poll_ms > 0 ? opts->poll_ms : 500;
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->cond, NULL);
    self->threads = kl_calloc((size_t)opts->workers, sizeof *self->threads);
    for (int i = 0; i < opts->workers; i++) {
        int err = pthread_create(&self->threads[i], NULL, s_worker, self);
        if (err != 0) {
            kl_status_set(status, KL_INTERNAL, "pthread_create() failed: %s",
                          strerror(err));
            migration_runner_destroy(&self);
            return NULL;
        }
        self->n_threads++;
    }
    return self;
}

void
migration_runner_wake(migration_runner_t *self)
{
    pthread_mutex_lock(&self->mu);
    self->wakes++;
    pthread_cond_broadcast(&self->cond);
    pthread_mutex_unlock(&self->mu);
}

void
migration_runner_destroy(migration_runner_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    migration_runner_t *self = *self_p;
    pthread_mutex_lock(&self->mu);
    self->stop = true;
    pthread_cond_broadcast(&self->cond);
    pthread_mutex_unlock(&self->mu);
    for (int i = 0; i < self->n_threads; i++)
        pthread_join(self->threads[i], NULL);
    pthread_cond_destroy(&self->cond);
    pthread_mutex_destroy(&self->mu);
    free(self->threads);
    free(self->database_url);
    free(self->owner_url);
    free(self->instance);
    free(self->app_role);
    free(self);
    *self_p = NULL;
}
