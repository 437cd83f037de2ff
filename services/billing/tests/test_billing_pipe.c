/*
 * billing_pipe against a throwaway database (KLTEST_PG_URL): a transaction
 * in two round trips, a failure in either, a rollback, the connection lost
 * between them, and statements prepared again on the new connection.
 */
#include "billing_pipe.h"
#include "kl_pg.h"
#include "kl_test_db.h"

#include <libpq-fe.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

static kl_test_db_t *s_db; /* this run's database */
static const char *s_url;  /* its conninfo */

#define S_INSERT "INSERT INTO pipe_t (k, v) VALUES ($1::int, $2) RETURNING k"

/* One insert statement (k as text, kept in buf). */
static billing_pipe_stmt_t
s_insert(int k, char buf[16], const char **params)
{
    snprintf(buf, 16, "%d", k);
    params[0] = buf;
    params[1] = "v";
    return (billing_pipe_stmt_t){"pipe_test_insert", S_INSERT, 2, params};
}

static long
s_count(const char *where)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pipe_t WHERE %s", where);
    char *v = kl_test_db_value(s_url, sql);
    assert_non_null(v);
    long n = strtol(v, NULL, 10);
    free(v);
    return n;
}

/* The connection is idle and kl_pg answers on it. */
static void
s_assert_usable(kl_pg_t *pg)
{
    kl_status_t st;
    assert_false(kl_pg_in_transaction(pg));
    PGresult *res = kl_pg_query(pg, "pipe_test_one", "SELECT 1", 0, NULL, &st);
    if (!res)
        fail_msg("kl_pg after the pipe: %s", st.message);
    PQclear(res);
    PGconn *conn = kl_pg_conn(pg, &st);
    assert_non_null(conn);
    assert_int_equal(PQtransactionStatus(conn), PQTRANS_IDLE);
    assert_int_equal(PQpipelineStatus(conn), PQ_PIPELINE_OFF);
}

static int
s_setup(void **state)
{
    (void)state;
    s_db = kl_test_db_new("test_billing_pipe", "klpipe");
    if (!s_db)
        return -1;
    s_url = kl_test_db_url(s_db);
    return kl_test_db_exec(s_url, "CREATE TABLE pipe_t (k int PRIMARY KEY,"
                                  " v text NOT NULL)");
}

static int
s_teardown(void **state)
{
    (void)state;
    kl_test_db_destroy(&s_db);
    return 0;
}

/* Both round trips succeed: both statements' rows are committed, and each
 * statement is prepared once. */
static void
test_commit(void **state)
{
    (void)state;
    kl_pg_t *pg = kl_pg_new(s_url);
    billing_pipe_t *pipe = billing_pipe_new();
    kl_status_t st;
    for (int round = 0; round < 3; round++) {
        char a[16], b[16];
        const char *pa[2], *pb[2];
        billing_pipe_stmt_t s1 = s_insert(100 + 2 * round, a, pa);
        billing_pipe_stmt_t s2 = s_insert(101 + 2 * round, b, pb);
        PGresult *out = NULL;
        if (billing_pipe_begin(pipe, pg, &s1, 1, &out, &st) < 0)
            fail_msg("begin: %s", st.message);
        assert_int_equal(PQntuples(out), 1);
        assert_string_equal(PQgetvalue(out, 0, 0), a);
        PQclear(out);
        /* Not visible outside the transaction yet. */
        assert_int_equal(s_count("k >= 100 AND k < 200"), 2 * round);
        if (billing_pipe_commit(pipe, pg, &s2, 1, &out, &st) < 0)
            fail_msg("commit: %s", st.message);
        assert_string_equal(PQgetvalue(out, 0, 0), b);
        PQclear(out);
        assert_int_equal(s_count("k >= 100 AND k < 200"), 2 * round + 2);
    }
    s_assert_usable(pg);
    billing_pipe_destroy(&pipe);
    billing_pipe_destroy(&pipe); /* NULL: nothing */
    kl_pg_destroy(&pg);
}

/* The first round trip fails (a duplicate key): nothing is left open. */
static void
test_begin_fails(void **state)
{
    (void)state;
    assert_int_equal(kl_test_db_exec(s_url, "INSERT INTO pipe_t VALUES"
                                            " (200, 'x')"),
                     0);
    kl_pg_t *pg = kl_pg_new(s_url);
    billing_pipe_t *pipe = billing_pipe_new();
    kl_status_t st;
    char a[16];
    const char *pa[2];
    billing_pipe_stmt_t s1 = s_insert(200, a, pa);
    PGresult *out = (PGresult *)&st; /* must be reset to NULL */
    assert_int_equal(billing_pipe_begin(pipe, pg, &s1, 1, &out, &st),
                     -KL_ALREADY_EXISTS);
    assert_null(out);
    assert_non_null(strstr(st.message, "duplicate key"));
    s_assert_usable(pg);
    /* And commit has no transaction to finish. */
    assert_int_equal(billing_pipe_commit(pipe, pg, &s1, 1, &out, &st),
                     -KL_FAILED_PRECONDITION);
    /* The statements prepared in the failed round trip stay prepared (a
     * rollback keeps them): the next transaction uses them as they are. */
    s1 = s_insert(201, a, pa);
    assert_int_equal(billing_pipe_begin(pipe, pg, &s1, 1, &out, &st), 0);
    PQclear(out);
    assert_int_equal(billing_pipe_commit(pipe, pg, NULL, 0, NULL, &st), 0);
    assert_int_equal(s_count("k = 201"), 1);
    billing_pipe_destroy(&pipe);
    kl_pg_destroy(&pg);
}

/* The second round trip fails: the first one's writes are not committed. */
static void
test_commit_fails(void **state)
{
    (void)state;
    kl_pg_t *pg = kl_pg_new(s_url);
    billing_pipe_t *pipe = billing_pipe_new();
    kl_status_t st;
    char a[16], b[16];
    const char *pa[2], *pb[2];
    billing_pipe_stmt_t s1 = s_insert(300, a, pa);
    billing_pipe_stmt_t dup = s_insert(300, b, pb);
    PGresult *out = NULL;
    assert_int_equal(billing_pipe_begin(pipe, pg, &s1, 1, &out, &st), 0);
    PQclear(out);
    assert_int_equal(billing_pipe_commit(pipe, pg, &dup, 1, &out, &st),
                     -KL_ALREADY_EXISTS);
    assert_null(out);
    assert_int_equal(s_count("k = 300"), 0);
    s_assert_usable(pg);
    billing_pipe_destroy(&pipe);
    kl_pg_destroy(&pg);
}

/* billing_pipe_rollback undoes the first round trip. */
static void
test_rollback(void **state)
{
    (void)state;
    kl_pg_t *pg = kl_pg_new(s_url);
    billing_pipe_t *pipe = billing_pipe_new();
    kl_status_t st;
    char a[16];
    const char *pa[2];
    billing_pipe_stmt_t s1 = s_insert(400, a, pa);
    PGresult *out = NULL;
    assert_int_equal(billing_pipe_begin(pipe, pg, &s1, 1, &out, &st), 0);
    PQclear(out);
    billing_pipe_rollback(pipe, pg);
    assert_int_equal(s_count("k = 400"), 0);
    s_assert_usable(pg);
    /* A kl_pg transaction of its own open: refused. */
    assert_int_equal(kl_pg_begin(pg, &st), 0);
    assert_int_equal(billing_pipe_begin(pipe, pg, &s1, 1, &out, &st),
                     -KL_FAILED_PRECONDITION);
    kl_pg_rollback(pg);
    billing_pipe_destroy(&pipe);
    kl_pg_destroy(&pg);
}

/* The server ends the connection between the round trips: nothing is
 * committed, commit says UNAVAILABLE, and the next transaction runs on a
 * new connection with its statements prepared again. */
static void
test_connection_lost(void **state)
{
    (void)state;
    kl_pg_t *pg = kl_pg_new(s_url);
    billing_pipe_t *pipe = billing_pipe_new();
    kl_status_t st;
    char a[16], b[16];
    const char *pa[2], *pb[2];
    billing_pipe_stmt_t stmts[2] = {
        s_insert(500, a, pa),
        {"pipe_test_pid", "SELECT pg_backend_pid()", 0, NULL},
    };
    PGresult *out[2] = {NULL, NULL};
    assert_int_equal(billing_pipe_begin(pipe, pg, stmts, 2, out, &st), 0);
    char kill[128];
    snprintf(kill, sizeof kill, "SELECT pg_terminate_backend(%s, 5000)",
             PQgetvalue(out[1], 0, 0));
    PQclear(out[0]);
    PQclear(out[1]);
    char *done = kl_test_db_value(s_url, kill);
    assert_string_equal(done, "t");
    free(done);
    billing_pipe_stmt_t s2 = s_insert(501, b, pb);
    PGresult *one = NULL;
    int rc = billing_pipe_commit(pipe, pg, &s2, 1, &one, &st);
    if (rc != -KL_UNAVAILABLE)
        fail_msg("commit on a lost connection: %s %s", kl_strerror(rc),
                 st.message);
    assert_null(one);
    assert_int_equal(s_count("k IN (500, 501)"), 0);
    /* Again, on a new connection. */
    assert_int_equal(billing_pipe_begin(pipe, pg, stmts, 1, &one, &st), 0);
    PQclear(one);
    if (billing_pipe_commit(pipe, pg, &s2, 1, &one, &st) < 0)
        fail_msg("commit on the new connection: %s", st.message);
    PQclear(one);
    assert_int_equal(s_count("k IN (500, 501)"), 2);
    s_assert_usable(pg);
    billing_pipe_destroy(&pipe);
    kl_pg_destroy(&pg);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commit),
        cmocka_unit_test(test_begin_fails),
        cmocka_unit_test(test_commit_fails),
        cmocka_unit_test(test_rollback),
        cmocka_unit_test(test_connection_lost),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
