/*
 * migration_apply internals shared with migration_batch (the batch is the
 * same object's work, kept in its own file). Not an API: nothing else
 * includes this.
 */
#ifndef MIGRATION_APPLY_INT_H
#define MIGRATION_APPLY_INT_H

#include "migration_apply.h"

#include <libpq-fe.h>
#include <stdbool.h>

struct migration_apply {
    char *owner_url;  /* conninfo of the owner role, main database */
    char **servers;   /* "name=url" of the owner role per server (owned) */
    size_t n_servers; /* entries in servers */
    PGconn *main;     /* connection for row and schema targets */
    PGconn *db;       /* connection to one tenant database, or NULL */
    char db_name[MIGRATION_NAME_MAX]; /* the database db is connected to */
    bool main_ready;                  /* the history table exists on main */
    bool db_ready;                    /* ... and on db */
    bool main_fence;   /* the placement fence table exists on main */
    char *app_role;    /* granted on new tables; "": none */
    char held[37];     /* tenant whose move lock main holds; "": none */
    bool locked;       /* the apply lock of locked_target is held ... */
    bool locked_on_db; /* ... on db (else on main) */
    char locked_target[80];
    PGresult *pre_hist; /* locked_target's history, read with the hold */
};

/* The apply lock's key: a session-level advisory lock on the target's own
 * connection (lit: the target as an SQL literal). Not the key of the
 * control database's target lock, which may live on the same server. */
#define MIGRATION_APPLY_KEY_SQL(lit)                                           \
    "pg_catalog.hashtextextended('kowloon.migration.apply:' || " lit ", 0)"

/* The connection for t, (re)connecting as needed; with prepare, the
 * history table is made first if this connection has not yet. */
PGconn *migration_apply__conn(migration_apply_t *self,
                              const migration_target_t *t, bool prepare,
                              kl_status_t *status);

/* Fills status from a failed result (or the connection's state):
 * UNAVAILABLE when the connection is gone, FAILED_PRECONDITION with
 * PostgreSQL's text "<message> (SQLSTATE xxxxx)", else INTERNAL. */
int migration_apply__fail(PGconn *c, const PGresult *res, kl_status_t *status);
int migration_apply__ok(const PGresult *res);

/* Sends sql (one or more statements, simple query protocol) and collects
 * every result in order into *out (malloc'd; free with
 * migration_apply__clear_all). The server stops at the first failing
 * statement, whose error is then the last result. Returns the number of
 * results, or -1 when sql could not be sent. */
int migration_apply__send_all(PGconn *c, const char *sql, PGresult ***out);
void migration_apply__clear_all(PGresult **all, int n);

/* The state after t's transactions on its connection: what the last
 * statements of a batch gave back (apply lock, tenant move lock). */
void migration_apply__unlocked(migration_apply_t *self, bool apply_lock,
                               bool tenant);

/* t's names and the application role, quoted for SQL by libpq. */
typedef struct {
    char *ident;   /* the schema as an identifier */
    char *lschema; /* ... as a literal */
    char *tenant;  /* the tenant id, literal ('' for the shared target) */
    char *target;  /* the target, literal */
    char *qrole;   /* the application role, identifier; NULL: none */
    char *lrole;   /* ... literal */
} migration_apply__quoted_t;

/* Returns 0, or -1 when libpq could not quote (out of memory). */
int migration_apply__quote(PGconn *c, const migration_target_t *t,
                           const char *role, migration_apply__quoted_t *q);
void migration_apply__quoted_free(migration_apply__quoted_t *q);

/* The grants' lock (first in the transaction) and the grants (last), ""
 * without an application role; caller frees. */
char *migration_apply__grant_lock_sql(const migration_apply__quoted_t *q);
char *migration_apply__grant_sql(const migration_apply__quoted_t *q);

#endif
