/*
 * tenant_moves: Move and the recovery of unsettled moves, on the tenant's
 * record and the mover.
 */
#include "tenant_moves.h"

#include "kl_log.h"
#include "kl_rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What settling a tenant's move did. */
typedef enum {
    S_NOTHING = 0, /* nothing was unsettled */
    S_FINISHED,    /* switched (and its old copy removed, if it could be) */
    S_UNDONE,      /* the target dropped, the tenant where it was */
    S_CLEANED,     /* the old copy of a switched move removed */
} s_outcome_t;

static const char *const s_outcomes[] = {"nothing to do", "finished", "undone",
                                         "old copy removed"};

static void
s_event(const tenant_moves_opts_t *opts, void *arg, const tenant_row_t *row,
        const char *action)
{
    if (opts->event)
        opts->event(arg, row, action);
}

/* The placement (model name, server) of tenant id. */
static int
s_place(const tenant_moves_opts_t *opts, const char *id, const char *isolation,
        const char *db_server, kl_tenant_place_t *out, kl_status_t *status)
{
    kl_isolation_t iso;
    int rc = kl_isolation_parse(isolation, &iso, status);
    if (rc == 0)
        rc = kl_tenant_place(id, iso, opts->shared_schema, db_server, out,
                             status);
    return rc;
}

/* Whether row's placement of record is `to`; with any_server, any server
 * of the database model will do. */
static bool
s_is_at(const tenant_row_t *row, const kl_tenant_place_t *to, bool any_server)
{
    if (strcmp(row->isolation, kl_isolation_name(to->isolation)) != 0)
        return false;
    return to->isolation != KL_ISOLATION_DATABASE || any_server ||
           strcmp(row->db_server, to->db_server) == 0;
}

/* The switch, for the mover and for a recovery that finishes. */
typedef struct {
    kl_pg_t *pg;       /* the record's connection */
    tenant_row_t *row; /* gets the switched record */
} s_switch_t;

static int
s_switch(void *arg, const kl_tenant_place_t *to, bool fence, int lock_pid,
         bool *unsure, kl_status_t *status)
{
    s_switch_t *sw = arg;
    const char *iso = kl_isolation_name(to->isolation);
    int rc =
        tenant_store_move_switch(sw->pg, to->tenant_id, iso, to->db_server,
                                 to->db_name, fence, lock_pid, sw->row, status);
    /* ABORTED and NOT_FOUND are the transaction's own refusals: it was
     * rolled back. Anything else may have hit the commit, whose reply can
     * be lost with a connection: ask the record what happened. */
    if (rc == 0 || status->code == KL_ABORTED || status->code == KL_NOT_FOUND)
        return rc;
    tenant_row_t now;
    kl_status_t rst;
    if (tenant_store_get(sw->pg, to->tenant_id, &now, &rst) < 0) {
        *unsure = true;
        return rc;
    }
    if (!now.moving && strcmp(now.isolation, iso) == 0 &&
        strcmp(now.db_server, to->db_server) == 0) {
        *sw->row = now;
        return 0;
    }
    return rc;
}

/* Removes the old copy a switched move left (row->move_cleanup), under
 * the move lock, and clears the mark. Refuses when the record or the
 * fence do not both say the tenant has left that copy's model. */
static int
s_clean(const tenant_moves_opts_t *opts, kl_pg_t *pg, tenant_mover_t *mover,
        tenant_row_t *row, kl_status_t *status)
{
    kl_tenant_place_t old;
    char fence[16] = "";
    int rc = tenant_mover_fence(mover, fence, status);
    if (rc == 0 && (strcmp(row->move_cleanup, row->isolation) == 0 ||
                    strcmp(fence, row->isolation) != 0 ||
                    strcmp(row->move_cleanup, "database") == 0))
        rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                           "tenant %s: the old %s copy is not removed: the "
                           "record says %s, the fence \"%s\"",
                           row->id, row->move_cleanup, row->isolation, fence);
    if (rc == 0)
        rc = s_place(opts, row->id, row->move_cleanup, "", &old, status);
    if (rc == 0)
        rc = tenant_mover_remove(mover, &old, status);
    if (rc == 0)
        rc = tenant_store_move_cleaned(pg, row->id, status);
    if (rc == 0)
        row->move_cleanup[0] = '\0';
    return rc;
}

/* Settles row's move: row was read under mover's claim. The move lock is
 * waited for at most wait_ms (0: taken only if free). */
static int
s_settle(const tenant_moves_opts_t *opts, kl_pg_t *pg, tenant_mover_t *mover,
         void *event_arg, tenant_row_t *row, int64_t wait_ms,
         tenant_mover_result_t *result, s_outcome_t *outcome,
         kl_status_t *status)
{
    *outcome = S_NOTHING;
    memset(result, 0, sizeof *result);
    if (!row->moving && !row->move_cleanup[0])
        return 0;
    int rc = tenant_mover_lock(mover, wait_ms, status);
    if (rc < 0)
        return rc;
    if (row->moving) {
        if (!row->move_isolation[0])
            return kl_status_set(status, KL_FAILED_PRECONDITION,
                                 "tenant %s is marked moving with no target "
                                 "recorded: settle it by hand",
                                 row->id);
        kl_tenant_place_t from, to;
        char fence[16] = "";
        rc = s_place(opts, row->id, row->isolation, row->db_server, &from,
                     status);
        if (rc == 0)
            rc = s_place(opts, row->id, row->move_isolation,
                         row->move_db_server, &to, status);
        if (rc == 0)
            rc = tenant_mover_fence(mover, fence, status);
        if (rc < 0)
            return rc;
        /* The fence names the target only once the copy was complete and
         * counted, and from then on every write was refused: the target
         * is the tenant's data. Counted again all the same. */
        bool finish = strcmp(fence, row->move_isolation) == 0;
        if (finish) {
            rc = tenant_mover_check(mover, &from, &to, result, status);
            if (rc < 0 && status->code != KL_NOT_FOUND)
                return rc;
            if (rc < 0) {
                KL_LOG(KL_WARN,
                       "tenant %s: fenced as %s, but %s: undoing "
                       "the move",
                       row->id, fence, status->message);
                finish = false;
            }
        }
        if (!finish) {
            rc = tenant_mover_undo(mover, &from, &to, status);
            if (rc == 0)
                rc = tenant_store_move_abort(pg, row->id, row, status);
            if (rc < 0)
                return rc;
            *outcome = S_UNDONE;
            s_event(opts, event_arg, row, "updated");
            return 0;
        }
        s_switch_t sw = {pg, row};
        bool unsure = false;
        rc = s_switch(&sw, &to, false, tenant_mover_lock_pid(mover), &unsure,
                      status);
        if (rc < 0)
            return rc;
        *outcome = S_FINISHED;
    }
    rc = s_clean(opts, pg, mover, row, status);
    if (rc == 0 && *outcome == S_NOTHING)
        *outcome = S_CLEANED;
    /* A finished move changed the record even when its old copy stays. */
    if (rc == 0 || *outcome == S_FINISHED)
        s_event(opts, event_arg, row, "moved");
    return rc;
}

int
tenant_moves_move(const tenant_moves_opts_t *opts, kl_pg_t *pg,
                  const kl_tenant_place_t *to, bool server_asked,
                  void *event_arg, tenant_row_t *row,
                  tenant_mover_result_t *result, kl_status_t *status)
{
    memset(result, 0, sizeof *result);
    int64_t started = kl_now_mono_ms();
    /* The claim first: whoever holds it is the only one to change the
     * tenant's move state, so the record read next stays true. */
    tenant_mover_t *mover = tenant_mover_new(opts->prov, to->tenant_id, status);
    if (!mover)
        return -(int)status->code;
    int rc = tenant_store_get(pg, to->tenant_id, row, status);
    if (rc == 0 && strcmp(row->status, "deleted") == 0)
        rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                           "tenant %s is deleted", row->id);
    /* A move a dead process left: settled before anything else. */
    s_outcome_t outcome = S_NOTHING;
    if (rc == 0) {
        rc = s_settle(opts, pg, mover, event_arg, row, opts->lock_timeout_ms,
                      result, &outcome, status);
        if (rc < 0)
            KL_LOG(KL_WARN, "tenant %s: settling its last move failed: %s",
                   row->id, status->message);
        else if (outcome != S_NOTHING)
            KL_LOG(KL_INFO, "tenant %s: its last move %s", row->id,
                   s_outcomes[outcome]);
    }
    if (rc == 0 && outcome == S_FINISHED && s_is_at(row, to, !server_asked)) {
        /* That was the move asked for. */
        result->elapsed_ms = kl_now_mono_ms() - started;
        tenant_mover_destroy(&mover);
        return 0;
    }
    memset(result, 0, sizeof *result);
    kl_tenant_place_t from;
    if (rc == 0)
        rc = s_place(opts, row->id, row->isolation, row->db_server, &from,
                     status);
    if (rc == 0 && from.isolation >= to->isolation)
        rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                           "cannot move tenant %s from %s to %s: want row -> "
                           "schema, row -> database or schema -> database",
                           row->id, kl_isolation_name(from.isolation),
                           kl_isolation_name(to->isolation));
    bool flagged = false;
    if (rc == 0) {
        rc = tenant_store_move_begin(pg, row->id,
                                     kl_isolation_name(to->isolation),
                                     to->db_server, row, status);
        flagged = rc == 0;
    }
    if (rc == 0) {
        KL_LOG(KL_INFO, "moving tenant %s from %s to %s", row->id,
               kl_isolation_name(from.isolation),
               kl_isolation_name(to->isolation));
        s_event(opts, event_arg, row, "moving");
        s_switch_t sw = {pg, row};
        tenant_mover_opts_t mopts = {
            .lock_timeout_ms = opts->lock_timeout_ms,
            .switch_fn = s_switch,
            .switch_arg = &sw,
            .switch_fences = opts->switch_fences,
            .stop_at = opts->stop_at,
        };
        rc = tenant_mover_run(mover, &from, to, &mopts, result, status);
    }
    if (rc < 0 && flagged && result->unsettled) {
        KL_LOG(KL_ERROR,
               "moving tenant %s: the switch may have happened; left moving "
               "for recovery: %s",
               row->id, status->message);
    } else if (rc < 0 && flagged && !result->stopped) {
        kl_status_t ast;
        tenant_row_t back;
        /* If this fails the tenant stays marked moving: the next start or
         * Move settles it (the fence was not moved: it is undone). */
        if (tenant_store_move_abort(pg, row->id, &back, &ast) < 0)
            KL_LOG(KL_ERROR, "clearing the moving flag of %s failed: %s",
                   row->id, ast.message);
        else
            *row = back;
        s_event(opts, event_arg, row, "updated");
        KL_LOG(KL_WARN, "moving tenant %s failed, it stays in %s: %s", row->id,
               kl_isolation_name(from.isolation), status->message);
    } else if (rc == 0) {
        kl_status_t cst;
        if (result->cleanup_error[0])
            KL_LOG(KL_WARN, "tenant %s moved, old copy not removed: %s",
                   row->id, result->cleanup_error);
        else if (tenant_store_move_cleaned(pg, row->id, &cst) < 0)
            KL_LOG(KL_WARN,
                   "tenant %s moved, old copy removed, but not "
                   "recorded: %s",
                   row->id, cst.message);
        else
            row->move_cleanup[0] = '\0';
        KL_LOG(KL_INFO, "tenant %s moved to %s in %lld ms", row->id,
               row->isolation, (long long)result->elapsed_ms);
        s_event(opts, event_arg, row, "moved");
    }
    tenant_mover_destroy(&mover);
    return rc;
}

int
tenant_moves_recover(const tenant_moves_opts_t *opts, kl_pg_t *pg,
                     void *event_arg, size_t *settled, size_t *left,
                     kl_status_t *status)
{
    *settled = 0;
    *left = 0;
    tenant_row_t *rows = NULL;
    size_t n = 0;
    int rc = tenant_store_unsettled(pg, &rows, &n, status);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        const char *id = rows[i].id;
        kl_status_t st;
        tenant_mover_t *mover = tenant_mover_new(opts->prov, id, &st);
        if (!mover) {
            /* FAILED_PRECONDITION: claimed by a live move or another
             * instance's recovery; theirs to settle. */
            (*left)++;
            KL_LOG(st.code == KL_FAILED_PRECONDITION ? KL_INFO : KL_WARN,
                   "tenant %s: unsettled move left alone: %s", id, st.message);
            continue;
        }
        /* Read again under the claim: another instance may have settled
         * it since the list was read. */
        tenant_row_t row;
        tenant_mover_result_t result;
        s_outcome_t outcome = S_NOTHING;
        int trc = tenant_store_get(pg, id, &row, &st);
        if (trc == 0)
            trc = s_settle(opts, pg, mover, event_arg, &row, 0, &result,
                           &outcome, &st);
        tenant_mover_destroy(&mover);
        if (trc < 0) {
            (*left)++;
            KL_LOG(KL_WARN, "tenant %s: unsettled move left as it is: %s", id,
                   st.message);
        } else if (outcome != S_NOTHING) {
            (*settled)++;
            KL_LOG(KL_INFO, "tenant %s: unsettled move %s, it is in %s", id,
                   s_outcomes[outcome], row.isolation);
        }
    }
    free(rows);
    return 0;
}
