/*
 * kl_pg: one PostgreSQL connection that heals itself. A service worker
 * owns one (never shared between threads).
 *
 * - Connects lazily; after the server restarts, the next use reconnects.
 * - Statements are prepared once per connection by name; the SQL is given
 *   on every call, so re-preparing after a reconnect needs nothing.
 * - Errors map to status codes by SQLSTATE: connection failures (class 08,
 *   57P01..57P03, a dead socket) -> UNAVAILABLE (the connection is dropped
 *   and made again next time); 23505 unique_violation -> ALREADY_EXISTS;
 *   23503/23502/23514 and class 22 -> INVALID_ARGUMENT;
 *   40001/40P01 -> ABORTED; 57014 query_canceled -> DEADLINE_EXCEEDED;
 *   others -> INTERNAL. The status message carries the server's text.
 * - Outside a transaction, a call that finds the connection already broken
 *   (the server restarted while it was idle) reconnects and tries once more
 *   before failing; kl_pg_begin does the same. Inside a transaction a
 *   broken connection fails the call: the caller's transaction is gone.
 * - kl_pg_pipeline sends several statements in one round trip (libpq
 *   pipeline mode), with the same preparing, mapping and retry;
 *   kl_pg_pipeline_ex can also open a kl_pg transaction with its
 *   statements (BEGIN first) and commit one after them (COMMIT last), so
 *   a transaction can take two round trips in all.
 * - Statement names starting "kl_pg_" are kl_pg's own.
 */
#ifndef KL_PG_H
#define KL_PG_H

#include "kl_code.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct kl_pg kl_pg_t;

/* conninfo: a libpq connection string or URI; copied. Does not connect. */
kl_pg_t *kl_pg_new(const char *conninfo);
void kl_pg_destroy(kl_pg_t **self_p);

/* The live connection, connecting if needed; NULL + UNAVAILABLE. */
PGconn *kl_pg_conn(kl_pg_t *self, kl_status_t *status);

/* Runs prepared statement name (prepared from sql on first use on this
 * connection) with text parameters (NULL entry = SQL NULL). Returns the
 * result (caller PQclear()s) for COMMAND_OK or TUPLES_OK, else NULL and
 * status as above. */
PGresult *kl_pg_query(kl_pg_t *self, const char *name, const char *sql,
                      int nparams, const char *const *params,
                      kl_status_t *status);

/* Runs sql without parameters or preparing (DDL, several statements).
 * Returns 0 or -code with status. */
int kl_pg_exec(kl_pg_t *self, const char *sql, kl_status_t *status);

/* One statement of a pipeline: as kl_pg_query's arguments (name NULL runs
 * it unprepared). */
typedef struct {
    const char *name;
    const char *sql;
    int nparams;
    const char *const *params;
} kl_pg_stmt_t;

/* Runs n statements (n >= 1) in one round trip: libpq pipeline mode, every
 * statement sent (with the Prepare of each name not yet prepared on this
 * connection) before one sync, then every answer read. Outside a
 * transaction only (FAILED_PRECONDITION inside one). The statements may
 * open and commit their own transaction (BEGIN ... COMMIT); they must not
 * leave one open.
 *
 * Returns 0 with results[i] holding statement i's result (COMMAND_OK or
 * TUPLES_OK; the caller PQclear()s each), or -code with status mapped as
 * kl_pg_query's from the first statement that failed (the server skipped
 * those after it); results[i] then still holds the result of each
 * statement before the failed one (the caller PQclear()s them; clearing
 * all n entries is always right) and NULL from it on — all NULL when the
 * connection broke. After a failure inside the statements' own
 * transaction, that transaction is rolled back (one more round trip), so
 * the connection is idle again; one left open by statements that all
 * succeeded is rolled back too and the call fails (INTERNAL, every result
 * NULL). As kl_pg_query outside a transaction, a connection that turns out
 * to be broken is made again and the pipeline sent once more, re-preparing
 * its statements.
 *
 * Meant for a few small statements: everything is sent before any answer
 * is read. */
int kl_pg_pipeline(kl_pg_t *self, const kl_pg_stmt_t *stmts, size_t n,
                   PGresult **results, kl_status_t *status);

/* Flags of kl_pg_pipeline_ex. */
#define KL_PG_PIPE_BEGIN 0x1u  /* BEGIN before the statements */
#define KL_PG_PIPE_COMMIT 0x2u /* COMMIT after the statements */

/*
 * kl_pg_pipeline with BEGIN and/or COMMIT sent in the same round trip
 * (both prepared once per connection, as the statements). flags 0 is
 * kl_pg_pipeline. With a flag n may be 0, and the statements must not
 * begin or end a transaction themselves.
 *
 * KL_PG_PIPE_BEGIN: outside a transaction only (FAILED_PRECONDITION inside
 * one). BEGIN, the statements, one round trip; on success the transaction
 * stays open as if kl_pg_begin had opened it: kl_pg_in_transaction is
 * true, kl_pg_query and kl_pg_exec run in it, kl_pg_commit,
 * kl_pg_rollback or a KL_PG_PIPE_COMMIT pipeline ends it, and a
 * connection lost in it is never silently replaced. Being outside a
 * transaction when it starts, it reconnects and resends once as
 * kl_pg_pipeline does.
 *
 * KL_PG_PIPE_COMMIT: inside an open kl_pg transaction only
 * (FAILED_PRECONDITION outside one). The statements, COMMIT, one round
 * trip, on the transaction's own connection (never another one, never
 * resent). Returns 0 only once COMMIT succeeded. After it, whatever it
 * returns, the transaction is over (kl_pg_in_transaction false).
 * UNAVAILABLE when the connection is lost (before: "database connection
 * lost inside a transaction", nothing committed; while waiting for the
 * answers: the outcome of a COMMIT sent is unknown); ABORTED when the
 * transaction had already failed (a kl_pg_query in it failed).
 *
 * Both: a whole transaction in one round trip, outside a transaction
 * only, reconnecting and resending as kl_pg_pipeline.
 *
 * On success results[i] holds statement i's result (BEGIN's and COMMIT's
 * are not returned). On failure, with either flag, the transaction is
 * rolled back (nothing of it committed; a broken connection is dropped),
 * kl_pg_in_transaction is false, every results[i] is NULL, and status is
 * mapped as kl_pg_query's from the first statement that failed.
 */
int kl_pg_pipeline_ex(kl_pg_t *self, const kl_pg_stmt_t *stmts, size_t n,
                      unsigned flags, PGresult **results, kl_status_t *status);

/* Transactions. rollback never fails (a broken connection is dropped). */
int kl_pg_begin(kl_pg_t *self, kl_status_t *status);
int kl_pg_commit(kl_pg_t *self, kl_status_t *status);
void kl_pg_rollback(kl_pg_t *self);
bool kl_pg_in_transaction(const kl_pg_t *self);

/* A service's own schema, created and migrated at start: in one
 * transaction under pg_advisory_xact_lock on the schema's name, creates the
 * schema and <schema>.schema_migrations if missing, then applies each step
 * whose version is not recorded yet, in order, recording it. Several
 * instances may start at once: one applies, the others wait and find
 * nothing to do. */
typedef struct {
    int version;     /* 1, 2, 3 ... ascending */
    const char *sql; /* may hold several statements */
} kl_pg_migration_t;

int kl_pg_migrate(kl_pg_t *self, const char *schema,
                  const kl_pg_migration_t *steps, size_t n,
                  kl_status_t *status);

#endif
