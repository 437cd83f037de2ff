/*
 * workspace_tx: the tenant-scoped transaction. The setting lives exactly as
 * long as the transaction, on commit and on rollback, so a reused
 * connection never carries a tenant into the next call.
 */
#include "kl_log.h"
#include "kl_pg.h"
#include "workspace_store.h"
#include "workspace_tx.h"
#include "ws_fixture.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static kl_pg_t *s_pg; /* application role */

static int
s_setup(void **state)
{
    kl_log_init("workspace-test", KL_WARN);
    if (ws_fixture_setup("workspace_tx") < 0)
        return -1;
    kl_status_t st;
    kl_pg_t *owner = kl_pg_new(ws.owner_url);
    int rc = workspace_store_migrate(owner, &st);
    if (rc == 0)
        rc = workspace_store_grant(owner, ws.app, &st);
    kl_pg_destroy(&owner);
    if (rc < 0) {
        fprintf(stderr, "migrate/grant: %s\n", st.message);
        return -1;
    }
    s_pg = kl_pg_new(ws.app_url);
    return 0;
}

static int
s_teardown(void **state)
{
    kl_pg_destroy(&s_pg);
    ws_fixture_teardown();
    return 0;
}

/* app.tenant_id as the connection sees it now ("" when unset). */
static void
s_expect_setting(const char *want)
{
    kl_status_t st;
    PGresult *r = kl_pg_query(
        s_pg, "test_setting",
        "SELECT coalesce(current_setting('app.tenant_id', true), '')", 0, NULL,
        &st);
    if (!r)
        fail_msg("%s", st.message);
    assert_string_equal(PQgetvalue(r, 0, 0), want);
    PQclear(r);
}

static int64_t
s_count_projects(void)
{
    kl_status_t st;
    PGresult *r =
        kl_pg_query(s_pg, "test_count",
                    "SELECT count(*) FROM workspace.projects", 0, NULL, &st);
    if (!r)
        fail_msg("%s", st.message);
    int64_t n = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return n;
}

static void
test_local_to_transaction(void **state)
{
    char a[37];
    ws_uuid(a);
    kl_status_t st;
    s_expect_setting("");
    assert_int_equal(workspace_tx_begin(s_pg, a, &st), 0);
    assert_true(kl_pg_in_transaction(s_pg));
    s_expect_setting(a);
    workspace_rows_t rows = {0};
    assert_int_equal(
        workspace_store_project_create(s_pg, "mine", "", &rows, &st), 0);
    workspace_store_rows_free(&rows);
    assert_int_equal(s_count_projects(), 1);
    assert_int_equal(workspace_tx_end(s_pg, 0, &st), 0);
    assert_false(kl_pg_in_transaction(s_pg));
    /* Committed: the same connection is back to no tenant, sees nothing. */
    s_expect_setting("");
    assert_int_equal(s_count_projects(), 0);

    /* Rolled back: the same. */
    assert_int_equal(workspace_tx_begin(s_pg, a, &st), 0);
    assert_int_equal(s_count_projects(), 1);
    assert_int_equal(workspace_tx_end(s_pg, -KL_NOT_FOUND, &st), -KL_NOT_FOUND);
    s_expect_setting("");
    assert_int_equal(s_count_projects(), 0);
}

/* Two tenants one after the other on one connection: each sees only its
 * own. */
static void
test_next_tenant_sees_only_its_own(void **state)
{
    char a[37], b[37];
    ws_uuid(a);
    ws_uuid(b);
    kl_status_t st;
    workspace_rows_t rows = {0};
    assert_int_equal(workspace_tx_begin(s_pg, a, &st), 0);
    assert_int_equal(workspace_store_project_create(s_pg, "a1", "", &rows, &st),
                     0);
    workspace_store_rows_free(&rows);
    assert_int_equal(workspace_tx_end(s_pg, 0, &st), 0);
    assert_int_equal(workspace_tx_begin(s_pg, b, &st), 0);
    assert_int_equal(s_count_projects(), 0);
    assert_int_equal(workspace_tx_end(s_pg, 0, &st), 0);
    assert_int_equal(workspace_tx_begin(s_pg, a, &st), 0);
    assert_int_equal(s_count_projects(), 1);
    assert_int_equal(workspace_tx_end(s_pg, 0, &st), 0);
}

static void
test_needs_tenant(void **state)
{
    kl_status_t st;
    assert_int_equal(workspace_tx_begin(s_pg, "", &st), -KL_INVALID_ARGUMENT);
    assert_string_equal(st.message,
                        "tenant-scoped transaction needs a tenant id");
    assert_false(kl_pg_in_transaction(s_pg));
    assert_int_equal(workspace_tx_begin(s_pg, NULL, &st), -KL_INVALID_ARGUMENT);
}

/* A database that cannot be reached: UNAVAILABLE, no transaction left. */
static void
test_unavailable(void **state)
{
    kl_pg_t *pg = kl_pg_new("host=127.0.0.1 port=1 dbname=x connect_timeout=2");
    char a[37];
    ws_uuid(a);
    kl_status_t st;
    assert_int_equal(workspace_tx_begin(pg, a, &st), -KL_UNAVAILABLE);
    assert_false(kl_pg_in_transaction(pg));
    kl_pg_destroy(&pg);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_local_to_transaction),
        cmocka_unit_test(test_next_tenant_sees_only_its_own),
        cmocka_unit_test(test_needs_tenant),
        cmocka_unit_test(test_unavailable),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
