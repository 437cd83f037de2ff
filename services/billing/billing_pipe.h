/*
 * billing_pipe: a transaction of a few statements in two round trips on a
 * worker's kl_pg connection, for the webhook intake (docs/billing.md,
 * "Round trips"). libpq's pipeline mode sends BEGIN together with the first
 * statements, and the last statements together with COMMIT:
 *
 *   billing_pipe_begin   BEGIN; stmt...; sync       one round trip
 *   (the caller decides from the results)
 *   billing_pipe_commit  stmt...; COMMIT; sync      one round trip
 *
 * Named statements are prepared once per connection, in the same round
 * trip as their first use. Names must not be ones kl_pg_query prepares.
 *
 * The transaction is opened outside kl_pg's bookkeeping, so between begin
 * and commit the caller must not use the kl_pg (kl_pg_query, kl_pg_begin):
 * kl_pg would take the open transaction for an idle connection and, were
 * the connection lost, retry a statement on a new connection outside the
 * transaction. billing_pipe_commit runs only on the connection that
 * billing_pipe_begin used, still inside that transaction; anything else
 * fails with nothing committed.
 *
 * kl_pg is getting a pipeline call of its own (kl_pg_pipeline, being
 * written), which runs whole transactions; the intake keeps one open
 * between two round trips, hence this module.
 */
#ifndef BILLING_PIPE_H
#define BILLING_PIPE_H

#include "kl_code.h"
#include "kl_pg.h"

#include <libpq-fe.h>

/* Statements in one billing_pipe_begin or billing_pipe_commit. */
#define BILLING_PIPE_MAX 4

typedef struct {
    const char *name; /* prepared under this name once per connection */
    const char *sql;
    int nparams;
    const char *const *params; /* text; a NULL entry is SQL NULL */
} billing_pipe_stmt_t;

/* One per worker: remembers what is prepared on its connection. */
typedef struct billing_pipe billing_pipe_t;

billing_pipe_t *billing_pipe_new(void);
void billing_pipe_destroy(billing_pipe_t **self_p);

/*
 * Opens a transaction on pg's connection and runs the n statements in it,
 * in one round trip. Returns 0 with results[i] set (the caller PQclear()s
 * each). On failure returns -code with status (UNAVAILABLE for a lost
 * connection, by SQLSTATE as kl_pg otherwise: ABORTED for 40001/40P01,
 * ALREADY_EXISTS for 23505, ...), every results[i] NULL, and the
 * transaction rolled back. FAILED_PRECONDITION if pg has a transaction of
 * its own open.
 */
int billing_pipe_begin(billing_pipe_t *self, kl_pg_t *pg,
                       const billing_pipe_stmt_t *stmts, int n,
                       PGresult **results, kl_status_t *status);

/*
 * Runs the n statements in the transaction billing_pipe_begin opened,
 * then COMMIT, in one round trip. Returns 0 only once COMMIT succeeded,
 * with results[i] set as above. Otherwise -code with status, every
 * results[i] NULL, and nothing committed (UNAVAILABLE when the outcome of
 * a COMMIT sent on a connection that was then lost is unknown).
 */
int billing_pipe_commit(billing_pipe_t *self, kl_pg_t *pg,
                        const billing_pipe_stmt_t *stmts, int n,
                        PGresult **results, kl_status_t *status);

/* Rolls back the transaction billing_pipe_begin opened, if it is still
 * open. Never fails (a broken connection is left to kl_pg to replace). */
void billing_pipe_rollback(billing_pipe_t *self, kl_pg_t *pg);

#endif
