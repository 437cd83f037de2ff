/*
 * migration_work: one target, start to end.
 */
#include "migration_work.h"

#include "kl_alloc.h"
#include "kl_rpc.h"
#include "migration_batch.h"
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

/* Writes the ledger rows, and with opts->finish the target's row. */
static int
s_record(kl_pg_t *ctrl, const migration_target_t *t,
         const migration_work_opts_t *opts, const migration_ledger_row_t *rows,
         size_t n, const migration_work_result_t *out, kl_status_t *status)
{
    if (!opts->finish)
        return migration_store_ledger(ctrl, t, opts->run_id, rows, n, status);
    migration_target_outcome_t o = {.failed = out->failed,
                                    .failed_version = out->failed_version,
                                    .error = out->error,
                                    .applied = out->n_applied,
                                    .instance = opts->instance,
                                    .started_ms = opts->started_ms};
    return migration_store_target_finish(ctrl, opts->run_id, t, rows, n, &o,
                                         status);
}

/* Appends the ledger row of f, tried from started to finished, to rows. */
static migration_ledger_row_t *
s_ledger_row(migration_ledger_row_t *rows, size_t *n_rows,
             const migration_file_t *f, int64_t started, int64_t finished)
{
    migration_ledger_row_t *r = &rows[(*n_rows)++];
    r->version = f->version;
    r->name = f->file_name;
    r->checksum = f->checksum;
    r->started_ms = started;
    r->finished_ms = finished;
    return r;
}

/* f is applied: the result learns it. */
static void
s_applied(migration_work_result_t *out, const migration_file_t *f)
{
    out->applied[out->n_applied++] = f->version;
    if (f->version > out->current)
        out->current = f->version;
}

/*
 * Before a no-transaction file: the control connection's transaction (the
 * target's claim) must hold no snapshot, or CREATE INDEX CONCURRENTLY in
 * the same database would wait for it, and it for the index: forever. A
 * statement run by the extended protocol leaves its portal, and with it
 * its snapshot, until the next one; a simple query drops it.
 */
static int
s_drop_snapshot(kl_pg_t *ctrl, kl_status_t *status)
{
    if (!kl_pg_in_transaction(ctrl))
        return 0;
    return kl_pg_exec(ctrl, "SELECT 1", status);
}

/* Applies files[0..n) one per transaction (migration_apply_one), stopping
 * at the first failure. Appends a ledger row for each version tried. */
static void
s_one_by_one(kl_pg_t *ctrl, migration_apply_t *ap, const migration_target_t *t,
             const migration_file_t *const *files, size_t n,
             migration_ledger_row_t *rows, size_t *n_rows,
             migration_work_result_t *out)
{
    for (size_t i = 0; i < n && !out->failed; i++) {
        const migration_file_t *f = files[i];
        kl_status_t st;
        int64_t started = kl_now_unix_ms(), duration = 0;
        int arc = f->no_transaction ? s_drop_snapshot(ctrl, &st) : 0;
        if (arc == 0)
            arc = migration_apply_one(ap, t, f, &duration, &st);
        migration_ledger_row_t *r =
            s_ledger_row(rows, n_rows, f, started, kl_now_unix_ms());
        r->duration_ms = duration;
        if (arc < 0) {
            r->state = "failed";
            s_failed(out, f->version, f->file_name, st.message);
            r->error = out->error;
            break;
        }
        r->state = "applied";
        s_applied(out, f);
    }
}

int
migration_work_target(kl_pg_t *ctrl, migration_apply_t *ap,
                      const migration_files_t *files,
                      const migration_target_t *t,
                      const migration_work_opts_t *opts,
                      migration_work_result_t *out, kl_status_t *status)
{
    memset(out, 0, sizeof *out);
    int rc = 0;
    if (!opts->target_locked) {
        rc = migration_store_lock_target(ctrl, t, status);
        if (rc < 0)
            return rc;
    }
    kl_status_t st;
    if (opts->hold_tenant && t->tenant_id[0]) {
        char iso[16];
        int h = migration_apply_hold_tenant(ap, t, iso, sizeof iso, &st);
        if (h == 0) {
            out->moving = 1;
            snprintf(out->error, sizeof out->error,
                     "tenant is moving: waiting for its move to finish");
            return 0;
        }
        if (h > 0 && iso[0] && strcmp(iso, t->isolation) != 0) {
            migration_apply_unlock(ap);
            out->moved = 1;
            snprintf(out->error, sizeof out->error,
                     "tenant moved from %s to %s during the run: its new "
                     "placement was migrated by the move",
                     t->isolation, iso);
            return s_record(ctrl, t, opts, NULL, 0, out, status);
        }
        if (h < 0) {
            s_failed(out, 0, NULL, st.message);
            return s_record(ctrl, t, opts, NULL, 0, out, status);
        }
    }
    int latest = migration_files_latest(files);
    migration_applied_t *hist = NULL;
    size_t n_hist = 0;
    migration_ledger_row_t *rows = kl_calloc((size_t)latest + 1, sizeof *rows);
    size_t n_rows = 0;
    if (migration_apply_lock(ap, t, &hist, &n_hist, &st) < 0) {
        s_failed(out, 0, NULL, st.message);
    } else if (migration_apply_check(files, hist, n_hist, &out->current, &st) <
               0) {
        s_failed(out, 0, NULL, st.message);
    } else {
        /* What the history holds is applied, whoever applied it: the
         * ledger learns it (a crash may have lost the ledger's copy). */
        for (size_t i = 0; i < n_hist; i++) {
            migration_ledger_row_t *r =
                s_ledger_row(rows, &n_rows,
                             migration_files_get(files, hist[i].version), 0, 0);
            r->state = "applied";
            r->duration_ms = hist[i].duration_ms;
        }
        out->applied = kl_calloc((size_t)latest + 1, sizeof *out->applied);
        const migration_file_t **pending =
            kl_calloc((size_t)latest + 1, sizeof *pending);
        size_t n_pending = 0;
        for (int v = 1; v <= latest; v++)
            if (!migration_apply_has(hist, n_hist, v))
                pending[n_pending++] = migration_files_get(files, v);
        int64_t *durations = kl_calloc((size_t)latest + 1, sizeof *durations);
        size_t i = 0;
        while (i < n_pending && !out->failed) {
            /* The longest run of batchable files from here. */
            size_t j = i;
            while (j < n_pending && pending[j]->batchable)
                j++;
            if (j - i < 2) {
                /* One file (or one that may not share a transaction). */
                s_one_by_one(ctrl, ap, t, pending + i, 1, rows, &n_rows, out);
                i++;
                continue;
            }
            int64_t started = kl_now_unix_ms();
            size_t done = 0;
            int brc =
                migration_batch_apply(ap, t, pending + i, j - i, j == n_pending,
                                      &done, durations, &st);
            int64_t finished = kl_now_unix_ms();
            /* The files that committed, each in its own transaction. */
            for (size_t k = i; k < i + done; k++) {
                migration_ledger_row_t *r =
                    s_ledger_row(rows, &n_rows, pending[k], started, finished);
                r->state = "applied";
                r->duration_ms = durations[k - i];
                s_applied(out, pending[k]);
            }
            if (brc == -KL_ABORTED) {
                /* The failing file's transaction was rolled back. From it
                 * on, one by one: the failing file is reported as it
                 * always was (also a syntax error further on, which
                 * PostgreSQL reports before running any of the string). */
                s_one_by_one(ctrl, ap, t, pending + i + done, j - i - done,
                             rows, &n_rows, out);
            } else if (brc < 0) {
                /* Lost connection or an unclear end: the first version not
                 * seen committing is the failure; the next run reads what
                 * stuck from the history. */
                const migration_file_t *f = pending[i + done];
                migration_ledger_row_t *r =
                    s_ledger_row(rows, &n_rows, f, started, finished);
                r->state = "failed";
                s_failed(out, f->version, f->file_name, st.message);
                r->error = out->error;
            }
            i = j;
        }
        free(durations);
        free(pending);
    }
    free(hist);
    /* Whatever the last batch did not give back already. */
    migration_apply_unlock(ap);
    /* A database connection per tenant is not kept between targets. */
    migration_apply_release(ap);
    rc = s_record(ctrl, t, opts, rows, n_rows, out, status);
    free(rows);
    if (rc < 0)
        migration_work_result_free(out);
    return rc;
}
