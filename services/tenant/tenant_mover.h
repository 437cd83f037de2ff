/*
 * tenant_mover: moves one tenant's product rows from one placement to
 * another (row -> schema, row -> database, schema -> database), and the
 * pieces a recovery needs to finish or undo a move a dead process left.
 *
 * A tenant_mover_t is a claim on one tenant's move: a session of the main
 * database's owner role holding a session advisory lock on
 * TENANT_MOVER_CLAIM_SQL(tenant id), taken without waiting. Whoever
 * changes a tenant's move state holds the claim for as long as it does: a
 * Move from before it marks the tenant moving until its record is final, a
 * recovery while it works. A process that dies loses its session and with
 * it the claim, so "moving, and nobody holds the claim" means "left by a
 * dead process". The same session later takes the tenant's move lock
 * (KL_TENANT_LOCK_SQL) and, when the switch is made in two steps, writes
 * the placement fence; closing it (tenant_mover_destroy) releases both.
 *
 * tenant_mover_run:
 * 1. Takes the tenant's move lock exclusive (pg_advisory_lock on
 *    KL_TENANT_LOCK_SQL): it waits for the write transactions that began
 *    before (they hold it shared), and from then on every write for the
 *    tenant is refused with UNAVAILABLE "tenant is being moved, retry"
 *    (kl_tenant_tx_begin) until the lock is released. Reads go on from the
 *    old placement.
 * 2. Provisions the target (tenant_provision_create: schema or database,
 *    tables at the latest version, grants).
 * 3. Copies every table of the source schema that has row-level security
 *    forced, parents before children (foreign keys), the tenant's rows
 *    only: INSERT ... SELECT inside the main database, COPY ... TO STDOUT
 *    / COPY ... FROM STDIN between databases; from one snapshot.
 * 4. Verifies the row count of every table in source and target.
 * 5. Switches: switch_fn makes the target the placement of record and,
 *    with switch_fences, records it in the placement fence in the same
 *    transaction; without, the mover writes the fence first (on its lock
 *    session) and then calls switch_fn.
 * 6. Deletes the old rows (row source) or drops the old schema.
 *
 * A failure before the switch drops the target and leaves the tenant in
 * its old placement with its rows untouched. When the switch may have
 * happened but the mover cannot tell, or cannot put the fence back, it
 * undoes nothing (out->unsettled): the fence decides at recovery. A
 * failure while deleting the old rows after the switch does not fail the
 * move (the data is in its new place and the fence hides the old copy);
 * it is reported in cleanup_error.
 */
#ifndef TENANT_MOVER_H
#define TENANT_MOVER_H

#include "kl_code.h"
#include "kl_tenant_db.h"
#include "tenant_provision.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TENANT_MOVER_MAX_TABLES 64

/* The claim's advisory-lock key: hashtextextended() of this text. */
#define TENANT_MOVER_CLAIM_SQL(param)                                          \
    "pg_catalog.hashtextextended('kowloon.tenant.move.' || " param ", 0)"

typedef struct {
    char table[KL_TENANT_NAME_MAX];
    int64_t rows;
} tenant_mover_count_t;

typedef struct {
    tenant_mover_count_t counts[TENANT_MOVER_MAX_TABLES];
    size_t n_counts;
    int64_t elapsed_ms;
    char cleanup_error[KL_STATUS_MESSAGE_MAX]; /* "" when clean */
    bool stopped;   /* stopped at opts->stop_at: nothing was undone */
    bool unsettled; /* the switch may have happened: nothing was undone */
} tenant_mover_result_t;

/* Makes `to` the tenant's placement of record, in one transaction that
 * also records the fence when fence is true, and that commits only while
 * session lock_pid holds the tenant's move lock. Returns 0 (switched) or
 * -code with status; sets *unsure when it cannot tell whether the switch
 * was committed. */
typedef int (*tenant_mover_switch_fn)(void *arg, const kl_tenant_place_t *to,
                                      bool fence, int lock_pid, bool *unsure,
                                      kl_status_t *status);

/* Points where a test makes a move stop dead, as if its process died
 * there: nothing after it runs, nothing is undone. */
typedef enum {
    TENANT_MOVER_STOP_NONE = 0,
    TENANT_MOVER_STOP_PROVISIONED, /* target made, nothing copied */
    TENANT_MOVER_STOP_COPIED,      /* copied and counted, not switched */
    TENANT_MOVER_STOP_FENCED,      /* fence written, record not switched (a
                                      two-step switch only) */
    TENANT_MOVER_STOP_SWITCHED,    /* switched, old copy not removed */
} tenant_mover_stop_t;

typedef struct {
    int64_t lock_timeout_ms; /* wait for in-flight writes; 0: 30000 */
    tenant_mover_switch_fn switch_fn;
    void *switch_arg;
    bool switch_fences; /* switch_fn records the fence in its transaction */
    tenant_mover_stop_t stop_at; /* tests only; 0 in production */
} tenant_mover_opts_t;

typedef struct tenant_mover tenant_mover_t;

/* Claims tenant_id's move (a valid uuid). NULL + FAILED_PRECONDITION
 * "tenant <id> is already being moved" when another session holds the
 * claim; UNAVAILABLE when the main database cannot be reached. */
tenant_mover_t *tenant_mover_new(const tenant_provision_t *prov,
                                 const char *tenant_id, kl_status_t *status);

/* Ends the claim's session: releases the claim and the move lock. */
void tenant_mover_destroy(tenant_mover_t **self_p);

/* Takes the tenant's move lock exclusive on the claim's session, waiting
 * at most wait_ms; wait_ms 0: only if it is free now. UNAVAILABLE when
 * it is not had ("tenant <id> is busy: its move lock is held"). */
int tenant_mover_lock(tenant_mover_t *self, int64_t wait_ms,
                      kl_status_t *status);

/* The backend pid of the claim's session (the move lock's holder). */
int tenant_mover_lock_pid(const tenant_mover_t *self);

/* Moves from -> to (the claimed tenant's). INVALID_ARGUMENT for an
 * unsupported direction, UNAVAILABLE when a server is down or the lock
 * cannot be had within opts->lock_timeout_ms, ABORTED when counts differ
 * ("table projects: 10 rows in the source, 9 in the target"). */
int tenant_mover_run(tenant_mover_t *self, const kl_tenant_place_t *from,
                     const kl_tenant_place_t *to,
                     const tenant_mover_opts_t *opts,
                     tenant_mover_result_t *out, kl_status_t *status);

/* The tenant's fence entry: its model, or "" when it has none. */
int tenant_mover_fence(tenant_mover_t *self, char isolation[16],
                       kl_status_t *status);

/* For a recovery that finishes a move: 0 when the target exists and every
 * table holds as many of the tenant's rows as in the source (out->counts).
 * NOT_FOUND when the target schema or database does not exist; ABORTED
 * when counts differ. Needs the move lock. */
int tenant_mover_check(tenant_mover_t *self, const kl_tenant_place_t *from,
                       const kl_tenant_place_t *to, tenant_mover_result_t *out,
                       kl_status_t *status);

/* Undoes a move that did not switch: the fence back to from's model (no
 * entry for a row placement), then the target dropped. Needs the move
 * lock. */
int tenant_mover_undo(tenant_mover_t *self, const kl_tenant_place_t *from,
                      const kl_tenant_place_t *to, kl_status_t *status);

/* Removes the old copy of a switched move: the tenant's rows in the
 * shared tables (a row placement) or the schema. Needs the move lock. */
int tenant_mover_remove(tenant_mover_t *self, const kl_tenant_place_t *old,
                        kl_status_t *status);

#endif
