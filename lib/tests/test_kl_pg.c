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
} s_pipe_t;

static void
s_pipe_run(void *arg)
{
    s_pipe_t *p = arg;
    p->rc = kl_pg_pipeline(p->pg, p->stmts, p->n, p->res, &p->st);
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
    s_pipe_t p = {pg, stmts, 5, res, 0, {0}};
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
        cmocka_unit_test(test_migrate),
    };
    return cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
}
