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
 * Every statement is prepared once per connection under a "billing_" name.
 * Functions return 0 or -code with status (kl_pg's codes).
 */
#ifndef BILLING_STORE_H
#define BILLING_STORE_H

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

/* Writes every subscription field of row (insert or update by tenant). */
int billing_store_sub_save(kl_pg_t *pg, const billing_row_t *row,
                           kl_status_t *status);

/* Extends the tenant's paid-until by days from max(now, paid_until);
 * *paid_until is the new value. */
int billing_store_prepaid_extend(kl_pg_t *pg, const char *tenant_id, int days,
                                 int64_t *paid_until, kl_status_t *status);

/* The inbox: *inserted false when the event id was recorded already (by a
 * committed transaction; a concurrent one inserting it makes this wait). */
int billing_store_event_insert(kl_pg_t *pg, const char *id, const char *type,
                               int64_t created, bool *inserted,
                               kl_status_t *status);
int billing_store_event_outcome(kl_pg_t *pg, const char *id,
                                const char *tenant_id, const char *outcome,
                                kl_status_t *status);

/* The outbox: status and plan may be NULL (unchanged). */
int billing_store_outbox_add(kl_pg_t *pg, const char *tenant_id,
                             const char *tenant_status, const char *plan,
                             const char *reason, const char *event_id,
                             kl_status_t *status);

typedef struct {
    int64_t id;
    char tenant_id[37];
    char status[16]; /* "" unchanged */
    char plan[64];   /* "" unchanged */
    char reason[64];
    int attempts;
} billing_outbox_row_t;

/* Inside a transaction: locks up to max due rows, oldest first, skipping
 * rows locked by another instance and rows with an older pending row of
 * the same tenant (so one tenant's changes apply in order). */
int billing_store_outbox_take(kl_pg_t *pg, billing_outbox_row_t *rows, int max,
                              int *n, kl_status_t *status);
/* Marks a row done; error non-NULL records why it was given up. */
int billing_store_outbox_done(kl_pg_t *pg, int64_t id, const char *error,
                              kl_status_t *status);
/* Schedules another attempt in delay_ms. */
int billing_store_outbox_retry(kl_pg_t *pg, int64_t id, int64_t delay_ms,
                               const char *error, kl_status_t *status);

/* Inside a transaction: past_due subscriptions whose past_due_since is
 * more than grace_s ago and not suspended yet are marked grace_expired,
 * tenant_status suspended, with an outbox row each. *n: how many. */
int billing_store_sweep_grace(kl_pg_t *pg, int64_t grace_s, int *n,
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
