/*
 * tenant_mover: moves one tenant's product rows from one placement to
 * another (row -> schema, row -> database, schema -> database).
 *
 * 1. Takes the tenant's move lock exclusive in the main database
 *    (pg_advisory_lock on KL_TENANT_LOCK_SQL): it waits for the write
 *    transactions that began before (they hold it shared), and from then
 *    on every write for the tenant is refused with UNAVAILABLE "tenant is
 *    being moved, retry" (kl_tenant_tx_begin) until the lock is released.
 *    Reads go on from the old placement.
 * 2. Provisions the target (tenant_provision_create: schema or database,
 *    tables at the latest version, grants).
 * 3. Copies every table of the source schema that has row-level security
 *    forced, parents before children (foreign keys), the tenant's rows
 *    only: INSERT ... SELECT inside the main database, COPY ... TO STDOUT
 *    / COPY ... FROM STDIN between databases; from one snapshot.
 * 4. Verifies the row count of every table in source and target.
 * 5. Switches: records the new model in the placement fence, then calls
 *    switch_fn (the tenant service updates the tenant's record).
 * 6. Deletes the old rows (row source) or drops the old schema.
 * 7. Releases the lock.
 *
 * A failure before the switch drops the target and leaves the tenant in
 * its old placement with its rows untouched. A failure while deleting the
 * old rows after the switch does not fail the move (the data is in its
 * new place and the fence hides the old copy); it is reported in
 * cleanup_error.
 */
#ifndef TENANT_MOVER_H
#define TENANT_MOVER_H

#include "kl_code.h"
#include "kl_tenant_db.h"
#include "tenant_provision.h"

#include <stddef.h>
#include <stdint.h>

#define TENANT_MOVER_MAX_TABLES 64

typedef struct {
    char table[KL_TENANT_NAME_MAX];
    int64_t rows;
} tenant_mover_count_t;

typedef struct {
    tenant_mover_count_t counts[TENANT_MOVER_MAX_TABLES];
    size_t n_counts;
    int64_t elapsed_ms;
    char cleanup_error[KL_STATUS_MESSAGE_MAX]; /* "" when clean */
} tenant_mover_result_t;

/* Makes `to` the tenant's placement of record. 0 or -code with status. */
typedef int (*tenant_mover_switch_fn)(void *arg, const kl_tenant_place_t *to,
                                      kl_status_t *status);

/* Moves from -> to (same tenant id). INVALID_ARGUMENT for an unsupported
 * direction, UNAVAILABLE when a server is down or the lock cannot be had
 * within lock_timeout_ms, ABORTED when counts differ ("table projects:
 * 10 rows in the source, 9 in the target"). */
int tenant_mover_run(const tenant_provision_t *prov,
                     const kl_tenant_place_t *from, const kl_tenant_place_t *to,
                     int64_t lock_timeout_ms, tenant_mover_switch_fn switch_fn,
                     void *switch_arg, tenant_mover_result_t *out,
                     kl_status_t *status);

#endif
