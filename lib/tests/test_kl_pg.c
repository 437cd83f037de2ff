/*
 * kl_pg against a real PostgreSQL: KLTEST_PG_URL names a superuser
 * connection; each run creates its own database and drops it at the end.
 */
#include "kl_alloc.h"
#include "kl_pg.h"
#include "kl_test_db.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

static kl_test_db_t *s_db;      /* this run's database */
static const char *s_admin_url; /* KLTEST_PG_URL */
static const char *s_db_url;    /* conninfo of this run's database */

static void
s_admin_exec(const char *sql)
{
    assert_int_equal(kl_test_db_exec(s_admin_url, sql), 0);
}

static int
s_group_setup(void **state)
{
    s_db = kl_test_db_new("test_kl_pg", "kltest_pg");
    if (!s_db)
        return -1;
    s_admin_url = kl_test_db_admin_url(s_db);
    s_db_url = kl_test_db_url(s_db);
    return 0;
}

static int
s_group_teardown(void **state)
{
    kl_test_db_destroy(&s_db);
    return 0;
}

/* The backend pid of pg's connection. */
static int
s_backend_pid(kl_pg_t *pg)
{
    kl_status_t st;
    PGresult *r =
        kl_pg_query(pg, "pid", "SELECT pg_backend_pid()", 0, NULL, &st);
    if (!r)
        fail_msg("pg_backend_pid: %s", st.message);
    int pid = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return pid;
}

/* Kills backend pid from another connection and waits until it is gone. */
static void
s_terminate(int pid)
{
    char *sql = kl_asprintf("SELECT pg_terminate_backend(%d)", pid);
    s_admin_exec(sql);
    free(sql);
    PGconn *c = PQconnectdb(s_admin_url);
    for (int i = 0; i < 100; i++) {
        char *q = kl_asprintf(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %d", pid);
        PGresult *r = PQexec(c, q);
        free(q);
        bool gone = strcmp(PQgetvalue(r, 0, 0), "0") == 0;
        PQclear(r);
        if (gone)
            break;
        usleep(20000);
    }
    PQfinish(c);
}

static void
test_query_params_and_nulls(void **state)
{
    kl_status_t st;
    kl_pg_t *pg = kl_pg_new(s_db_url);
    assert_int_equal(kl_pg_exec(pg,
                                "CREATE TABLE t1 (id int PRIMARY KEY, v text);"
                                "CREATE TABLE t2 (n int CHECK (n > 0))",
                                &st),
                     0);
    const char *ins = "INSERT INTO t1 (id, v) VALUES ($1, $2)";
    const char *p1[] = {"1", "one"};
    const char *p2[] = {"2", NULL};
    PGresult *r = kl_pg_query(pg, "ins", ins, 2, p1, &st);
    assert_non_null(r);
    assert_string_equal(PQcmdTuples(r), "1");
    PQclear(r);
    r = kl_pg_query(pg, "ins", ins, 2, p2, &st); /* already prepared */
    assert_non_null(r);
    PQclear(r);

    r = kl_pg_query(pg, "sel", "SELECT id, v FROM t1 ORDER BY id", 0, NULL,
                    &st);
    assert_non_null(r);
    assert_int_equal(PQntuples(r), 2);
    assert_string_equal(PQgetvalue(r, 0, 1), "one");
    assert_false(PQgetisnull(r, 0, 1));
    assert_true(PQgetisnull(r, 1, 1));
    PQclear(r);

    /* SQL NULL parameters compare as NULL. */
    const char *pn[] = {NULL};
    r = kl_pg_query(pg, "isnull", "SELECT $1::text IS NULL", 1, pn, &st);
    assert_non_null(r);
    assert_string_equal(PQgetvalue(r, 0, 0), "t");
    PQclear(r);

    assert_non_null(kl_pg_conn(pg, &st));
    kl_pg_destroy(&pg);
    assert_null(pg);
    kl_pg_destroy(&pg);
}

static void
test_error_mapping(void **state)
{
    kl_status_t st;
    kl_pg_t *pg = kl_pg_new(s_db_url);
    assert_int_equal(
        kl_pg_exec(pg,
                   "CREATE TABLE e1 (id int PRIMARY KEY, n int CHECK (n > 0))",
                   &st),
        0);
    const char *ins = "INSERT INTO e1 (id, n) VALUES ($1, $2)";
    const char *p[] = {"1", "1"};
    PGresult *r = kl_pg_query(pg, "e_ins", ins, 2, p, &st);
    assert_non_null(r);
    PQclear(r);

    assert_null(kl_pg_query(pg, "e_ins", ins, 2, p, &st));
    assert_int_equal(st.code, KL_ALREADY_EXISTS);
    assert_string_equal(st.message,
                        "duplicate key value violates unique constraint "
                        "\"e1_pkey\"");

    const char *neg[] = {"2", "-1"};
    assert_null(kl_pg_query(pg, "e_ins", ins, 2, neg, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_non_null(strstr(st.message, "violates check constraint"));

    const char *bad[] = {"3", "abc"};
    assert_null(kl_pg_query(pg, "e_ins", ins, 2, bad, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT); /* 22P02 */
    assert_non_null(strstr(st.message, "invalid input syntax"));

    assert_int_equal(kl_pg_exec(pg, "SELECT 1/0", &st), -KL_INVALID_ARGUMENT);
    assert_string_equal(st.message, "division by zero");

    assert_int_equal(kl_pg_exec(pg, "SELEC 1", &st), -KL_INTERNAL);
    assert_non_null(strstr(st.message, "syntax error"));

    assert_null(kl_pg_query(pg, "e_bad", "SELECT nope FROM e1", 0, NULL, &st));
    assert_int_equal(st.code, KL_INTERNAL);
    assert_string_equal(st.message, "column \"nope\" does not exist");

    /* statement_timeout -> DEADLINE_EXCEEDED. */
    assert_int_equal(kl_pg_exec(pg,
                                "SET statement_timeout = 50;"
                                "SELECT pg_sleep(2)",
                                &st),
                     -KL_DEADLINE_EXCEEDED);
    assert_int_equal(kl_pg_exec(pg, "SET statement_timeout = 0", &st), 0);

    /* A failed transaction's COMMIT writes nothing: ABORTED. */
    assert_int_equal(kl_pg_begin(pg, &st), 0);
    assert_int_equal(kl_pg_begin(pg, &st), -KL_FAILED_PRECONDITION);
    assert_int_equal(kl_pg_exec(pg, "SELECT 1/0", &st), -KL_INVALID_ARGUMENT);
    assert_int_equal(kl_pg_commit(pg, &st), -KL_ABORTED);
    assert_false(kl_pg_in_transaction(pg));
    assert_int_equal(kl_pg_exec(pg, "SELECT 1", &st), 0);
    kl_pg_destroy(&pg);

    /* Nobody listens: UNAVAILABLE, and no connection object. */
    pg = kl_pg_new("host=127.0.0.1 port=1 dbname=x user=x");
    assert_null(kl_pg_conn(pg, &st));
    assert_int_equal(st.code, KL_UNAVAILABLE);
    assert_non_null(strstr(st.message, "cannot connect to database"));
    assert_int_equal(kl_pg_exec(pg, "SELECT 1", &st), -KL_UNAVAILABLE);
    assert_int_equal(kl_pg_begin(pg, &st), -KL_UNAVAILABLE);
    assert_false(kl_pg_in_transaction(pg));
    kl_pg_destroy(&pg);
}

static void
test_transactions(void **state)
{
    kl_status_t st;
    kl_pg_t *pg = kl_pg_new(s_db_url);
    assert_int_equal(kl_pg_exec(pg, "CREATE TABLE tx (n int)", &st), 0);
    const char *one[] = {"1"};
    const char *two[] = {"2"};
    assert_int_equal(kl_pg_begin(pg, &st), 0);
    assert_true(kl_pg_in_transaction(pg));
    PQclear(
        kl_pg_query(pg, "tx_ins", "INSERT INTO tx VALUES ($1)", 1, one, &st));
    kl_pg_rollback(pg);
    assert_false(kl_pg_in_transaction(pg));
    assert_int_equal(kl_pg_begin(pg, &st), 0);
    PQclear(
        kl_pg_query(pg, "tx_ins", "INSERT INTO tx VALUES ($1)", 1, two, &st));
    assert_int_equal(kl_pg_commit(pg, &st), 0);
    assert_int_equal(kl_pg_commit(pg, &st), -KL_FAILED_PRECONDITION);
    PGresult *r = kl_pg_query(pg, "tx_sel",
                              "SELECT string_agg(n::text, ',') "
                              "FROM tx",
                              0, NULL, &st);
    assert_non_null(r);
    assert_string_equal(PQgetvalue(r, 0, 0), "2");
    PQclear(r);
    kl_pg_rollback(pg); /* nothing open: harmless */
    kl_pg_destroy(&pg);
}

static void
test_reconnect_idle(void **state)
{
    kl_status_t st;
    kl_pg_t *pg = kl_pg_new(s_db_url);
    int pid = s_backend_pid(pg);
    s_terminate(pid);
    /* The same prepared statement works again on a new connection. */
    int pid2 = s_backend_pid(pg);
    assert_int_not_equal(pid, pid2);

    /* begin retries the same way. */
    s_terminate(pid2);
    assert_int_equal(kl_pg_begin(pg, &st), 0);
    assert_int_equal(kl_pg_commit(pg, &st), 0);

    /* And a plain exec. */
    s_terminate(s_backend_pid(pg));
    assert_int_equal(kl_pg_exec(pg, "SELECT 1", &st), 0);
    kl_pg_destroy(&pg);
}

static void
test_broken_in_transaction(void **state)
{
    kl_status_t st;
    kl_pg_t *pg = kl_pg_new(s_db_url);
    assert_int_equal(kl_pg_begin(pg, &st), 0);
    int pid = s_backend_pid(pg);
    s_terminate(pid);
    assert_null(
        kl_pg_query(pg, "pid", "SELECT pg_backend_pid()", 0, NULL, &st));
    assert_int_equal(st.code, KL_UNAVAILABLE);
    /* The transaction is gone: later calls fail too, until rollback. */
    assert_true(kl_pg_in_transaction(pg));
    assert_int_equal(kl_pg_exec(pg, "SELECT 1", &st), -KL_UNAVAILABLE);
    assert_int_equal(kl_pg_commit(pg, &st), -KL_UNAVAILABLE);
    assert_false(kl_pg_in_transaction(pg));
    assert_int_not_equal(s_backend_pid(pg), pid);

    assert_int_equal(kl_pg_begin(pg, &st), 0);
    s_terminate(s_backend_pid(pg));
    assert_int_equal(kl_pg_exec(pg, "SELECT 1", &st), -KL_UNAVAILABLE);
    kl_pg_rollback(pg);
    assert_false(kl_pg_in_transaction(pg));
    assert_int_equal(kl_pg_exec(pg, "SELECT 1", &st), 0);
    kl_pg_destroy(&pg);
}

static int64_t
s_count(kl_pg_t *pg, const char *sql)
{
    kl_status_t st;
    PGresult *r = kl_pg_query(pg, NULL, sql, 0, NULL, &st);
    if (!r)
        fail_msg("%s: %s", sql, st.message);
    int64_t n = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return n;
}

/* --- pipelines --------------------------------------------------------- */

/* Messages libpq traced on conn while fn ran: "F" (sent) and "B"
 * (received) in order, one letter per message, into out. */
static void
s_trace(PGconn *conn, void (*fn)(void *), void *arg, char *out, size_t size)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    PQtrace(conn, f);
    PQsetTraceFlags(conn, PQTRACE_SUPPRESS_TIMESTAMPS);
    fn(arg);
    PQuntrace(conn);
    fclose(f);
    size_t o = 0;
    for (char *line = buf; line && *line && o + 1 < size;) {
        if ((line[0] == 'F' || line[0] == 'B') && line[1] == '\t')
            out[o++] = line[0];
        char *nl = strchr(line, '\n');
        line = nl ? nl + 1 : NULL;
    }
    out[o] = '\0';
    free(buf);
}

/* Whether every message sent precedes every message received: one round
 * trip. */
static bool
s_one_round_trip(const char *trace)
{
    const char *b = strchr(trace, 'B');
    return *trace == 'F' && b && !strchr(b, 'F');
}

typedef struct {
    kl_pg_t *pg;
    const kl_pg_stmt_t *stmts;
    size_t n;
    PGresult **res;
    int rc;
    kl_status_t st;
    unsigned flags; /* of kl_pg_pipeline_ex */
} s_pipe_t;

static void
s_pipe_run(void *arg)
{
    s_pipe_t *p = arg;
    p->rc = p->flags ? kl_pg_pipeline_ex(p->pg, p->stmts, p->n, p->flags,
                                         p->res, &p->st)
                     : kl_pg_pipeline(p->pg, p->stmts, p->n, p->res, &p->st);
}

static void
s_clear(PGresult **res, size_t n)
{
    for (size_t i = 0; i < n; i++)
        PQclear(res[i]);
}

/* The names prepared on pg's connection, comma-separated, ordered. */
static char *
s_prepared_names(kl_pg_t *pg)
{
    kl_status_t st;
    PGresult *r = kl_pg_query(pg, NULL,
                              "SELECT coalesce(string_agg(name, ',' ORDER BY "
                              "name), '') FROM pg_prepared_statements",
                              0, NULL, &st);
    if (!r)
        fail_msg("pg_prepared_statements: %s", st.message);
    char *v = kl_strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static void
test_pipeline_results(void **state)
{
    kl_status_t st;
    kl_pg_t *pg = kl_pg_new(s_db_url);
    assert_int_equal(
        kl_pg_exec(pg, "CREATE TABLE p1 (id int PRIMARY KEY, v text)", &st), 0);
    const char *one[] = {"1", "one"};
    const char *two[] = {"2", NULL};
    const char *ins = "INSERT INTO p1 (id, v) VALUES ($1, $2)";
    const kl_pg_stmt_t stmts[] = {
        {"p_begin", "BEGIN", 0, NULL},
        {"p_ins", ins, 2, one},
        {"p_ins", ins, 2, two}, /* prepared once, used twice */
        {NULL, "SELECT id, v FROM p1 WHERE id >= $1 ORDER BY id", 1,
         (const char *const[]){"1"}},
        {"p_commit", "COMMIT", 0, NULL},
    };
    PGresult *res[5];
    PGconn *conn = kl_pg_conn(pg, &st);
    assert_non_null(conn);
    s_pipe_t p = {pg, stmts, 5, res, 0, {0}, 0};
    char trace[256];
    s_trace(conn, s_pipe_run, &p, trace, sizeof trace);
    if (p.rc != 0)
        fail_msg("pipeline: %s", p.st.message);
    /* Everything went out before anything came back. */
    assert_true(s_one_round_trip(trace));
    assert_int_equal(PQresultStatus(res[0]), PGRES_COMMAND_OK);
    assert_string_equal(PQcmdTuples(res[1]), "1");
    assert_string_equal(PQcmdTuples(res[2]), "1");
    assert_int_equal(PQntuples(res[3]), 2);
    assert_string_equal(PQgetvalue(res[3], 0, 1), "one");
    assert_true(PQgetisnull(res[3], 1, 1));
    assert_string_equal(PQcmdStatus(res[4]), "COMMIT");
    s_clear(res, 5);
    assert_int_equal(PQtransactionStatus(conn), PQTRANS_IDLE);
    char *names = s_prepared_names(pg);
    assert_string_equal(names, "p_begin,p_commit,p_ins");
    free(names);

    /* Again: nothing is prepared twice (a second Prepare of a name would
     * fail with 42P05), and plain calls see the committed rows. */
    const char *three[] = {"3", "three"};
    const kl_pg_stmt_t again[] = {
        {"p_ins", ins, 2, three},
        {"p_count", "SELECT count(*) FROM p1", 0, NULL}};
    assert_int_equal(kl_pg_pipeline(pg, again, 2, res, &st), 0);
    assert_string_equal(PQgetvalue(res[1], 0, 0), "3");
    s_clear(res, 2);
    /* kl_pg_query shares the names prepared by a pipeline. */
    PGresult *r =
        kl_pg_query(pg, "p_count", "SELECT count(*) FROM p1", 0, NULL, &st);
    assert_non_null(r);
    assert_string_equal(PQgetvalue(r, 0, 0), "3");
    PQclear(r);
    assert_int_equal(kl_pg_pipeline(pg, again, 0, res, &st),
                     -KL_INVALID_ARGUMENT);
    kl_pg_destroy(&pg);
}

static void
test_pipeline_errors(void **state)
{
    kl_status_t st;
    kl_pg_t *pg = kl_pg_new(s_db_url);
    assert_int_equal(kl_pg_exec(pg,
                                "CREATE TABLE p2 (id int PRIMARY KEY,"
                                " n int CHECK (n > 0))",
                                &st),
                     0);
    const char *ins = "INSERT INTO p2 (id, n) VALUES ($1, $2)";
    PGresult *res[4];
    /* A failure inside the statements' transaction: mapped as kl_pg_query
     * maps it, the statements after it skipped, the transaction rolled
     * back, the connection idle and usable. */
    struct {
        const char *const *params;
        kl_code_t code;
        const char *message;
    } cases[] = {
        {(const char *const[]){"1", "1"}, KL_ALREADY_EXISTS,
         "duplicate key value violates unique constraint \"p2_pkey\""},
        {(const char *const[]){"2", "-1"}, KL_INVALID_ARGUMENT,
         "new row for relation \"p2\" violates check constraint "
         "\"p2_n_check\""},
        {(const char *const[]){"3", "x"}, KL_INVALID_ARGUMENT,
         "invalid input syntax for type integer: \"x\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const kl_pg_stmt_t stmts[] = {
            {"p_begin", "BEGIN", 0, NULL},
            {"p2_ins", ins, 2, (const char *const[]){"1", "1"}},
            {"p2_ins", ins, 2, cases[i].params},
            {"p_commit", "COMMIT", 0, NULL},
        };
        assert_int_equal(kl_pg_pipeline(pg, stmts, 4, res, &st),
                         -(int)cases[i].code);
        assert_string_equal(st.message, cases[i].message);
        /* The answers before the failed statement are kept. */
        assert_string_equal(PQcmdStatus(res[0]), "BEGIN");
        assert_string_equal(PQcmdStatus(res[1]), "INSERT 0 1");
        assert_null(res[2]);
        assert_null(res[3]);
        s_clear(res, 4);
        assert_int_equal(PQtransactionStatus(kl_pg_conn(pg, &st)),
                         PQTRANS_IDLE);
        assert_int_equal(s_count(pg, "SELECT count(*) FROM p2"), 0);
    }

    /* A statement that does not parse: its Prepare fails, the name is not
     * taken as prepared (the same call fails the same way again, not with
     * "prepared statement does not exist"). */
    const kl_pg_stmt_t bad[] = {{"p2_bad", "SELECT nope FROM p2", 0, NULL}};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(kl_pg_pipeline(pg, bad, 1, res, &st), -KL_INTERNAL);
        assert_string_equal(st.message, "column \"nope\" does not exist");
    }
    /* A failure outside an explicit transaction. */
    const kl_pg_stmt_t div[] = {{NULL, "SELECT 1", 0, NULL},
                                {NULL, "SELECT 1/0", 0, NULL}};
    assert_int_equal(kl_pg_pipeline(pg, div, 2, res, &st),
                     -KL_INVALID_ARGUMENT);
    assert_string_equal(st.message, "division by zero");
    assert_string_equal(PQgetvalue(res[0], 0, 0), "1");
    assert_null(res[1]);
    s_clear(res, 2);

    /* Statements that leave a transaction open fail, rolled back. */
    const kl_pg_stmt_t open_tx[] = {
        {"p_begin", "BEGIN", 0, NULL},
        {"p2_ins", ins, 2, (const char *const[]){"9", "9"}},
    };
    assert_int_equal(kl_pg_pipeline(pg, open_tx, 2, res, &st), -KL_INTERNAL);
    assert_string_equal(st.message, "pipeline left a transaction open");
    assert_null(res[0]);
    assert_null(res[1]);
    assert_int_equal(s_count(pg, "SELECT count(*) FROM p2"), 0);

    /* Not inside a kl_pg transaction. */
    assert_int_equal(kl_pg_begin(pg, &st), 0);
    assert_int_equal(kl_pg_pipeline(pg, div, 1, res, &st),
                     -KL_FAILED_PRECONDITION);
    kl_pg_rollback(pg);
    assert_int_equal(kl_pg_pipeline(pg, div, 1, res, &st), 0);
    s_clear(res, 1);
    kl_pg_destroy(&pg);

    /* Nobody listens. */
    pg = kl_pg_new("host=127.0.0.1 port=1 dbname=x user=x");
    assert_int_equal(kl_pg_pipeline(pg, div, 1, res, &st), -KL_UNAVAILABLE);
    assert_non_null(strstr(st.message, "cannot connect to database"));
    kl_pg_destroy(&pg);
}

static void
test_pipeline_reconnect(void **state)
{
    kl_status_t st;
    kl_pg_t *pg = kl_pg_new(s_db_url);
    const kl_pg_stmt_t stmts[] = {
        {"p_begin", "BEGIN", 0, NULL},
        {"p_pid", "SELECT pg_backend_pid()", 0, NULL},
        {"p_commit", "COMMIT", 0, NULL},
    };
    PGresult *res[3];
    assert_int_equal(kl_pg_pipeline(pg, stmts, 3, res, &st), 0);
    int pid = atoi(PQgetvalue(res[1], 0, 0));
    s_clear(res, 3);
    /* The backend goes away while the connection is idle: the next
     * pipeline runs on a new connection, its statements prepared again. */
    s_terminate(pid);
    if (kl_pg_pipeline(pg, stmts, 3, res, &st) != 0)
        fail_msg("after the backend went away: %s", st.message);
    int pid2 = atoi(PQgetvalue(res[1], 0, 0));
    s_clear(res, 3);
    assert_int_not_equal(pid, pid2);
    char *names = s_prepared_names(pg);
    assert_string_equal(names, "p_begin,p_commit,p_pid");
    free(names);

    /* A connection that breaks on use: its socket shut for writing, which
     * the check of an idle connection cannot see (nothing to read yet).
     * The pipeline fails to go out, and is sent again on a new one. */
    PGconn *conn = kl_pg_conn(pg, &st);
    assert_non_null(conn);
    assert_int_equal(shutdown(PQsocket(conn), SHUT_WR), 0);
    if (kl_pg_pipeline(pg, stmts, 3, res, &st) != 0)
        fail_msg("after the socket broke: %s", st.message);
    int pid3 = atoi(PQgetvalue(res[1], 0, 0));
    s_clear(res, 3);
    assert_int_not_equal(pid2, pid3);
    kl_pg_destroy(&pg);
}

/* --- transactions in two round trips (kl_pg_pipeline_ex) ---------------- */

/* An insert of k into ptx (k as text in buf). */
static kl_pg_stmt_t
s_tx_insert(int k, char buf[16], const char **params)
{
    snprintf(buf, 16, "%d", k);
    params[0] = buf;
    return (kl_pg_stmt_t){"ptx_insert",
                          "INSERT INTO ptx (k) VALUES ($1::int) RETURNING k", 1,
                          params};
}

/* kl_pg_pipeline_ex with its results checked (every one NULL on failure)
 * and cleared. */
static int
s_tx(kl_pg_t *pg, const kl_pg_stmt_t *stmts, size_t n, unsigned flags,
     kl_status_t *st)
{
    PGresult *res[4] = {(PGresult *)st, (PGresult *)st, (PGresult *)st,
                        (PGresult *)st};
    assert_true(n <= 4);
    int rc = kl_pg_pipeline_ex(pg, stmts, n, flags, res, st);
    for (size_t i = 0; i < n; i++) {
        if (rc < 0)
            assert_null(res[i]);
        PQclear(res[i]);
    }
    return rc;
}

/* Rows of ptx matching where, counted from another connection: what is
 * committed. */
static long
s_tx_committed(const char *where)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM ptx WHERE %s", where);
    char *v = kl_test_db_value(s_db_url, sql);
    assert_non_null(v);
    long n = strtol(v, NULL, 10);
    free(v);
    return n;
}

/* pg is outside a transaction, its connection idle, and queries work. */
static void
s_tx_assert_idle(kl_pg_t *pg)
{
    kl_status_t st;
    assert_false(kl_pg_in_transaction(pg));
    assert_int_equal(s_count(pg, "SELECT 1"), 1);
    PGconn *conn = kl_pg_conn(pg, &st);
    assert_non_null(conn);
    assert_int_equal(PQtransactionStatus(conn), PQTRANS_IDLE);
    assert_int_equal(PQpipelineStatus(conn), PQ_PIPELINE_OFF);
}

/* BEGIN with statements, then statements with COMMIT: one round trip
 * each, a kl_pg transaction in between (kl_pg_query runs in it), each
 * statement prepared once, committed only by the second. */
static void
test_pipeline_tx_commit(void **state)
{
    kl_status_t st;
    kl_pg_t *pg = kl_pg_new(s_db_url);
    assert_int_equal(
        kl_pg_exec(pg, "CREATE TABLE ptx (k int PRIMARY KEY)", &st), 0);
    PGconn *conn = kl_pg_conn(pg, &st);
    for (int round = 0; round < 3; round++) {
        char a[16], b[16], trace[256];
        const char *pa[1], *pb[1];
        kl_pg_stmt_t s1 = s_tx_insert(100 + 2 * round, a, pa);
        kl_pg_stmt_t s2 = s_tx_insert(101 + 2 * round, b, pb);
        PGresult *out = NULL;
        s_pipe_t p = {pg, &s1, 1, &out, 0, {0}, KL_PG_PIPE_BEGIN};
        s_trace(conn, s_pipe_run, &p, trace, sizeof trace);
        if (p.rc != 0)
            fail_msg("begin: %s", p.st.message);
        assert_true(s_one_round_trip(trace));
        assert_string_equal(PQgetvalue(out, 0, 0), a);
        PQclear(out);
        assert_true(kl_pg_in_transaction(pg));
        assert_int_equal(PQtransactionStatus(conn), PQTRANS_INTRANS);
        /* Visible inside the transaction, not outside it. */
        assert_int_equal(s_count(pg, "SELECT count(*) FROM ptx"),
                         2 * round + 1);
        assert_int_equal(s_tx_committed("true"), 2 * round);
        p = (s_pipe_t){pg, &s2, 1, &out, 0, {0}, KL_PG_PIPE_COMMIT};
        s_trace(conn, s_pipe_run, &p, trace, sizeof trace);
        if (p.rc != 0)
            fail_msg("commit: %s", p.st.message);
        assert_true(s_one_round_trip(trace));
        assert_string_equal(PQgetvalue(out, 0, 0), b);
        PQclear(out);
        assert_false(kl_pg_in_transaction(pg));
        assert_int_equal(s_tx_committed("true"), 2 * round + 2);
    }
    /* The same connection throughout; BEGIN and COMMIT prepared too. */
    assert_ptr_equal(kl_pg_conn(pg, &st), conn);
    char *names = s_prepared_names(pg);
    assert_string_equal(names, "kl_pg_pipe_begin,kl_pg_pipe_commit,ptx_insert");
    free(names);

    /* No statements: BEGIN alone, COMMIT alone. */
    assert_int_equal(s_tx(pg, NULL, 0, KL_PG_PIPE_BEGIN, &st), 0);
    assert_true(kl_pg_in_transaction(pg));
    assert_int_equal(s_tx(pg, NULL, 0, KL_PG_PIPE_COMMIT, &st), 0);
    /* COMMIT ends a transaction kl_pg_begin opened as well. */
    char c[16];
    const char *pc[1];
    kl_pg_stmt_t s3 = s_tx_insert(110, c, pc);
    assert_int_equal(kl_pg_begin(pg, &st), 0);
    assert_int_equal(s_tx(pg, &s3, 1, KL_PG_PIPE_COMMIT, &st), 0);
    /* Both flags: a whole transaction in one round trip. */
    s3 = s_tx_insert(111, c, pc);
    PGresult *out = NULL;
    assert_int_equal(kl_pg_pipeline_ex(pg, &s3, 1,
                                       KL_PG_PIPE_BEGIN | KL_PG_PIPE_COMMIT,
                                       &out, &st),
                     0);
    assert_string_equal(PQgetvalue(out, 0, 0), "111");
    PQclear(out);
    assert_int_equal(s_tx_committed("k IN (110, 111)"), 2);
    s_tx_assert_idle(pg);
    assert_int_equal(s_tx(pg, &s3, 1, 0x4, &st), -KL_INVALID_ARGUMENT);
    kl_pg_destroy(&pg);
}

/* Misuse: COMMIT outside a transaction, BEGIN inside one, statements that
 * end the transaction BEGIN opened. */
static void
test_pipeline_tx_misuse(void **state)
{
    kl_status_t st;
    kl_pg_t *pg = kl_pg_new(s_db_url);
    char a[16];
    const char *pa[1];
    kl_pg_stmt_t s1 = s_tx_insert(150, a, pa);
    assert_int_equal(s_tx(pg, &s1, 1, KL_PG_PIPE_COMMIT, &st),
                     -KL_FAILED_PRECONDITION);
    assert_int_equal(kl_pg_begin(pg, &st), 0);
    assert_int_equal(s_tx(pg, &s1, 1, KL_PG_PIPE_BEGIN, &st),
                     -KL_FAILED_PRECONDITION);
    /* Refused, not run: the open transaction is as it was. */
    assert_true(kl_pg_in_transaction(pg));
    kl_pg_rollback(pg);
    const kl_pg_stmt_t ends[] = {s1, {"p_commit", "COMMIT", 0, NULL}};
    assert_int_equal(s_tx(pg, ends, 2, KL_PG_PIPE_BEGIN, &st), -KL_INTERNAL);
    assert_string_equal(st.message, "pipeline ended its transaction");
    s_tx_assert_idle(pg);
    kl_pg_destroy(&pg);
}

/* The first round trip fails: mapped as kl_pg_query's, no result (not
 * even those before the failure), no transaction left; what it prepared
 * stays prepared (a rollback keeps it) and is used as it is. */
static void
test_pipeline_tx_begin_fails(void **state)
{
    kl_status_t st;
    assert_int_equal(kl_test_db_exec(s_db_url, "INSERT INTO ptx VALUES (200)"),
                     0);
    kl_pg_t *pg = kl_pg_new(s_db_url);
    char a[16];
    const char *pa[1];
    const kl_pg_stmt_t stmts[] = {
        {"ptx_before", "SELECT 1", 0, NULL},
        s_tx_insert(200, a, pa),
    };
    assert_int_equal(s_tx(pg, stmts, 2, KL_PG_PIPE_BEGIN, &st),
                     -KL_ALREADY_EXISTS);
    assert_string_equal(st.message, "duplicate key value violates unique "
                                    "constraint \"ptx_pkey\"");
    s_tx_assert_idle(pg);
    assert_int_equal(s_tx(pg, NULL, 0, KL_PG_PIPE_COMMIT, &st),
                     -KL_FAILED_PRECONDITION);
    kl_pg_stmt_t s1 = s_tx_insert(201, a, pa);
    assert_int_equal(s_tx(pg, &s1, 1, KL_PG_PIPE_BEGIN, &st), 0);
    assert_int_equal(s_tx(pg, NULL, 0, KL_PG_PIPE_COMMIT, &st), 0);
    assert_int_equal(s_tx_committed("k = 201"), 1);
    kl_pg_destroy(&pg);
}

/* The second round trip fails, in a statement, in COMMIT itself, or after
 * a failure inside the transaction: nothing of the transaction is
 * committed and kl_pg is outside it again. */
static void
test_pipeline_tx_commit_fails(void **state)
{
    kl_status_t st;
    kl_pg_t *pg = kl_pg_new(s_db_url);
    char a[16], b[16];
    const char *pa[1], *pb[1];
    kl_pg_stmt_t s1 = s_tx_insert(300, a, pa);
    kl_pg_stmt_t dup = s_tx_insert(300, b, pb);
    assert_int_equal(s_tx(pg, &s1, 1, KL_PG_PIPE_BEGIN, &st), 0);
    assert_int_equal(s_tx(pg, &dup, 1, KL_PG_PIPE_COMMIT, &st),
                     -KL_ALREADY_EXISTS);
    assert_int_equal(s_tx_committed("k = 300"), 0);
    s_tx_assert_idle(pg);

    /* COMMIT fails (a deferred constraint is checked there): not 0. */
    assert_int_equal(kl_pg_exec(pg,
                                "CREATE TABLE ptx_d (k int UNIQUE DEFERRABLE"
                                " INITIALLY DEFERRED)",
                                &st),
                     0);
    const kl_pg_stmt_t ins = {"ptx_d_ins", "INSERT INTO ptx_d VALUES (1)", 0,
                              NULL};
    assert_int_equal(s_tx(pg, &ins, 1, KL_PG_PIPE_BEGIN, &st), 0);
    assert_int_equal(s_tx(pg, &ins, 1, KL_PG_PIPE_COMMIT, &st),
                     -KL_ALREADY_EXISTS);
    assert_int_equal(s_count(pg, "SELECT count(*) FROM ptx_d"), 0);
    s_tx_assert_idle(pg);

    /* A kl_pg_query failed in the transaction: COMMIT would roll back. */
    s1 = s_tx_insert(301, a, pa);
    assert_int_equal(s_tx(pg, &s1, 1, KL_PG_PIPE_BEGIN, &st), 0);
    assert_null(kl_pg_query(pg, "ptx_div", "SELECT 1/0", 0, NULL, &st));
    assert_int_equal(s_tx(pg, NULL, 0, KL_PG_PIPE_COMMIT, &st), -KL_ABORTED);
    assert_string_equal(st.message, "transaction was rolled back");
    assert_int_equal(s_tx_committed("k = 301"), 0);
    s_tx_assert_idle(pg);
    kl_pg_destroy(&pg);
}

/* kl_pg_rollback undoes the first round trip; kl_pg_commit commits it. */
static void
test_pipeline_tx_rollback(void **state)
{
    kl_status_t st;
    kl_pg_t *pg = kl_pg_new(s_db_url);
    char a[16];
    const char *pa[1];
    kl_pg_stmt_t s1 = s_tx_insert(400, a, pa);
    assert_int_equal(s_tx(pg, &s1, 1, KL_PG_PIPE_BEGIN, &st), 0);
    kl_pg_rollback(pg);
    assert_int_equal(s_tx_committed("k = 400"), 0);
    s_tx_assert_idle(pg);
    assert_int_equal(s_tx(pg, &s1, 1, KL_PG_PIPE_BEGIN, &st), 0);
    assert_int_equal(kl_pg_commit(pg, &st), 0);
    assert_int_equal(s_tx_committed("k = 400"), 1);
    s_tx_assert_idle(pg);
    kl_pg_destroy(&pg);
}

/* The connection is lost inside the transaction: never replaced in it,
 * nothing committed, UNAVAILABLE, and the next transaction runs on a new
 * connection with its statements prepared again. */
static void
test_pipeline_tx_connection_lost(void **state)
{
    kl_status_t st;
    kl_pg_t *pg = kl_pg_new(s_db_url);
    char a[16], b[16];
    const char *pa[1], *pb[1];
    const kl_pg_stmt_t stmts[] = {
        s_tx_insert(500, a, pa),
        {"ptx_pid", "SELECT pg_backend_pid()", 0, NULL},
    };
    kl_pg_stmt_t s2 = s_tx_insert(501, b, pb);
    PGresult *res[2];

    /* 1. Lost between the round trips (the server ends the backend); then
     * again on a new connection. */
    int pid = 0;
    for (int round = 0; round < 2; round++) {
        assert_int_equal(
            kl_pg_pipeline_ex(pg, stmts, 2, KL_PG_PIPE_BEGIN, res, &st), 0);
        int new_pid = atoi(PQgetvalue(res[1], 0, 0));
        s_clear(res, 2);
        assert_int_not_equal(new_pid, pid);
        pid = new_pid;
        if (round == 0)
            s_terminate(pid);
        int rc = s_tx(pg, &s2, 1, KL_PG_PIPE_COMMIT, &st);
        if (rc != (round == 0 ? -KL_UNAVAILABLE : 0))
            fail_msg("commit %d: %s %s", round, kl_strerror(rc), st.message);
        assert_false(kl_pg_in_transaction(pg));
        assert_int_equal(s_tx_committed("k IN (500, 501)"), 2 * round);
    }

    /* 2. Found lost by a kl_pg_query inside the transaction: no silent
     * reconnect, the transaction stays failed until COMMIT says so. */
    kl_pg_stmt_t s3 = s_tx_insert(502, a, pa);
    assert_int_equal(s_tx(pg, &s3, 1, KL_PG_PIPE_BEGIN, &st), 0);
    s_terminate(s_backend_pid(pg));
    assert_null(kl_pg_query(pg, "ptx_one", "SELECT 1", 0, NULL, &st));
    assert_int_equal(st.code, KL_UNAVAILABLE);
    assert_true(kl_pg_in_transaction(pg));
    assert_int_equal(s_tx(pg, NULL, 0, KL_PG_PIPE_COMMIT, &st),
                     -KL_UNAVAILABLE);
    assert_string_equal(st.message,
                        "database connection lost inside a transaction");
    assert_false(kl_pg_in_transaction(pg));

    /* 3. The socket breaks between the round trips, unseen until the
     * second one goes out: it fails and is not sent again elsewhere. */
    assert_int_equal(s_tx(pg, &s3, 1, KL_PG_PIPE_BEGIN, &st), 0);
    assert_int_equal(shutdown(PQsocket(kl_pg_conn(pg, &st)), SHUT_WR), 0);
    assert_int_equal(s_tx(pg, NULL, 0, KL_PG_PIPE_COMMIT, &st),
                     -KL_UNAVAILABLE);
    assert_false(kl_pg_in_transaction(pg));

    /* 4. Lost while the second round trip runs, before its COMMIT. */
    assert_int_equal(s_tx(pg, &s3, 1, KL_PG_PIPE_BEGIN, &st), 0);
    const kl_pg_stmt_t die = {
        "ptx_die", "SELECT pg_terminate_backend(pg_backend_pid())", 0, NULL};
    assert_int_equal(s_tx(pg, &die, 1, KL_PG_PIPE_COMMIT, &st),
                     -KL_UNAVAILABLE);
    assert_false(kl_pg_in_transaction(pg));
    assert_int_equal(s_tx_committed("k = 502"), 0);

    /* 5. BEGIN is outside a transaction: a connection that breaks on use
     * is made again and the first round trip sent once more. */
    assert_int_equal(shutdown(PQsocket(kl_pg_conn(pg, &st)), SHUT_WR), 0);
    if (s_tx(pg, &s3, 1, KL_PG_PIPE_BEGIN, &st) < 0)
        fail_msg("begin after the socket broke: %s", st.message);
    assert_int_equal(s_tx(pg, NULL, 0, KL_PG_PIPE_COMMIT, &st), 0);
    assert_int_equal(s_tx_committed("k = 502"), 1);
    s_tx_assert_idle(pg);
    kl_pg_destroy(&pg);
}

static const kl_pg_migration_t s_steps[] = {
    {1, "CREATE TABLE \"Mig Schema\".items (id int PRIMARY KEY);"
        "INSERT INTO \"Mig Schema\".items VALUES (1)"},
    {2, "INSERT INTO \"Mig Schema\".items VALUES (2);"
        "SELECT pg_sleep(0.2)"},
};

static void *
s_migrate_thread(void *arg)
{
    int *rc = arg;
    kl_status_t st;
    kl_pg_t *pg = kl_pg_new(s_db_url);
    *rc = kl_pg_migrate(pg, "Mig Schema", s_steps, 2, &st);
    if (*rc < 0)
        fprintf(stderr, "migrate: %s\n", st.message);
    kl_pg_destroy(&pg);
    return NULL;
}

static void
test_migrate(void **state)
{
    kl_status_t st;
    /* Two instances at once against a database without the schema. */
    pthread_t t1, t2;
    int rc1 = 1, rc2 = 1;
    pthread_create(&t1, NULL, s_migrate_thread, &rc1);
    pthread_create(&t2, NULL, s_migrate_thread, &rc2);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    assert_int_equal(rc1, 0);
    assert_int_equal(rc2, 0);

    kl_pg_t *pg = kl_pg_new(s_db_url);
    /* And once more, later: nothing to do. */
    assert_int_equal(kl_pg_migrate(pg, "Mig Schema", s_steps, 2, &st), 0);
    assert_int_equal(s_count(pg, "SELECT count(*) FROM \"Mig Schema\".items"),
                     2);
    assert_int_equal(
        s_count(pg, "SELECT count(*) FROM \"Mig Schema\".schema_migrations"),
        2);
    assert_false(kl_pg_in_transaction(pg));

    /* A failing step rolls back everything of that run. */
    const kl_pg_migration_t bad[] = {
        s_steps[0],
        s_steps[1],
        {3, "INSERT INTO \"Mig Schema\".items VALUES (3)"},
        {4, "INSERT INTO \"Mig Schema\".items VALUES (1)"},
    };
    assert_int_equal(kl_pg_migrate(pg, "Mig Schema", bad, 4, &st),
                     -KL_ALREADY_EXISTS);
    assert_non_null(strstr(st.message, "migration Mig Schema version 4 "
                                       "failed: duplicate key value"));
    assert_false(kl_pg_in_transaction(pg));
    assert_int_equal(s_count(pg, "SELECT count(*) FROM \"Mig Schema\".items"),
                     2);

    const kl_pg_migration_t unordered[] = {{2, "SELECT 1"}, {1, "SELECT 1"}};
    assert_int_equal(kl_pg_migrate(pg, "x", unordered, 2, &st),
                     -KL_INVALID_ARGUMENT);
    assert_int_equal(kl_pg_migrate(pg, "", s_steps, 2, &st),
                     -KL_INVALID_ARGUMENT);
    kl_pg_destroy(&pg);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_params_and_nulls),
        cmocka_unit_test(test_error_mapping),
        cmocka_unit_test(test_transactions),
        cmocka_unit_test(test_reconnect_idle),
        cmocka_unit_test(test_broken_in_transaction),
        cmocka_unit_test(test_pipeline_results),
        cmocka_unit_test(test_pipeline_errors),
        cmocka_unit_test(test_pipeline_reconnect),
        cmocka_unit_test(test_pipeline_tx_commit),
        cmocka_unit_test(test_pipeline_tx_misuse),
        cmocka_unit_test(test_pipeline_tx_begin_fails),
        cmocka_unit_test(test_pipeline_tx_commit_fails),
        cmocka_unit_test(test_pipeline_tx_rollback),
        cmocka_unit_test(test_pipeline_tx_connection_lost),
        cmocka_unit_test(test_migrate),
    };
    return cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
}
