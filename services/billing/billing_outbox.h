/*
 * billing_outbox: billing's two background threads.
 *
 * - The outbox worker applies rows of billing.outbox to the tenant
 *   service (TenantService.Update with the row's status and plan), oldest
 *   first and in order per tenant, up to 100 tenants in one transaction (a
 *   tenant's pending rows folded into one Update with the last status and
 *   the last plan), marks them done, and retries with backoff (200 ms
 *   doubling up to 30 s) while the tenant service is unavailable. A
 *   tenant that is gone or refuses the change marks the rows done with the
 *   error (logged). It polls every poll_interval_ms and is woken at once
 *   by billing_outbox_wake (after a commit that added rows). With a
 *   backlog (a full batch) it runs batch after batch, pausing yield_ms
 *   between them while commits keep adding rows: during a burst of
 *   webhooks intake goes first.
 * - The sweeper moves past_due subscriptions whose grace has run out to
 *   suspended (billing_store_sweep_grace) every sweep_interval_ms, and
 *   every prune_interval_ms (first at start) deletes inbox events and
 *   applied outbox rows older than retention_days (billing_store_prune, in
 *   batches of a transaction each).
 *
 * Several billing instances may run both: rows are taken FOR UPDATE SKIP
 * LOCKED. Each thread owns its own database connection.
 */
#ifndef BILLING_OUTBOX_H
#define BILLING_OUTBOX_H

#include "kl_code.h"
#include "kl_rpc_client.h"

#include <stdint.h>

typedef struct {
    const char *database_url;
    kl_rpc_client_t *tenant;   /* borrowed: TenantService client */
    int64_t grace_s;           /* KOWLOON_PAST_DUE_GRACE_S */
    int64_t poll_interval_ms;  /* 0: 1000 */
    int64_t sweep_interval_ms; /* 0: 5000 */
    int64_t yield_ms;          /* pause between full batches while rows
                                * keep being queued; 0: 100 */
    int retention_days;        /* 0: 90 */
    int64_t prune_interval_ms; /* 0: one hour */
} billing_outbox_opts_t;

typedef struct billing_outbox billing_outbox_t;

/* Starts both threads. */
billing_outbox_t *billing_outbox_new(const billing_outbox_opts_t *opts,
                                     kl_status_t *status);
/* Stops the threads (after the row in hand) and frees. */
void billing_outbox_destroy(billing_outbox_t **self_p);

/* Wakes the outbox worker now. Any thread. */
void billing_outbox_wake(billing_outbox_t *self);

#endif
