/*
 * workspace_tx: the tenant-scoped transaction of the row isolation model.
 *
 * workspace_tx_begin opens a transaction on pg and sets the tenant for it
 * with set_config('app.tenant_id', <tenant>, true): transaction-local, so
 * it ends with the transaction and a pooled connection never carries one
 * tenant's scope into the next call (a session-level SET would). The
 * row-level security policies of schema workspace read that setting; with
 * no setting (or an empty one) they match no row.
 *
 * A later issue moves this into libkowloon as the tenant-scoped
 * transaction for every isolation model; keep it self-contained.
 */
#ifndef WORKSPACE_TX_H
#define WORKSPACE_TX_H

#include "kl_code.h"
#include "kl_pg.h"

/* Begins a transaction scoped to tenant_id (a UUID, checked by the caller).
 * Returns 0, or -code with status (UNAVAILABLE: no database;
 * INVALID_ARGUMENT: empty tenant id). On failure no transaction is open. */
int workspace_tx_begin(kl_pg_t *pg, const char *tenant_id, kl_status_t *status);

/* Ends the transaction: commits when rc is 0 (returning the commit's
 * result), otherwise rolls back and returns rc unchanged. */
int workspace_tx_end(kl_pg_t *pg, int rc, kl_status_t *status);

#endif
