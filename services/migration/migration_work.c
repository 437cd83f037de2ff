/*
 * migration_work: one target, start to end.
 */
#include "migration_work.h"

#include "kl_alloc.h"
#include "kl_rpc.h"
#include "migration_store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void
migration_work_result_free(migration_work_result_t *r)
{
    free(r->applied);
    r->applied = NULL;
    r->n_applied = 0;
}

static void
s_failed(migration_work_result_t *out, int version, const char *what,
         const char *error)
{
    out->failed = 1;
    out->failed_version = version;
    /* Truncation of an over-long PostgreSQL message is acceptable. */
    size_t len = 0;
    out->error[0] = '\0';
    if (what)
        len = (size_t)snprintf(out->error, sizeof out->error, "%.200s: ", what);
    size_t room = sizeof out->error - len;
    size_t n = strlen(error);
    if (n >= room)
        n = room - 1;
    memcpy(out->error + len, error, n);
    out->error[len + n] = '\0';
}

int
migration_work_target(kl_pg_t *ctrl, migration_apply_t *ap,
                      const migration_files_t *files,
                      const migration_target_t *t, int64_t run_id,
                      bool hold_tenant, migration_work_result_t *out,
                      kl_status_t *status)
{
    memset(out, 0, sizeof *out);
    int rc = migration_store_lock_target(ctrl, t, status);
    if (rc < 0)
        return rc;
    kl_status_t st;
    bool held = false;
    if (hold_tenant && t->tenant_id[0]) {
        char iso[16];
        int h =
            migration_apply_hold_tenant(ap, t->tenant_id, iso, sizeof iso, &st);
        if (h == 0) {
            out->moving = 1;
            snprintf(out->error, sizeof out->error,
                     "tenant is moving: waiting for its move to finish");
            return 0;
        }
        if (h > 0 && iso[0] && strcmp(iso, t->isolation) != 0) {
            migration_apply_unhold_tenant(ap, t->tenant_id);
            out->moved = 1;
            snprintf(out->error, sizeof out->error,
                     "tenant moved from %s to %s during the run: its new "
                     "placement was migrated by the move",
                     t->isolation, iso);
            return 0;
        }
        if (h < 0) {
            s_failed(out, 0, NULL, st.message);
            return migration_store_ledger(ctrl, t, run_id, NULL, 0, status);
        }
        held = true;
    }
    int latest = migration_files_latest(files);
    migration_applied_t *hist = NULL;
    size_t n_hist = 0;
    migration_ledger_row_t *rows = kl_calloc((size_t)latest + 1, sizeof *rows);
    size_t n_rows = 0;
    if (migration_apply_history(ap, t, &hist, &n_hist, &st) < 0) {
        s_failed(out, 0, NULL, st.message);
    } else if (migration_apply_check(files, hist, n_hist, &out->current, &st) <
               0) {
        s_failed(out, 0, NULL, st.message);
    } else {
        /* What the history holds is applied, whoever applied it: the
         * ledger learns it (a crash may have lost the ledger's copy). */
        for (size_t i = 0; i < n_hist; i++) {
            const migration_file_t *f =
                migration_files_get(files, hist[i].version);
            migration_ledger_row_t *r = &rows[n_rows++];
            r->version = hist[i].version;
            r->name = f->file_name;
            r->checksum = f->checksum;
            r->state = "applied";
            r->duration_ms = hist[i].duration_ms;
        }
        out->applied = kl_calloc((size_t)latest + 1, sizeof *out->applied);
        for (int v = 1; v <= latest; v++) {
            if (migration_apply_has(hist, n_hist, v))
                continue;
            const migration_file_t *f = migration_files_get(files, v);
            int64_t started = kl_now_unix_ms(), duration = 0;
            int arc = migration_apply_one(ap, t, f, &duration, &st);
            migration_ledger_row_t *r = &rows[n_rows++];
            r->version = v;
            r->name = f->file_name;
            r->checksum = f->checksum;
            r->started_ms = started;
            r->finished_ms = kl_now_unix_ms();
            r->duration_ms = duration;
            if (arc < 0) {
                r->state = "failed";
                s_failed(out, v, f->file_name, st.message);
                r->error = out->error;
                break;
            }
            r->state = "applied";
            out->applied[out->n_applied++] = v;
            if (v > out->current)
                out->current = v;
        }
    }
    free(hist);
    if (held)
        migration_apply_unhold_tenant(ap, t->tenant_id);
    /* A database connection per tenant is not kept between targets. */
    migration_apply_release(ap);
    rc = migration_store_ledger(ctrl, t, run_id, rows, n_rows, status);
    free(rows);
    if (rc < 0)
        migration_work_result_free(out);
    return rc;
}
