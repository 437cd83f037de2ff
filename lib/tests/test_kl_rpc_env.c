/*
 * kl_rpc_env: endpoint lists with "@file" items, SIGHUP reload adding an
 * instance to a running client, Curve settings read from the config, and
 * the errors that name the setting.
 */
#include <stdlib.h>

#include "kl_rpc_test_echo.h"

#include "kl_config.h"
#include "kl_rpc_env.h"

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

/* name=value pairs for kl_config_load. */
typedef struct {
    const char *names[8];
    const char *values[8];
} s_env_t;

static const char *
s_getenv(const char *name, void *user)
{
    s_env_t *e = user;
    for (int i = 0; i < 8 && e->names[i]; i++)
        if (strcmp(e->names[i], name) == 0)
            return e->values[i];
    return NULL;
}

static void
s_write(const char *path, const char *text)
{
    /* Written aside and renamed, as an operator's tooling should. */
    char *tmp = kl_asprintf("%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(rename(tmp, path), 0);
    free(tmp);
}

static void
test_expand(void **state)
{
    char dir[] = "/tmp/kl_rpc_env_test.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *file = kl_asprintf("%s/eps", dir);
    s_write(file, "# tenant instances\n"
                  "tcp://10.0.0.1:7101\n"
                  "  tcp://10.0.0.2:7101 , tcp://10.0.0.3:7101 # third\n\n");
    char *at = kl_asprintf("@%s", file);
    const char *items[] = {"tcp://127.0.0.1:1", at};
    char **list = NULL;
    size_t n = 0;
    kl_status_t st;
    assert_int_equal(kl_rpc_env_expand(items, 2, &list, &n, &st), 0);
    assert_int_equal(n, 4);
    assert_string_equal(list[0], "tcp://127.0.0.1:1");
    assert_string_equal(list[1], "tcp://10.0.0.1:7101");
    assert_string_equal(list[2], "tcp://10.0.0.2:7101");
    assert_string_equal(list[3], "tcp://10.0.0.3:7101");
    kl_rpc_env_free_list(&list, n);
    assert_null(list);

    const char *missing[] = {"@/nonexistent/eps"};
    assert_int_equal(kl_rpc_env_expand(missing, 1, &list, &n, &st),
                     -KL_INVALID_ARGUMENT);
    assert_non_null(strstr(st.message, "/nonexistent/eps"));
    s_write(file, "# nobody\n");
    const char *empty[] = {at};
    assert_int_equal(kl_rpc_env_expand(empty, 1, &list, &n, &st),
                     -KL_INVALID_ARGUMENT);
    unlink(file);
    rmdir(dir);
    free(at);
    free(file);
}

static void
test_sighup_adds_instance(void **state)
{
    ts_server_t *a = ts_start("A", 2, 0);
    ts_server_t *b = ts_start("B", 2, 0);
    char dir[] = "/tmp/kl_rpc_env_test.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *file = kl_asprintf("%s/tenant.endpoints", dir);
    char *text = kl_asprintf("%s\n", kl_rpc_server_endpoint(a->server));
    s_write(file, text);
    free(text);
    char *at = kl_asprintf("@%s", file);
    s_env_t e = {{"KOWLOON_ADMIN_TOKEN", "KOWLOON_TENANT_ENDPOINTS"},
                 {"0123456789abcdef0123", at}};
    kl_status_t st;
    kl_config_t *cfg = kl_config_load(KL_PROC_GATEWAY, s_getenv, &e, &st);
    assert_non_null(cfg);
    kl_rpc_env_t *env = kl_rpc_env_new(cfg, KL_PROC_GATEWAY, &st);
    assert_non_null(env);
    assert_null(kl_rpc_env_curve(env));
    /* The Echo service stands in for the tenant service. */
    kl_rpc_client_t *c = kl_rpc_env_client(
        env, KL_CFG_TENANT_ENDPOINTS, &kowloon__test__echo__descriptor, &st);
    assert_non_null(c);
    char tag[16];
    for (int i = 0; i < 10; i++) {
        assert_int_equal(
            ts_call_echo(c, "Echo", "x", 0, 2000, false, tag, sizeof tag, &st),
            0);
        assert_string_equal(tag, "A");
    }

    /* The operator adds B to the file and sends SIGHUP. */
    assert_int_equal(kl_rpc_env_handle_sighup(env), 0);
    text = kl_asprintf("%s\n%s\n", kl_rpc_server_endpoint(a->server),
                       kl_rpc_server_endpoint(b->server));
    s_write(file, text);
    free(text);
    assert_int_equal(raise(SIGHUP), 0);
    for (int i = 0; i < 50 && kl_rpc_client_endpoint_count(c, NULL) != 2; i++)
        ts_sleep_ms(50);
    assert_int_equal(kl_rpc_client_endpoint_count(c, NULL), 2);
    ts_sleep_ms(200);
    int on_b = 0;
    for (int i = 0; i < 40; i++) {
        assert_int_equal(
            ts_call_echo(c, "Echo", "y", 0, 2000, false, tag, sizeof tag, &st),
            0);
        on_b += strcmp(tag, "B") == 0;
    }
    assert_true(on_b >= 10);

    /* A broken file keeps the running set and says why. */
    s_write(file, "# emptied by mistake\n");
    assert_int_equal(kl_rpc_env_reload(env, &st), -KL_INVALID_ARGUMENT);
    assert_non_null(strstr(st.message, "KOWLOON_TENANT_ENDPOINTS"));
    assert_int_equal(kl_rpc_client_endpoint_count(c, NULL), 2);

    kl_rpc_env_destroy(&env);
    assert_null(env);
    kl_config_destroy(&cfg);
    unlink(file);
    rmdir(dir);
    free(file);
    free(at);
    ts_destroy(&a);
    ts_destroy(&b);
}

static void
test_curve_settings(void **state)
{
    char dir[] = "/tmp/kl_rpc_env_test.XXXXXX";
    assert_non_null(mkdtemp(dir));
    kl_status_t st;
    assert_int_equal(kl_curve_keygen(dir, "svc", NULL, &st), 0);
    char *secret = kl_asprintf("%s/svc.key_secret", dir);

    /* A service with keys and an allow-list: Curve server opts. */
    s_env_t e = {{"KOWLOON_DATABASE_URL", "KOWLOON_CURVE_SECRET_KEY_FILE",
                  "KOWLOON_CURVE_ALLOWED_CLIENTS_DIR",
                  "KOWLOON_RPC_DRAIN_GRACE_MS"},
                 {"postgresql:///x", secret, dir, "250"}};
    kl_config_t *cfg = kl_config_load(KL_PROC_TENANT, s_getenv, &e, &st);
    assert_non_null(cfg);
    kl_rpc_env_t *env = kl_rpc_env_new(cfg, KL_PROC_TENANT, &st);
    assert_non_null(env);
    assert_non_null(kl_rpc_env_curve(env));
    /* The allow dir holds svc.key (its own public cert) only. */
    assert_int_equal(kl_curve_allowed_count(kl_rpc_env_curve(env)), 1);
    kl_rpc_server_opts_t so = {.bind = "tcp://127.0.0.1:0"};
    kl_rpc_env_server_opts(env, &so);
    assert_ptr_equal(so.curve, kl_rpc_env_curve(env));
    assert_int_equal(so.drain_grace_ms, 250);
    kl_rpc_env_destroy(&env);
    kl_config_destroy(&cfg);

    /* An allow-list without a key file is refused, naming both. */
    e.values[1] = "";
    cfg = kl_config_load(KL_PROC_TENANT, s_getenv, &e, &st);
    assert_non_null(cfg);
    assert_null(kl_rpc_env_new(cfg, KL_PROC_TENANT, &st));
    assert_non_null(strstr(st.message, "KOWLOON_CURVE_ALLOWED_CLIENTS_DIR"));
    assert_non_null(strstr(st.message, "KOWLOON_CURVE_SECRET_KEY_FILE"));
    kl_config_destroy(&cfg);

    /* A key file that is not one: refused, naming the setting. */
    e.values[1] = "/nonexistent/svc.key_secret";
    cfg = kl_config_load(KL_PROC_TENANT, s_getenv, &e, &st);
    assert_null(kl_rpc_env_new(cfg, KL_PROC_TENANT, &st));
    assert_non_null(strstr(st.message, "KOWLOON_CURVE_SECRET_KEY_FILE"));
    assert_non_null(strstr(st.message, "/nonexistent/svc.key_secret"));
    kl_config_destroy(&cfg);

    char *cmd = kl_asprintf("rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    free(secret);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expand),
        cmocka_unit_test(test_sighup_adds_instance),
        cmocka_unit_test(test_curve_settings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
