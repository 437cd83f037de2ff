/*
 * migration_batch: several migrations of one target, each in its own
 * transaction, all sent to PostgreSQL in one round trip — migration_apply's
 * fast path.
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
 * migration_file_t.batchable) to t, ONE TRANSACTION PER FILE, the n
 * transactions sent as one string in one round trip: for each file
 * BEGIN, search_path and app.tenant_id set transaction-locally, the file,
 * its history row, with an application role the grants (as
 * migration_apply_one does), COMMIT. So each migration commits together
 * with its history row, and a failing one leaves the ones before it
 * committed. PostgreSQL runs nothing after a failing statement of the
 * string. With last (nothing more to apply to t), the locks taken for t on
 * this connection (migration_apply_lock's apply lock; the tenant's move
 * lock when t is on the main database) are given back in the same round
 * trip, after the last COMMIT. *committed gets how many files (the first
 * ones) committed; durations[i] (n of them) the server's time for file i.
 *
 * Returns 0 when all n committed, or:
 *   -KL_ABORTED  a statement failed (status: PostgreSQL's text) and its
 *                transaction was rolled back: files [0, *committed) are
 *                applied, nothing after them is. The failing statement
 *                may be in file *committed, or be a syntax error anywhere
 *                (the server parses the whole string before running any
 *                of it): applying the rest one at a time
 *                (migration_apply_one) reports the failing file exactly;
 *   -KL_UNAVAILABLE / -KL_INTERNAL  the connection was lost, or the files
 *                did not come back as n committed transactions: beyond
 *                *committed, what stuck is unknown until the history is
 *                read again (under the apply lock); try nothing more now. */
int migration_batch_apply(migration_apply_t *ap, const migration_target_t *t,
                          const migration_file_t *const *files, size_t n,
                          bool last, size_t *committed, int64_t *durations,
                          kl_status_t *status);

#endif
