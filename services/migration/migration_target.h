/*
 * migration_target: where one copy of the product's tables lives, and so
 * what one ledger entry is about.
 *
 *   row       every row tenant shares one target, "shared:<schema>"
 *   schema    "tenant:<uuid>", schema "t_" + the uuid's 32 hex digits
 *   database  "tenant:<uuid>", database "kowloon_t_" + 32 hex digits on the
 *             main server, tables in <shared schema> inside it
 *
 * The names follow lib/kl_tenant_db.h and are derived from the tenant id,
 * never from user text.
 */
#ifndef MIGRATION_TARGET_H
#define MIGRATION_TARGET_H

#include "kl_code.h"

#define MIGRATION_NAME_MAX 64

typedef struct {
    char target[80];                    /* ledger key */
    char tenant_id[37];                 /* lowercase uuid; "" for shared */
    char isolation[16];                 /* row | schema | database */
    char schema[MIGRATION_NAME_MAX];    /* schema of the tables */
    char db_name[MIGRATION_NAME_MAX];   /* database model: its database */
    char db_server[MIGRATION_NAME_MAX]; /* database model: its server,
                                           "main" or "" for the main one */
} migration_target_t;

/* The row model's shared target. shared_schema: 1..63 bytes of
 * [a-z0-9_], not starting with a digit; else INVALID_ARGUMENT. */
int migration_target_shared(const char *shared_schema, migration_target_t *out,
                            kl_status_t *status);

/* The target of one tenant. isolation "row" gives the shared target.
 * db_server (database model; NULL or "" is the main server) is recorded.
 * INVALID_ARGUMENT for a tenant id that is not a uuid or an unknown
 * isolation. */
int migration_target_for_tenant(const char *tenant_id, const char *isolation,
                                const char *db_server,
                                const char *shared_schema,
                                migration_target_t *out, kl_status_t *status);

/* "schema" or "database/schema", for humans. */
void migration_target_location(const migration_target_t *t, char *buf,
                               size_t size);

#endif
