/*
 * Tests of kl_service: the standard worker (pg + redis per worker, extra
 * state hooks, SELECT 1 readiness) and its kl_rpc_server hooks, against
 * the PostgreSQL of KLTEST_PG_URL and the Redis of KLTEST_REDIS_URL.
 */
#include "kl_rpc_client.h"
#include "kl_service.h"
#include "kl_test_db.h"
#include "kl_test_server.h"
#include "kowloon/rpc.pb-c.h"
#include "test/rpc_test.pb-c.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static const char *s_pg_url;
static const char *s_redis_url;

static int
s_setup(void **state)
{
    s_pg_url = getenv("KLTEST_PG_URL");
    s_redis_url = getenv("KLTEST_REDIS_URL");
    if (!s_pg_url || !*s_pg_url || !s_redis_url || !*s_redis_url) {
        fprintf(stderr, "test_kl_service needs PostgreSQL and Redis: set "
                        "KLTEST_PG_URL=postgresql://postgres@127.0.0.1:PORT/"
                        "postgres and KLTEST_REDIS_URL=redis://127.0.0.1:"
                        "PORT/0 (see deploy/local/lib.sh)\n");
        return -1;
    }
    return 0;
}

static void
test_new_needs_name_and_url(void **state)
{
    assert_null(kl_service_new(NULL));
    assert_null(kl_service_new(&(kl_service_opts_t){.database_url = "x"}));
    assert_null(
        kl_service_new(&(kl_service_opts_t){.name = "", .database_url = "x"}));
    assert_null(kl_service_new(&(kl_service_opts_t){.name = "t"}));
    kl_service_t *svc =
        kl_service_new(&(kl_service_opts_t){.name = "t", .database_url = "x"});
    assert_non_null(svc);
    kl_service_destroy(&svc);
    assert_null(svc);
    kl_service_destroy(&svc);
    kl_service_destroy(NULL);
}

static void
test_server_opts(void **state)
{
    kl_service_t *svc = kl_service_new(
        &(kl_service_opts_t){.name = "t", .database_url = s_pg_url});
    kl_rpc_server_opts_t opts = {.bind = "tcp://127.0.0.1:0", .workers = 3};
    kl_service_server_opts(svc, &opts);
    assert_ptr_equal(opts.worker_init, kl_service_worker_init);
    assert_ptr_equal(opts.worker_fini, kl_service_worker_fini);
    assert_ptr_equal(opts.ready, kl_service_ready);
    assert_ptr_equal(opts.user, svc);
    /* The rest is left as it was. */
    assert_string_equal(opts.bind, "tcp://127.0.0.1:0");
    assert_int_equal(opts.workers, 3);
    kl_service_destroy(&svc);
}

static void
test_worker_pg_only(void **state)
{
    kl_service_t *svc = kl_service_new(
        &(kl_service_opts_t){.name = "svc_test", .database_url = s_pg_url});
    kl_service_worker_t *w = kl_service_worker_init(0, svc);
    assert_non_null(w);
    assert_non_null(w->pg);
    assert_null(w->redis);
    assert_null(w->extra);
    assert_true(kl_service_ready(w, svc));
    /* Twice: the prepared statement is reused on the connection. */
    assert_true(kl_service_ready(w, svc));
    kl_service_worker_fini(w, svc);
    kl_service_worker_fini(NULL, svc);
    kl_service_destroy(&svc);
}

static void
test_not_ready_without_database(void **state)
{
    /* Port 1 on loopback: nothing listens. */
    kl_service_t *svc = kl_service_new(&(kl_service_opts_t){
        .name = "t",
        .database_url = "host=127.0.0.1 port=1 connect_timeout=2"});
    kl_service_worker_t *w = kl_service_worker_init(0, svc);
    assert_false(kl_service_ready(w, svc));
    kl_service_worker_fini(w, svc);
    kl_service_destroy(&svc);
}

static void
test_worker_redis(void **state)
{
    kl_status_t st;
    kl_service_t *svc = kl_service_new(&(kl_service_opts_t){
        .name = "t", .database_url = s_pg_url, .redis_url = s_redis_url});
    kl_service_worker_t *w = kl_service_worker_init(1, svc);
    assert_non_null(w->redis);
    assert_non_null(kl_redis_context(w->redis, &st));
    kl_service_worker_fini(w, svc);
    kl_service_destroy(&svc);

    /* "" makes a Redis that is off: calls answer UNAVAILABLE. */
    svc = kl_service_new(&(kl_service_opts_t){
        .name = "t", .database_url = s_pg_url, .redis_url = ""});
    w = kl_service_worker_init(0, svc);
    assert_non_null(w->redis);
    assert_null(kl_redis_context(w->redis, &st));
    assert_int_equal(st.code, KL_UNAVAILABLE);
    kl_service_worker_fini(w, svc);
    kl_service_destroy(&svc);
}

typedef struct {
    int inits;
    int finis;
    int last_index;
    void *last_extra;
} s_extra_log_t;

static void *
s_extra_init(int index, void *user)
{
    s_extra_log_t *log = user;
    log->inits++;
    log->last_index = index;
    int *extra = malloc(sizeof *extra);
    *extra = 100 + index;
    return extra;
}

static void
s_extra_fini(void *extra, void *user)
{
    s_extra_log_t *log = user;
    log->finis++;
    log->last_extra = extra;
    free(extra);
}

static void
test_worker_extra(void **state)
{
    s_extra_log_t log = {0};
    kl_service_t *svc =
        kl_service_new(&(kl_service_opts_t){.name = "t",
                                            .database_url = s_pg_url,
                                            .extra_init = s_extra_init,
                                            .extra_fini = s_extra_fini,
                                            .extra_user = &log});
    kl_service_worker_t *w = kl_service_worker_init(4, svc);
    assert_int_equal(log.inits, 1);
    assert_int_equal(log.last_index, 4);
    assert_non_null(w->extra);
    assert_int_equal(*(int *)w->extra, 104);
    void *extra = w->extra;
    kl_service_worker_fini(w, svc);
    assert_int_equal(log.finis, 1);
    assert_ptr_equal(log.last_extra, extra);
    kl_service_destroy(&svc);
}

/* --- a real server on the standard worker ----------------------------- */

/* Echo: answers the worker's database name, read on the worker's pg. */
static void
s_echo(Kowloon__Test__Echo_Service *svc, const Kowloon__Test__EchoRequest *in,
       Kowloon__Test__EchoReply_Closure closure, void *cd)
{
    kl_service_worker_t *w = kl_service_worker(cd);
    kl_status_t st;
    PGresult *r =
        kl_pg_query(w->pg, "db", "SELECT current_database()", 0, NULL, &st);
    if (!r) {
        kl_service_fail(cd, "Echo", &st);
        closure(NULL, cd);
        return;
    }
    Kowloon__Test__EchoReply out = KOWLOON__TEST__ECHO_REPLY__INIT;
    out.text = PQgetvalue(r, 0, 0);
    out.server = w->redis ? "redis" : "no redis";
    closure(&out, cd);
    PQclear(r);
}

/* Fail: a client mistake, passed through kl_service_fail as is. */
static void
s_fail(Kowloon__Test__Echo_Service *svc, const Kowloon__Test__EchoRequest *in,
       Kowloon__Test__EchoReply_Closure closure, void *cd)
{
    kl_status_t st;
    kl_status_set(&st, KL_INVALID_ARGUMENT, "text \"%s\" is bad", in->text);
    kl_service_fail(cd, "Fail", &st);
    closure(NULL, cd);
}

/* Sleep: server-side trouble (logged), the code kept. */
static void
s_sleep(Kowloon__Test__Echo_Service *svc, const Kowloon__Test__EchoRequest *in,
        Kowloon__Test__EchoReply_Closure closure, void *cd)
{
    kl_status_t st;
    kl_status_set(&st, KL_UNAVAILABLE, "database down");
    kl_service_fail(cd, "Sleep", &st);
    closure(NULL, cd);
}

static void
s_silent(Kowloon__Test__Echo_Service *svc, const Kowloon__Test__EchoRequest *in,
         Kowloon__Test__EchoReply_Closure closure, void *cd)
{
    closure(NULL, cd);
}

static Kowloon__Test__Echo_Service s_echo_service =
    KOWLOON__TEST__ECHO__INIT(s_);

static void
test_server_end_to_end(void **state)
{
    kl_test_db_t *db = kl_test_db_new("test_kl_service", "kltest_service");
    assert_non_null(db);
    kl_service_t *svc =
        kl_service_new(&(kl_service_opts_t){.name = "svc_e2e",
                                            .database_url = kl_test_db_url(db),
                                            .redis_url = ""});
    kl_rpc_server_opts_t opts = {.workers = 2};
    kl_service_server_opts(svc, &opts);
    kl_test_server_t *srv = kl_test_server_start(&s_echo_service.base, &opts);
    assert_non_null(srv);
    assert_non_null(strstr(kl_test_server_endpoint(srv), "tcp://127.0.0.1:"));
    kl_rpc_client_t *echo = kl_test_server_client(srv);
    kl_rpc_client_t *health = kl_test_server_health(srv);
    kl_status_t st;
    kl_call_opts_t copts = {.timeout_ms = 10000};
    Kowloon__Test__EchoRequest req = KOWLOON__TEST__ECHO_REQUEST__INIT;
    req.text = "x";
    ProtobufCMessage *out = NULL;

    /* The handler finds its worker's connections. */
    assert_int_equal(
        kl_rpc_client_call(echo, "Echo", &req.base, &copts, &out, &st), 0);
    assert_string_equal(((Kowloon__Test__EchoReply *)out)->text,
                        kl_test_db_name(db));
    assert_string_equal(((Kowloon__Test__EchoReply *)out)->server, "redis");
    protobuf_c_message_free_unpacked(out, NULL);

    /* kl_service_fail answers the status it was given. */
    req.text = "zz";
    assert_int_equal(
        kl_rpc_client_call(echo, "Fail", &req.base, &copts, &out, &st),
        -KL_INVALID_ARGUMENT);
    assert_string_equal(st.message, "text \"zz\" is bad");
    assert_null(out);
    assert_int_equal(
        kl_rpc_client_call(echo, "Sleep", &req.base, &copts, &out, &st),
        -KL_UNAVAILABLE);
    assert_string_equal(st.message, "database down");

    /* Health: SERVING, as the database answers SELECT 1. */
    Kowloon__Rpc__HealthCheckRequest hreq =
        KOWLOON__RPC__HEALTH_CHECK_REQUEST__INIT;
    assert_int_equal(
        kl_rpc_client_call(health, "Check", &hreq.base, &copts, &out, &st), 0);
    assert_int_equal(
        ((Kowloon__Rpc__HealthCheckResponse *)out)->status,
        KOWLOON__RPC__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    protobuf_c_message_free_unpacked(out, NULL);

    /* kl_test_server_call drops the reply when asked to. */
    req.text = "y";
    assert_int_equal(kl_test_server_call(srv, "Echo", &req, NULL, 10000, &st),
                     0);
    kl_test_server_stop(&srv);
    assert_null(srv);
    kl_test_server_stop(&srv);
    kl_service_destroy(&svc);
    kl_test_db_destroy(&db);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_needs_name_and_url),
        cmocka_unit_test(test_server_opts),
        cmocka_unit_test(test_worker_pg_only),
        cmocka_unit_test(test_not_ready_without_database),
        cmocka_unit_test(test_worker_redis),
        cmocka_unit_test(test_worker_extra),
        cmocka_unit_test(test_server_end_to_end),
    };
    return cmocka_run_group_tests(tests, s_setup, NULL);
}
