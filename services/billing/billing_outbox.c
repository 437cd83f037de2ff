/*
 * billing_outbox: the outbox worker and the grace sweeper.
 */
#include "billing_outbox.h"

#include "billing_store.h"
#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_pg.h"
#include "kl_rpc.h"
#include "kowloon/tenant.pb-c.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_BATCH 100  /* tenants per batch */
#define S_LATER 1000 /* their later rows folded in, at most */
#define S_BACKOFF_FIRST_MS 200
#define S_BACKOFF_MAX_MS 30000

struct billing_outbox {
    char *database_url;      /* owned */
    kl_rpc_client_t *tenant; /* borrowed */
    int64_t grace_s;
    int64_t poll_ms;
    int64_t sweep_ms;
    int retention_days;
    int64_t prune_ms;
    int64_t yield_ms;
    pthread_mutex_t mu;  /* guards the flags below */
    pthread_cond_t cond; /* signalled on wake and stop */
    bool stop;
    bool woken;  /* a wake not yet consumed by the worker */
    bool queued; /* rows were queued (a wake) since the last batch */
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

/* Marks each of n rows done with error, or for another attempt. */
static int
s_give_up(kl_pg_t *pg, const billing_outbox_row_t *rows, int n,
          const char *error, kl_status_t *st)
{
    for (int i = 0; i < n; i++)
        if (billing_store_outbox_done(pg, rows[i].id, error, st) < 0)
            return -1;
    return 0;
}

/*
 * One batch in one transaction; returns rows taken or -1 (wait before the
 * next). The batch is each tenant's oldest pending row (at most S_BATCH
 * tenants) with the tenant's later pending rows folded into it: the
 * tenant service gets one Update with the last status and the last plan
 * of the run, which is where applying them one by one would leave it
 * (Update sets only what it is given), without the intermediate states a
 * backlog has already superseded. Rows applied are marked done together,
 * in one statement before the commit. The first tenant the tenant service
 * cannot take now (unavailable) has its oldest row scheduled for another
 * attempt and ends the batch: the rows after it stay pending, untried,
 * rather than each waiting out a timeout while the batch holds its
 * transaction open.
 */
static int
s_batch(billing_outbox_t *self, kl_pg_t *pg)
{
    kl_status_t st;
    billing_outbox_row_t *rows = kl_malloc(S_BATCH * sizeof *rows);
    billing_outbox_row_t *later = kl_malloc(S_LATER * sizeof *later);
    int64_t *done = kl_malloc((S_BATCH + S_LATER) * sizeof *done);
    int n = 0, n_later = 0, n_done = 0, result = -1;
    bool stalled = false;
    if (kl_pg_begin(pg, &st) < 0 ||
        billing_store_outbox_take(pg, rows, S_BATCH, &n, &st) < 0 ||
        billing_store_outbox_followers(pg, rows, n, S_LATER, later, &n_later,
                                       &st) < 0)
        goto fail;
    for (int i = 0; i < n && !stalled; i++) {
        /* later is ordered by tenant: this head's rows are one run. */
        billing_outbox_row_t net = rows[i];
        int first = 0, count = 0;
        while (first < n_later &&
               strcmp(later[first].tenant_id, net.tenant_id) != 0)
            first++;
        while (first + count < n_later &&
               strcmp(later[first + count].tenant_id, net.tenant_id) == 0) {
            const billing_outbox_row_t *r = &later[first + count++];
            if (r->status[0])
                snprintf(net.status, sizeof net.status, "%s", r->status);
            if (r->plan[0])
                snprintf(net.plan, sizeof net.plan, "%s", r->plan);
        }
        kl_status_t ast;
        int rc = s_apply(self, &net, &ast);
        if (rc == 0) {
            KL_LOG(KL_INFO,
                   "tenant %s updated (status \"%s\", plan \"%s\"): %s%s",
                   net.tenant_id, net.status, net.plan, net.reason,
                   count ? " and later changes" : "");
            done[n_done++] = net.id;
            for (int k = 0; k < count; k++)
                done[n_done++] = later[first + k].id;
        } else if (rc < 0) {
            KL_LOG(KL_ERROR, "tenant %s not updated (%s), given up: %s",
                   net.tenant_id, net.reason, ast.message);
            if (s_give_up(pg, &rows[i], 1, ast.message, &st) < 0 ||
                s_give_up(pg, &later[first], count, ast.message, &st) < 0)
                goto fail;
        } else {
            int64_t delay = S_BACKOFF_FIRST_MS;
            for (int a = 0; a < net.attempts && delay < S_BACKOFF_MAX_MS; a++)
                delay *= 2;
            if (delay > S_BACKOFF_MAX_MS)
                delay = S_BACKOFF_MAX_MS;
            KL_LOG(KL_WARN, "tenant %s not updated: %s; retrying in %lld ms",
                   net.tenant_id, ast.message, (long long)delay);
            if (billing_store_outbox_retry(pg, net.id, delay, ast.message,
                                           &st) < 0)
                goto fail;
            stalled = true;
        }
    }
    if (billing_store_outbox_done_all(pg, done, n_done, &st) < 0)
        goto fail;
    if (kl_pg_commit(pg, &st) < 0) {
        KL_LOG(KL_WARN, "outbox commit: %s", st.message);
        goto out;
    }
    result = stalled ? -1 : n;
    goto out;
fail:
    kl_pg_rollback(pg);
    KL_LOG(KL_WARN, "outbox: %s", st.message);
out:
    free(rows);
    free(later);
    free(done);
    return result;
}

/* Whether rows were queued since the last call. */
static bool
s_queued_since(billing_outbox_t *self)
{
    pthread_mutex_lock(&self->mu);
    bool queued = self->queued;
    self->queued = false;
    pthread_mutex_unlock(&self->mu);
    return queued;
}

static void *
s_worker_main(void *arg)
{
    billing_outbox_t *self = arg;
    kl_log_set_context("billing-outbox", NULL);
    kl_pg_t *pg = kl_pg_new(self->database_url);
    while (!s_stopping(self)) {
        int n = s_batch(self, pg);
        if (n == S_BATCH) {
            /* A backlog. While commits keep adding to it (a burst of
             * webhooks), the worker pauses between batches: the database
             * and the cores go to acknowledging the events first, and the
             * backlog drains at full speed once the burst is over. Without
             * a backlog a change is applied as soon as it is committed. */
            if (s_queued_since(self) && !s_wait(self, self->yield_ms, false))
                break;
            continue; /* more may be due */
        }
        if (!s_wait(self, n < 0 ? 1000 : self->poll_ms, true))
            break;
    }
    kl_pg_destroy(&pg);
    return NULL;
}

/* Deletes what retention_days has expired, a batch per transaction, until
 * a batch finds fewer rows than it may take (or the worker stops). */
static void
s_prune(billing_outbox_t *self, kl_pg_t *pg)
{
    enum { S_PRUNE_BATCH = 5000 };
    int total = 0, n = S_PRUNE_BATCH;
    kl_status_t st;
    while (n == S_PRUNE_BATCH && !s_stopping(self)) {
        if (billing_store_prune(pg, self->retention_days, S_PRUNE_BATCH, &n,
                                &st) < 0) {
            KL_LOG(KL_WARN, "pruning the inbox and outbox failed: %s",
                   st.message);
            return;
        }
        total += n;
    }
    if (total > 0)
        KL_LOG(KL_INFO,
               "pruned %d inbox events and applied outbox rows older than %d "
               "days",
               total, self->retention_days);
}

static void *
s_sweeper_main(void *arg)
{
    billing_outbox_t *self = arg;
    kl_log_set_context("billing-sweeper", NULL);
    kl_pg_t *pg = kl_pg_new(self->database_url);
    int64_t prune_at = kl_now_mono_ms();
    while (s_wait(self, self->sweep_ms, false)) {
        kl_status_t st;
        int n = 0;
        if (kl_now_mono_ms() >= prune_at) {
            s_prune(self, pg);
            prune_at = kl_now_mono_ms() + self->prune_ms;
        }
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
    self->retention_days = opts->retention_days > 0 ? opts->retention_days : 90;
    self->prune_ms =
        opts->prune_interval_ms > 0 ? opts->prune_interval_ms : 3600 * 1000;
    self->yield_ms = opts->yield_ms > 0 ? opts->yield_ms : 100;
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
    self->queued = true;
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
