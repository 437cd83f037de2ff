/*
 * migration_work: migrates one target — the step a run's worker and
 * ProvisionTenant share.
 *
 * Inside the caller's open transaction on the control database: takes the
 * target's advisory lock, reads the target's history, refuses drift, applies
 * each missing version in order (each in its own transaction on the
 * target, with its history row), stops at the first failure, and writes the
 * ledger rows (including ones reconciled from the history after a crash).
 */
#ifndef MIGRATION_WORK_H
#define MIGRATION_WORK_H

#include "kl_code.h"
#include "kl_pg.h"
#include "migration_apply.h"
#include "migration_files.h"
#include "migration_target.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    int current;  /* highest applied version afterwards */
    int *applied; /* versions applied now, ascending (owned) */
    int n_applied;
    int failed;         /* 1: the target failed */
    int failed_version; /* the migration that failed, 0: before any */
    int moving;         /* 1: a move holds the tenant, nothing was done */
    int moved; /* 1: the tenant moved since the run was made (error says
                  where); its new placement was migrated by the move */
    char error[KL_STATUS_MESSAGE_MAX];
} migration_work_result_t;

/* hold_tenant (run workers): a tenant's target is migrated only while the
 * tenant's move lock is held shared (migration_apply_hold_tenant): when a
 * move holds it, out->moving is set and nothing is done or written; when
 * the placement fence says the tenant has moved to another model since the
 * target was computed, out->moved is set and nothing is applied.
 * ProvisionTenant passes false: a move calls it while holding the lock.
 *
 * Returns 0 when the target's outcome is decided and its ledger rows are
 * written (out->failed says which), or -code when the control database
 * failed (the caller rolls back; the target is retried later). Free out
 * with migration_work_result_free. */
int migration_work_target(kl_pg_t *ctrl, migration_apply_t *ap,
                          const migration_files_t *files,
                          const migration_target_t *t, int64_t run_id,
                          bool hold_tenant, migration_work_result_t *out,
                          kl_status_t *status);
void migration_work_result_free(migration_work_result_t *r);

#endif
