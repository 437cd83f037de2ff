/*
 * Tests of kl_config: defaults, required settings, validation messages
 * naming the variable, secrets never shown, list splitting. Variables come
 * from a table through a custom getenv_fn, never from the environment.
 */
#include "kl_config.h"

#include "kl_log.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

/* A fake environment: NULL-terminated name/value pairs. */
typedef struct {
    const char *pairs[32][2];
} s_env_t;

static const char *
s_getenv(const char *name, void *user)
{
    const s_env_t *env = user;
    for (size_t i = 0; env->pairs[i][0]; i++)
        if (strcmp(env->pairs[i][0], name) == 0)
            return env->pairs[i][1];
    return NULL;
}

#define TOKEN "0123456789abcdef-secret"
#define DB_URL "postgresql://kowloon:hunter2@db/kowloon"

/* Loads procs from env; fails the test on error. */
static kl_config_t *
s_load(unsigned procs, s_env_t *env)
{
    kl_status_t st;
    kl_config_t *cfg = kl_config_load(procs, s_getenv, env, &st);
    if (!cfg)
        fail_msg("kl_config_load: %s", st.message);
    assert_int_equal(st.code, KL_OK);
    assert_string_equal(st.message, "");
    return cfg;
}

/* Loading procs from env must fail with exactly want. */
static void
s_assert_fails(unsigned procs, s_env_t *env, const char *want)
{
    kl_status_t st;
    kl_config_t *cfg = kl_config_load(procs, s_getenv, env, &st);
    if (cfg) {
        kl_config_destroy(&cfg);
        fail_msg("loaded, want: %s", want);
    }
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_string_equal(st.message, want);
}

static void
test_defaults(void **state)
{
    (void)state;
    s_env_t env = {{{"KOWLOON_DATABASE_URL", DB_URL},
                    {"KOWLOON_ADMIN_TOKEN", TOKEN},
                    {"KOWLOON_DATA_OWNER_URL", DB_URL},
                    {"KOWLOON_STRIPE_SECRET_KEY", "sk_test_abcdef"},
                    {"KOWLOON_STRIPE_WEBHOOK_SECRETS", "whsec_test"},
                    {NULL, NULL}}};
    kl_config_t *cfg = s_load(KL_PROC_ALL, &env);
    assert_string_equal(kl_config_str(cfg, KL_CFG_LOG_LEVEL), "info");
    assert_int_equal(kl_config_int(cfg, KL_CFG_RPC_MAX_MESSAGE_BYTES), 4194304);
    assert_int_equal(kl_config_int(cfg, KL_CFG_WORKERS), 4);
    assert_int_equal(kl_config_int(cfg, KL_CFG_PAST_DUE_GRACE_S), 604800);
    assert_string_equal(kl_config_str(cfg, KL_CFG_DEFAULT_ISOLATION), "row");
    assert_string_equal(kl_config_str(cfg, KL_CFG_BASE_DOMAIN), "localhost");
    assert_string_equal(kl_config_str(cfg, KL_CFG_DATABASE_URL), DB_URL);
    assert_string_equal(kl_config_str(cfg, KL_CFG_ADMIN_TOKEN), TOKEN);
    assert_int_equal(kl_config_list_len(cfg, KL_CFG_TRUSTED_PROXIES), 2);
    assert_string_equal(kl_config_list_at(cfg, KL_CFG_TRUSTED_PROXIES, 0),
                        "127.0.0.1/32");
    assert_string_equal(kl_config_list_at(cfg, KL_CFG_TRUSTED_PROXIES, 1),
                        "::1/128");
    assert_int_equal(kl_config_list_len(cfg, KL_CFG_RESERVED_SUBDOMAINS), 27);
    assert_string_equal(kl_config_list_at(cfg, KL_CFG_RESERVED_SUBDOMAINS, 26),
                        "webhooks");
    kl_config_destroy(&cfg);
    assert_null(cfg);
    kl_config_destroy(&cfg);
    kl_config_destroy(NULL);
}

static void
test_values_and_procs(void **state)
{
    (void)state;
    /* The gateway does not need DATABASE_URL; the tenant service does not
     * need ADMIN_TOKEN. */
    s_env_t gw = {{{"KOWLOON_ADMIN_TOKEN", TOKEN},
                   {"KOWLOON_HTTP_THREADS", "1024"},
                   {"KOWLOON_RPC_TIMEOUT_MS", "10"},
                   {"KOWLOON_PUBLIC_SCHEME", "http"},
                   {"KOWLOON_LOG_LEVEL", "debug"},
                   {NULL, NULL}}};
    kl_config_t *cfg = s_load(KL_PROC_GATEWAY, &gw);
    assert_int_equal(kl_config_int(cfg, KL_CFG_HTTP_THREADS), 1024);
    assert_int_equal(kl_config_int(cfg, KL_CFG_RPC_TIMEOUT_MS), 10);
    assert_string_equal(kl_config_str(cfg, KL_CFG_PUBLIC_SCHEME), "http");
    assert_string_equal(kl_config_str(cfg, KL_CFG_LOG_LEVEL), "debug");
    kl_config_destroy(&cfg);

    s_env_t tenant = {{{"KOWLOON_DATABASE_URL", DB_URL},
                       {"KOWLOON_WORKERS", "256"},
                       {"KOWLOON_TENANT_CACHE_TTL_MS", "not read here"},
                       {NULL, NULL}}};
    cfg = s_load(KL_PROC_TENANT, &tenant);
    assert_int_equal(kl_config_int(cfg, KL_CFG_WORKERS), 256);
    kl_config_destroy(&cfg);

    assert_string_equal(kl_config_name(KL_CFG_WORKERS), "KOWLOON_WORKERS");
    assert_string_equal(kl_config_name(KL_CFG_ADMIN_TOKEN),
                        "KOWLOON_ADMIN_TOKEN");
}

static void
test_required_missing(void **state)
{
    (void)state;
    s_env_t none = {{{NULL, NULL}}};
    s_assert_fails(KL_PROC_TENANT, &none,
                   "KOWLOON_DATABASE_URL: required but not set (libpq "
                   "connection string of the control database.)");
    s_assert_fails(KL_PROC_GATEWAY, &none,
                   "KOWLOON_ADMIN_TOKEN: required but not set (Bearer token "
                   "of the admin API (at least 16 characters).)");
    /* Empty is not set either, for a value that must be non-empty. */
    s_env_t empty = {{{"KOWLOON_DATABASE_URL", ""}, {NULL, NULL}}};
    s_assert_fails(KL_PROC_TENANT, &empty,
                   "KOWLOON_DATABASE_URL: \"<redacted>\" is 0 characters long "
                   "(want 1..4096)");
}

static void
test_bad_values(void **state)
{
    (void)state;
    static const struct {
        const char *name, *value, *want;
    } cases[] = {
        {"KOWLOON_WORKERS", "abc",
         "KOWLOON_WORKERS: \"abc\" is not an integer (want 1..256)"},
        {"KOWLOON_WORKERS", "",
         "KOWLOON_WORKERS: \"\" is not an integer "
         "(want 1..256)"},
        {"KOWLOON_WORKERS", " 4",
         "KOWLOON_WORKERS: \" 4\" is not an integer "
         "(want 1..256)"},
        {"KOWLOON_WORKERS", "4 ",
         "KOWLOON_WORKERS: \"4 \" is not an integer "
         "(want 1..256)"},
        {"KOWLOON_WORKERS", "4x",
         "KOWLOON_WORKERS: \"4x\" is not an integer "
         "(want 1..256)"},
        {"KOWLOON_WORKERS", "0x10",
         "KOWLOON_WORKERS: \"0x10\" is not an "
         "integer (want 1..256)"},
        {"KOWLOON_WORKERS", "0",
         "KOWLOON_WORKERS: 0 is out of range (want 1..256)"},
        {"KOWLOON_WORKERS", "257",
         "KOWLOON_WORKERS: 257 is out of range (want 1..256)"},
        {"KOWLOON_WORKERS", "-1",
         "KOWLOON_WORKERS: -1 is out of range (want 1..256)"},
        {"KOWLOON_WORKERS", "99999999999999999999",
         "KOWLOON_WORKERS: 99999999999999999999 is out of range (want "
         "1..256)"},
        {"KOWLOON_DEFAULT_ISOLATION", "rows",
         "KOWLOON_DEFAULT_ISOLATION: \"rows\" is not one of "
         "row|schema|database"},
        {"KOWLOON_DEFAULT_ISOLATION", "",
         "KOWLOON_DEFAULT_ISOLATION: \"\" is not one of row|schema|database"},
        {"KOWLOON_LOG_LEVEL", "INFO",
         "KOWLOON_LOG_LEVEL: \"INFO\" is not one of debug|info|warn|error"},
        {"KOWLOON_DEFAULT_PLAN", "",
         "KOWLOON_DEFAULT_PLAN: \"\" is 0 characters long (want 1..63)"},
        {"KOWLOON_DEFAULT_PLAN", "a\tb",
         "KOWLOON_DEFAULT_PLAN: control character at offset 1"},
        {"KOWLOON_TENANT_ENDPOINTS", "",
         "KOWLOON_TENANT_ENDPOINTS: \"\" is 0 characters long (want "
         "1..4096)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_env_t env = {{{"KOWLOON_DATABASE_URL", DB_URL},
                        {"KOWLOON_ADMIN_TOKEN", TOKEN},
                        {"KOWLOON_DATA_OWNER_URL", DB_URL},
                        {"KOWLOON_STRIPE_SECRET_KEY", "sk_test_abcdef"},
                        {"KOWLOON_STRIPE_WEBHOOK_SECRETS", "whsec_test"},
                        {cases[i].name, cases[i].value},
                        {NULL, NULL}}};
        s_assert_fails(KL_PROC_ALL, &env, cases[i].want);
    }
}

/* Secret values appear in no message, whatever is wrong with them. */
static void
test_secrets_not_shown(void **state)
{
    (void)state;
    const char *const tokens[] = {"short-secret", "bad\x01secret-value-x", ""};
    for (size_t i = 0; i < sizeof tokens / sizeof tokens[0]; i++) {
        s_env_t env = {{{"KOWLOON_ADMIN_TOKEN", tokens[i]}, {NULL, NULL}}};
        kl_status_t st;
        assert_null(kl_config_load(KL_PROC_GATEWAY, s_getenv, &env, &st));
        assert_int_equal(st.code, KL_INVALID_ARGUMENT);
        assert_non_null(strstr(st.message, "KOWLOON_ADMIN_TOKEN"));
        if (tokens[i][0])
            assert_null(strstr(st.message, "secret"));
    }
    s_env_t env = {{{"KOWLOON_ADMIN_TOKEN", "short-secret"}, {NULL, NULL}}};
    s_assert_fails(KL_PROC_GATEWAY, &env,
                   "KOWLOON_ADMIN_TOKEN: \"<redacted>\" is 12 characters long "
                   "(want 16..4096)");

    /* Nor in the log of the effective settings. */
    s_env_t ok = {{{"KOWLOON_ADMIN_TOKEN", TOKEN},
                   {"KOWLOON_DATABASE_URL", DB_URL},
                   {"KOWLOON_DATA_OWNER_URL", DB_URL},
                   {"KOWLOON_STRIPE_SECRET_KEY", "sk_test_abcdef"},
                   {"KOWLOON_STRIPE_WEBHOOK_SECRETS", "whsec_test"},
                   {"KOWLOON_REDIS_URL", "redis://:pa55word@r:6379/0"},
                   {NULL, NULL}}};
    kl_config_t *cfg = s_load(KL_PROC_ALL, &ok);
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fileno(tmp), STDERR_FILENO) >= 0);
    kl_config_log(cfg);
    fflush(stderr);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    kl_config_destroy(&cfg);

    char text[16384];
    rewind(tmp);
    size_t n = fread(text, 1, sizeof text - 1, tmp);
    text[n] = '\0';
    fclose(tmp);
    assert_non_null(strstr(text, "KOWLOON_WORKERS=4"));
    assert_non_null(strstr(text, "KOWLOON_ADMIN_TOKEN=<redacted>"));
    assert_non_null(strstr(text, "KOWLOON_DATABASE_URL=<redacted>"));
    assert_null(strstr(text, "secret"));
    assert_null(strstr(text, "hunter2"));
    assert_null(strstr(text, "pa55word"));
}

static void
test_list_splitting(void **state)
{
    (void)state;
    s_env_t env = {{{"KOWLOON_DATABASE_URL", DB_URL},
                    {"KOWLOON_RESERVED_SUBDOMAINS", " www , ,api,,  admin  ,"},
                    {NULL, NULL}}};
    kl_config_t *cfg = s_load(KL_PROC_TENANT, &env);
    assert_int_equal(kl_config_list_len(cfg, KL_CFG_RESERVED_SUBDOMAINS), 3);
    assert_string_equal(kl_config_list_at(cfg, KL_CFG_RESERVED_SUBDOMAINS, 0),
                        "www");
    assert_string_equal(kl_config_list_at(cfg, KL_CFG_RESERVED_SUBDOMAINS, 1),
                        "api");
    assert_string_equal(kl_config_list_at(cfg, KL_CFG_RESERVED_SUBDOMAINS, 2),
                        "admin");
    kl_config_destroy(&cfg);

    s_env_t empty = {{{"KOWLOON_DATABASE_URL", DB_URL},
                      {"KOWLOON_RESERVED_SUBDOMAINS", ""},
                      {NULL, NULL}}};
    cfg = s_load(KL_PROC_TENANT, &empty);
    assert_int_equal(kl_config_list_len(cfg, KL_CFG_RESERVED_SUBDOMAINS), 0);
    kl_config_destroy(&cfg);

    s_env_t one = {{{"KOWLOON_ADMIN_TOKEN", TOKEN},
                    {"KOWLOON_TENANT_ENDPOINTS", "tcp://10.0.0.1:7101"},
                    {NULL, NULL}}};
    cfg = s_load(KL_PROC_GATEWAY, &one);
    assert_int_equal(kl_config_list_len(cfg, KL_CFG_TENANT_ENDPOINTS), 1);
    assert_string_equal(kl_config_list_at(cfg, KL_CFG_TENANT_ENDPOINTS, 0),
                        "tcp://10.0.0.1:7101");
    kl_config_destroy(&cfg);
}

static void
test_markdown(void **state)
{
    (void)state;
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    assert_non_null(out);
    kl_config_write_markdown(out);
    fclose(out);
    assert_non_null(strstr(text, "| variable | type | default |"));
    assert_non_null(strstr(text, "| `KOWLOON_WORKERS` | integer | `4` | "
                                 "1..256 | services |"));
    assert_non_null(strstr(text, "| `KOWLOON_DATABASE_URL` | string, secret "
                                 "| **required** |"));
    assert_non_null(strstr(text, "`debug|info|warn|error`"));
    free(text);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_values_and_procs),
        cmocka_unit_test(test_required_missing),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_secrets_not_shown),
        cmocka_unit_test(test_list_splitting),
        cmocka_unit_test(test_markdown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
