/*
 * kl_tenant_read across a PostgreSQL restart: a private cluster
 * (deploy/local/lib.sh kl_pg_start/kl_pg_stop, as test_kl_rpc_pg_restart
 * does), an application role with a row-model table under forced RLS and a
 * tenant database. The worker's pooled connections outlive the server:
 * after a restart the next read (row and database model) answers at once on
 * a new connection, its statements prepared again; while the server is
 * down a read fails quickly with UNAVAILABLE and the first read after it
 * is back succeeds.
 *
 * Needs the PostgreSQL server binaries (Debian's postgresql package).
 */
#include "kl_alloc.h"
#include "kl_tenant_db.h"
#include "kl_test_db.h"

#include <arpa/inet.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static char s_root[PATH_MAX];       /* the source tree */
static char s_pgdir[PATH_MAX + 64]; /* the private cluster */
static int s_pgport;

/* Tenant A (row model) and D (database model). */
static const char *s_a = "0a0a0a0a-0000-4000-8000-00000000000a";
static const char *s_d = "0d0d0d0d-0000-4000-8000-00000000000d";

static int
s_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* Runs "kl_pg_<verb> DIR PORT" from deploy/local/lib.sh. */
static int
s_pg(const char *verb)
{
    char *cmd = kl_asprintf(". '%s/deploy/local/lib.sh' && kl_pg_%s '%s' %d",
                            s_root, verb, s_pgdir, s_pgport);
    char *argv[] = {"bash", "-c", cmd, NULL};
    pid_t pid = fork();
    if (pid == 0) {
        execvp("bash", argv);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    free(cmd);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int64_t
s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The table of every model, with the policy the product's tables carry. */
#define S_TABLE                                                                \
    "CREATE SCHEMA shared;"                                                    \
    "CREATE TABLE shared.items (tenant_id uuid NOT NULL DEFAULT"               \
    " NULLIF(current_setting('app.tenant_id', true), '')::uuid,"               \
    " label text NOT NULL);"                                                   \
    "ALTER TABLE shared.items ENABLE ROW LEVEL SECURITY;"                      \
    "ALTER TABLE shared.items FORCE ROW LEVEL SECURITY;"                       \
    "CREATE POLICY t ON shared.items USING (tenant_id = NULLIF("               \
    "current_setting('app.tenant_id', true), '')::uuid);"                      \
    "GRANT USAGE ON SCHEMA shared TO kl_app;"                                  \
    "GRANT SELECT ON shared.items TO kl_app;"

/* A read's single value, or NULL with st set. Caller frees. */
static char *
s_read(kl_tenant_db_t *t, const kl_tenant_place_t *p, const char *name,
       const char *sql, kl_status_t *st)
{
    PGresult *r = kl_tenant_read(t, p, name, sql, 0, NULL, st);
    if (!r)
        return NULL;
    char *v = kl_strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

/* Both tenants' rows and backend pids, then the names prepared on their
 * connections (a second read: a read's own COMMIT is prepared after its
 * query runs); fails the test if a read fails. */
static void
s_read_both(kl_tenant_db_t *t, const kl_tenant_place_t *places, int pids[2])
{
    static const char *const want[] = {
        "a1|kl_tenant_read_begin,kl_tenant_read_commit,"
        "kl_tenant_tx_scope_main,restart_names,restart_read",
        "d1|kl_tenant_read_begin,kl_tenant_read_commit,"
        "kl_tenant_tx_scope,restart_names,restart_read"};
    for (int i = 0; i < 2; i++) {
        kl_status_t st;
        char *v = s_read(t, &places[i], "restart_read",
                         "SELECT pg_backend_pid() || '|' ||"
                         " (SELECT string_agg(label, ',') FROM items)",
                         &st);
        if (!v)
            fail_msg("read of tenant %s: %s", places[i].tenant_id, st.message);
        pids[i] = atoi(v);
        char *names = s_read(t, &places[i], "restart_names",
                             "SELECT string_agg(name, ',' ORDER BY name)"
                             " FROM pg_prepared_statements",
                             &st);
        if (!names)
            fail_msg("read of tenant %s: %s", places[i].tenant_id, st.message);
        char *got = kl_asprintf("%s|%s", strchr(v, '|') + 1, names);
        assert_string_equal(got, want[i]);
        free(got);
        free(names);
        free(v);
    }
}

static void
test_read_across_restart(void **state)
{
    (void)state;
    char file[PATH_MAX];
    snprintf(file, sizeof file, "%s", __FILE__);
    snprintf(s_root, sizeof s_root, "%s", dirname(dirname(dirname(file))));
    snprintf(s_pgdir, sizeof s_pgdir, "%s/var/tdb-restart-%d", s_root,
             (int)getpid());
    s_pgport = s_free_port();
    if (s_pg("start") != 0)
        fail_msg("kl_pg_start failed: is the postgresql package installed "
                 "(deploy/local/lib.sh kl_install_packages)?");

    /* Roles, the row-model table, the fence, a tenant database. */
    char *super =
        kl_asprintf("postgresql://postgres@127.0.0.1:%d/postgres", s_pgport);
    assert_int_equal(kl_test_db_exec(super, "CREATE ROLE kl_app LOGIN "
                                            "NOSUPERUSER NOBYPASSRLS"),
                     0);
    assert_int_equal(kl_test_db_exec(super, S_TABLE), 0);
    kl_status_t st;
    kl_pg_t *owner = kl_pg_new(super);
    if (kl_tenant_db_prepare_main(owner, "kl_app", &st) < 0)
        fail_msg("prepare_main: %s", st.message);
    kl_pg_destroy(&owner);
    kl_tenant_place_t places[2];
    assert_int_equal(
        kl_tenant_place(s_a, KL_ISOLATION_ROW, "shared", NULL, &places[0], &st),
        0);
    assert_int_equal(kl_tenant_place(s_d, KL_ISOLATION_DATABASE, "shared",
                                     "main", &places[1], &st),
                     0);
    char *sql = kl_asprintf("CREATE DATABASE %s", places[1].db_name);
    assert_int_equal(kl_test_db_exec(super, sql), 0);
    free(sql);
    char *tdb_super = kl_test_db_conninfo(super, places[1].db_name, NULL);
    assert_int_equal(kl_test_db_exec(tdb_super, S_TABLE), 0);
    sql = kl_asprintf("INSERT INTO shared.items VALUES ('%s', 'd1')", s_d);
    assert_int_equal(kl_test_db_exec(tdb_super, sql), 0);
    free(sql);
    sql = kl_asprintf("INSERT INTO shared.items VALUES ('%s', 'a1')", s_a);
    assert_int_equal(kl_test_db_exec(super, sql), 0);
    free(sql);

    char *app = kl_test_db_conninfo(super, NULL, "kl_app");
    char *main_server = kl_asprintf("main=%s", app);
    const char *servers[] = {main_server};
    kl_tenant_db_t *t = kl_tenant_db_new(app, servers, 1, 4, &st);
    assert_non_null(t);
    int before[2], after[2];
    s_read_both(t, places, before);

    /* Restarted while the worker was idle: the very next reads answer, on
     * new connections with their statements prepared again. */
    assert_int_equal(s_pg("stop"), 0);
    assert_int_equal(s_pg("start"), 0);
    s_read_both(t, places, after);
    assert_int_not_equal(before[0], after[0]);
    assert_int_not_equal(before[1], after[1]);

    /* Down: UNAVAILABLE, quickly, for both models. */
    assert_int_equal(s_pg("stop"), 0);
    for (int i = 0; i < 2; i++) {
        int64_t t0 = s_now_ms();
        assert_null(s_read(t, &places[i], NULL, "SELECT 1", &st));
        assert_int_equal(st.code, KL_UNAVAILABLE);
        assert_true(s_now_ms() - t0 < 3000);
    }
    /* Back: the first read succeeds. */
    assert_int_equal(s_pg("start"), 0);
    s_read_both(t, places, before);

    kl_tenant_db_destroy(&t);
    free(main_server);
    free(app);
    free(tdb_super);
    free(super);
}

/* The cluster goes away whether the test passed or not. */
static int
s_teardown(void **state)
{
    (void)state;
    if (!s_pgport)
        return 0;
    s_pg("stop");
    char *rm = kl_asprintf("rm -rf '%s'", s_pgdir);
    int rc = system(rm);
    free(rm);
    return rc == 0 ? 0 : -1;
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_across_restart),
    };
    return cmocka_run_group_tests(tests, NULL, s_teardown);
}
