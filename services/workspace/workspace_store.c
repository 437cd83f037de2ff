/*
 * workspace_store: SQL of the workspace service. Every data statement is
 * prepared once per connection (kl_pg_query) under a "workspace_" name and
 * carries no tenant condition of its own: the row-level security policies
 * add it, from the transaction's app.tenant_id. No statement names a
 * schema either: the tenant-scoped transaction (kl_tenant_tx_begin, or
 * kl_tenant_read's one-round-trip transaction) sets search_path to the
 * tenant's schema in whichever isolation model, and PostgreSQL re-plans a
 * prepared statement when search_path changes. The tables themselves come
 * from the versioned files in migrations/.
 */
#include "workspace_store.h"

#include "kl_alloc.h"
#include "kl_tenant_db.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int
workspace_store_prepare(kl_pg_t *owner, const char *schema,
                        const char *app_role, kl_status_t *status)
{
    int rc = kl_tenant_db_grant_schema(owner, schema, app_role, status);
    if (rc == 0)
        rc = kl_tenant_db_prepare_main(owner, app_role, status);
    return rc;
}

int
workspace_store_current_role(kl_pg_t *pg, char *out, size_t out_size,
                             kl_status_t *status)
{
    PGresult *res = kl_pg_query(pg, "workspace_current_role",
                                "SELECT current_user::text", 0, NULL, status);
    if (!res)
        return -(int)status->code;
    snprintf(out, out_size, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return 0;
}

static bool
s_true(const PGresult *res, int row, int col)
{
    return strcmp(PQgetvalue(res, row, col), "t") == 0;
}

/* The role's attributes. */
static int
s_check_role(kl_pg_t *app, kl_status_t *status)
{
    PGresult *res = kl_pg_query(
        app, "workspace_check_role",
        "SELECT r.rolname::text, r.rolsuper, r.rolbypassrls"
        " FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
        0, NULL, status);
    if (!res)
        return -(int)status->code;
    int rc = 0;
    if (PQntuples(res) != 1)
        rc = kl_status_set(status, KL_INTERNAL,
                           "current_user not found in pg_roles");
    else if (s_true(res, 0, 1))
        rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                           "application role \"%s\" is a superuser: "
                           "row-level security would not apply to it",
                           PQgetvalue(res, 0, 0));
    else if (s_true(res, 0, 2))
        rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                           "application role \"%s\" has BYPASSRLS: "
                           "row-level security would not apply to it",
                           PQgetvalue(res, 0, 0));
    PQclear(res);
    return rc;
}

/* The schema and its tables: ownership, privileges, row-level security. */
static int
s_check_tables(kl_pg_t *app, const char *schema, kl_status_t *status)
{
    PGresult *res = kl_pg_query(
        app, "workspace_check_schema",
        "SELECT pg_catalog.pg_get_userbyid(n.nspowner)::text,"
        " pg_catalog.pg_has_role(current_user, n.nspowner, 'MEMBER')"
        " FROM pg_catalog.pg_namespace n WHERE n.nspname = $1",
        1, (const char *const[]){schema}, status);
    if (!res)
        return -(int)status->code;
    int rc = 0;
    if (PQntuples(res) != 1)
        rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                           "schema %s does not exist: migrations have "
                           "not run",
                           schema);
    else if (s_true(res, 0, 1))
        rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                           "application role owns schema %s (owner "
                           "\"%s\"): use a role that owns nothing",
                           schema, PQgetvalue(res, 0, 0));
    PQclear(res);
    if (rc < 0)
        return rc;

    res = kl_pg_query(
        app, "workspace_check_tables",
        "SELECT c.relname::text,"
        " pg_catalog.pg_get_userbyid(c.relowner)::text,"
        " pg_catalog.pg_has_role(current_user, c.relowner, 'MEMBER'),"
        " c.relrowsecurity AND c.relforcerowsecurity,"
        " pg_catalog.has_table_privilege(c.oid,"
        "  'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER'),"
        " pg_catalog.has_table_privilege(c.oid,"
        "  'TRUNCATE, REFERENCES, TRIGGER')"
        " FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')"
        " ORDER BY c.relname",
        1, (const char *const[]){schema}, status);
    if (!res)
        return -(int)status->code;
    int found = 0;
    for (int i = 0; i < PQntuples(res) && rc == 0; i++) {
        const char *table = PQgetvalue(res, i, 0);
        if (strcmp(table, "projects") == 0 || strcmp(table, "tasks") == 0)
            found++;
        if (s_true(res, i, 2))
            rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                               "application role owns table %s.%s "
                               "(owner \"%s\"): use a role that owns nothing",
                               schema, table, PQgetvalue(res, i, 1));
        else if (s_true(res, i, 5))
            rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                               "application role has TRUNCATE, REFERENCES or "
                               "TRIGGER on %s.%s: row-level security "
                               "does not govern them",
                               schema, table);
        /* A table the role cannot touch at all (schema_migrations) holds
         * no tenant data it could see; every other one must be forced. */
        else if (s_true(res, i, 4) && !s_true(res, i, 3))
            rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                               "table %s.%s does not have row-level "
                               "security enabled and forced",
                               schema, table);
    }
    PQclear(res);
    if (rc == 0 && found != 2)
        rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                           "tables %s.projects and %s.tasks "
                           "are missing: migrations have not run",
                           schema, schema);
    return rc;
}

int
workspace_store_check(kl_pg_t *app, const char *schema, kl_status_t *status)
{
    int rc = s_check_role(app, status);
    if (rc == 0)
        rc = s_check_tables(app, schema, status);
    return rc;
}

/* --- rows ------------------------------------------------------------- */

/* RFC 3339 UTC with milliseconds. */
#define S_TS(col)                                                              \
    "to_char(" col " AT TIME ZONE 'UTC', "                                     \
    "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
#define S_USEC(col) "(extract(epoch FROM " col ") * 1000000)::bigint"

#define S_PROJECT_COLS                                                         \
    "id::text, name, description, " S_TS("created_at") ", " S_TS(              \
        "updated_at") ", " S_USEC("created_at")
#define S_TASK_COLS                                                            \
    "id::text, project_id::text, title, notes, done, " S_TS(                   \
        "created_at") ", " S_TS("updated_at") ", " S_USEC("created_at")

/* Keyset condition on (created_at, id) after ($n, $n+1). */
#define S_AFTER(a, b)                                                          \
    "(created_at, id) > ('epoch'::timestamptz + $" a                           \
    "::bigint * interval '1 microsecond', $" b "::uuid)"

void
workspace_store_rows_free(workspace_rows_t *rows)
{
    if (!rows)
        return;
    PQclear(rows->res);
    free(rows->projects);
    free(rows->tasks);
    free(rows->reports);
    memset(rows, 0, sizeof *rows);
}

static void
s_projects(PGresult *res, size_t n, workspace_rows_t *out)
{
    memset(out, 0, sizeof *out);
    out->res = res;
    out->n = n;
    out->projects = kl_calloc(n ? n : 1, sizeof *out->projects);
    for (size_t i = 0; i < n; i++) {
        workspace_project_t *p = &out->projects[i];
        int r = (int)i;
        p->id = PQgetvalue(res, r, 0);
        p->name = PQgetvalue(res, r, 1);
        p->description = PQgetvalue(res, r, 2);
        p->created_at = PQgetvalue(res, r, 3);
        p->updated_at = PQgetvalue(res, r, 4);
        p->created_usec = strtoll(PQgetvalue(res, r, 5), NULL, 10);
    }
}

static void
s_tasks(PGresult *res, size_t n, workspace_rows_t *out)
{
    memset(out, 0, sizeof *out);
    out->res = res;
    out->n = n;
    out->tasks = kl_calloc(n ? n : 1, sizeof *out->tasks);
    for (size_t i = 0; i < n; i++) {
        workspace_task_t *t = &out->tasks[i];
        int r = (int)i;
        t->id = PQgetvalue(res, r, 0);
        t->project_id = PQgetvalue(res, r, 1);
        t->title = PQgetvalue(res, r, 2);
        t->notes = PQgetvalue(res, r, 3);
        t->done = s_true(res, r, 4);
        t->created_at = PQgetvalue(res, r, 5);
        t->updated_at = PQgetvalue(res, r, 6);
        t->created_usec = strtoll(PQgetvalue(res, r, 7), NULL, 10);
    }
}

/* Runs one statement where db says: in the open transaction, or as one
 * tenant-scoped read. As kl_pg_query. */
static PGresult *
s_query(const workspace_db_t *db, const char *name, const char *sql,
        int nparams, const char *const *params, kl_status_t *status)
{
    if (db->pg)
        return kl_pg_query(db->pg, name, sql, nparams, params, status);
    return kl_tenant_read(db->tdb, db->place, name, sql, nparams, params,
                          status);
}

/* One row or NOT_FOUND "<what> <id> not found"; takes res. */
static int
s_one(PGresult *res, bool project, const char *what, const char *id,
      workspace_rows_t *out, kl_status_t *status)
{
    if (PQntuples(res) == 0) {
        PQclear(res);
        return kl_status_set(status, KL_NOT_FOUND, "%s %s not found", what, id);
    }
    if (project)
        s_projects(res, 1, out);
    else
        s_tasks(res, 1, out);
    return 0;
}

/* NOT_FOUND "project <id> not found" unless the tenant has it. lock
 * needs an open transaction (db->pg). */
static int
s_project_exists(const workspace_db_t *db, const char *id, bool lock,
                 kl_status_t *status)
{
    const char *params[] = {id};
    /* FOR KEY SHARE keeps the project from being deleted until the
     * transaction ends, so a task is never added to a vanishing one. */
    PGresult *res = lock ? kl_pg_query(db->pg, "workspace_project_lock",
                                       "SELECT 1 FROM projects WHERE id = $1"
                                       " FOR KEY SHARE",
                                       1, params, status)
                         : s_query(db, "workspace_project_exists",
                                   "SELECT 1 FROM projects WHERE id = $1", 1,
                                   params, status);
    if (!res)
        return -(int)status->code;
    int rc = PQntuples(res) == 0 ? kl_status_set(status, KL_NOT_FOUND,
                                                 "project %s not found", id)
                                 : 0;
    PQclear(res);
    return rc;
}

/* --- projects --------------------------------------------------------- */

int
workspace_store_project_create(kl_pg_t *pg, const char *name,
                               const char *description, workspace_rows_t *out,
                               kl_status_t *status)
{
    const char *params[] = {name, description ? description : ""};
    PGresult *res =
        kl_pg_query(pg, "workspace_project_create",
                    "INSERT INTO projects (name, description) VALUES ($1, $2)"
                    " RETURNING " S_PROJECT_COLS,
                    2, params, status);
    if (!res)
        return -(int)status->code;
    s_projects(res, 1, out);
    return 0;
}

int
workspace_store_project_get(const workspace_db_t *db, const char *id,
                            workspace_rows_t *out, kl_status_t *status)
{
    const char *params[] = {id};
    PGresult *res =
        s_query(db, "workspace_project_get",
                "SELECT " S_PROJECT_COLS " FROM projects WHERE id = $1", 1,
                params, status);
    if (!res)
        return -(int)status->code;
    return s_one(res, true, "project", id, out, status);
}

int
workspace_store_project_list(const workspace_db_t *db,
                             const workspace_page_t *page,
                             workspace_rows_t *out, bool *more,
                             kl_status_t *status)
{
    char limit[16], usec[24];
    snprintf(limit, sizeof limit, "%d", page->limit + 1);
    snprintf(usec, sizeof usec, "%lld", (long long)page->after_usec);
    const char *params[] = {limit, page->after ? usec : NULL,
                            page->after ? page->after_id : NULL};
    PGresult *res = s_query(db, "workspace_project_list",
                            "SELECT " S_PROJECT_COLS " FROM projects"
                            " WHERE $2::bigint IS NULL OR " S_AFTER(
                                "2", "3") " ORDER BY created_at, id LIMIT $1",
                            3, params, status);
    if (!res)
        return -(int)status->code;
    size_t n = (size_t)PQntuples(res);
    *more = n > (size_t)page->limit;
    s_projects(res, *more ? (size_t)page->limit : n, out);
    return 0;
}

int
workspace_store_project_update(kl_pg_t *pg, const char *id, const char *name,
                               const char *description, workspace_rows_t *out,
                               kl_status_t *status)
{
    const char *params[] = {id, name, description};
    PGresult *res = kl_pg_query(
        pg, "workspace_project_update",
        "UPDATE projects SET name = COALESCE($2, name),"
        " description = COALESCE($3, description), updated_at = now()"
        " WHERE id = $1 RETURNING " S_PROJECT_COLS,
        3, params, status);
    if (!res)
        return -(int)status->code;
    return s_one(res, true, "project", id, out, status);
}

int
workspace_store_project_delete(kl_pg_t *pg, const char *id, kl_status_t *status)
{
    const char *params[] = {id};
    PGresult *res =
        kl_pg_query(pg, "workspace_project_delete",
                    "DELETE FROM projects WHERE id = $1", 1, params, status);
    if (!res)
        return -(int)status->code;
    int rc =
        strcmp(PQcmdTuples(res), "0") == 0
            ? kl_status_set(status, KL_NOT_FOUND, "project %s not found", id)
            : 0;
    PQclear(res);
    return rc;
}

/* --- tasks ------------------------------------------------------------ */

int
workspace_store_task_create(kl_pg_t *pg, const char *project_id,
                            const char *title, const char *notes,
                            workspace_rows_t *out, kl_status_t *status)
{
    int rc =
        s_project_exists(&(workspace_db_t){.pg = pg}, project_id, true, status);
    if (rc < 0)
        return rc;
    const char *params[] = {project_id, title, notes ? notes : ""};
    PGresult *res = kl_pg_query(pg, "workspace_task_create",
                                "INSERT INTO tasks (project_id, title, notes)"
                                " VALUES ($1, $2, $3) RETURNING " S_TASK_COLS,
                                3, params, status);
    if (!res)
        return -(int)status->code;
    s_tasks(res, 1, out);
    return 0;
}

/* After a task statement matched nothing: which of the two is missing. */
static int
s_task_missing(const workspace_db_t *db, const char *project_id, const char *id,
               kl_status_t *status)
{
    int rc = s_project_exists(db, project_id, false, status);
    if (rc < 0)
        return rc;
    return kl_status_set(status, KL_NOT_FOUND, "task %s not found", id);
}

static int
s_task_one(const workspace_db_t *db, PGresult *res, const char *project_id,
           const char *id, workspace_rows_t *out, kl_status_t *status)
{
    if (PQntuples(res) == 0) {
        PQclear(res);
        return s_task_missing(db, project_id, id, status);
    }
    s_tasks(res, 1, out);
    return 0;
}

int
workspace_store_task_get(const workspace_db_t *db, const char *project_id,
                         const char *id, workspace_rows_t *out,
                         kl_status_t *status)
{
    const char *params[] = {project_id, id};
    PGresult *res = s_query(db, "workspace_task_get",
                            "SELECT " S_TASK_COLS " FROM tasks"
                            " WHERE project_id = $1 AND id = $2",
                            2, params, status);
    if (!res)
        return -(int)status->code;
    /* Not found: a second statement tells which of the two is missing.
     * Outside a transaction it reads a later snapshot than the first, as
     * every statement of a READ COMMITTED transaction does anyway. */
    return s_task_one(db, res, project_id, id, out, status);
}

int
workspace_store_task_list(kl_pg_t *pg, const char *project_id,
                          const workspace_page_t *page, workspace_rows_t *out,
                          bool *more, kl_status_t *status)
{
    int rc = s_project_exists(&(workspace_db_t){.pg = pg}, project_id, false,
                              status);
    if (rc < 0)
        return rc;
    char limit[16], usec[24];
    snprintf(limit, sizeof limit, "%d", page->limit + 1);
    snprintf(usec, sizeof usec, "%lld", (long long)page->after_usec);
    const char *params[] = {project_id, limit, page->after ? usec : NULL,
                            page->after ? page->after_id : NULL};
    PGresult *res =
        kl_pg_query(pg, "workspace_task_list",
                    "SELECT " S_TASK_COLS " FROM tasks WHERE project_id = $1"
                    " AND ($3::bigint IS NULL OR " S_AFTER(
                        "3", "4") ")"
                                  " ORDER BY created_at, id LIMIT $2",
                    4, params, status);
    if (!res)
        return -(int)status->code;
    size_t n = (size_t)PQntuples(res);
    *more = n > (size_t)page->limit;
    s_tasks(res, *more ? (size_t)page->limit : n, out);
    return 0;
}

int
workspace_store_task_update(kl_pg_t *pg, const char *project_id, const char *id,
                            const char *title, const char *notes, int done,
                            workspace_rows_t *out, kl_status_t *status)
{
    const char *params[] = {project_id, id, title, notes,
                            done < 0 ? NULL
                            : done   ? "true"
                                     : "false"};
    PGresult *res = kl_pg_query(
        pg, "workspace_task_update",
        "UPDATE tasks SET title = COALESCE($3, title),"
        " notes = COALESCE($4, notes), done = COALESCE($5::boolean, done),"
        " updated_at = now() WHERE project_id = $1 AND id = $2"
        " RETURNING " S_TASK_COLS,
        5, params, status);
    if (!res)
        return -(int)status->code;
    return s_task_one(&(workspace_db_t){.pg = pg}, res, project_id, id, out,
                      status);
}

int
workspace_store_task_delete(kl_pg_t *pg, const char *project_id, const char *id,
                            kl_status_t *status)
{
    const char *params[] = {project_id, id};
    PGresult *res =
        kl_pg_query(pg, "workspace_task_delete",
                    "DELETE FROM tasks WHERE project_id = $1 AND id = $2", 2,
                    params, status);
    if (!res)
        return -(int)status->code;
    bool none = strcmp(PQcmdTuples(res), "0") == 0;
    PQclear(res);
    return none ? s_task_missing(&(workspace_db_t){.pg = pg}, project_id, id,
                                 status)
                : 0;
}

int
workspace_store_tasks_of(kl_pg_t *pg, const char *const *project_ids, size_t n,
                         workspace_rows_t *out, kl_status_t *status)
{
    /* A uuid[] literal: the ids came from the database, 36 characters of
     * hex and hyphens each, so no quoting is needed. */
    char *array = kl_calloc(1, n * 37 + 3);
    size_t len = 0;
    array[len++] = '{';
    for (size_t i = 0; i < n; i++) {
        if (i)
            array[len++] = ',';
        len += (size_t)snprintf(array + len, 37, "%s", project_ids[i]);
    }
    array[len++] = '}';
    const char *params[] = {array};
    PGresult *res = kl_pg_query(pg, "workspace_tasks_of",
                                "SELECT " S_TASK_COLS " FROM tasks"
                                " WHERE project_id = ANY ($1::uuid[])"
                                " ORDER BY project_id, created_at, id",
                                1, params, status);
    free(array);
    if (!res)
        return -(int)status->code;
    s_tasks(res, (size_t)PQntuples(res), out);
    return 0;
}

int
workspace_store_reports(const workspace_db_t *db, workspace_rows_t *out,
                        kl_status_t *status)
{
    PGresult *res =
        s_query(db, "workspace_reports",
                "SELECT p.id::text, p.name, count(t.id),"
                " count(t.id) FILTER (WHERE t.done)"
                " FROM projects p LEFT JOIN tasks t"
                " ON t.tenant_id = p.tenant_id AND t.project_id = p.id"
                " GROUP BY p.tenant_id, p.id ORDER BY p.created_at, p.id",
                0, NULL, status);
    if (!res)
        return -(int)status->code;
    size_t n = (size_t)PQntuples(res);
    memset(out, 0, sizeof *out);
    out->res = res;
    out->n = n;
    out->reports = kl_calloc(n ? n : 1, sizeof *out->reports);
    for (size_t i = 0; i < n; i++) {
        workspace_report_t *r = &out->reports[i];
        r->project_id = PQgetvalue(res, (int)i, 0);
        r->name = PQgetvalue(res, (int)i, 1);
        r->tasks = strtoll(PQgetvalue(res, (int)i, 2), NULL, 10);
        r->done = strtoll(PQgetvalue(res, (int)i, 3), NULL, 10);
    }
    return 0;
}
