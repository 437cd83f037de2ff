/* gw_routes: the route table and the matcher. */
#include "gw_routes.h"

#include "kowloon/tenant.pb-c.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

static gw_routes_t *
s_default(void)
{
    size_t n;
    const gw_route_t *t = gw_routes_table(&n);
    kl_status_t st;
    gw_routes_t *r = gw_routes_new(t, n, &st);
    if (!r)
        fail_msg("gw_routes_new: %s", st.message);
    return r;
}

static void
test_table_compiles(void **state)
{
    gw_routes_t *r = s_default();
    size_t n;
    gw_routes_table(&n);
    assert_int_equal(gw_routes_count(r), n);
    /* every rpc route resolved its method descriptor */
    for (size_t i = 0; i < n; i++) {
        const gw_route_t *route = gw_routes_at(r, i);
        assert_non_null(route);
        if (route->local == GW_LOCAL_NONE)
            assert_non_null(protobuf_c_service_descriptor_get_method_by_name(
                route->service, route->rpc));
    }
    assert_null(gw_routes_at(r, n));
    gw_routes_destroy(&r);
    assert_null(r);
}

static void
test_admin_routes(void **state)
{
    gw_routes_t *r = s_default();
    gw_route_match_t m;
    char allow[64];

    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "POST",
                                     "/admin/v1/tenants", &m, allow,
                                     sizeof allow),
                     GW_MATCH_FOUND);
    assert_string_equal(m.route->rpc, "Create");
    assert_false(m.route->idempotent);
    assert_int_equal(m.route->auth, GW_AUTH_ADMIN_TOKEN);
    assert_int_equal(m.n_params, 0);
    assert_string_equal(m.method->input->name,
                        "kowloon.tenant.CreateTenantRequest");

    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "GET",
                                     "/admin/v1/tenants/t-1", &m, NULL, 0),
                     GW_MATCH_FOUND);
    assert_string_equal(m.route->rpc, "Get");
    assert_int_equal(m.n_params, 1);
    assert_string_equal(m.params[0].name, "id");
    assert_string_equal(m.params[0].value, "t-1");

    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "POST",
                                     "/admin/v1/tenants/t-1:suspend", &m, NULL,
                                     0),
                     GW_MATCH_FOUND);
    assert_string_equal(m.route->rpc, "Suspend");
    assert_string_equal(m.params[0].value, "t-1");
    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "POST",
                                     "/admin/v1/tenants/t-1:resume", &m, NULL,
                                     0),
                     GW_MATCH_FOUND);
    assert_string_equal(m.route->rpc, "Resume");

    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "DELETE",
                                     "/admin/v1/tenants/t-1/api-keys/k-9", &m,
                                     NULL, 0),
                     GW_MATCH_FOUND);
    assert_string_equal(m.route->rpc, "DeleteApiKey");
    assert_int_equal(m.n_params, 2);
    assert_string_equal(m.params[0].name, "tenant_id");
    assert_string_equal(m.params[0].value, "t-1");
    assert_string_equal(m.params[1].name, "key_id");
    assert_string_equal(m.params[1].value, "k-9");

    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "POST",
                                     "/admin/v1/tenants/t-1/api-keys", &m, NULL,
                                     0),
                     GW_MATCH_FOUND);
    assert_string_equal(m.route->rpc, "CreateApiKey");
    assert_string_equal(m.params[0].name, "tenant_id");
    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "GET",
                                     "/admin/v1/tenants/t-1/api-keys", &m, NULL,
                                     0),
                     GW_MATCH_FOUND);
    assert_string_equal(m.route->rpc, "ListApiKeys");
    assert_string_equal(m.params[0].name, "id");
    gw_routes_destroy(&r);
}

static void
test_not_found_and_method(void **state)
{
    gw_routes_t *r = s_default();
    gw_route_match_t m;
    char allow[64];

    assert_int_equal(
        gw_routes_match(r, GW_HOST_APEX, "GET", "/x", &m, allow, sizeof allow),
        GW_MATCH_NO_PATH);
    assert_string_equal(allow, "");
    /* trailing slash, extra segments and empty params are other paths */
    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "GET",
                                     "/admin/v1/tenants/", &m, NULL, 0),
                     GW_MATCH_NO_PATH);
    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "GET",
                                     "/admin/v1/tenants/a/b", &m, NULL, 0),
                     GW_MATCH_NO_PATH);
    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "POST",
                                     "/admin/v1/tenants/:suspend", &m, NULL, 0),
                     GW_MATCH_NO_PATH);
    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "POST",
                                     "/admin/v1/tenants/a:explode", &m, NULL,
                                     0),
                     GW_MATCH_NO_PATH);

    /* wrong method: 405 with every allowed method */
    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "PUT",
                                     "/admin/v1/tenants/t-1", &m, allow,
                                     sizeof allow),
                     GW_MATCH_BAD_METHOD);
    assert_string_equal(allow, "GET, PATCH, DELETE");
    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "DELETE",
                                     "/admin/v1/tenants", &m, allow,
                                     sizeof allow),
                     GW_MATCH_BAD_METHOD);
    assert_string_equal(allow, "POST, GET");
    /* a custom verb is not swallowed by {id} */
    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "GET",
                                     "/admin/v1/tenants/t-1:suspend", &m, allow,
                                     sizeof allow),
                     GW_MATCH_BAD_METHOD);
    assert_string_equal(allow, "POST");
    gw_routes_destroy(&r);
}

static void
test_hosts_are_separate(void **state)
{
    gw_routes_t *r = s_default();
    gw_route_match_t m;

    /* admin routes do not exist on tenant hosts, and the reverse */
    assert_int_equal(gw_routes_match(r, GW_HOST_TENANT, "GET",
                                     "/admin/v1/tenants", &m, NULL, 0),
                     GW_MATCH_NO_PATH);
    assert_int_equal(
        gw_routes_match(r, GW_HOST_APEX, "GET", "/api/v1/tenant", &m, NULL, 0),
        GW_MATCH_NO_PATH);
    assert_int_equal(gw_routes_match(r, GW_HOST_TENANT, "GET", "/api/v1/tenant",
                                     &m, NULL, 0),
                     GW_MATCH_FOUND);
    assert_int_equal(m.route->local, GW_LOCAL_TENANT_SELF);
    assert_int_equal(m.route->auth, GW_AUTH_API_KEY);
    assert_null(m.method);
    assert_int_equal(
        gw_routes_match(r, GW_HOST_ANY, "GET", "/healthz", &m, NULL, 0),
        GW_MATCH_FOUND);
    assert_int_equal(m.route->local, GW_LOCAL_HEALTHZ);
    gw_routes_destroy(&r);
}

static void
test_param_limits(void **state)
{
    gw_routes_t *r = s_default();
    gw_route_match_t m;
    char path[64 + GW_ROUTE_PARAM_MAX + 2];
    char id[GW_ROUTE_PARAM_MAX + 2];

    memset(id, 'a', GW_ROUTE_PARAM_MAX);
    id[GW_ROUTE_PARAM_MAX] = '\0';
    snprintf(path, sizeof path, "/admin/v1/tenants/%s", id);
    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "GET", path, &m, NULL, 0),
                     GW_MATCH_FOUND);
    assert_int_equal(strlen(m.params[0].value), GW_ROUTE_PARAM_MAX);
    id[GW_ROUTE_PARAM_MAX] = 'a';
    id[GW_ROUTE_PARAM_MAX + 1] = '\0';
    snprintf(path, sizeof path, "/admin/v1/tenants/%s", id);
    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "GET", path, &m, NULL, 0),
                     GW_MATCH_NO_PATH);
    gw_routes_destroy(&r);
}

static void
test_bad_tables(void **state)
{
    kl_status_t st;
    const ProtobufCServiceDescriptor *svc =
        &kowloon__tenant__tenant_service__descriptor;
    gw_route_t bad_rpc[] = {{"GET", "/x/{id}", GW_HOST_APEX, svc, GW_LOCAL_NONE,
                             "Nope", true, NULL, GW_AUTH_NONE}};
    assert_null(gw_routes_new(bad_rpc, 1, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_string_equal(st.message, "route GET /x/{id}: "
                                    "kowloon.tenant.TenantService has no "
                                    "method Nope");
    gw_route_t bad_pattern[] = {{"GET", "/x/{id", GW_HOST_APEX, svc,
                                 GW_LOCAL_NONE, "Get", true, NULL,
                                 GW_AUTH_NONE}};
    assert_null(gw_routes_new(bad_pattern, 1, &st));
    gw_route_t empty_seg[] = {{"GET", "/x//y", GW_HOST_APEX, svc, GW_LOCAL_NONE,
                               "Get", true, NULL, GW_AUTH_NONE}};
    assert_null(gw_routes_new(empty_seg, 1, &st));
    gw_route_t local_rpc[] = {{"GET", "/x", GW_HOST_APEX, svc, GW_LOCAL_HEALTHZ,
                               "Get", true, NULL, GW_AUTH_NONE}};
    assert_null(gw_routes_new(local_rpc, 1, &st));
    /* a feature is stored and exposed as written */
    gw_route_t feat[] = {{"GET", "/reports/{id}", GW_HOST_TENANT, svc,
                          GW_LOCAL_NONE, "Get", true, "advanced_reports",
                          GW_AUTH_API_KEY}};
    gw_routes_t *r = gw_routes_new(feat, 1, &st);
    assert_non_null(r);
    gw_route_match_t m;
    assert_int_equal(
        gw_routes_match(r, GW_HOST_TENANT, "GET", "/reports/7", &m, NULL, 0),
        GW_MATCH_FOUND);
    assert_string_equal(m.route->feature, "advanced_reports");
    gw_routes_destroy(&r);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_compiles),
        cmocka_unit_test(test_admin_routes),
        cmocka_unit_test(test_not_found_and_method),
        cmocka_unit_test(test_hosts_are_separate),
        cmocka_unit_test(test_param_limits),
        cmocka_unit_test(test_bad_tables),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
