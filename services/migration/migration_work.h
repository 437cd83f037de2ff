/*
 * migration_work: migrates one target — the step a run's worker and
 * ProvisionTenant share.
 *
 * Inside the caller's open transaction on the control database: takes the
 * target's advisory lock, reads the target's history, refuses drift, applies
 * each missing version in order (each in its own transaction on the target,
 * together with its history row), stops at the first failure,
 * and writes the ledger rows (including ones reconciled from the history
 * after a crash).
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

/* How migration_work_target is called. */
typedef struct {
    int64_t run_id; /* the run the target is part of; 0: none */
    /* Run workers: a tenant's target is migrated only while the tenant's
     * move lock is held shared (migration_apply_hold_tenant): when a move
     * holds it, out->moving is set and nothing is done or written; when
     * the placement fence says the tenant has moved to another model since
     * the target was computed, out->moved is set and nothing is applied.
     * ProvisionTenant leaves it false: a move calls it holding the lock. */
    bool hold_tenant;
    /* The caller's transaction holds the target's advisory lock already
     * (migration_store_claim took it); else it is taken first. */
    bool target_locked;
    /* With run_id: the claimed target's row is marked done or failed in
     * the statement that writes the ledger rows
     * (migration_store_target_finish), recording instance and started_ms.
     * Without: only the ledger rows are written. */
    bool finish;
    const char *instance;
    int64_t started_ms;
} migration_work_opts_t;

/* The pending versions are applied one transaction each, in as few round
 * trips as they allow: consecutive files that migration_files_batchable
 * accepts go in one (migration_batch_apply), each other file in its own.
 * When a file of a batch fails, the ones before it are committed and the
 * rest are applied again one at a time (so a syntax error anywhere, which
 * PostgreSQL reports before running any of the string, ends the same way):
 * the outcome is exactly that of applying them one by one — the versions
 * before the failing one applied and recorded, the failing one reported
 * with PostgreSQL's text, none after it tried.
 *
 * Returns 0 when the target's outcome is decided and its ledger rows are
 * written (out->failed says which), or -code when the control database
 * failed (the caller rolls back; the target is retried later). Free out
 * with migration_work_result_free. */
int migration_work_target(kl_pg_t *ctrl, migration_apply_t *ap,
                          const migration_files_t *files,
                          const migration_target_t *t,
                          const migration_work_opts_t *opts,
                          migration_work_result_t *out, kl_status_t *status);
void migration_work_result_free(migration_work_result_t *r);

#endif
