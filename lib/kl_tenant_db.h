/*
 * kl_tenant_db: where a tenant's product data lives (its placement, in one
 * of three isolation models) and the one call a service uses to open a
 * transaction scoped to that tenant, whatever the model.
 *
 *   row       the product's tables in one shared schema (e.g. "workspace")
 *             with a tenant_id column and row-level security forced on;
 *             the transaction runs set_config('app.tenant_id', id, true).
 *   schema    one schema per tenant, named from the tenant id:
 *             "t_" + the 32 hex digits of the uuid (never from user text);
 *             the transaction runs set_config('search_path', <quoted>, true)
 *             and also sets app.tenant_id (defence in depth).
 *   database  one database per tenant, "kowloon_t_" + 32 hex digits, on one
 *             of the servers named in KOWLOON_TENANT_DB_SERVERS
 *             ("name=libpq-url,name=libpq-url"; the default server "main"
 *             is KOWLOON_DATABASE_URL's server); the transaction runs on a
 *             connection to that database (kept per worker, LRU-bounded)
 *             and sets app.tenant_id.
 *
 * Names go to SQL only through PQescapeIdentifier. A transaction's scope is
 * transaction-local (set_config(..., true)), so a pooled connection never
 * carries one tenant's scope into the next call.
 *
 * kl_tenant_tx_begin_ex opens a transaction the caller runs statements in
 * (a round trip each, BEGIN and the scope included); kl_tenant_read runs a
 * read of one statement with the same scope in a single round trip.
 */
#ifndef KL_TENANT_DB_H
#define KL_TENANT_DB_H

#include "kl_code.h"
#include "kl_pg.h"

#include <stddef.h>

typedef enum {
    KL_ISOLATION_ROW = 0,
    KL_ISOLATION_SCHEMA,
    KL_ISOLATION_DATABASE
} kl_isolation_t;

#define KL_TENANT_NAME_MAX 64

typedef struct {
    char tenant_id[37]; /* lowercase uuid */
    kl_isolation_t isolation;
    char schema[KL_TENANT_NAME_MAX];    /* row: the shared schema; schema:
                                           "t_<hex>"; database: the schema
                                           inside the tenant's database */
    char db_server[KL_TENANT_NAME_MAX]; /* database: server name; else "" */
    char db_name[KL_TENANT_NAME_MAX];   /* database: "kowloon_t_<hex>" */
} kl_tenant_place_t;

/* "row" | "schema" | "database" <-> kl_isolation_t. Parse returns 0 or
 * -KL_INVALID_ARGUMENT. */
int kl_isolation_parse(const char *name, kl_isolation_t *out,
                       kl_status_t *status);
const char *kl_isolation_name(kl_isolation_t isolation);

/* Fills *out for tenant_id (a uuid, validated) in isolation. shared_schema
 * is the row model's schema (and the schema used inside a tenant database);
 * db_server is required for the database model (ignored otherwise). */
int kl_tenant_place(const char *tenant_id, kl_isolation_t isolation,
                    const char *shared_schema, const char *db_server,
                    kl_tenant_place_t *out, kl_status_t *status);

/* One worker's connections: the main database (row and schema models) and
 * tenant databases opened on demand. Not thread-safe: one per worker. */
typedef struct kl_tenant_db kl_tenant_db_t;

/* main_url: libpq URL of the application role on the main server.
 * servers: KOWLOON_TENANT_DB_SERVERS entries ("name=url"), may be empty;
 * a server's URL gives host, port, user and password; the database name
 * is the tenant's. max_open: tenant-database connections kept (LRU). */
kl_tenant_db_t *kl_tenant_db_new(const char *main_url,
                                 const char *const *servers, size_t n_servers,
                                 size_t max_open, kl_status_t *status);
void kl_tenant_db_destroy(kl_tenant_db_t **self_p);

/* Begins a transaction scoped to place and returns its connection
 * (borrowed; valid until commit/rollback). NULL + status: UNAVAILABLE
 * (server down), NOT_FOUND (unknown db_server), INVALID_ARGUMENT. */
kl_pg_t *kl_tenant_tx_begin(kl_tenant_db_t *self,
                            const kl_tenant_place_t *place,
                            kl_status_t *status);
int kl_tenant_tx_commit(kl_tenant_db_t *self, kl_pg_t *pg, kl_status_t *status);
void kl_tenant_tx_rollback(kl_tenant_db_t *self, kl_pg_t *pg);

/* --- Additions (isolation helper, additive to the lead's contract) ----- */

/* 0 when place's names are exactly those kl_tenant_place derives from its
 * tenant id (schema "t_<hex>", database "kowloon_t_<hex>", valid server and
 * shared-schema names); else INVALID_ARGUMENT. kl_tenant_tx_begin runs it
 * first, so a forged or corrupted placement never reaches SQL. */
int kl_tenant_place_check(const kl_tenant_place_t *place, kl_status_t *status);

/* Finds server name in "name=url" entries: *url points into the entry
 * (its rest, after the '='), *url_len is its length. NOT_FOUND when
 * absent, INVALID_ARGUMENT when an entry has no '='. */
int kl_tenant_server_find(const char *const *servers, size_t n_servers,
                          const char *name, const char **url, size_t *url_len,
                          kl_status_t *status);

/* server_url (a libpq URL or conninfo) with its dbname replaced by db_name
 * (NULL: unchanged), as a keyword='value' conninfo. Caller frees. NULL +
 * INVALID_ARGUMENT when server_url is malformed (the message never repeats
 * the URL: it may hold a password). */
char *kl_tenant_db_conninfo(const char *server_url, const char *db_name,
                            kl_status_t *status);

/* URL of a configured server (borrowed), "main" defaulting to main_url;
 * NULL when unknown. */
const char *kl_tenant_db_server_url(const kl_tenant_db_t *self,
                                    const char *name);

/* The main-database connection (borrowed): row and schema tenants. */
kl_pg_t *kl_tenant_db_main(kl_tenant_db_t *self);

/* Tenant-database connections open now (<= max_open). */
size_t kl_tenant_db_open_count(const kl_tenant_db_t *self);

/*
 * Moves. A tenant whose data is being moved is fenced with an advisory lock
 * on kl_tenant_lock_key(tenant_id) in the main database: every write
 * transaction of a row or schema tenant (kl_tenant_tx_begin_ex without
 * KL_TENANT_TX_READ_ONLY) takes it shared with pg_try_advisory_xact_lock_
 * shared, the mover takes it exclusive for copy + switch, so a write either
 * finished before the copy or is refused with UNAVAILABLE "tenant is being
 * moved, retry". After the switch the mover records the tenant's new model
 * in KL_TENANT_FENCE_TABLE (main database, readable by the application
 * role); a transaction begun on a stale placement (a cache that has not
 * heard yet) finds the record and fails with UNAVAILABLE "tenant placement
 * changed, retry" instead of touching the old copy.
 */
#define KL_TENANT_FENCE_SCHEMA "kowloon_placement"
#define KL_TENANT_FENCE_TABLE "kowloon_placement.moved"
#define KL_TENANT_TX_READ_ONLY 0x01u
/* KL_TENANT_TX_READ_ONLY, and REPEATABLE READ: every statement of the
 * transaction sees the one snapshot of its first (a read of several
 * statements that must agree, such as an export page). One more round
 * trip. */
#define KL_TENANT_TX_SNAPSHOT 0x02u

/* The advisory-lock key text: hashtextextended() of it is the bigint key. */
#define KL_TENANT_LOCK_SQL(param)                                              \
    "pg_catalog.hashtextextended('kowloon.tenant.' || " param ", 0)"

/* As kl_tenant_tx_begin (which is kl_tenant_tx_begin_ex(..., 0, ...)), with
 * flags: KL_TENANT_TX_READ_ONLY skips the move lock (reads go on during a
 * move; the data is still in place until the switch); KL_TENANT_TX_SNAPSHOT
 * also reads one snapshot. UNAVAILABLE when the
 * tenant is being moved (writes) or its placement changed. */
kl_pg_t *kl_tenant_tx_begin_ex(kl_tenant_db_t *self,
                               const kl_tenant_place_t *place, unsigned flags,
                               kl_status_t *status);

/* A read of one statement scoped to place, in one round trip: BEGIN READ
 * ONLY, the scope statement of kl_tenant_tx_begin_ex with
 * KL_TENANT_TX_READ_ONLY (search_path and app.tenant_id, transaction-local;
 * the fence check on a main-database placement), the statement (name, sql,
 * params as kl_pg_query: prepared once per connection) and COMMIT, sent as
 * one pipeline (kl_pg_pipeline) on the connection kl_tenant_tx_begin_ex
 * would use. The same guarantees: kl_tenant_place_check before any SQL;
 * nothing of the scope outlives the call on the pooled connection; a
 * connection found broken outside a transaction (server restarted) is made
 * again and the read sent once more.
 *
 * Returns the statement's result (caller PQclear()s), or NULL + status:
 * INVALID_ARGUMENT (placement), NOT_FOUND (unknown db_server),
 * UNAVAILABLE "tenant placement changed, retry" (the result, read from a
 * stale placement, is discarded), FAILED_PRECONDITION when the connection
 * is inside a transaction, or the statement's own failure mapped by
 * SQLSTATE as kl_pg_query (the transaction is rolled back and the
 * connection stays usable). */
PGresult *kl_tenant_read(kl_tenant_db_t *self, const kl_tenant_place_t *place,
                         const char *name, const char *sql, int nparams,
                         const char *const *params, kl_status_t *status);

/* As the owner of the main database: creates KL_TENANT_FENCE_SCHEMA and its
 * table if missing and grants app_role (quoted with PQescapeIdentifier)
 * USAGE and SELECT on them. Idempotent, safe to run at every start. */
int kl_tenant_db_prepare_main(kl_pg_t *owner, const char *app_role,
                              kl_status_t *status);

/* The SQL kl_tenant_db_grant_schema runs after creating the schema (and
 * kowloon-migration in each migration's own transaction): USAGE on the
 * schema; SELECT, INSERT, UPDATE, DELETE on each table with row-level
 * security enabled and forced; USAGE (nextval, currval) on the sequences
 * those tables' serial and identity columns own, so the role can insert
 * rows; nothing else. qschema/qrole: PQescapeIdentifier'd; lschema/lrole:
 * PQescapeLiteral'd. Several statements; caller frees. */
char *kl_tenant_db_grant_sql(const char *qschema, const char *lschema,
                             const char *qrole, const char *lrole);

/* As the owner role on the database that holds schema (quoted here with
 * PQescapeIdentifier): creates the schema if missing, grants app_role
 * USAGE on it and SELECT, INSERT, UPDATE, DELETE on each of its tables
 * that has row-level security enabled and forced (never a table without,
 * such as a migration ledger; never TRUNCATE, REFERENCES or TRIGGER, which
 * row-level security does not govern), and USAGE on their owned sequences
 * (kl_tenant_db_grant_sql). Run it again after migrations add
 * tables. Under an advisory lock on the schema's name; idempotent. */
int kl_tenant_db_grant_schema(kl_pg_t *owner, const char *schema,
                              const char *app_role, kl_status_t *status);

#endif
