/*
 * Tests of kl_test_proc (the test-support library kowloon_testing): a
 * child's environment and log, its exit status after SIGTERM, SIGKILL or
 * an exit of its own, free ports, and the wait for Health.Check SERVING
 * (an in-process server whose readiness the test switches).
 */
#include "kl_test_proc.h"
#include "kl_test_server.h"
#include "test/rpc_test.pb-c.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

static char s_tmp[64]; /* scratch directory */

/* Writes an executable shell script name in s_tmp; its path in out. */
static void
s_script(const char *name, const char *body, char *out, size_t size)
{
    snprintf(out, size, "%s/%s", s_tmp, name);
    FILE *f = fopen(out, "wb");
    assert_non_null(f);
    fprintf(f, "#!/bin/sh\n%s", body);
    fclose(f);
    assert_int_equal(chmod(out, 0755), 0);
}

/* The whole of path (caller frees). */
static char *
s_slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = calloc(1, 4096);
    size_t n = fread(buf, 1, 4095, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static int
s_setup(void **state)
{
    (void)state;
    snprintf(s_tmp, sizeof s_tmp, "/tmp/kltest-proc-XXXXXX");
    return mkdtemp(s_tmp) ? 0 : -1;
}

static int
s_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_tmp);
    return system(cmd) == 0 ? 0 : -1;
}

static void
test_free_port(void **state)
{
    (void)state;
    int port = kl_test_proc_free_port();
    assert_true(port > 0 && port < 65536);
    /* Free indeed: it can be bound. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    close(fd);
}

/* vars are added, drop_prefix's are removed, output goes to the log; the
 * script's TERM trap decides the exit status. */
static void
test_env_log_and_sigterm(void **state)
{
    (void)state;
    char bin[128], log[128], ready[128];
    snprintf(log, sizeof log, "%s/env.log", s_tmp);
    snprintf(ready, sizeof ready, "%s/env.ready", s_tmp);
    char body[512];
    snprintf(body, sizeof body,
             "echo \"added=$KLTEST_PROC_ADDED dropped=${KLTEST_DROPME_X:-unset}"
             " kept=$KLTEST_PROC_KEPT\"\n"
             "echo err >&2\n"
             "trap 'exit 3' TERM\n"
             "touch '%s'\n"
             "while :; do sleep 0.05; done\n",
             ready);
    s_script("env.sh", body, bin, sizeof bin);
    setenv("KLTEST_DROPME_X", "inherited", 1);
    setenv("KLTEST_PROC_KEPT", "yes", 1);
    const char *vars[] = {"KLTEST_PROC_ADDED=1", NULL};
    kl_test_proc_t *p = kl_test_proc_start(bin, vars, "KLTEST_DROPME_", log);
    assert_non_null(p);
    assert_true(kl_test_proc_pid(p) > 0);
    int64_t until = kl_test_proc_now_ms() + 10000;
    while (access(ready, F_OK) != 0) {
        assert_true(kl_test_proc_now_ms() < until);
        kl_test_proc_sleep_ms(20);
    }
    assert_false(kl_test_proc_exited(p));
    assert_int_equal(kl_test_proc_stop(&p), 3);
    assert_null(p);
    char *text = s_slurp(log);
    assert_non_null(strstr(text, "added=1 dropped=unset kept=yes\n"));
    assert_non_null(strstr(text, "err\n"));
    free(text);
    unsetenv("KLTEST_DROPME_X");
    unsetenv("KLTEST_PROC_KEPT");
    /* NULL is accepted. */
    assert_int_equal(kl_test_proc_stop(&p), 0);
    assert_int_equal(kl_test_proc_stop(NULL), 0);
}

/* /bin/sleep ends by the signal: 128 + SIGTERM, 128 + SIGKILL. */
static void
test_signals(void **state)
{
    (void)state;
    char bin[128], log[128];
    snprintf(log, sizeof log, "%s/sleep.log", s_tmp);
    s_script("sleep.sh", "exec /bin/sleep 60\n", bin, sizeof bin);
    kl_test_proc_t *p = kl_test_proc_start(bin, NULL, NULL, log);
    assert_non_null(p);
    kl_test_proc_sleep_ms(100);
    assert_int_equal(kl_test_proc_stop(&p), 128 + SIGTERM);
    p = kl_test_proc_start(bin, NULL, NULL, log);
    assert_non_null(p);
    assert_int_equal(kl_test_proc_kill(&p), 128 + SIGKILL);
    assert_null(p);
}

/* An exit of its own is seen, and its status kept for stop; a program
 * that cannot be run exits 127. */
static void
test_own_exit(void **state)
{
    (void)state;
    char bin[128], log[128];
    snprintf(log, sizeof log, "%s/exit.log", s_tmp);
    s_script("exit.sh", "exit 7\n", bin, sizeof bin);
    kl_test_proc_t *p = kl_test_proc_start(bin, NULL, NULL, log);
    assert_non_null(p);
    int64_t until = kl_test_proc_now_ms() + 10000;
    while (!kl_test_proc_exited(p)) {
        assert_true(kl_test_proc_now_ms() < until);
        kl_test_proc_sleep_ms(20);
    }
    assert_int_equal(kl_test_proc_stop(&p), 7);
    snprintf(bin, sizeof bin, "%s/no-such-program", s_tmp);
    p = kl_test_proc_start(bin, NULL, NULL, log);
    assert_non_null(p);
    until = kl_test_proc_now_ms() + 10000;
    while (!kl_test_proc_exited(p)) {
        assert_true(kl_test_proc_now_ms() < until);
        kl_test_proc_sleep_ms(20);
    }
    assert_int_equal(kl_test_proc_stop(&p), 127);
}

/* --- wait_serving: an in-process Echo server, ready when s_ready. ----- */

static atomic_bool s_ready;

static bool
s_is_ready(void *worker_state, void *user)
{
    (void)worker_state;
    (void)user;
    return atomic_load(&s_ready);
}

static void
s_echo(Kowloon__Test__Echo_Service *svc, const Kowloon__Test__EchoRequest *in,
       Kowloon__Test__EchoReply_Closure closure, void *cd)
{
    (void)svc;
    (void)in;
    closure(NULL, cd);
}
#define s_sleep s_echo
#define s_fail s_echo
#define s_silent s_echo
static Kowloon__Test__Echo_Service s_echo_service =
    KOWLOON__TEST__ECHO__INIT(s_);

static void
test_wait_serving(void **state)
{
    (void)state;
    char bin[128], log[128];
    snprintf(log, sizeof log, "%s/serving.log", s_tmp);
    s_script("serving.sh", "exec /bin/sleep 60\n", bin, sizeof bin);
    atomic_store(&s_ready, false);
    kl_rpc_server_opts_t opts = {.workers = 1, .ready = s_is_ready};
    kl_test_server_t *srv = kl_test_server_start(&s_echo_service.base, &opts);
    assert_non_null(srv);
    const char *ep = kl_test_server_endpoint(srv);
    kl_test_proc_t *p = kl_test_proc_start(bin, NULL, NULL, log);
    assert_non_null(p);
    kl_status_t st;

    /* NOT_SERVING until the timeout. */
    int64_t t0 = kl_test_proc_now_ms();
    assert_int_equal(kl_test_proc_wait_serving(p, ep, 600, &st),
                     -KL_DEADLINE_EXCEEDED);
    assert_true(kl_test_proc_now_ms() - t0 >= 600);
    assert_non_null(strstr(st.message, "not serving"));

    atomic_store(&s_ready, true);
    assert_int_equal(kl_test_proc_wait_serving(p, ep, 10000, &st), 0);

    /* Nobody at the endpoint and the child gone: UNAVAILABLE at once. */
    char none[64];
    snprintf(none, sizeof none, "tcp://127.0.0.1:%d", kl_test_proc_free_port());
    kl_test_server_stop(&srv);
    kill(kl_test_proc_pid(p), SIGKILL);
    t0 = kl_test_proc_now_ms();
    assert_int_equal(kl_test_proc_wait_serving(p, none, 30000, &st),
                     -KL_UNAVAILABLE);
    assert_true(kl_test_proc_now_ms() - t0 < 10000);
    assert_int_equal(kl_test_proc_stop(&p), 128 + SIGKILL);
}

int
main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_free_port),
        cmocka_unit_test(test_env_log_and_sigterm),
        cmocka_unit_test(test_signals),
        cmocka_unit_test(test_own_exit),
        cmocka_unit_test(test_wait_serving),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
