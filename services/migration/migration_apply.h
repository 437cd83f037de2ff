/*
 * migration_apply: one worker's connections to the places migrations run
 * (as the owner role, KOWLOON_DATA_OWNER_URL), the target's own history,
 * and applying one migration in one transaction.
 *
 * Every database that holds targets (the main one, each tenant database)
 * has one history table, kowloon_migration.history (target, version, name,
 * checksum, applied_at, duration_ms), created by the first migration applied
 * there. A migration and its history row commit in the same transaction,
 * so a crash leaves either both or neither. The history is the truth of
 * what is applied; the service's ledger (migration_store) mirrors it and is
 * reconciled from it, which is what makes a crashed run resumable without
 * applying anything twice. Reading the history creates nothing.
 * Every migration is applied in a transaction of its own, together with
 * its history row: alone (migration_apply_one) or several such
 * transactions sent in one round trip (migration_batch_apply). The one
 * exception is a "-- kowloon:no-transaction" file (migration_files.h):
 * its statement runs outside any transaction, its history row after it.
 *
 * Not thread-safe: one per worker thread.
 */
#ifndef MIGRATION_APPLY_H
#define MIGRATION_APPLY_H

#include "kl_code.h"
#include "migration_files.h"
#include "migration_target.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct migration_apply migration_apply_t;

typedef struct {
    int version;
    char checksum[MIGRATION_CHECKSUM_LEN + 1];
    int64_t duration_ms;
} migration_applied_t;

/* owner_url: libpq URL or conninfo of the owner role on the main server.
 * owner_servers: KOWLOON_TENANT_DB_OWNER_SERVERS entries ("name=url", the
 * owner role on each database server; may be empty): a database tenant on
 * server S is reached with S's URL and its database name; "main" falls back
 * to owner_url. Everything is copied. Does not connect. NULL +
 * INVALID_ARGUMENT if a URL does not parse (the message never repeats a
 * URL: it may hold a password). */
migration_apply_t *migration_apply_new(const char *owner_url,
                                       const char *const *owner_servers,
                                       size_t n_owner_servers,
                                       kl_status_t *status);
void migration_apply_destroy(migration_apply_t **self_p);

/* KOWLOON_DATA_APP_ROLE (copied; NULL or "": none, the default). With a
 * role, each migration_apply_one also grants it, in the migration's own
 * transaction, what kl_tenant_db_grant_schema grants at provisioning:
 * USAGE on the target's schema and SELECT, INSERT, UPDATE, DELETE on each
 * of its tables with row-level security enabled and forced (never on any
 * other table). */
void migration_apply_set_app_role(migration_apply_t *self,
                                  const char *app_role);

/* The target's history, ascending by version: *out is malloc'd (caller
 * frees; NULL when *n is 0). A shared target without its schema yet has an
 * empty history; a schema tenant without its schema is NOT_FOUND ("schema
 * t_... does not exist: the tenant is not provisioned"); a database that
 * cannot be reached is UNAVAILABLE with libpq's message. */
int migration_apply_history(migration_apply_t *self,
                            const migration_target_t *t,
                            migration_applied_t **out, size_t *n,
                            kl_status_t *status);

/* Checks the history against the files. Returns 0, or
 * -KL_FAILED_PRECONDITION with the drift:
 *   "checksum mismatch for V0002 (applied 3f2a9c..., file 77b1e0...)"
 *   "V0007 is applied but its file is missing"
 * *current is the highest applied version. */
int migration_apply_check(const migration_files_t *files,
                          const migration_applied_t *applied, size_t n,
                          int *current, kl_status_t *status);

/* Whether version is in the history. */
bool migration_apply_has(const migration_applied_t *applied, size_t n,
                         int version);

/* Applies file to t in one transaction together with its history row
 * (search_path and app.tenant_id set transaction-locally), and with an
 * application role set, the grants on its RLS-forced tables (a role that
 * does not exist fails the migration). A no-transaction file's statement
 * runs alone outside any transaction (search_path and app.tenant_id set
 * for the session, RESET ALL after, whatever happened), then its history
 * row and grants in a transaction; the caller must hold the apply lock
 * and no snapshot in this database on any connection it waits on.
 * *duration_ms is the wall time of the transaction. On failure everything
 * is rolled back and status carries the PostgreSQL error text:
 *   FAILED_PRECONDITION "relation \"tasks\" already exists (SQLSTATE 42P07)"
 *   UNAVAILABLE         the connection was lost */
int migration_apply_one(migration_apply_t *self, const migration_target_t *t,
                        const migration_file_t *file, int64_t *duration_ms,
                        kl_status_t *status);

/* For a tenant's target t (run workers; not ProvisionTenant, which a move
 * calls while it holds the lock itself): takes the tenant's move lock
 * (KL_TENANT_LOCK_SQL) shared, without waiting, on the session of the main
 * database's connection, so that a move (which takes it exclusive) waits
 * until the migration is over. Returns 1 when held (migration_apply_unlock
 * or the last migration_batch_apply gives it back), 0 when a move holds or
 * awaits it, or -code (nothing held). When held, isolation gets the
 * tenant's model of record in the placement fence (KL_TENANT_FENCE_TABLE:
 * "schema", "database", "row" when the tenant has no fence entry, "" when
 * there is no fence table).
 *
 * The same round trip reads the fence and, for a target on the main
 * database whose history table is known, does migration_apply_lock's work
 * too (each read with a snapshot taken after the locks): the next
 * migration_apply_lock for t answers from it. */
int migration_apply_hold_tenant(migration_apply_t *self,
                                const migration_target_t *t, char *isolation,
                                size_t size, kl_status_t *status);

/* Takes t's apply lock, then reads t's history as migration_apply_history
 * does. The apply lock is a session-level advisory lock on t's own
 * connection (its database), waited for: a dead instance's connection may
 * still be running t's last transaction on the server (the server learns
 * of a dead client only when it next talks to it), and the lock comes only
 * once that transaction has ended, so the history read after it is the
 * truth and nothing is applied twice. Held until migration_apply_unlock
 * or the last migration_batch_apply; errors as migration_apply_history
 * (the lock may be held then: unlock). */
int migration_apply_lock(migration_apply_t *self, const migration_target_t *t,
                         migration_applied_t **out, size_t *n,
                         kl_status_t *status);

/* Gives back whatever is still held: the apply lock, the tenant's move
 * lock (one round trip when both are on the main database). */
void migration_apply_unlock(migration_apply_t *self);

/* Closes a tenant-database connection kept for t (none for the main
 * server's targets). */
void migration_apply_release(migration_apply_t *self);

#endif
