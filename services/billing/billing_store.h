/*
 * billing_store: the SQL of schema "billing" (docs/billing.md):
 *
 *   customers         tenant <-> Stripe customer
 *   subscriptions     a tenant's current subscription and its state, with
 *                     the created time and id of the last event applied to
 *                     its status (the reordering rule)
 *   prepaid           paid-until of prepaid (Alipay) periods
 *   events            the inbox: every Stripe event id received, unique
 *   outbox            tenant changes still to apply through TenantService
 *   idempotency_keys  Idempotency-Keys persisted before each Stripe POST
 *
 * Every statement is prepared once per connection (kl_pg) under a
 * "billing_" name, except the outbox worker's take, planned on each call.
 * Functions return 0 or -code with status (kl_pg's codes).
 */
#ifndef BILLING_STORE_H
#define BILLING_STORE_H

#include "kl_alloc.h"
#include "kl_code.h"
#include "kl_pg.h"

#include <stdbool.h>
#include <stdint.h>

#define BILLING_ID_MAX 128

/* A tenant's billing state. Times are Unix seconds, 0 when unknown. */
typedef struct {
    char tenant_id[37];
    bool has_customer;
    char customer_id[BILLING_ID_MAX];
    bool has_subscription;
    char subscription_id[BILLING_ID_MAX];
    char item_id[BILLING_ID_MAX];
    char price_id[BILLING_ID_MAX];
    char plan[64];
    char status[32];        /* Stripe's subscription status */
    char tenant_status[16]; /* what billing last asked of the tenant */
    char collection_method[32];
    bool cancel_at_period_end;
    int64_t current_period_end;
    int64_t trial_end;
    int64_t past_due_since;
    bool grace_expired; /* the sweeper suspended it after the grace */
    int64_t status_event_created;
    char status_event_id[BILLING_ID_MAX];
    int64_t paid_until; /* prepaid periods */
    int64_t updated_at;
} billing_row_t;

int billing_store_migrate(kl_pg_t *pg, kl_status_t *status);

/* Fills row for tenant (has_customer / has_subscription false when
 * missing). for_update locks the subscription row (inside a transaction;
 * it must exist to be locked). */
int billing_store_get(kl_pg_t *pg, const char *tenant_id, bool for_update,
                      billing_row_t *row, kl_status_t *status);

/* The tenant of a subscription id, else of a customer id (either may be
 * NULL or ""). -KL_NOT_FOUND when neither is known. */
int billing_store_tenant_of(kl_pg_t *pg, const char *subscription_id,
                            const char *customer_id, char tenant_id[37],
                            kl_status_t *status);

/* Inside a transaction: serialises every change of one tenant's billing
 * state (pg_advisory_xact_lock on the tenant id). */
int billing_store_lock_tenant(kl_pg_t *pg, const char *tenant_id,
                              kl_status_t *status);

/* Records the tenant's customer; an existing mapping is kept. */
int billing_store_customer_put(kl_pg_t *pg, const char *tenant_id,
                               const char *customer_id, kl_status_t *status);

/* Extends the tenant's paid-until by days from max(now, paid_until);
 * *paid_until is the new value. */
int billing_store_prepaid_extend(kl_pg_t *pg, const char *tenant_id, int days,
                                 int64_t *paid_until, kl_status_t *status);

/* The inbox: *inserted false when the event id was recorded already (by a
 * committed transaction; a concurrent one inserting it makes this wait). */
int billing_store_event_insert(kl_pg_t *pg, const char *id, const char *type,
                               int64_t created, bool *inserted,
                               kl_status_t *status);

/*
 * The writes one decision makes (billing_events), applied together in one
 * statement by billing_store_effect, inside the caller's transaction, with
 * the outcome of the event that caused them.
 */
typedef struct {
    char tenant_id[37]; /* the tenant of every write below */
    bool save;          /* write sub (every field, as of now) */
    bool exists;        /* sub's row exists and is locked: update it */
    billing_row_t sub;
    char customer_id[BILLING_ID_MAX]; /* record as the tenant's customer
                                       * (an existing mapping is kept); ""
                                       * none */
    bool outbox;                      /* queue a tenant change: */
    char outbox_status[16];           /* "" unchanged */
    char outbox_plan[64];             /* "" unchanged */
    char outbox_reason[64];
    char outbox_source[256]; /* the event id, or "api" */
} billing_effect_t;

/* Applies e and, when event_id is not NULL, records the event's tenant
 * ("" none) and outcome on its inbox row: one statement. */
int billing_store_effect(kl_pg_t *pg, const billing_effect_t *e,
                         const char *event_id, const char *event_tenant,
                         const char *outcome, kl_status_t *status);

/* The same statement, for a pipeline (kl_pg_pipeline_ex). p holds the
 * parameters and must outlive the statement's use. */
#define BILLING_EFFECT_NPARAMS 27
typedef struct {
    const char *v[BILLING_EFFECT_NPARAMS];
    char num[4][24];
} billing_effect_params_t;

void billing_store_effect_stmt(const billing_effect_t *e, const char *event_id,
                               const char *event_tenant, const char *outcome,
                               billing_effect_params_t *p, kl_pg_stmt_t *stmt);

/*
 * The webhook intake's first statement, for a pipeline (docs/billing.md,
 * "Round trips"): records event (id, type, created) in the inbox unless it
 * is there already (a concurrent transaction inserting the same id makes
 * it wait for that one's end), and only when it was new: finds the tenant
 * by keys (as billing_store_tenant_of, after a tenant id the event names
 * itself) and reads its state as billing_store_get with for_update does,
 * locking its subscription row. No advisory lock: see billing_events.h.
 */
typedef struct {
    char candidate[37]; /* tenant id named by the event, lower case; "" */
    char subscription_id[BILLING_ID_MAX];
    char customer_id[BILLING_ID_MAX];
} billing_keys_t;

typedef struct {
    billing_keys_t keys; /* what the tenant was looked up by */
    bool found;          /* a tenant was found: row.tenant_id */
    billing_row_t row;   /* its state; the subscription row is locked */
} billing_preload_t;

#define BILLING_INTAKE_NPARAMS 6
typedef struct {
    const char *v[BILLING_INTAKE_NPARAMS];
    char created[24];
} billing_intake_params_t;

/* id, type and keys must outlive the statement's use, as p. */
void billing_store_intake_stmt(const char *id, const char *type,
                               int64_t created, const billing_keys_t *keys,
                               billing_intake_params_t *p, kl_pg_stmt_t *stmt);

/* Reads the intake statement's result into out (keys copied). Returns
 * false when the event was recorded already (no row: nothing was read or
 * locked). */
bool billing_store_intake_read(const PGresult *res, const billing_keys_t *keys,
                               billing_preload_t *out);

/*
 * Batch forms of the intake and effect statements (billing_intake's group
 * commit, docs/billing.md "Group commit"): each parameter is an array with
 * an element per event, built from the single statement's parameters, and
 * the statement runs once for all. A batch of n events: init, n adds, the
 * stmt (valid until free).
 */
typedef struct {
    int ncols, nrows;
    kl_buf_t cols[BILLING_EFFECT_NPARAMS]; /* array literals */
    const char *v[BILLING_EFFECT_NPARAMS];
} billing_store_batch_t;

void billing_store_batch_init(billing_store_batch_t *b, int ncols);
/* Appends a row: v[i] (NULL: SQL NULL) to column i's array. */
void billing_store_batch_row(billing_store_batch_t *b, const char *const *v);
void billing_store_batch_free(billing_store_batch_t *b);

/* init with BILLING_INTAKE_NPARAMS. One output row per event recorded
 * now (ordered by position): billing_store_intake_batch_read returns its
 * position (1 = the first event added) and, with out, reads what the
 * single statement's row gives. Events without a row were recorded already. */
void billing_store_intake_batch_add(billing_store_batch_t *b, const char *id,
                                    const char *type, int64_t created,
                                    const billing_keys_t *keys);
void billing_store_intake_batch_stmt(billing_store_batch_t *b,
                                     kl_pg_stmt_t *stmt);
int billing_store_intake_batch_read(const PGresult *res, int row,
                                    const billing_keys_t *keys,
                                    billing_preload_t *out);

/* init with BILLING_EFFECT_NPARAMS. The events' tenants must differ. */
void billing_store_effect_batch_add(billing_store_batch_t *b,
                                    const billing_effect_t *e,
                                    const char *event_id,
                                    const char *event_tenant,
                                    const char *outcome);
void billing_store_effect_batch_stmt(billing_store_batch_t *b,
                                     kl_pg_stmt_t *stmt);

typedef struct {
    int64_t id;
    char tenant_id[37];
    char status[16]; /* "" unchanged */
    char plan[64];   /* "" unchanged */
    char reason[64];
    int attempts;
} billing_outbox_row_t;

/* Inside a transaction: locks up to max due rows, oldest first, taking
 * only each tenant's oldest pending row (so one tenant's changes apply in
 * order) and skipping rows locked by another instance. */
int billing_store_outbox_take(kl_pg_t *pg, billing_outbox_row_t *rows, int max,
                              int *n, kl_status_t *status);
/* Inside the take's transaction: locks the pending rows that follow each
 * of the n_heads rows taken (same tenant, greater id), up to max, ordered
 * by tenant then id. The worker folds them into their head's change. */
int billing_store_outbox_followers(kl_pg_t *pg,
                                   const billing_outbox_row_t *heads,
                                   int n_heads, int max,
                                   billing_outbox_row_t *rows, int *n,
                                   kl_status_t *status);
/* Marks a row done; error non-NULL records why it was given up. */
int billing_store_outbox_done(kl_pg_t *pg, int64_t id, const char *error,
                              kl_status_t *status);
/* Marks the n rows of ids done without an error: one statement. */
int billing_store_outbox_done_all(kl_pg_t *pg, const int64_t *ids, int n,
                                  kl_status_t *status);
/* Schedules another attempt in delay_ms. */
int billing_store_outbox_retry(kl_pg_t *pg, int64_t id, int64_t delay_ms,
                               const char *error, kl_status_t *status);

/* Inside a transaction: past_due subscriptions whose past_due_since is
 * more than grace_s ago and not suspended yet are marked grace_expired,
 * tenant_status suspended, with an outbox row each. *n: how many. */
int billing_store_sweep_grace(kl_pg_t *pg, int64_t grace_s, int *n,
                              kl_status_t *status);

/* Deletes up to max inbox events received more than days ago and up to
 * max outbox rows applied (done) more than days ago; pending outbox rows
 * are never deleted. Its own statement, outside a transaction. *n: the
 * larger of the two counts (less than max: nothing more to delete). */
int billing_store_prune(kl_pg_t *pg, int days, int max, int *n,
                        kl_status_t *status);

/*
 * Idempotency keys. Claims the pending key of (tenant, op): an existing
 * one younger than 23 h is reused, with the body stored with it when
 * sticky (so a retry after a crash sends exactly what the first attempt
 * sent), or only when its body equals body when not sticky (else it is
 * superseded). Otherwise a new random key is stored with body, committed
 * before this returns. *body_out (caller frees) is the body to send.
 */
int billing_store_key_claim(kl_pg_t *pg, const char *tenant_id, const char *op,
                            const char *body, bool sticky, char key[64],
                            char **body_out, kl_status_t *status);
/* Marks a key used up: the next claim of its op makes a new one. */
int billing_store_key_done(kl_pg_t *pg, const char *key, kl_status_t *status);

#endif
