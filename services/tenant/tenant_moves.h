/*
 * tenant_moves: a tenant's move as the tenant service runs it, and the
 * recovery of moves that a dead process left unsettled (docs/isolation.md,
 * "Moves"). Ties the mover (the data, the claim and the locks) to the
 * tenant's record (tenant_store: moving and the target, the switch, the
 * old copy still to remove) and reports change events through a callback.
 *
 * A move is unsettled when its record is `moving` or has an old copy to
 * remove (move_cleanup) and nobody holds its claim. Settling it, under the
 * claim and the move lock:
 *
 *   moving, the fence says the target's model   the switch happened (the
 *       fence is written only after the copy was counted, and writes were
 *       refused since): the counts are checked again, the record switched,
 *       the old copy removed, event "moved". A target that no longer
 *       exists is undone instead; counts that differ leave the tenant
 *       alone (an operator's matter).
 *   moving, the fence says anything else        the move never switched:
 *       the fence is put back, the target dropped, moving cleared, event
 *       "updated" — what a failed move does.
 *   move_cleanup set                            the old copy is removed,
 *       event "moved".
 */
#ifndef TENANT_MOVES_H
#define TENANT_MOVES_H

#include "kl_code.h"
#include "kl_pg.h"
#include "kl_tenant_db.h"
#include "tenant_mover.h"
#include "tenant_provision.h"
#include "tenant_store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A change of row to publish: action "moving", "moved" or "updated". */
typedef void (*tenant_moves_event_fn)(void *arg, const tenant_row_t *row,
                                      const char *action);

typedef struct {
    const tenant_provision_t *prov; /* borrowed */
    const char *shared_schema;      /* borrowed */
    int64_t lock_timeout_ms;        /* a Move's wait for the move lock */
    /* The record's connection may write the fence (tenant_store_may_
     * fence): the switch is then one transaction. */
    bool switch_fences;
    tenant_mover_stop_t stop_at; /* tests only: a move stops dead there */
    tenant_moves_event_fn event;
} tenant_moves_opts_t;

/* Moves the tenant of `to` there (to: its target placement, server
 * chosen; server_asked: the caller named that server). Claims the tenant,
 * reads its record (pg), settles a move left unsettled (waiting for the
 * move lock as a move does) — if that finished a move to `to` (to any
 * server unless server_asked), answers it with the checked counts — then
 * marks it moving (event "moving"), runs the mover, and settles the
 * record (event "moved", or "updated" after a failure). *row: the record
 * as it ends; event_arg goes to opts->event. Errors: as TenantService.Move
 * (docs/tenant-service.md). */
int tenant_moves_move(const tenant_moves_opts_t *opts, kl_pg_t *pg,
                      const kl_tenant_place_t *to, bool server_asked,
                      void *event_arg, tenant_row_t *row,
                      tenant_mover_result_t *result, kl_status_t *status);

/* Settles every unsettled move whose claim and move lock are free now
 * (none is waited for: a live move holds its claim). *settled and *left
 * count the tenants settled and those left as they were (busy, or a
 * failure, logged). 0, or -code when the list cannot be read. */
int tenant_moves_recover(const tenant_moves_opts_t *opts, kl_pg_t *pg,
                         void *event_arg, size_t *settled, size_t *left,
                         kl_status_t *status);

#endif
