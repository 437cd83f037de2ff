/*
 * migration_batch: several migrations of one target in one transaction,
 * sent to PostgreSQL in one round trip — migration_apply's fast path.
 */
#ifndef MIGRATION_BATCH_H
#define MIGRATION_BATCH_H

#include "kl_code.h"
#include "migration_apply.h"
#include "migration_files.h"
#include "migration_target.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Applies n files (ascending versions not in t's history, each one
 * migration_file_t.batchable) to t in ONE transaction sent in one round
 * trip: BEGIN, then for each file search_path and app.tenant_id set
 * (transaction-locally) again and the file; the history rows of all n;
 * with an application role the grants (as migration_apply_one does);
 * COMMIT. So the migrations and their history rows commit together, all
 * or none. With last (nothing more to apply to t), the locks taken for t
 * on this connection (migration_apply_lock's apply lock; the tenant's move
 * lock when t is on the main database) are given back in the same round
 * trip, after the COMMIT. durations[i] (n of them) gets the server's time
 * for file i.
 *
 * Returns 0 when everything committed, or:
 *   -KL_ABORTED  a statement failed (status: PostgreSQL's text) and the
 *                transaction was rolled back: nothing of the batch is
 *                applied; applying the files one at a time
 *                (migration_apply_one) reports the failing one exactly;
 *   -KL_UNAVAILABLE / -KL_INTERNAL  the connection was lost, or the batch
 *                did not come back as one committed transaction: what
 *                stuck is unknown until the history is read again (under
 *                the apply lock); try nothing more now. */
int migration_batch_apply(migration_apply_t *ap, const migration_target_t *t,
                          const migration_file_t *const *files, size_t n,
                          bool last, int64_t *durations, kl_status_t *status);

#endif
