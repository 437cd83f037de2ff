/*
 * PostgreSQL restarted under calls to a real service: the tenant service
 * binary against a private cluster (deploy/local/lib.sh), Redis disabled.
 * While PostgreSQL is down every call is answered UNAVAILABLE (the
 * gateway's 503) rather than timing out or crashing the service; after it
 * comes back the service answers again within seconds without being
 * restarted; every Create that was acknowledged is still there.
 *
 * Needs the PostgreSQL server binaries (Debian's postgresql package) and
 * the kowloon-tenant binary built beside this test.
 */
#include "kl_alloc.h"
#include "kl_rpc_client.h"
#include "kowloon/tenant.pb-c.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
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

#define S_MAX_ACKED 4096

static char s_root[PATH_MAX];       /* the source tree */
static char s_pgdir[PATH_MAX + 64]; /* the private cluster */
static int s_pgport;

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

static int
s_create(kl_rpc_client_t *c, const char *sub, kl_status_t *st)
{
    Kowloon__Tenant__CreateTenantRequest in =
        KOWLOON__TENANT__CREATE_TENANT_REQUEST__INIT;
    in.subdomain = (char *)sub;
    in.name = (char *)sub;
    kl_call_opts_t o = {.timeout_ms = 3000, .idempotent = false};
    ProtobufCMessage *out = NULL;
    int rc = kl_rpc_client_call(c, "Create", &in.base, &o, &out, st);
    if (out)
        protobuf_c_message_free_unpacked(out, NULL);
    return rc;
}

static void
test_pg_restart_under_calls(void **state)
{
    /* The tree from this file's path, the binary from this test's. */
    char file[PATH_MAX];
    snprintf(file, sizeof file, "%s", __FILE__);
    snprintf(s_root, sizeof s_root, "%s", dirname(dirname(dirname(file))));
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    assert_true(n > 0);
    exe[n] = '\0';
    char *tenant_bin =
        kl_asprintf("%s/../services/tenant/kowloon-tenant", dirname(exe));
    if (access(tenant_bin, X_OK) != 0)
        fail_msg("%s not found: build the kowloon-tenant target first",
                 tenant_bin);
    snprintf(s_pgdir, sizeof s_pgdir, "%s/var/curve-pgrestart-%d", s_root,
             (int)getpid());
    s_pgport = s_free_port();
    if (s_pg("start") != 0)
        fail_msg("kl_pg_start failed: is the postgresql package installed "
                 "(deploy/local/lib.sh kl_install_packages)?");

    int rpc_port = s_free_port();
    char *db =
        kl_asprintf("postgresql://postgres@127.0.0.1:%d/postgres", s_pgport);
    char *bind = kl_asprintf("tcp://127.0.0.1:%d", rpc_port);
    pid_t svc = fork();
    if (svc == 0) {
        setenv("KOWLOON_DATABASE_URL", db, 1);
        setenv("KOWLOON_TENANT_BIND", bind, 1);
        setenv("KOWLOON_REDIS_URL", "", 1); /* Redis off: PostgreSQL only */
        setenv("KOWLOON_WORKERS", "2", 1);
        setenv("KOWLOON_LOG_LEVEL", "warn", 1);
        execl(tenant_bin, tenant_bin, (char *)NULL);
        _exit(127);
    }
    const char *eps[] = {bind};
    kl_rpc_client_opts_t copts = {.endpoints = eps, .n_endpoints = 1};
    kl_status_t st;
    kl_rpc_client_t *c = kl_rpc_client_new(
        &kowloon__tenant__tenant_service__descriptor, &copts, &st);
    assert_non_null(c);

    char(*acked)[32] = kl_calloc(S_MAX_ACKED, sizeof *acked);
    int n_acked = 0, seq = 0;
    /* Up: wait for the service (it migrates its schema first). */
    int64_t t0 = s_now_ms();
    for (;;) {
        char sub[32];
        snprintf(sub, sizeof sub, "pgr%d", seq++);
        if (s_create(c, sub, &st) == 0) {
            memcpy(acked[n_acked++], sub, sizeof sub);
            break;
        }
        assert_true(s_now_ms() - t0 < 30000);
        usleep(100 * 1000);
    }
    for (int i = 0; i < 20; i++) {
        char sub[32];
        snprintf(sub, sizeof sub, "pgr%d", seq++);
        assert_int_equal(s_create(c, sub, &st), 0);
        memcpy(acked[n_acked++], sub, sizeof sub);
    }

    /* Down: every call is answered, UNAVAILABLE, quickly. */
    assert_int_equal(s_pg("stop"), 0);
    int unavailable = 0;
    for (int i = 0; i < 20; i++) {
        char sub[32];
        snprintf(sub, sizeof sub, "pgr%d", seq++);
        int64_t c0 = s_now_ms();
        int rc = s_create(c, sub, &st);
        if (rc == 0) {
            memcpy(acked[n_acked++], sub, sizeof sub);
            continue;
        }
        if (rc != -KL_UNAVAILABLE)
            fail_msg("while PostgreSQL is down: %s: %s", kl_code_name(-rc),
                     st.message);
        assert_true(s_now_ms() - c0 < 3000);
        unavailable++;
        usleep(50 * 1000);
    }
    assert_true(unavailable >= 15);

    /* Back: the service reconnects by itself within seconds. */
    assert_int_equal(s_pg("start"), 0);
    int64_t up = s_now_ms();
    for (;;) {
        char sub[32];
        snprintf(sub, sizeof sub, "pgr%d", seq++);
        if (s_create(c, sub, &st) == 0) {
            memcpy(acked[n_acked++], sub, sizeof sub);
            break;
        }
        assert_int_equal(st.code, KL_UNAVAILABLE);
        if (s_now_ms() - up > 10000)
            fail_msg("no success 10 s after PostgreSQL came back: %s",
                     st.message);
        usleep(100 * 1000);
    }
    printf("pg restart: %d calls answered UNAVAILABLE while down, first "
           "success %lld ms after PostgreSQL was back\n",
           unavailable, (long long)(s_now_ms() - up));

    /* Every acknowledged write is there. */
    for (int i = 0; i < n_acked; i++) {
        Kowloon__Tenant__GetBySubdomainRequest in =
            KOWLOON__TENANT__GET_BY_SUBDOMAIN_REQUEST__INIT;
        in.subdomain = acked[i];
        kl_call_opts_t o = {.timeout_ms = 3000, .idempotent = true};
        ProtobufCMessage *out = NULL;
        if (kl_rpc_client_call(c, "GetBySubdomain", &in.base, &o, &out, &st) !=
            0)
            fail_msg("acknowledged tenant %s: %s", acked[i], st.message);
        protobuf_c_message_free_unpacked(out, NULL);
    }

    kl_rpc_client_destroy(&c);
    kill(svc, SIGTERM);
    int status;
    waitpid(svc, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    s_pg("stop");
    char *rm = kl_asprintf("rm -rf '%s'", s_pgdir);
    assert_int_equal(system(rm), 0);
    free(rm);
    free(acked);
    free(db);
    free(bind);
    free(tenant_bin);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pg_restart_under_calls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
