/*
 * Tests of kl_test_db (the test-support library kowloon_testing): the
 * conninfo rewriting, and a throwaway database made and dropped in the
 * PostgreSQL of KLTEST_PG_URL.
 */
#include "kl_test_db.h"
#include "kl_valid.h"

#include <libpq-fe.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* The value of keyword in conninfo (caller frees), or NULL. */
static char *
s_keyword(const char *conninfo, const char *keyword)
{
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
    assert_non_null(opts);
    char *v = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (strcmp(o->keyword, keyword) == 0 && o->val)
            v = strdup(o->val);
    PQconninfoFree(opts);
    return v;
}

static void
test_conninfo(void **state)
{
    const char *url = "postgresql://alice:s3cret@127.0.0.1:5433/postgres";
    char *c = kl_test_db_conninfo(url, "other", NULL);
    assert_non_null(c);
    char *v = s_keyword(c, "dbname");
    assert_string_equal(v, "other");
    free(v);
    v = s_keyword(c, "user");
    assert_string_equal(v, "alice");
    free(v);
    v = s_keyword(c, "password");
    assert_string_equal(v, "s3cret");
    free(v);
    v = s_keyword(c, "port");
    assert_string_equal(v, "5433");
    free(v);
    free(c);

    /* Another role drops the password; quotes and backslashes survive. */
    c = kl_test_db_conninfo(url, NULL, "o'b\\x");
    v = s_keyword(c, "user");
    assert_string_equal(v, "o'b\\x");
    free(v);
    v = s_keyword(c, "dbname");
    assert_string_equal(v, "postgres");
    free(v);
    assert_null(s_keyword(c, "password"));
    free(c);

    assert_null(kl_test_db_conninfo("postgresql://[bad", NULL, NULL));
}

static void
test_uuid(void **state)
{
    char a[37], b[37];
    kl_test_db_uuid(a);
    kl_test_db_uuid(b);
    assert_true(kl_valid_uuid(a));
    assert_int_equal(a[14], '4');
    assert_string_not_equal(a, b);
}

static void
test_database(void **state)
{
    if (!getenv("KLTEST_PG_URL") || !*getenv("KLTEST_PG_URL"))
        fail_msg("test_kl_test_db needs KLTEST_PG_URL=postgresql://"
                 "postgres@127.0.0.1:PORT/postgres (a superuser)");
    kl_test_db_t *db = kl_test_db_new("test_kl_test_db", "kltest_tdb_fix");
    assert_non_null(db);
    char *name = strdup(kl_test_db_name(db));
    assert_non_null(strstr(name, "kltest_tdb_fix_"));
    char *admin = strdup(kl_test_db_admin_url(db));
    assert_string_equal(admin, getenv("KLTEST_PG_URL"));

    char *v = kl_test_db_value(kl_test_db_url(db), "SELECT current_database()");
    assert_string_equal(v, name);
    free(v);
    assert_int_equal(kl_test_db_exec(kl_test_db_url(db),
                                     "CREATE TABLE t (x int); "
                                     "INSERT INTO t VALUES (7)"),
                     0);
    v = kl_test_db_value(kl_test_db_url(db), "SELECT x FROM t");
    assert_string_equal(v, "7");
    free(v);
    /* No rows is an error, SQL NULL is "". */
    assert_null(
        kl_test_db_value(kl_test_db_url(db), "SELECT x FROM t WHERE false"));
    v = kl_test_db_value(kl_test_db_url(db), "SELECT NULL::int");
    assert_string_equal(v, "");
    free(v);
    assert_int_equal(kl_test_db_exec(kl_test_db_url(db), "SELEC 1"), -1);
    assert_null(kl_test_db_value(kl_test_db_url(db), "SELECT nope"));

    kl_test_db_destroy(&db);
    assert_null(db);
    kl_test_db_destroy(&db);
    char *sql = NULL;
    assert_true(asprintf(&sql,
                         "SELECT count(*) FROM pg_database WHERE datname = "
                         "'%s'",
                         name) > 0);
    v = kl_test_db_value(admin, sql);
    assert_string_equal(v, "0");
    free(v);
    free(sql);
    free(name);
    free(admin);
    /* Unreachable server: an error, not a crash. */
    assert_int_equal(
        kl_test_db_exec("host=127.0.0.1 port=1 connect_timeout=2", "SELECT 1"),
        -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conninfo),
        cmocka_unit_test(test_uuid),
        cmocka_unit_test(test_database),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
