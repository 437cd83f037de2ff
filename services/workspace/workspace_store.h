/*
 * workspace_store: the workspace service's tables — projects and their
 * tasks, one row per tenant's object — and the start-up work around them:
 * the shared schema's grants (as the owner role) and the catalog check (as
 * the application role).
 *
 * The tables are created by the versioned SQL files in
 * services/workspace/migrations/ (V0001__create_projects.sql, ...), applied
 * by kowloon-migration to the shared schema (row model), to each tenant
 * schema (schema model) and to the shared schema inside each tenant
 * database (database model). Every table keeps tenant_id and a forced
 * row-level security policy in every model.
 *
 * Data functions run inside a tenant-scoped transaction opened by the
 * caller (kl_tenant_tx_begin) on a connection of the application role,
 * which sets search_path and app.tenant_id; the reads that take a
 * workspace_db_t may instead run each statement as its own tenant-scoped
 * read of one round trip (kl_tenant_read). No statement names a tenant or
 * a schema: the policies filter every read and check every write against
 * app.tenant_id, so another tenant's rows are invisible and
 * indistinguishable from rows that do not exist. Inputs are validated by
 * the caller (workspace_service).
 *
 * Every function returns 0 or a negative kl code with status set:
 *   NOT_FOUND            "project <id> not found", "task <id> not found"
 *   FAILED_PRECONDITION  the catalog check refuses the roles (its message)
 *   UNAVAILABLE          the database cannot be reached
 */
#ifndef WORKSPACE_STORE_H
#define WORKSPACE_STORE_H

#include "kl_code.h"
#include "kl_pg.h"
#include "kl_tenant_db.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WORKSPACE_NAME_MAX 200  /* project name, characters */
#define WORKSPACE_TITLE_MAX 500 /* task title, characters */

/* Strings borrow from the result held by the workspace_rows_t they came
 * in; times are RFC 3339 UTC with milliseconds. */
typedef struct {
    const char *id;
    const char *name;
    const char *description;
    const char *created_at;
    const char *updated_at;
    int64_t created_usec; /* created_at in µs since the epoch (page keys) */
} workspace_project_t;

typedef struct {
    const char *id;
    const char *project_id;
    const char *title;
    const char *notes;
    bool done;
    const char *created_at;
    const char *updated_at;
    int64_t created_usec;
} workspace_task_t;

typedef struct {
    const char *project_id;
    const char *name;
    int64_t tasks;
    int64_t done;
} workspace_report_t;

/* Rows of one query; exactly one of the arrays is set. Free with
 * workspace_store_rows_free (accepts a zeroed struct). */
typedef struct {
    PGresult *res;
    size_t n;
    workspace_project_t *projects;
    workspace_task_t *tasks;
    workspace_report_t *reports;
} workspace_rows_t;

void workspace_store_rows_free(workspace_rows_t *rows);

/* One page in (created_at, id) order. */
typedef struct {
    bool after;           /* start after the key below */
    int64_t after_usec;   /* created_at of the last row seen */
    const char *after_id; /* id of the last row seen */
    int limit;            /* rows wanted, >= 1 */
} workspace_page_t;

/* --- start-up ----------------------------------------------------------- */

/* As the owner role, on the main database: creates schema (the row
 * model's shared schema) if missing, grants app_role USAGE and SELECT,
 * INSERT, UPDATE, DELETE on its tables now and later
 * (kl_tenant_db_grant_schema), and prepares the move fence
 * (kl_tenant_db_prepare_main). Idempotent; run at every start. */
int workspace_store_prepare(kl_pg_t *owner, const char *schema,
                            const char *app_role, kl_status_t *status);

/* The role a connection runs as (SELECT current_user) into out. */
int workspace_store_current_role(kl_pg_t *pg, char *out, size_t out_size,
                                 kl_status_t *status);

/* As the application role: FAILED_PRECONDITION, naming the problem, when
 * the role is a superuser or has BYPASSRLS, owns (or is a member of the
 * owner of) schema (a tenant or shared schema) or any table in it, holds
 * TRUNCATE,
 * REFERENCES or TRIGGER on one (RLS does not govern them), or when a
 * table it can use lacks row-level security enabled and forced. Reads
 * pg_catalog only. */
int workspace_store_check(kl_pg_t *app, const char *schema,
                          kl_status_t *status);

/* --- data: inside a tenant-scoped transaction ---------------------------- */

/* Where a read's statements run: in the caller's open tenant-scoped
 * transaction (pg), or, with pg NULL, each as one kl_tenant_read on tdb
 * for place (BEGIN READ ONLY, scope, statement and COMMIT in one round
 * trip; its UNAVAILABLE "tenant placement changed, retry" comes back as
 * is). The reads below that take one run a single statement, except when
 * a task is not found (a second one tells which of project and task is
 * missing). */
typedef struct {
    kl_pg_t *pg;                    /* the open transaction, or NULL */
    kl_tenant_db_t *tdb;            /* with pg NULL: the worker's */
    const kl_tenant_place_t *place; /* with pg NULL: the tenant's */
} workspace_db_t;

int workspace_store_project_create(kl_pg_t *pg, const char *name,
                                   const char *description,
                                   workspace_rows_t *out, kl_status_t *status);
int workspace_store_project_get(const workspace_db_t *db, const char *id,
                                workspace_rows_t *out, kl_status_t *status);
/* Up to page->limit projects; *more whether more follow. */
int workspace_store_project_list(const workspace_db_t *db,
                                 const workspace_page_t *page,
                                 workspace_rows_t *out, bool *more,
                                 kl_status_t *status);
/* name, description: NULL leaves the column unchanged. */
int workspace_store_project_update(kl_pg_t *pg, const char *id,
                                   const char *name, const char *description,
                                   workspace_rows_t *out, kl_status_t *status);
/* Deletes the project and (cascade) its tasks. */
int workspace_store_project_delete(kl_pg_t *pg, const char *id,
                                   kl_status_t *status);

/* NOT_FOUND "project <id> not found" when the project is not the tenant's. */
int workspace_store_task_create(kl_pg_t *pg, const char *project_id,
                                const char *title, const char *notes,
                                workspace_rows_t *out, kl_status_t *status);
int workspace_store_task_get(const workspace_db_t *db, const char *project_id,
                             const char *id, workspace_rows_t *out,
                             kl_status_t *status);
int workspace_store_task_list(kl_pg_t *pg, const char *project_id,
                              const workspace_page_t *page,
                              workspace_rows_t *out, bool *more,
                              kl_status_t *status);
/* title, notes: NULL unchanged; done: -1 unchanged, 0 or 1. */
int workspace_store_task_update(kl_pg_t *pg, const char *project_id,
                                const char *id, const char *title,
                                const char *notes, int done,
                                workspace_rows_t *out, kl_status_t *status);
int workspace_store_task_delete(kl_pg_t *pg, const char *project_id,
                                const char *id, kl_status_t *status);

/* Every task of the n projects ids, ordered by project then (created_at,
 * id). */
int workspace_store_tasks_of(kl_pg_t *pg, const char *const *project_ids,
                             size_t n, workspace_rows_t *out,
                             kl_status_t *status);

/* Per project (in creation order): its task count and done count. One
 * query. */
int workspace_store_reports(const workspace_db_t *db, workspace_rows_t *out,
                            kl_status_t *status);

#endif
