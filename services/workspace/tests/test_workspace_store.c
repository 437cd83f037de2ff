/*
 * workspace_store's start-up work against a real PostgreSQL: migrations
 * and grants as the owner role, and the catalog check that refuses unsafe
 * application roles (superuser, BYPASSRLS, owner, RLS not forced, TRUNCATE).
 * Also: the application role sees no row without a tenant set.
 */
#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_pg.h"
#include "kl_tenant_db.h"
#include "workspace_store.h"
#include "ws_fixture.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static int
s_setup(void **state)
{
    kl_log_init("workspace-test", KL_WARN);
    if (ws_fixture_setup("workspace_store") < 0)
        return -1;
    ws_prepare_shared();
    return 0;
}

static int
s_teardown(void **state)
{
    ws_fixture_teardown();
    return 0;
}

/* Runs the catalog check as the role of url; returns its rc. */
static int
s_check_as(const char *url, kl_status_t *st)
{
    kl_pg_t *pg = kl_pg_new(url);
    int rc = workspace_store_check(pg, "workspace", st);
    kl_pg_destroy(&pg);
    return rc;
}

static void
s_expect_refusal(const char *url, const char *want)
{
    kl_status_t st;
    int rc = s_check_as(url, &st);
    if (rc != -KL_FAILED_PRECONDITION || strcmp(st.message, want) != 0)
        fail_msg("want FAILED_PRECONDITION \"%s\", got %s \"%s\"", want,
                 kl_strerror(rc), st.message);
}

static void
test_app_role_passes(void **state)
{
    kl_status_t st;
    int rc = s_check_as(ws.app_url, &st);
    if (rc != 0)
        fail_msg("check: %s", st.message);
    char role[128];
    kl_pg_t *pg = kl_pg_new(ws.app_url);
    assert_int_equal(workspace_store_current_role(pg, role, sizeof role, &st),
                     0);
    assert_string_equal(role, ws.app);
    kl_pg_destroy(&pg);
}

/* The facts the check stands on, read straight from pg_catalog. */
static void
test_catalog_facts(void **state)
{
    char *sql =
        kl_asprintf("SELECT count(*) FROM pg_catalog.pg_class c"
                    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                    " JOIN pg_catalog.pg_roles r ON r.oid = c.relowner"
                    " WHERE n.nspname = 'workspace' AND r.rolname = '%s'",
                    ws.app);
    char *v = ws_value(ws.super_url, sql);
    assert_string_equal(v, "0"); /* the app role owns nothing */
    free(v);
    free(sql);
    sql = kl_asprintf("SELECT rolsuper::text || rolbypassrls::text"
                      " FROM pg_catalog.pg_roles WHERE rolname = '%s'",
                      ws.app);
    v = ws_value(ws.super_url, sql);
    assert_string_equal(v, "falsefalse");
    free(v);
    free(sql);
    /* RLS enabled and forced on both tables, owned by the owner role. */
    v = ws_value(ws.super_url,
                 "SELECT string_agg(c.relname || ':' || c.relrowsecurity ||"
                 " c.relforcerowsecurity || ':' ||"
                 " pg_catalog.pg_get_userbyid(c.relowner), ','"
                 " ORDER BY c.relname) FROM pg_catalog.pg_class c"
                 " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                 " WHERE n.nspname = 'workspace' AND c.relkind = 'r'"
                 " AND c.relname IN ('projects', 'tasks')");
    char *want = kl_asprintf("projects:truetrue:%s,tasks:truetrue:%s", ws.owner,
                             ws.owner);
    assert_string_equal(v, want);
    free(want);
    free(v);
    /* Exactly the four privileges, nothing RLS does not govern. */
    sql =
        kl_asprintf("SELECT string_agg(table_name || ':' || privilege_type, ','"
                    " ORDER BY table_name, privilege_type)"
                    " FROM information_schema.role_table_grants"
                    " WHERE grantee = '%s' AND table_schema = 'workspace'",
                    ws.app);
    v = ws_value(ws.super_url, sql);
    assert_string_equal(v, "projects:DELETE,projects:INSERT,projects:SELECT,"
                           "projects:UPDATE,tasks:DELETE,tasks:INSERT,"
                           "tasks:SELECT,tasks:UPDATE");
    free(v);
    free(sql);
}

static void
test_refuses_superuser(void **state)
{
    char *user = ws_value(ws.super_url, "SELECT current_user::text");
    char *want = kl_asprintf("application role \"%s\" is a superuser: "
                             "row-level security would not apply to it",
                             user);
    s_expect_refusal(ws.super_url, want);
    free(want);
    free(user);
}

static void
test_refuses_owner(void **state)
{
    char *want = kl_asprintf("application role owns schema workspace (owner "
                             "\"%s\"): use a role that owns nothing",
                             ws.owner);
    s_expect_refusal(ws.owner_url, want);
    free(want);
}

static void
test_refuses_bypassrls(void **state)
{
    char role[128];
    snprintf(role, sizeof role, "%s_bypass", ws.app);
    char *sql = kl_asprintf("CREATE ROLE %s LOGIN BYPASSRLS", role);
    ws_exec(ws.admin_url, sql);
    free(sql);
    char *url = ws_conninfo(ws.admin_url, ws.db, role);
    char *want = kl_asprintf("application role \"%s\" has BYPASSRLS: "
                             "row-level security would not apply to it",
                             role);
    s_expect_refusal(url, want);
    free(want);
    free(url);
    sql = kl_asprintf("DROP ROLE %s", role);
    ws_exec(ws.admin_url, sql);
    free(sql);
}

/* A member of the owner role could turn RLS off: refused as an owner. */
static void
test_refuses_owner_member(void **state)
{
    char role[128];
    snprintf(role, sizeof role, "%s_member", ws.app);
    char *sql = kl_asprintf("CREATE ROLE %s LOGIN IN ROLE %s", role, ws.owner);
    ws_exec(ws.admin_url, sql);
    free(sql);
    char *url = ws_conninfo(ws.admin_url, ws.db, role);
    char *want = kl_asprintf("application role owns schema workspace (owner "
                             "\"%s\"): use a role that owns nothing",
                             ws.owner);
    s_expect_refusal(url, want);
    free(want);
    free(url);
    sql = kl_asprintf("DROP ROLE %s", role);
    ws_exec(ws.admin_url, sql);
    free(sql);
}

static void
test_refuses_rls_not_forced(void **state)
{
    ws_exec(ws.owner_url,
            "ALTER TABLE workspace.tasks NO FORCE ROW LEVEL SECURITY");
    s_expect_refusal(ws.app_url, "table workspace.tasks does not have "
                                 "row-level security enabled and forced");
    ws_exec(ws.owner_url,
            "ALTER TABLE workspace.tasks FORCE ROW LEVEL SECURITY;"
            "ALTER TABLE workspace.projects DISABLE ROW LEVEL SECURITY");
    s_expect_refusal(ws.app_url, "table workspace.projects does not have "
                                 "row-level security enabled and forced");
    ws_exec(ws.owner_url,
            "ALTER TABLE workspace.projects ENABLE ROW LEVEL SECURITY");
    kl_status_t st;
    assert_int_equal(s_check_as(ws.app_url, &st), 0);
}

static void
test_refuses_truncate(void **state)
{
    char *sql =
        kl_asprintf("GRANT TRUNCATE ON workspace.projects TO %s", ws.app);
    ws_exec(ws.owner_url, sql);
    free(sql);
    s_expect_refusal(ws.app_url,
                     "application role has TRUNCATE, REFERENCES or TRIGGER on "
                     "workspace.projects: row-level security does not govern "
                     "them");
    sql = kl_asprintf("REVOKE TRUNCATE ON workspace.projects FROM %s", ws.app);
    ws_exec(ws.owner_url, sql);
    free(sql);
    kl_status_t st;
    assert_int_equal(s_check_as(ws.app_url, &st), 0);
}

/* The grants run at every start: a second run changes nothing, and a
 * table without row-level security is never granted. (Nothing of ours puts
 * one in the shared schema: the migration history is
 * kowloon_migration.history, in its own schema; this one is made here.) */
static void
test_migrate_grant_again(void **state)
{
    kl_status_t st;
    ws_exec(ws.owner_url, "CREATE TABLE workspace.no_rls_scratch"
                          " (version int PRIMARY KEY)");
    kl_pg_t *owner = kl_pg_new(ws.owner_url);
    assert_int_equal(workspace_store_prepare(owner, "workspace", ws.app, &st),
                     0);
    assert_int_equal(workspace_store_prepare(owner, "workspace", ws.app, &st),
                     0);
    kl_pg_destroy(&owner);
    char *sql = kl_asprintf(
        "SELECT string_agg(c.relname || ':' ||"
        " has_table_privilege('%s', c.oid, 'SELECT')::text, ',' ORDER BY"
        " c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid ="
        " c.relnamespace WHERE n.nspname = 'workspace' AND c.relkind = 'r'",
        ws.app);
    char *v = ws_value(ws.super_url, sql);
    free(sql);
    assert_string_equal(v, "no_rls_scratch:false,projects:true,tasks:true");
    free(v);
    assert_int_equal(s_check_as(ws.app_url, &st), 0);
    ws_exec(ws.owner_url, "DROP TABLE workspace.no_rls_scratch");
}

/* A connection of the application role with no app.tenant_id set (or an
 * empty one) sees no row of any tenant, and nothing errors. */
static void
test_no_tenant_sees_nothing(void **state)
{
    char a[37], b[37];
    ws_uuid(a);
    ws_uuid(b);
    kl_status_t st;
    kl_tenant_db_t *tdb = kl_tenant_db_new(ws.app_url, NULL, 0, 2, &st);
    assert_non_null(tdb);
    const char *tenants[] = {a, b};
    for (int i = 0; i < 2; i++) {
        workspace_rows_t p = {0}, t = {0};
        kl_tenant_place_t place;
        assert_int_equal(kl_tenant_place(tenants[i], KL_ISOLATION_ROW,
                                         "workspace", NULL, &place, &st),
                         0);
        kl_pg_t *pg = kl_tenant_tx_begin(tdb, &place, &st);
        assert_non_null(pg);
        assert_int_equal(
            workspace_store_project_create(pg, "seen", "", &p, &st), 0);
        assert_int_equal(workspace_store_task_create(pg, p.projects[0].id,
                                                     "task", "", &t, &st),
                         0);
        assert_int_equal(kl_tenant_tx_commit(tdb, pg, &st), 0);
        workspace_store_rows_free(&p);
        workspace_store_rows_free(&t);
    }
    kl_tenant_db_destroy(&tdb);

    /* The rows are there (the superuser bypasses RLS)... */
    char *v = ws_value(ws.super_url,
                       "SELECT (SELECT count(*) FROM workspace.projects) || '/'"
                       " || (SELECT count(*) FROM workspace.tasks)");
    assert_string_equal(v, "2/2");
    free(v);
    /* ...but the application role, with no tenant, sees none. */
    v = ws_value(ws.app_url,
                 "SELECT (SELECT count(*) FROM workspace.projects) || '/'"
                 " || (SELECT count(*) FROM workspace.tasks)");
    assert_string_equal(v, "0/0");
    free(v);
    PGconn *c = PQconnectdb(ws.app_url);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    PGresult *r = PQexec(c, "SELECT set_config('app.tenant_id', '', false)");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    r = PQexec(c, "SELECT (SELECT count(*) FROM workspace.projects) || '/'"
                  " || (SELECT count(*) FROM workspace.tasks)");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(r, 0, 0), "0/0");
    PQclear(r);
    /* Nor can it write without a tenant, or delete what it cannot see. */
    r = PQexec(c, "INSERT INTO workspace.projects (name) VALUES ('x')");
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    PQclear(r);
    r = PQexec(c, "DELETE FROM workspace.projects");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    assert_string_equal(PQcmdTuples(r), "0");
    PQclear(r);
    /* TRUNCATE is not governed by RLS, so the role must not have it. */
    r = PQexec(c, "TRUNCATE workspace.tasks");
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    assert_string_equal(PQresultErrorField(r, PG_DIAG_SQLSTATE), "42501");
    PQclear(r);
    /* One tenant's scope shows only its own row. */
    char *sql =
        kl_asprintf("SELECT set_config('app.tenant_id', '%s', false)", a);
    r = PQexec(c, sql);
    free(sql);
    PQclear(r);
    r = PQexec(c, "SELECT count(*) FROM workspace.projects");
    assert_string_equal(PQgetvalue(r, 0, 0), "1");
    PQclear(r);
    PQfinish(c);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_app_role_passes),
        cmocka_unit_test(test_catalog_facts),
        cmocka_unit_test(test_refuses_superuser),
        cmocka_unit_test(test_refuses_owner),
        cmocka_unit_test(test_refuses_bypassrls),
        cmocka_unit_test(test_refuses_owner_member),
        cmocka_unit_test(test_refuses_rls_not_forced),
        cmocka_unit_test(test_refuses_truncate),
        cmocka_unit_test(test_migrate_grant_again),
        cmocka_unit_test(test_no_tenant_sees_nothing),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
