/*
 * migration_store: schema "migration" of the control database — runs, the
 * targets of each run (the unit of work, claimed with FOR UPDATE SKIP
 * LOCKED), and the ledger (one row per target and version).
 *
 *   runs         id, state running|finished, latest_version, retry_of,
 *                total, created_at, finished_at
 *   run_targets  (run_id, target), seq, tenant_id, isolation, schema_name,
 *                db_name, state pending|done|failed, failed_version, error,
 *                applied, instance, started_at, finished_at
 *   ledger       (target, version), tenant_id, name, checksum,
 *                state pending|running|applied|failed, run_id, started_at,
 *                finished_at, duration_ms, error
 *
 * A worker claims one pending target of a running run and keeps that
 * transaction open while it migrates the target (so the row stays locked
 * and no other instance takes it); the ledger rows and the target's state
 * commit with it. If the worker dies, the transaction rolls back, the row
 * is pending again, and whoever claims it next reconciles the ledger from
 * the target's own history (migration_apply).
 */
#ifndef MIGRATION_STORE_H
#define MIGRATION_STORE_H

#include "kl_code.h"
#include "kl_pg.h"
#include "migration_target.h"

#include <stddef.h>
#include <stdint.h>

/* Creates or upgrades schema "migration" (kl_pg_migrate). */
int migration_store_migrate(kl_pg_t *pg, kl_status_t *status);

/* Creates a run over targets (in this order) in one transaction. A run of
 * no targets is created finished. */
int migration_store_create_run(kl_pg_t *pg, int latest_version,
                               const migration_target_t *targets, size_t n,
                               int64_t *run_id, kl_status_t *status);

/* A new run over the failed targets of run_id (0: the latest run).
 * NOT_FOUND: no such run; FAILED_PRECONDITION: it is still running or has
 * no failed target. */
int migration_store_retry_run(kl_pg_t *pg, int64_t run_id, int latest_version,
                              int64_t *new_run_id, int *n_targets,
                              kl_status_t *status);

/* Begins a transaction and claims one pending target of a running run,
 * taking the target's advisory lock (migration_store_lock_target) in the
 * same statement. Returns 1 with the transaction open (end it with
 * kl_pg_commit or kl_pg_rollback), 0 when there is none (no transaction
 * open), or -code. */
int migration_store_claim(kl_pg_t *pg, migration_target_t *t, int64_t *run_id,
                          kl_status_t *status);

/* Inside a transaction: waits for the target's transaction-level advisory
 * lock, so that a run and a ProvisionTenant never work on one target at
 * once. */
int migration_store_lock_target(kl_pg_t *pg, const migration_target_t *t,
                                kl_status_t *status);

/* One ledger row to write. started_ms 0 marks a row reconciled from the
 * target's history: it is written only when the ledger lacks it or does
 * not say applied. */
typedef struct {
    int version;
    const char *name;
    const char *checksum;
    const char *state;               /* applied | failed */
    int64_t started_ms, finished_ms; /* Unix ms */
    int64_t duration_ms;
    const char *error; /* "" or NULL: none */
} migration_ledger_row_t;

/* Upserts rows for t (run_id 0: not part of a run). */
int migration_store_ledger(kl_pg_t *pg, const migration_target_t *t,
                           int64_t run_id, const migration_ledger_row_t *rows,
                           size_t n, kl_status_t *status);

/* How a claimed target ended (migration_store_target_finish). */
typedef struct {
    int failed;         /* 1: failed, else done */
    int failed_version; /* 0: before any migration */
    const char *error;  /* the failure, or a note ("" or NULL: none) */
    int applied;        /* migrations applied now */
    const char *instance;
    int64_t started_ms; /* Unix ms */
} migration_target_outcome_t;

/* Upserts t's ledger rows (as migration_store_ledger; n may be 0) and
 * marks the claimed target done or failed, in one statement. */
int migration_store_target_finish(kl_pg_t *pg, int64_t run_id,
                                  const migration_target_t *t,
                                  const migration_ledger_row_t *rows, size_t n,
                                  const migration_target_outcome_t *o,
                                  kl_status_t *status);

/* Leaves the claimed target pending with reason in its error and moves it
 * behind the run's other targets (a move holds the tenant). */
int migration_store_target_defer(kl_pg_t *pg, int64_t run_id,
                                 const migration_target_t *t,
                                 const char *reason, kl_status_t *status);

/* Outside a transaction: marks run_id finished when nothing is pending. */
int migration_store_finish_run(kl_pg_t *pg, int64_t run_id,
                               kl_status_t *status);

typedef struct {
    char target[80];
    char tenant_id[37];
    int version;
    char *error; /* owned */
} migration_failure_t;

typedef struct {
    int64_t run_id;
    char state[16];
    int total, done, failed, remaining, applied, latest_version;
    int64_t retry_of, elapsed_ms;
    char created_at[40], finished_at[40];
    migration_failure_t *failures; /* owned */
    size_t n_failures;
} migration_run_status_t;

/* Progress of run_id (0: the latest). NOT_FOUND when there is none.
 * Free with migration_store_status_free. */
int migration_store_status(kl_pg_t *pg, int64_t run_id, int max_failures,
                           migration_run_status_t *out, kl_status_t *status);
void migration_store_status_free(migration_run_status_t *st);

#endif
