/*
 * billing_intake: verify, parse, record a Stripe webhook with its effect.
 */
#include "billing_intake.h"

#include "billing_events.h"
#include "billing_store.h"
#include "billing_webhook.h"
#include "kl_alloc.h"
#include "kl_log.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int
s_fault(const billing_intake_opts_t *opts, const char *point,
        kl_status_t *status)
{
    if (opts->fault && opts->fault(point, opts->fault_user))
        return kl_status_set(status, KL_UNAVAILABLE, "fault injected at %s",
                             point);
    return 0;
}

/*
 * The general path: BEGIN; the inbox row (a concurrent delivery of the
 * same id waits on its key and then finds it recorded); the tenant, its
 * advisory lock and its state, read as the event's type needs; the effect
 * with the outcome in one statement; COMMIT.
 */
static int
s_general(const billing_intake_opts_t *opts, kl_pg_t *pg, const char *id,
          const char *type, int64_t created, json_t *object,
          billing_events_result_t *res, bool *duplicate, kl_status_t *st)
{
    bool inserted = false;
    billing_events_ctx_t ctx = {.pg = pg, .plans = opts->plans};
    int rc = kl_pg_begin(pg, st);
    if (rc == 0)
        rc = billing_store_event_insert(pg, id, type, created, &inserted, st);
    if (rc == 0 && !inserted) {
        kl_pg_rollback(pg);
        *duplicate = true;
        return 0;
    }
    if (rc == 0)
        rc = billing_events_apply(&ctx, id, type, created, object, res, st);
    if (rc == 0)
        rc = billing_store_effect(pg, &res->effect, id, res->tenant_id,
                                  res->outcome, st);
    if (rc < 0) {
        kl_pg_rollback(pg);
        return rc;
    }
    return kl_pg_commit(pg, st);
}

/*
 * Two round trips (billing_events_preloadable types), two pipelines: BEGIN
 * and the inbox statement, which records the event and, only if it is
 * new, reads and locks the tenant's state; the decision from that state;
 * the effect with the outcome, and COMMIT. kl_pg runs the second only on
 * the first one's connection, still inside its transaction, and answers
 * 0 only once COMMIT succeeded.
 */
static int
s_preloaded(const billing_intake_opts_t *opts, kl_pg_t *pg, const char *id,
            const char *type, int64_t created, json_t *object,
            const billing_keys_t *keys, billing_events_result_t *res,
            bool *duplicate, kl_status_t *st)
{
    billing_intake_params_t ip;
    kl_pg_stmt_t stmt;
    PGresult *out = NULL;
    billing_store_intake_stmt(id, type, created, keys, &ip, &stmt);
    int rc = kl_pg_pipeline_ex(pg, &stmt, 1, KL_PG_PIPE_BEGIN, &out, st);
    if (rc < 0)
        return rc;
    billing_preload_t pre;
    bool fresh = billing_store_intake_read(out, keys, &pre);
    PQclear(out);
    if (!fresh) {
        kl_pg_rollback(pg);
        *duplicate = true;
        return 0;
    }
    billing_events_ctx_t ctx = {.plans = opts->plans, .preload = &pre};
    rc = billing_events_apply(&ctx, id, type, created, object, res, st);
    if (rc == 0)
        rc = s_fault(opts, "webhook.decided", st);
    if (rc < 0) {
        kl_pg_rollback(pg);
        return rc;
    }
    billing_effect_params_t ep;
    billing_store_effect_stmt(&res->effect, id, res->tenant_id, res->outcome,
                              &ep, &stmt);
    rc = kl_pg_pipeline_ex(pg, &stmt, 1, KL_PG_PIPE_COMMIT, &out, st);
    PQclear(out);
    return rc;
}

/* --- group commit ----------------------------------------------------------
 */

/* One delivery waiting in a group: its inputs, where its answer goes, and
 * the batch's working space. Lives on the delivering worker's stack. */
typedef struct s_job s_job_t;
struct s_job {
    const char *id;
    const char *type;
    int64_t created;
    json_t *object;
    const billing_keys_t *keys;
    billing_events_result_t *res;
    bool *duplicate;
    kl_status_t *st;
    int rc;
    bool done;           /* answered: rc, *res, *duplicate, *st are set */
    pthread_cond_t cond; /* signalled when done, or to lead */
    s_job_t *next;       /* the group's queue */
    bool fresh;          /* the batch's inbox statement recorded it */
    billing_preload_t pre;
};

/* A batch being recorded. */
typedef struct {
    s_job_t *jobs[BILLING_INTAKE_BATCH_MAX];
    int n; /* 0: free */
} s_running_t;

struct billing_intake_group {
    pthread_mutex_t mu;
    s_job_t *head, *tail; /* waiting, oldest first */
    s_running_t running[BILLING_INTAKE_LEADERS];
    billing_intake_group_stats_t stats;
};

billing_intake_group_t *
billing_intake_group_new(void)
{
    billing_intake_group_t *self = kl_calloc(1, sizeof *self);
    pthread_mutex_init(&self->mu, NULL);
    return self;
}

void
billing_intake_group_destroy(billing_intake_group_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    pthread_mutex_destroy(&(*self_p)->mu);
    free(*self_p);
    *self_p = NULL;
}

void
billing_intake_group_stats(billing_intake_group_t *self,
                           billing_intake_group_stats_t *out)
{
    pthread_mutex_lock(&self->mu);
    *out = self->stats;
    pthread_mutex_unlock(&self->mu);
}

static bool
s_same_key(const char *a, const char *b)
{
    return a[0] != '\0' && strcmp(a, b) == 0;
}

/* Whether two deliveries are one event's or may name one tenant by the
 * same key. */
static bool
s_meet(const s_job_t *x, const s_job_t *y)
{
    const billing_keys_t *a = x->keys, *b = y->keys;
    return strcmp(x->id, y->id) == 0 ||
           s_same_key(a->candidate, b->candidate) ||
           s_same_key(a->subscription_id, b->subscription_id) ||
           s_same_key(a->customer_id, b->customer_id);
}

/* Whether j shares a key with a delivery of a batch being recorded. */
static bool
s_meets_running(const billing_intake_group_t *g, const s_job_t *j)
{
    for (int r = 0; r < BILLING_INTAKE_LEADERS; r++)
        for (int i = 0; i < g->running[r].n; i++)
            if (s_meet(j, g->running[r].jobs[i]))
                return true;
    return false;
}

/* Under mu: unlinks up to BILLING_INTAKE_BATCH_MAX waiting deliveries,
 * oldest first, none sharing a key with an earlier one taken or left, or
 * with one being recorded (so a tenant's later event never overtakes its
 * earlier one, and two batches never wait on each other's rows through a
 * key). */
static int
s_take(billing_intake_group_t *g, s_job_t **batch)
{
    int n = 0;
    s_job_t **link = &g->head, *left[BILLING_INTAKE_BATCH_MAX];
    int n_left = 0;
    g->tail = NULL;
    while (*link) {
        s_job_t *j = *link;
        /* Full, or too many left behind to compare with: the rest waits. */
        bool meets =
            n == BILLING_INTAKE_BATCH_MAX || n_left == BILLING_INTAKE_BATCH_MAX;
        for (int i = 0; !meets && i < n; i++)
            meets = s_meet(j, batch[i]);
        for (int i = 0; !meets && i < n_left; i++)
            meets = s_meet(j, left[i]);
        if (!meets)
            meets = s_meets_running(g, j);
        if (meets) {
            if (n_left < BILLING_INTAKE_BATCH_MAX)
                left[n_left++] = j;
            g->tail = j;
            link = &j->next;
            continue;
        }
        batch[n++] = j;
        *link = j->next;
        j->next = NULL;
    }
    g->stats.waiting -= (uint64_t)n;
    return n;
}

/* The order rows are locked in: by subscription, then customer, so two
 * instances' batches tend to lock shared rows in one order. */
static int
s_lock_order(const void *a, const void *b)
{
    const billing_keys_t *x = (*(s_job_t *const *)a)->keys;
    const billing_keys_t *y = (*(s_job_t *const *)b)->keys;
    int c = strcmp(x->subscription_id, y->subscription_id);
    if (c == 0)
        c = strcmp(x->customer_id, y->customer_id);
    return c == 0 ? strcmp(x->candidate, y->candidate) : c;
}

/* The batch's two round trips, each one statement over arrays
 * (billing_store's batch forms). 0 once committed; -1 when it was rolled
 * back (nothing of it recorded), reason in *st. */
static int
s_batch_try(const billing_intake_opts_t *opts, kl_pg_t *pg, s_job_t **jobs,
            int n, kl_status_t *st)
{
    billing_store_batch_t b;
    kl_pg_stmt_t stmt;
    PGresult *out = NULL;
    billing_store_batch_init(&b, BILLING_INTAKE_NPARAMS);
    for (int i = 0; i < n; i++)
        billing_store_intake_batch_add(&b, jobs[i]->id, jobs[i]->type,
                                       jobs[i]->created, jobs[i]->keys);
    billing_store_intake_batch_stmt(&b, &stmt);
    int rc = kl_pg_pipeline_ex(pg, &stmt, 1, KL_PG_PIPE_BEGIN, &out, st);
    billing_store_batch_free(&b);
    if (rc < 0)
        return -1;
    for (int i = 0; i < n; i++)
        jobs[i]->fresh = false;
    for (int r = 0; rc == 0 && r < PQntuples(out); r++) {
        int ord = billing_store_intake_batch_read(out, r, NULL, NULL);
        if (ord < 1 || ord > n || jobs[ord - 1]->fresh) {
            rc = kl_status_set(st, KL_INTERNAL,
                               "the batch intake answered position %d of %d",
                               ord, n);
            break;
        }
        s_job_t *j = jobs[ord - 1];
        billing_store_intake_batch_read(out, r, j->keys, &j->pre);
        j->fresh = true;
    }
    PQclear(out);
    /* Two keys of one tenant: decided apart, neither would see the
     * other's effect. */
    for (int i = 0; rc == 0 && i < n; i++)
        for (int k = i + 1; rc == 0 && k < n; k++)
            if (jobs[i]->fresh && jobs[k]->fresh && jobs[i]->pre.found &&
                jobs[k]->pre.found &&
                strcmp(jobs[i]->pre.row.tenant_id,
                       jobs[k]->pre.row.tenant_id) == 0)
                rc = kl_status_set(st, KL_ABORTED,
                                   "events %s and %s are one tenant's",
                                   jobs[i]->id, jobs[k]->id);
    billing_store_batch_init(&b, BILLING_EFFECT_NPARAMS);
    for (int i = 0; rc == 0 && i < n; i++) {
        s_job_t *j = jobs[i];
        if (!j->fresh)
            continue;
        billing_events_ctx_t ctx = {.plans = opts->plans, .preload = &j->pre};
        rc = billing_events_apply(&ctx, j->id, j->type, j->created, j->object,
                                  j->res, st);
        if (rc == 0)
            rc = s_fault(opts, "webhook.batch.decided", st);
        if (rc == 0)
            billing_store_effect_batch_add(&b, &j->res->effect, j->id,
                                           j->res->tenant_id, j->res->outcome);
    }
    if (rc < 0) {
        billing_store_batch_free(&b);
        kl_pg_rollback(pg);
        return -1;
    }
    out = NULL;
    if (b.nrows > 0) {
        billing_store_effect_batch_stmt(&b, &stmt);
        rc = kl_pg_pipeline_ex(pg, &stmt, 1, KL_PG_PIPE_COMMIT, &out, st);
    } else {
        rc = kl_pg_pipeline_ex(pg, NULL, 0, KL_PG_PIPE_COMMIT, NULL, st);
    }
    PQclear(out);
    billing_store_batch_free(&b);
    return rc < 0 ? -1 : 0;
}

/* Records the batch, or each of its deliveries alone when it cannot. */
static void
s_batch(const billing_intake_opts_t *opts, kl_pg_t *pg, s_job_t *const *batch,
        int n, billing_intake_group_t *g)
{
    /* A copy: other leaders read the batch's keys under mu meanwhile. */
    s_job_t *jobs[BILLING_INTAKE_BATCH_MAX];
    memcpy(jobs, batch, (size_t)n * sizeof *jobs);
    if (n == 1) {
        s_job_t *j = jobs[0];
        j->rc = s_preloaded(opts, pg, j->id, j->type, j->created, j->object,
                            j->keys, j->res, j->duplicate, j->st);
        return;
    }
    qsort(jobs, (size_t)n, sizeof *jobs, s_lock_order);
    kl_status_t st;
    bool fallback = s_batch_try(opts, pg, jobs, n, &st) < 0;
    pthread_mutex_lock(&g->mu);
    g->stats.batches++;
    g->stats.grouped += (uint64_t)n;
    g->stats.fallbacks += fallback;
    pthread_mutex_unlock(&g->mu);
    if (!fallback) {
        for (int i = 0; i < n; i++) {
            jobs[i]->rc = 0;
            *jobs[i]->duplicate = !jobs[i]->fresh;
        }
        return;
    }
    KL_LOG(KL_INFO,
           "a batch of %d events was rolled back (%s); recording "
           "them one by one",
           n, st.message);
    for (int i = 0; i < n; i++) {
        s_job_t *j = jobs[i];
        memset(j->res, 0, sizeof *j->res);
        j->rc = s_preloaded(opts, pg, j->id, j->type, j->created, j->object,
                            j->keys, j->res, j->duplicate, j->st);
    }
}

/*
 * Queues the delivery; a waiting worker that finds fewer than
 * BILLING_INTAKE_LEADERS batches being recorded leads: takes a batch, records
 * it on its own connection, answers its deliveries and wakes the oldest one
 * left.
 */
static int
s_grouped(const billing_intake_opts_t *opts, kl_pg_t *pg, const char *id,
          const char *type, int64_t created, json_t *object,
          const billing_keys_t *keys, billing_events_result_t *res,
          bool *duplicate, kl_status_t *st)
{
    billing_intake_group_t *g = opts->group;
    s_job_t job = {.id = id,
                   .type = type,
                   .created = created,
                   .object = object,
                   .keys = keys,
                   .res = res,
                   .duplicate = duplicate,
                   .st = st};
    pthread_cond_init(&job.cond, NULL);
    pthread_mutex_lock(&g->mu);
    if (g->tail)
        g->tail->next = &job;
    else
        g->head = &job;
    g->tail = &job;
    g->stats.waiting++;
    while (!job.done) {
        s_running_t *slot = NULL;
        for (int r = 0; !slot && r < BILLING_INTAKE_LEADERS; r++)
            if (g->running[r].n == 0)
                slot = &g->running[r];
        int n = slot ? s_take(g, slot->jobs) : 0;
        if (n == 0) {
            /* Every leader busy, or all that waits shares a key with
             * what they record: a leader's end wakes the oldest. */
            pthread_cond_wait(&job.cond, &g->mu);
            continue;
        }
        slot->n = n;
        pthread_mutex_unlock(&g->mu);
        s_batch(opts, pg, slot->jobs, n, g);
        pthread_mutex_lock(&g->mu);
        for (int i = 0; i < n; i++) {
            slot->jobs[i]->done = true;
            if (slot->jobs[i] != &job)
                pthread_cond_signal(&slot->jobs[i]->cond);
        }
        slot->n = 0;
        if (g->head)
            pthread_cond_signal(&g->head->cond);
    }
    pthread_mutex_unlock(&g->mu);
    pthread_cond_destroy(&job.cond);
    return job.rc;
}

int
billing_intake_handle(const billing_intake_opts_t *opts, kl_pg_t *pg,
                      const uint8_t *payload, size_t payload_len,
                      const char *signature, char event_id[256],
                      bool *duplicate, bool *queued, kl_status_t *st)
{
    *duplicate = false;
    *queued = false;
    /* 1. The signature, over the bytes as received. */
    int rc = billing_webhook_verify(signature, payload, payload_len,
                                    opts->secrets, opts->n_secrets,
                                    (int64_t)time(NULL), opts->tolerance_s, st);
    if (rc < 0)
        return rc;
    /* 2. Only then the JSON. */
    json_error_t jerr;
    json_t *ev = json_loadb((const char *)payload, payload_len,
                            JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(ev)) {
        json_decref(ev);
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "webhook payload is not a JSON object");
    }
    const char *id = json_string_value(json_object_get(ev, "id"));
    const char *type = json_string_value(json_object_get(ev, "type"));
    json_t *created = json_object_get(ev, "created");
    json_t *object = json_object_get(json_object_get(ev, "data"), "object");
    if (!id || !*id || strlen(id) > 255 || !type || !*type ||
        strlen(type) > 128 || !json_is_integer(created) ||
        !json_is_object(object)) {
        json_decref(ev);
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "webhook payload is not a Stripe event: want "
                             "id, type, created and data.object");
    }
    /* Copies: ev is freed before the last log line. */
    char type_copy[129];
    snprintf(event_id, 256, "%s", id);
    snprintf(type_copy, sizeof type_copy, "%s", type);
    id = event_id;
    type = type_copy;

    /* 3. Inbox, effect and outbox in one transaction. */
    billing_events_result_t res;
    memset(&res, 0, sizeof res);
    billing_keys_t keys;
    int64_t at = (int64_t)json_integer_value(created);
    bool preloadable = billing_events_preloadable(type) &&
                       billing_events_keys(type, object, &keys);
    if (preloadable && opts->group)
        rc = s_grouped(opts, pg, id, type, at, object, &keys, &res, duplicate,
                       st);
    else if (preloadable)
        rc = s_preloaded(opts, pg, id, type, at, object, &keys, &res, duplicate,
                         st);
    else
        rc = s_general(opts, pg, id, type, at, object, &res, duplicate, st);
    json_decref(ev);
    if (rc < 0) {
        /* Not recorded: Stripe delivers it again. */
        if (rc == -KL_ALREADY_EXISTS || rc == -KL_ABORTED)
            kl_status_set(st, KL_UNAVAILABLE, "event %s not recorded: %s", id,
                          st->message);
        return rc == -KL_ALREADY_EXISTS || rc == -KL_ABORTED ? -KL_UNAVAILABLE
                                                             : rc;
    }
    if (*duplicate) {
        KL_LOG(KL_INFO, "event %s (%s) already recorded, ignored", id, type);
        return 0;
    }
    KL_LOG(KL_INFO, "event %s (%s)%s%s: %s", id, type,
           res.tenant_id[0] ? " for tenant " : "", res.tenant_id, res.outcome);
    *queued = res.effect.outbox;
    return 0;
}
