/*
 * tenant_store: the tenant service's tables in schema "tenant" — tenants
 * and their API keys — read and written through one kl_pg connection with
 * prepared statements. Inputs are validated by the caller (tenant_service);
 * the store enforces existence, the deleted state and uniqueness.
 *
 * Every function returns 0 or a negative kl code with status set:
 *   NOT_FOUND            "tenant <id> not found" (and the like)
 *   FAILED_PRECONDITION  "tenant <id> is deleted"
 *   ALREADY_EXISTS       "subdomain \"acme\" is taken"
 *   UNAVAILABLE          the database cannot be reached
 * A function that writes commits before it returns 0.
 */
#ifndef TENANT_STORE_H
#define TENANT_STORE_H

#include "kl_code.h"
#include "kl_pg.h"
#include "tenant_apikey.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest tenant or key name in characters; 4 bytes each in UTF-8. */
#define TENANT_NAME_MAX 200

/* One tenant, with times as RFC 3339 UTC with milliseconds. */
typedef struct {
    char id[37];
    char subdomain[64];
    char name[TENANT_NAME_MAX * 4 + 1];
    char plan[64];
    char status[16];
    char isolation[16];
    char created_at[32];
    char updated_at[32];
    char status_changed_at[32];
    int64_t created_usec;    /* created_at in µs since the epoch (page keys) */
    char db_server[64];      /* database model: server name; else "" */
    char db_name[64];        /* database model: "kowloon_t_<hex>"; else "" */
    bool moving;             /* a move is under way */
    char move_isolation[16]; /* while moving: the target model; else "" */
    char move_db_server[64]; /* while moving to a database: its server */
    char move_cleanup[16];   /* after a switch: the model whose old copy is
                                still to be removed; else "" */
} tenant_row_t;

/* One API key (never its secret). */
typedef struct {
    char id[TENANT_APIKEY_ID_LEN + 1];
    char tenant_id[37];
    char name[TENANT_NAME_MAX * 4 + 1];
    char created_at[32];
} tenant_key_row_t;

/* Creates or upgrades schema "tenant" (kl_pg_migrate). */
int tenant_store_migrate(kl_pg_t *pg, kl_status_t *status);

/* id: the new tenant's id (a valid uuid), or NULL for a random one made
 * by the server. db_server: the database model's server (ignored
 * otherwise); db_name is derived from the id ("kowloon_t_" + its 32 hex
 * digits). provisioning: recorded as being provisioned, which hides the
 * tenant from every read and change below (as if it did not exist) until
 * tenant_store_provisioned; its subdomain is taken meanwhile. */
int tenant_store_create(kl_pg_t *pg, const char *id, const char *subdomain,
                        const char *name, const char *plan,
                        const char *isolation, const char *db_server,
                        const char *tenant_status, bool provisioning,
                        tenant_row_t *out, kl_status_t *status);

/* The tenant's schema or database is ready: it becomes visible. ABORTED
 * when its record is gone (a recovery took it for a dead creation). */
int tenant_store_provisioned(kl_pg_t *pg, const char *id, kl_status_t *status);

/* Tenants still being provisioned, oldest first; only the one of subdomain
 * unless it is NULL. *rows (caller frees). */
int tenant_store_unprovisioned(kl_pg_t *pg, const char *subdomain,
                               tenant_row_t **rows, size_t *n,
                               kl_status_t *status);

/* *yes: the record of id exists and is still being provisioned (read now,
 * not from any earlier snapshot). */
int tenant_store_provisioning(kl_pg_t *pg, const char *id, bool *yes,
                              kl_status_t *status);

/* Removes a tenant whose provisioning failed (only one that has no API
 * key yet). */
int tenant_store_purge(kl_pg_t *pg, const char *id, kl_status_t *status);

/* Marks a live tenant moving to isolation (db_server: the database
 * model's server, else ""). FAILED_PRECONDITION "tenant <id> is already
 * being moved" when it is moving, or the old copy of its last move is
 * still to be removed. */
int tenant_store_move_begin(kl_pg_t *pg, const char *id, const char *isolation,
                            const char *db_server, tenant_row_t *out,
                            kl_status_t *status);

/* Clears moving and the target: the move was undone (any status). */
int tenant_store_move_abort(kl_pg_t *pg, const char *id, tenant_row_t *out,
                            kl_status_t *status);

/* The switch, in one transaction: checks that the tenant is still moving
 * to exactly (isolation, db_server) and that session lock_pid still holds
 * the tenant's move lock exclusive (ABORTED otherwise); with fence, records
 * isolation in the placement fence (KL_TENANT_FENCE_TABLE: this
 * connection's role must be allowed to, see tenant_store_may_fence); makes
 * (isolation, db_server, db_name) the placement of record, clears moving
 * and the target, and sets move_cleanup to the old model. */
int tenant_store_move_switch(kl_pg_t *pg, const char *id, const char *isolation,
                             const char *db_server, const char *db_name,
                             bool fence, int lock_pid, tenant_row_t *out,
                             kl_status_t *status);

/* Clears move_cleanup: the old copy is gone. */
int tenant_store_move_cleaned(kl_pg_t *pg, const char *id, kl_status_t *status);

/* Every tenant (deleted ones too) that is moving or has an old copy to
 * remove, oldest first; *rows (caller frees). */
int tenant_store_unsettled(kl_pg_t *pg, tenant_row_t **rows, size_t *n,
                           kl_status_t *status);

/* Whether this connection's role may write the placement fence (USAGE on
 * its schema; SELECT, INSERT and UPDATE on its table). */
int tenant_store_may_fence(kl_pg_t *pg, bool *out, kl_status_t *status);

/* Live database-model tenants on server. */
int tenant_store_count_by_server(kl_pg_t *pg, const char *server, int64_t *n,
                                 kl_status_t *status);

/* Any tenant, deleted ones too. id must be a valid UUID. */
int tenant_store_get(kl_pg_t *pg, const char *id, tenant_row_t *out,
                     kl_status_t *status);

/* The live (not deleted) tenant with this subdomain. */
int tenant_store_get_by_subdomain(kl_pg_t *pg, const char *subdomain,
                                  tenant_row_t *out, kl_status_t *status);

/* One page, ordered by (created_at, id). */
typedef struct {
    const char *status;   /* only this status; NULL: all but deleted */
    bool after;           /* start after the key below */
    int64_t after_usec;   /* created_at of the last row seen */
    const char *after_id; /* id of the last row seen */
    int limit;            /* rows wanted, >= 1 */
} tenant_store_page_t;

/* *rows (caller frees) gets up to page->limit rows; *more whether rows
 * follow. */
int tenant_store_list(kl_pg_t *pg, const tenant_store_page_t *page,
                      tenant_row_t **rows, size_t *n, bool *more,
                      kl_status_t *status);

/* Changes the fields that are not NULL; a status change sets
 * status_changed_at. Refuses deleted tenants. */
int tenant_store_update(kl_pg_t *pg, const char *id, const char *name,
                        const char *plan, const char *tenant_status,
                        tenant_row_t *out, kl_status_t *status);

/* Marks the tenant deleted and revokes its keys; *revoked (caller frees)
 * gets the ids of the keys revoked now. */
int tenant_store_delete(kl_pg_t *pg, const char *id, tenant_row_t *out,
                        tenant_key_row_t **revoked, size_t *n_revoked,
                        kl_status_t *status);

/* A new key for a live tenant; key gets the whole key (the only copy). */
int tenant_store_key_create(kl_pg_t *pg, const char *tenant_id,
                            const char *name, tenant_key_row_t *out,
                            char key[TENANT_APIKEY_LEN + 1],
                            kl_status_t *status);

/* The tenant's keys that are not revoked, oldest first. */
int tenant_store_key_list(kl_pg_t *pg, const char *tenant_id,
                          tenant_key_row_t **rows, size_t *n,
                          kl_status_t *status);

/* Revokes one of the tenant's keys: NOT_FOUND "API key <id> not found"
 * when it is not this tenant's or already revoked. */
int tenant_store_key_delete(kl_pg_t *pg, const char *tenant_id,
                            const char *key_id, kl_status_t *status);

/* Looks a key id up for authentication: *usable is true only when the key
 * is not revoked and its tenant is not deleted. NOT_FOUND when unknown. */
int tenant_store_key_lookup(kl_pg_t *pg, const char *key_id, char tenant_id[37],
                            uint8_t hash[TENANT_APIKEY_HASH_LEN], bool *usable,
                            kl_status_t *status);

#endif
