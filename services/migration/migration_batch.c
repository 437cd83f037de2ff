/*
 * migration_batch: one target's migrations, a transaction each, in one
 * round trip.
 */
#include "migration_batch.h"

#include "kl_alloc.h"
#include "kl_tenant_db.h"
#include "migration_apply_int.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The column names that mark the batch's own answers among the files'. */
#define S_HISTORY_MARK "kowloon_history_version"
#define S_UNLOCK_MARK "kowloon_unlock"
#define S_UNHOLD_MARK "kowloon_unhold"

int
migration_batch_apply(migration_apply_t *ap, const migration_target_t *t,
                      const migration_file_t *const *files, size_t n, bool last,
                      size_t *committed, int64_t *durations,
                      kl_status_t *status)
{
    *committed = 0;
    for (size_t i = 0; i < n; i++)
        durations[i] = 0;
    PGconn *c = migration_apply__conn(ap, t, true, status);
    if (!c)
        return -(int)status->code;
    bool on_db = t->db_name[0] != '\0';
    /* What may be given back after the last COMMIT: the locks held on this
     * very connection. */
    bool unlock = last && ap->locked && ap->locked_on_db == on_db &&
                  strcmp(ap->locked_target, t->target) == 0;
    bool unhold = last && !on_db && ap->held[0];
    migration_apply__quoted_t q = {0};
    char *held = NULL;
    if (migration_apply__quote(c, t, ap->app_role, &q) < 0 ||
        (unhold && !(held = PQescapeLiteral(c, ap->held, strlen(ap->held))))) {
        migration_apply__quoted_free(&q);
        return migration_apply__fail(c, NULL, status);
    }
    char *path = PQescapeLiteral(c, q.ident, strlen(q.ident));
    if (!path) {
        migration_apply__quoted_free(&q);
        PQfreemem(held);
        return migration_apply__fail(c, NULL, status);
    }
    /* One string, one round trip, one transaction per file, each exactly
     * the transaction migration_apply_one would run: search_path and
     * app.tenant_id set transaction-locally (migration_files_batchable
     * keeps out files with SET, RESET or transaction control), the moment
     * the file starts (for its history row's duration), the file, its
     * history row, the grants, COMMIT. PostgreSQL stops at the first
     * failing statement of a string, so nothing after a failed file runs;
     * it parses the whole string before running any of it, so a syntax
     * error in any file runs nothing. */
    kl_buf_t b = {0};
    char *lock = migration_apply__grant_lock_sql(&q);
    char *grant = migration_apply__grant_sql(&q);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const migration_file_t *f = files[i];
        char *name = PQescapeLiteral(c, f->file_name, strlen(f->file_name));
        char *sum = PQescapeLiteral(c, f->checksum, strlen(f->checksum));
        if (!name || !sum) {
            rc = migration_apply__fail(c, NULL, status);
        } else {
            kl_buf_printf(&b, "BEGIN;%s", lock);
            if (i == 0 && strcmp(t->isolation, "row") == 0)
                kl_buf_printf(&b, "CREATE SCHEMA IF NOT EXISTS %s;", q.ident);
            kl_buf_printf(&b,
                          "SELECT pg_catalog.set_config('search_path', %s,"
                          " true), pg_catalog.set_config('app.tenant_id', %s,"
                          " true), pg_catalog.set_config("
                          "'kowloon.migration_t0', extract(epoch FROM"
                          " pg_catalog.clock_timestamp())::text, true);\n",
                          path, q.tenant);
            kl_buf_add(&b, f->sql, f->sql_len);
            kl_buf_printf(
                &b,
                "\n;INSERT INTO kowloon_migration.history (target, version,"
                " name, checksum, duration_ms) VALUES (%s, %d, %s, %s,"
                " ((extract(epoch FROM pg_catalog.clock_timestamp()) -"
                " pg_catalog.current_setting('kowloon.migration_t0')::numeric)"
                " * 1000)::bigint) RETURNING version AS " S_HISTORY_MARK
                ", duration_ms;%sCOMMIT;",
                q.target, f->version, name, sum, grant);
        }
        PQfreemem(name);
        PQfreemem(sum);
    }
    if (unlock)
        kl_buf_printf(
            &b,
            "SELECT pg_catalog.pg_advisory_unlock(" MIGRATION_APPLY_KEY_SQL(
                "%s") ") AS " S_UNLOCK_MARK ";",
            q.target);
    if (unhold)
        kl_buf_printf(
            &b,
            "SELECT pg_catalog.pg_advisory_unlock_shared(" KL_TENANT_LOCK_SQL(
                "%s") ") AS " S_UNHOLD_MARK ";",
            held);
    free(lock);
    free(grant);
    migration_apply__quoted_free(&q);
    PQfreemem(held);
    PQfreemem(path);
    if (rc < 0) {
        free(b.p);
        return rc;
    }

    PGresult **r = NULL;
    int nr = migration_apply__send_all(c, b.p, &r);
    free(b.p);
    /* Walk the answers in order: file k's history row, then its COMMIT,
     * commits file k. Anything else between is the file's own. */
    size_t done = 0;
    bool recorded = false, unlocked = false, unheld = false;
    const PGresult *err = NULL;
    for (int i = 0; i < nr && !err; i++) {
        PGresult *res = r[i];
        ExecStatusType rs = PQresultStatus(res);
        if (!migration_apply__ok(res)) {
            err = res;
        } else if (done < n && rs == PGRES_TUPLES_OK && PQnfields(res) == 2 &&
                   strcmp(PQfname(res, 0), S_HISTORY_MARK) == 0 &&
                   PQntuples(res) == 1 &&
                   atoi(PQgetvalue(res, 0, 0)) == files[done]->version) {
            durations[done] = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
            recorded = true;
        } else if (rs == PGRES_COMMAND_OK && recorded &&
                   strcmp(PQcmdStatus(res), "COMMIT") == 0) {
            done++;
            recorded = false;
        } else if (done == n && rs == PGRES_TUPLES_OK && PQnfields(res) == 1 &&
                   PQntuples(res) == 1) {
            if (strcmp(PQfname(res, 0), S_UNLOCK_MARK) == 0)
                unlocked = true;
            else if (strcmp(PQfname(res, 0), S_UNHOLD_MARK) == 0)
                unheld = true;
        }
    }
    *committed = done;
    migration_apply__unlocked(ap, unlocked, unheld);
    if (done == n) {
        /* Only an unlock can have failed after the last COMMIT (a lost
         * connection gives the locks back itself). */
        rc = 0;
    } else if (nr < 0 || PQstatus(c) != CONNECTION_OK) {
        /* Whether the COMMIT in flight got there is unknown: the history
         * will say, next time. Nothing may be tried again now. */
        rc = migration_apply__fail(c, NULL, status);
    } else if (err) {
        /* The failing file's transaction is rolled back; the ones before
         * it are committed. */
        migration_apply__fail(c, err, status);
        rc = kl_status_set(status, KL_ABORTED, "%s", status->message);
        if (PQtransactionStatus(c) != PQTRANS_IDLE)
            PQclear(PQexec(c, "ROLLBACK"));
    } else {
        /* Every statement succeeded, yet the history rows and COMMITs did
         * not come back as sent: a file ended its transaction after all.
         * What it did is outside our control; the history says what
         * stuck. */
        if (PQtransactionStatus(c) != PQTRANS_IDLE)
            PQclear(PQexec(c, "ROLLBACK"));
        rc = kl_status_set(status, KL_INTERNAL,
                           "%zu of %zu migrations did not commit as a"
                           " transaction each",
                           n - done, n);
    }
    migration_apply__clear_all(r, nr);
    return rc;
}
