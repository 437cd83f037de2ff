/*
 * ws_fixture: the databases and roles the workspace tests run against.
 *
 * In the PostgreSQL of KLTEST_PG_URL (a superuser URL), makes a database
 * and two roles with names unique to this run: an owner role (owns the
 * database, runs the DDL) and an application role (LOGIN NOSUPERUSER
 * NOBYPASSRLS, owns nothing), and drops them all at the end.
 */
#ifndef WS_FIXTURE_H
#define WS_FIXTURE_H

#include "kl_tenant_db.h"
#include "kowloon/tenant.pb-c.h"
#include "tenant_provision.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    char *admin_url; /* KLTEST_PG_URL: superuser, its own database */
    char *redis_url; /* KLTEST_REDIS_URL */
    char db[96];     /* this run's database */
    char owner[96];  /* owner role */
    char app[96];    /* application role */
    char *super_url; /* superuser on db */
    char *owner_url; /* owner role on db */
    char *app_url;   /* application role on db */
    /* Provisioning of schema and database tenants (the tenant service's
     * own code), owner role "main" = owner_url. */
    tenant_provision_t *prov;
} ws_fixture_t;

extern ws_fixture_t ws;

/* Creates the database and roles; on missing settings prints what to set
 * and returns -1. name: the test's name (in messages and the db name). */
int ws_fixture_setup(const char *name);
void ws_fixture_teardown(void);

/* A keyword=value conninfo equal to url but for dbname and user (NULL:
 * keep). Caller frees. */
char *ws_conninfo(const char *url, const char *dbname, const char *user);

/* Runs sql on url; fails the test on error. */
void ws_exec(const char *url, const char *sql);

/* The first value of sql on url (caller frees); fails the test on error. */
char *ws_value(const char *url, const char *sql);

/* A fresh random tenant id into out[37]. */
void ws_uuid(char out[37]);

/* --- isolation models ---------------------------------------------------- */

/* The model this run's tenants live in: argv[1] (CTest passes row, schema
 * or database), else KLTEST_WS_MODEL, else row. Call first in main(). */
extern kl_isolation_t ws_model;
void ws_fixture_model(int argc, char **argv);

/* TEST FIXTURE standing in for kowloon-migration (services/migration):
 * applies services/workspace/migrations/V*.sql in version order to
 * place's schema as the owner role, search_path set for each file's
 * transaction. A tenant_provision_migrate_fn. */
int ws_apply_migrations(void *arg, const kl_tenant_place_t *place,
                        kl_status_t *status);

/* The shared schema "workspace" with its tables and grants, the fence,
 * and ws.prov. Fails the test on error. */
void ws_prepare_shared(void);

/* A workspace_placement_fn: the tenant's placement in ws_model, the
 * tenant provisioned (schema or database, migrated, granted, fenced) the
 * first time it is seen. Thread-safe. */
int ws_placement(void *arg, const char *tenant_id, kl_tenant_place_t *out,
                 kl_status_t *status);

/* Places a tenant explicitly (a move test's own bookkeeping): later
 * ws_placement calls answer place. */
void ws_placement_set(const kl_tenant_place_t *place);

/* Rows of tenant_id in table of its placement, counted as the superuser
 * (row-level security bypassed). */
long ws_rows(const char *table, const char *tenant_id);

/* Runs sql (unqualified names) as the owner role in tenant_id's schema,
 * provisioning the tenant first if needed. Fails the test on error. */
void ws_owner_exec(const char *tenant_id, const char *sql);

/* The row count a Move answered for table, or -1 when it names none. */
int64_t ws_move_count(const Kowloon__Tenant__MoveTenantResponse *m,
                      const char *table);

#endif
