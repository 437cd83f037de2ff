/* gw_route_file: the operator's route file, every error message exactly. */
#include "gw_route_file.h"

#include "kowloon/flags.pb-c.h"
#include "kowloon/tenant.pb-c.h"
#include "kowloon/workspace.pb-c.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

static const ProtobufCServiceDescriptor *const s_services[] = {
    &kowloon__tenant__tenant_service__descriptor,
    &kowloon__workspace__workspace_service__descriptor,
    &kowloon__flags__flags_service__descriptor,
};

static gw_route_file_opts_t
s_opts(void)
{
    size_t n;
    const gw_route_t *t = gw_routes_table(&n);
    gw_route_file_opts_t o = {s_services,
                              sizeof s_services / sizeof s_services[0], t, n};
    return o;
}

static gw_route_file_t *
s_parse(const char *text, kl_status_t *st)
{
    gw_route_file_opts_t o = s_opts();
    return gw_route_file_parse("routes.conf", text, strlen(text), &o, st);
}

/* The error of text, which must fail. */
static void
s_expect_error(const char *text, const char *want)
{
    kl_status_t st;
    gw_route_file_t *rf = s_parse(text, &st);
    if (rf) {
        gw_route_file_destroy(&rf);
        fail_msg("parsed, wanted error: %s", want);
    }
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_string_equal(st.message, want);
}

static void
test_good_file(void **state)
{
    static const char text[] =
        "# the product's routes\n"
        "\n"
        "GET   /app/{rest...}   http://127.0.0.1:3000   auth=apikey "
        "feature=advanced_reports timeout=5000 idempotent  # the app\n"
        "POST  /api/v1/things   "
        "zmq:kowloon.workspace.WorkspaceService/CreateProject auth=apikey\n"
        "\t GET /api/whoami http://localhost:3000/v2/ auth=none\r\n"
        "DELETE /admin/v1/widgets/{id}:purge http://[::1]:8081 auth=admin "
        "host=apex timeout=10\n"
        "GET /api/v1/things/{id} "
        "zmq:kowloon.workspace.WorkspaceService/GetProject auth=apikey "
        "timeout=600000";
    kl_status_t st;
    gw_route_file_t *rf = s_parse(text, &st);
    if (!rf)
        fail_msg("%s", st.message);
    size_t n;
    const gw_route_t *r = gw_route_file_routes(rf, &n);
    assert_int_equal(n, 5);

    assert_string_equal(r[0].method, "GET");
    assert_string_equal(r[0].pattern, "/app/{rest...}");
    assert_int_equal(r[0].host, GW_HOST_TENANT);
    assert_null(r[0].service);
    assert_null(r[0].rpc);
    assert_int_equal(r[0].local, GW_LOCAL_NONE);
    assert_true(r[0].idempotent);
    assert_string_equal(r[0].feature, "advanced_reports");
    assert_int_equal(r[0].auth, GW_AUTH_API_KEY);
    const gw_route_file_target_t *t = gw_route_file_target(rf, 0);
    assert_string_equal(t->upstream, "http://127.0.0.1:3000");
    assert_int_equal(t->timeout_ms, 5000);
    assert_int_equal(t->line, 3);

    assert_string_equal(r[1].method, "POST");
    assert_ptr_equal(r[1].service,
                     &kowloon__workspace__workspace_service__descriptor);
    assert_string_equal(r[1].rpc, "CreateProject");
    assert_false(r[1].idempotent);
    assert_null(r[1].feature);
    t = gw_route_file_target(rf, 1);
    assert_null(t->upstream);
    assert_int_equal(t->timeout_ms, 0); /* KOWLOON_RPC_TIMEOUT_MS */
    assert_int_equal(t->line, 4);

    /* A trailing slash of the prefix is dropped; default timeout. */
    t = gw_route_file_target(rf, 2);
    assert_string_equal(t->upstream, "http://localhost:3000/v2");
    assert_int_equal(t->timeout_ms, GW_ROUTE_FILE_UPSTREAM_TIMEOUT_DEFAULT);
    assert_int_equal(r[2].auth, GW_AUTH_NONE);

    assert_int_equal(r[3].host, GW_HOST_APEX);
    assert_int_equal(r[3].auth, GW_AUTH_ADMIN_TOKEN);
    assert_string_equal(gw_route_file_target(rf, 3)->upstream,
                        "http://[::1]:8081");
    assert_int_equal(gw_route_file_target(rf, 3)->timeout_ms, 10);
    assert_int_equal(gw_route_file_target(rf, 4)->timeout_ms, 600000);
    assert_null(gw_route_file_target(rf, 5));
    gw_route_file_destroy(&rf);
    assert_null(rf);
    gw_route_file_destroy(&rf);
}

static void
test_empty_file(void **state)
{
    kl_status_t st;
    gw_route_file_t *rf = s_parse("# nothing yet\n\n   \n", &st);
    assert_non_null(rf);
    size_t n = 99;
    gw_route_file_routes(rf, &n);
    assert_int_equal(n, 0);
    gw_route_file_destroy(&rf);
    /* No file at all reads as no routes. */
    assert_null(gw_route_file_routes(NULL, &n));
    assert_int_equal(n, 0);
}

static void
test_method_errors(void **state)
{
    s_expect_error("# x\nFETCH /a http://127.0.0.1:1 auth=none\n",
                   "routes.conf:2: unknown method \"FETCH\" (want GET, HEAD, "
                   "POST, PUT, PATCH, DELETE or OPTIONS)");
    s_expect_error("get /a http://127.0.0.1:1 auth=none\n",
                   "routes.conf:1: unknown method \"get\" (want GET, HEAD, "
                   "POST, PUT, PATCH, DELETE or OPTIONS)");
    s_expect_error("GET\n", "routes.conf:1: missing pattern and target after "
                            "GET");
    s_expect_error("GET /a   # no target\n",
                   "routes.conf:1: missing target after GET /a");
}

static void
test_pattern_errors(void **state)
{
    s_expect_error("GET a http://127.0.0.1:1 auth=none",
                   "routes.conf:1: pattern \"a\" must start with /");
    s_expect_error("GET / http://127.0.0.1:1 auth=none",
                   "routes.conf:1: pattern \"/\" names no path (mount a whole "
                   "app with /{rest...})");
    s_expect_error("GET /a//b http://127.0.0.1:1 auth=none",
                   "routes.conf:1: pattern \"/a//b\": empty segment");
    s_expect_error("GET /a/../b http://127.0.0.1:1 auth=none",
                   "routes.conf:1: pattern \"/a/../b\": \".\" and \"..\" "
                   "segments are not allowed");
    s_expect_error("GET /a/{Id} http://127.0.0.1:1 auth=none",
                   "routes.conf:1: pattern \"/a/{Id}\": bad parameter "
                   "\"{Id}\" (want {name} or {name...}, name of a-z 0-9 _)");
    s_expect_error("GET /a/{id http://127.0.0.1:1 auth=none",
                   "routes.conf:1: pattern \"/a/{id\": bad parameter \"{id\" "
                   "(want {name} or {name...}, name of a-z 0-9 _)");
    s_expect_error("GET /a/x{id} http://127.0.0.1:1 auth=none",
                   "routes.conf:1: pattern \"/a/x{id}\": a parameter must be "
                   "a whole segment, \"{name}\", optionally followed by a "
                   "verb");
    s_expect_error("GET /a/{id}/{id} http://127.0.0.1:1 auth=none",
                   "routes.conf:1: pattern \"/a/{id}/{id}\": parameter "
                   "\"id\" appears twice");
    s_expect_error("GET /{a}/{b}/{c}/{d}/{e} http://127.0.0.1:1 auth=none",
                   "routes.conf:1: pattern \"/{a}/{b}/{c}/{d}/{e}\": more "
                   "than 4 parameters");
    s_expect_error("GET /a/{rest...}/b http://127.0.0.1:1 auth=none",
                   "routes.conf:1: pattern \"/a/{rest...}/b\": a {name...} "
                   "segment must be the last one");
    s_expect_error("GET /a/{rest...}:x http://127.0.0.1:1 auth=none",
                   "routes.conf:1: pattern \"/a/{rest...}:x\": a {name...} "
                   "segment must be the last one");
    s_expect_error("GET /a%20b http://127.0.0.1:1 auth=none",
                   "routes.conf:1: pattern \"/a%20b\": character '%' not "
                   "allowed");
    s_expect_error("GET /caf\xc3\xa9 http://127.0.0.1:1 auth=none",
                   "routes.conf:1: pattern \"/caf\xc3\xa9\": byte 0xc3 not "
                   "allowed");
    s_expect_error("GET /a/{rest...} zmq:kowloon.tenant.TenantService/Get "
                   "auth=none",
                   "routes.conf:1: pattern \"/a/{rest...}\": a {name...} "
                   "segment is for http upstream routes only");
}

static void
test_target_errors(void **state)
{
    s_expect_error("\n\nGET /a ftp://x auth=none",
                   "routes.conf:3: upstream \"ftp://x\" is not "
                   "http://host:port[/prefix]");
    s_expect_error("GET /a https://app.internal:443 auth=none",
                   "routes.conf:1: upstream \"https://app.internal:443\": "
                   "https to upstreams is not supported; use http:// to a "
                   "host on the same machine or private network");
    static const char *const bad[] = {
        "http://127.0.0.1",       /* no port */
        "http://127.0.0.1:",      /* empty port */
        "http://127.0.0.1:0",     /* port 0 */
        "http://127.0.0.1:65536", /* port too big */
        "http://127.0.0.1:80x",   /* junk port */
        "http://:3000",           /* no host */
        "http://999.0.0.1:3000",  /* not an IPv4 address */
        "http://1.2.3:3000",      /* not an IPv4 address */
        "http://[::g]:3000",      /* not an IPv6 address */
        "http://[::1]3000",       /* no colon after ] */
        "http://user@host:3000",  /* userinfo */
        "http://-app:3000",       /* bad name */
        "http://app_1:3000",      /* bad name */
        "http://app:3000/a?x=1",  /* query in prefix */
        "http://app:3000/a//b",   /* empty prefix segment */
        "http:/app:3000",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[256], want[256];
        snprintf(text, sizeof text, "GET /a %s auth=none", bad[i]);
        snprintf(want, sizeof want,
                 "routes.conf:1: upstream \"%s\" is not "
                 "http://host:port[/prefix]",
                 bad[i]);
        s_expect_error(text, want);
    }
    s_expect_error("POST /api/v1/things "
                   "zmq:kowloon.workspace.WorkspaceService/CreateProjct "
                   "auth=apikey",
                   "routes.conf:1: rpc CreateProjct not found in "
                   "kowloon.workspace.WorkspaceService");
    s_expect_error(
        "POST /x zmq:kowloon.nope.NopeService/Do auth=apikey",
        "routes.conf:1: unknown service \"kowloon.nope.NopeService\"");
    s_expect_error("POST /x zmq:kowloon.tenant.TenantService auth=apikey",
                   "routes.conf:1: target "
                   "\"zmq:kowloon.tenant.TenantService\" is not "
                   "zmq:package.Service/Rpc");
    s_expect_error("POST /x zmq:/Get auth=apikey",
                   "routes.conf:1: target \"zmq:/Get\" is not "
                   "zmq:package.Service/Rpc");
}

static void
test_option_errors(void **state)
{
    s_expect_error("# a\n# b\n\n\n\n\n\n\n\n\n\n"
                   "GET /a http://127.0.0.1:3000 auth=none timout=5\n",
                   "routes.conf:12: unknown option \"timout\"");
    s_expect_error("GET /a http://127.0.0.1:3000 auth=none auth=apikey",
                   "routes.conf:1: option \"auth\" given twice");
    s_expect_error("GET /a http://127.0.0.1:3000",
                   "routes.conf:1: missing auth= (none, apikey or admin)");
    s_expect_error("GET /a http://127.0.0.1:3000 auth",
                   "routes.conf:1: option \"auth\" needs a value (auth=...)");
    s_expect_error("GET /a http://127.0.0.1:3000 auth=token",
                   "routes.conf:1: auth \"token\" is not none, apikey or "
                   "admin");
    s_expect_error("GET /a http://127.0.0.1:3000 auth=none host=www",
                   "routes.conf:1: host \"www\" is not tenant or apex");
    s_expect_error("GET /a http://127.0.0.1:3000 auth=apikey host=apex",
                   "routes.conf:1: auth=apikey needs host=tenant (API keys "
                   "belong to tenants)");
    s_expect_error("GET /a http://127.0.0.1:3000 auth=admin host=apex "
                   "feature=x",
                   "routes.conf:1: feature= needs host=tenant (features "
                   "belong to tenants' plans)");
    s_expect_error("GET /a http://127.0.0.1:3000 auth=none feature=Reports",
                   "routes.conf:1: feature \"Reports\" is not a feature name "
                   "(1 to 63 of a-z 0-9 _)");
    s_expect_error("GET /a http://127.0.0.1:3000 auth=none feature=",
                   "routes.conf:1: feature \"\" is not a feature name (1 to "
                   "63 of a-z 0-9 _)");
    s_expect_error("GET /a http://127.0.0.1:3000 auth=none idempotent=yes",
                   "routes.conf:1: option \"idempotent\" takes no value");
    static const char *const bad_timeouts[] = {"abc", "9",   "600001", "-5",
                                               "+50", "50x", "",       "1e3"};
    for (size_t i = 0; i < sizeof bad_timeouts / sizeof bad_timeouts[0]; i++) {
        char text[128], want[160];
        snprintf(text, sizeof text,
                 "GET /a http://127.0.0.1:3000 auth=none timeout=%s",
                 bad_timeouts[i]);
        snprintf(want, sizeof want,
                 "routes.conf:1: timeout \"%s\" is not a number of "
                 "milliseconds in 10..600000",
                 bad_timeouts[i]);
        s_expect_error(text, want);
    }
}

static void
test_duplicates(void **state)
{
    s_expect_error("GET /a/{x} http://127.0.0.1:3000 auth=none\n"
                   "# again, other parameter name\n"
                   "GET /a/{y} http://127.0.0.1:3001 auth=none\n",
                   "routes.conf:3: duplicate route GET /a/{y} (host tenant): "
                   "first on line 1");
    /* Same path, other method or other host: fine. */
    kl_status_t st;
    gw_route_file_t *rf =
        s_parse("GET /a http://127.0.0.1:3000 auth=none\n"
                "POST /a http://127.0.0.1:3000 auth=none\n"
                "GET /a http://127.0.0.1:3000 auth=admin host=apex\n",
                &st);
    if (!rf)
        fail_msg("%s", st.message);
    gw_route_file_destroy(&rf);
    /* The gateway's own routes cannot be redefined. */
    s_expect_error("GET /api/v1/tenant http://127.0.0.1:3000 auth=apikey",
                   "routes.conf:1: duplicate route GET /api/v1/tenant: the "
                   "gateway serves it itself");
    s_expect_error("GET /healthz http://127.0.0.1:3000 auth=none",
                   "routes.conf:1: duplicate route GET /healthz: the gateway "
                   "serves it itself");
    s_expect_error("POST /admin/v1/tenants/{tid}:suspend http://127.0.0.1:1 "
                   "auth=admin host=apex",
                   "routes.conf:1: duplicate route POST "
                   "/admin/v1/tenants/{tid}:suspend: the gateway serves it "
                   "itself");
}

static void
test_line_errors(void **state)
{
    s_expect_error("GET /a http://127.0.0.1:3000 auth=none\x01\n",
                   "routes.conf:1: control character 0x01 in line");
    static const char nul[] = "GET /a\0 http://127.0.0.1:3000 auth=none\n";
    kl_status_t st;
    gw_route_file_opts_t o = s_opts();
    assert_null(
        gw_route_file_parse("routes.conf", nul, sizeof nul - 1, &o, &st));
    assert_string_equal(st.message, "routes.conf:1: NUL byte in line");
    s_expect_error("GET /a http://127.0.0.1:3000 auth=none a b c d e f g h i "
                   "j k l m",
                   "routes.conf:1: more than 16 words on one line");
}

static void
test_load(void **state)
{
    char path[] = "/tmp/test_gw_route_file.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    static const char text[] = "GET /api/{rest...} http://127.0.0.1:3000 "
                               "auth=apikey\nGET /x ftp://y auth=none\n";
    assert_int_equal(write(fd, text, sizeof text - 1),
                     (ssize_t)sizeof text - 1);
    close(fd);
    gw_route_file_opts_t o = s_opts();
    kl_status_t st;
    assert_null(gw_route_file_load(path, &o, &st));
    char want[256];
    snprintf(want, sizeof want,
             "%s:2: upstream \"ftp://y\" is not http://host:port[/prefix]",
             path);
    assert_string_equal(st.message, want);

    /* Fixed, it loads. */
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("GET /api/{rest...} http://127.0.0.1:3000 auth=apikey\n", f);
    fclose(f);
    gw_route_file_t *rf = gw_route_file_load(path, &o, &st);
    if (!rf)
        fail_msg("%s", st.message);
    size_t n;
    gw_route_file_routes(rf, &n);
    assert_int_equal(n, 1);
    gw_route_file_destroy(&rf);
    unlink(path);

    assert_null(gw_route_file_load("/nonexistent/routes.conf", &o, &st));
    assert_string_equal(st.message, "/nonexistent/routes.conf: cannot open: "
                                    "No such file or directory");
}

static void
test_find_service(void **state)
{
    assert_ptr_equal(gw_route_file_find_service("kowloon.tenant.TenantService",
                                                s_services, 2),
                     &kowloon__tenant__tenant_service__descriptor);
    assert_null(gw_route_file_find_service("TenantService", s_services, 2));
    assert_null(
        gw_route_file_find_service("kowloon.tenant.TenantService", NULL, 0));
}

/* gateway/routes.conf.example loads against the real table, and the
 * table compiles with it appended, as the gateway does at start. */
static void
test_example_file(void **state)
{
    char path[4096];
    const char *slash = strrchr(__FILE__, '/');
    snprintf(path, sizeof path, "%.*s/../routes.conf.example",
             (int)(slash - __FILE__), __FILE__);
    gw_route_file_opts_t o = s_opts();
    kl_status_t st;
    gw_route_file_t *rf = gw_route_file_load(path, &o, &st);
    if (!rf)
        fail_msg("%s", st.message);
    size_t n;
    const gw_route_t *r = gw_route_file_routes(rf, &n);
    assert_true(n >= 3);
    assert_string_equal(gw_route_file_target(rf, 0)->upstream,
                        "http://127.0.0.1:3000");
    gw_route_t *all = calloc(o.n_builtin + n, sizeof *all);
    memcpy(all, o.builtin, o.n_builtin * sizeof *all);
    memcpy(all + o.n_builtin, r, n * sizeof *all);
    gw_routes_t *routes =
        gw_routes_new_ext(all, o.n_builtin + n, o.n_builtin, &st);
    if (!routes)
        fail_msg("%s", st.message);
    gw_route_match_t m;
    assert_int_equal(gw_routes_match(routes, GW_HOST_TENANT, "GET",
                                     "/app/a/b/c", &m, NULL, 0),
                     GW_MATCH_FOUND);
    assert_true(m.index >= o.n_builtin);
    assert_string_equal(
        gw_route_file_target(rf, m.index - o.n_builtin)->upstream,
        "http://127.0.0.1:3000");
    gw_routes_destroy(&routes);
    free(all);
    gw_route_file_destroy(&rf);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_file),
        cmocka_unit_test(test_empty_file),
        cmocka_unit_test(test_method_errors),
        cmocka_unit_test(test_pattern_errors),
        cmocka_unit_test(test_target_errors),
        cmocka_unit_test(test_option_errors),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_line_errors),
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_example_file),
        cmocka_unit_test(test_find_service),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
