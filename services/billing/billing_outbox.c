/*
 * billing_outbox: the outbox worker and the grace sweeper.
 */
#include "billing_outbox.h"

#include "billing_store.h"
#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_pg.h"
#include "kowloon/tenant.pb-c.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_BATCH 20
#define S_BACKOFF_FIRST_MS 200
#define S_BACKOFF_MAX_MS 30000

struct billing_outbox {
    char *database_url;      /* owned */
    kl_rpc_client_t *tenant; /* borrowed */
    int64_t grace_s;
    int64_t poll_ms;
    int64_t sweep_ms;
    pthread_mutex_t mu;  /* guards the flags below */
    pthread_cond_t cond; /* signalled on wake and stop */
    bool stop;
    bool woken; /* a wake not yet consumed by the worker */
    pthread_t worker, sweeper;
};

/* Waits up to ms or until woken (worker) / stopped. Returns false once
 * stopping. */
static bool
s_wait(billing_outbox_t *self, int64_t ms, bool consume_wake)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&self->mu);
    while (!self->stop && !(consume_wake && self->woken))
        if (pthread_cond_timedwait(&self->cond, &self->mu, &ts) != 0)
            break;
    if (consume_wake)
        self->woken = false;
    bool go = !self->stop;
    pthread_mutex_unlock(&self->mu);
    return go;
}

static bool
s_stopping(billing_outbox_t *self)
{
    pthread_mutex_lock(&self->mu);
    bool stop = self->stop;
    pthread_mutex_unlock(&self->mu);
    return stop;
}

/* Applies one row; returns 0 done, 1 retry later (status says why). */
static int
s_apply(billing_outbox_t *self, const billing_outbox_row_t *row,
        kl_status_t *status)
{
    Kowloon__Tenant__UpdateTenantRequest req =
        KOWLOON__TENANT__UPDATE_TENANT_REQUEST__INIT;
    req.id = (char *)row->tenant_id;
    req.status = (char *)row->status;
    req.plan = (char *)row->plan;
    kl_call_ctx_t ctx = {.request_id = "billing-outbox",
                         .principal = "billing"};
    kl_call_opts_t opts = {.timeout_ms = 3000, .idempotent = true, .ctx = &ctx};
    ProtobufCMessage *out = NULL;
    int rc = kl_rpc_client_call(self->tenant, "Update", &req.base, &opts, &out,
                                status);
    if (out)
        protobuf_c_message_free_unpacked(out, NULL);
    if (rc == 0)
        return 0;
    if (rc == -KL_NOT_FOUND || rc == -KL_INVALID_ARGUMENT ||
        rc == -KL_FAILED_PRECONDITION)
        return -1;
    return 1;
}

/* One batch in one transaction; returns rows handled or -1. */
static int
s_batch(billing_outbox_t *self, kl_pg_t *pg)
{
    kl_status_t st;
    billing_outbox_row_t rows[S_BATCH];
    int n = 0;
    if (kl_pg_begin(pg, &st) < 0 ||
        billing_store_outbox_take(pg, rows, S_BATCH, &n, &st) < 0) {
        kl_pg_rollback(pg);
        KL_LOG(KL_WARN, "outbox: %s", st.message);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        kl_status_t ast;
        int rc = s_apply(self, &rows[i], &ast);
        int wrc;
        if (rc == 0) {
            KL_LOG(KL_INFO,
                   "tenant %s updated (status \"%s\", plan \"%s\"): %s",
                   rows[i].tenant_id, rows[i].status, rows[i].plan,
                   rows[i].reason);
            wrc = billing_store_outbox_done(pg, rows[i].id, NULL, &st);
        } else if (rc < 0) {
            KL_LOG(KL_ERROR, "tenant %s not updated (%s), given up: %s",
                   rows[i].tenant_id, rows[i].reason, ast.message);
            wrc = billing_store_outbox_done(pg, rows[i].id, ast.message, &st);
        } else {
            int64_t delay = S_BACKOFF_FIRST_MS;
            for (int a = 0; a < rows[i].attempts && delay < S_BACKOFF_MAX_MS;
                 a++)
                delay *= 2;
            if (delay > S_BACKOFF_MAX_MS)
                delay = S_BACKOFF_MAX_MS;
            KL_LOG(KL_WARN, "tenant %s not updated: %s; retrying in %lld ms",
                   rows[i].tenant_id, ast.message, (long long)delay);
            wrc = billing_store_outbox_retry(pg, rows[i].id, delay, ast.message,
                                             &st);
        }
        if (wrc < 0) {
            kl_pg_rollback(pg);
            KL_LOG(KL_WARN, "outbox: %s", st.message);
            return -1;
        }
    }
    if (kl_pg_commit(pg, &st) < 0) {
        KL_LOG(KL_WARN, "outbox commit: %s", st.message);
        return -1;
    }
    return n;
}

static void *
s_worker_main(void *arg)
{
    billing_outbox_t *self = arg;
    kl_log_set_context("billing-outbox", NULL);
    kl_pg_t *pg = kl_pg_new(self->database_url);
    while (!s_stopping(self)) {
        int n = s_batch(self, pg);
        if (n == S_BATCH)
            continue; /* more may be due */
        if (!s_wait(self, n < 0 ? 1000 : self->poll_ms, true))
            break;
    }
    kl_pg_destroy(&pg);
    return NULL;
}

static void *
s_sweeper_main(void *arg)
{
    billing_outbox_t *self = arg;
    kl_log_set_context("billing-sweeper", NULL);
    kl_pg_t *pg = kl_pg_new(self->database_url);
    while (s_wait(self, self->sweep_ms, false)) {
        kl_status_t st;
        int n = 0;
        if (kl_pg_begin(pg, &st) < 0 ||
            billing_store_sweep_grace(pg, self->grace_s, &n, &st) < 0 ||
            kl_pg_commit(pg, &st) < 0) {
            kl_pg_rollback(pg);
            KL_LOG(KL_WARN, "grace sweep failed: %s", st.message);
            continue;
        }
        if (n > 0) {
            KL_LOG(KL_INFO, "%d past_due tenants suspended after the grace", n);
            billing_outbox_wake(self);
        }
    }
    kl_pg_destroy(&pg);
    return NULL;
}

billing_outbox_t *
billing_outbox_new(const billing_outbox_opts_t *opts, kl_status_t *status)
{
    if (!opts->database_url || !*opts->database_url || !opts->tenant) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "outbox needs a database URL and a tenant client");
        return NULL;
    }
    billing_outbox_t *self = kl_calloc(1, sizeof *self);
    self->database_url = kl_strdup(opts->database_url);
    self->tenant = opts->tenant;
    self->grace_s = opts->grace_s;
    self->poll_ms = opts->poll_interval_ms > 0 ? opts->poll_interval_ms : 1000;
    self->sweep_ms =
        opts->sweep_interval_ms > 0 ? opts->sweep_interval_ms : 5000;
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->cond, NULL);
    if (pthread_create(&self->worker, NULL, s_worker_main, self) != 0)
        abort();
    if (pthread_create(&self->sweeper, NULL, s_sweeper_main, self) != 0)
        abort();
    return self;
}

void
billing_outbox_wake(billing_outbox_t *self)
{
    if (!self)
        return;
    pthread_mutex_lock(&self->mu);
    self->woken = true;
    pthread_cond_broadcast(&self->cond);
    pthread_mutex_unlock(&self->mu);
}

void
billing_outbox_destroy(billing_outbox_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    billing_outbox_t *self = *self_p;
    pthread_mutex_lock(&self->mu);
    self->stop = true;
    pthread_cond_broadcast(&self->cond);
    pthread_mutex_unlock(&self->mu);
    pthread_join(self->worker, NULL);
    pthread_join(self->sweeper, NULL);
    pthread_mutex_destroy(&self->mu);
    pthread_cond_destroy(&self->cond);
    free(self->database_url);
    free(self);
    *self_p = NULL;
}
