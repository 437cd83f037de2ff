/* gw_routes: the route table and the matcher. */
#include "gw_routes.h"

#include "kowloon/billing.pb-c.h"
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
                             "Nope", true, NULL, GW_AUTH_NONE, 0}};
    assert_null(gw_routes_new(bad_rpc, 1, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_string_equal(st.message, "route GET /x/{id}: "
                                    "kowloon.tenant.TenantService has no "
                                    "method Nope");
    gw_route_t bad_pattern[] = {{"GET", "/x/{id", GW_HOST_APEX, svc,
                                 GW_LOCAL_NONE, "Get", true, NULL, GW_AUTH_NONE,
                                 0}};
    assert_null(gw_routes_new(bad_pattern, 1, &st));
    gw_route_t empty_seg[] = {{"GET", "/x//y", GW_HOST_APEX, svc, GW_LOCAL_NONE,
                               "Get", true, NULL, GW_AUTH_NONE, 0}};
    assert_null(gw_routes_new(empty_seg, 1, &st));
    gw_route_t local_rpc[] = {{"GET", "/x", GW_HOST_APEX, svc, GW_LOCAL_HEALTHZ,
                               "Get", true, NULL, GW_AUTH_NONE, 0}};
    assert_null(gw_routes_new(local_rpc, 1, &st));
    /* a feature is stored and exposed as written */
    gw_route_t feat[] = {{"GET", "/reports/{id}", GW_HOST_TENANT, svc,
                          GW_LOCAL_NONE, "Get", true, "advanced_reports",
                          GW_AUTH_API_KEY, 0}};
    gw_routes_t *r = gw_routes_new(feat, 1, &st);
    assert_non_null(r);
    gw_route_match_t m;
    assert_int_equal(
        gw_routes_match(r, GW_HOST_TENANT, "GET", "/reports/7", &m, NULL, 0),
        GW_MATCH_FOUND);
    assert_string_equal(m.route->feature, "advanced_reports");
    gw_routes_destroy(&r);
}

static void
test_issue3_routes(void **state)
{
    (void)state;
    gw_routes_t *r = s_default();
    gw_route_match_t m;
    char allow[64];
    assert_int_equal(gw_routes_match(r, GW_HOST_TENANT, "GET",
                                     "/api/advanced-reports", &m, NULL, 0),
                     GW_MATCH_FOUND);
    assert_string_equal(m.route->feature, "advanced_reports");
    assert_string_equal(m.route->rpc, "AdvancedReports");
    assert_int_equal(
        gw_routes_match(r, GW_HOST_TENANT, "GET", "/api/export", &m, NULL, 0),
        GW_MATCH_FOUND);
    assert_int_equal(m.route->local, GW_LOCAL_EXPORT);
    assert_string_equal(m.route->feature, "data_export");
    assert_int_equal(gw_routes_match(r, GW_HOST_TENANT, "GET",
                                     "/api/v1/entitlements", &m, NULL, 0),
                     GW_MATCH_FOUND);
    assert_int_equal(m.route->local, GW_LOCAL_ENTITLEMENTS);
    assert_int_equal(gw_routes_match(r, GW_HOST_TENANT, "PATCH",
                                     "/api/v1/projects/p1/tasks/t1", &m, NULL,
                                     0),
                     GW_MATCH_FOUND);
    assert_string_equal(m.route->rpc, "UpdateTask");
    assert_int_equal(m.n_params, 2);
    assert_string_equal(m.params[0].name, "project_id");
    assert_string_equal(m.params[1].value, "t1");
    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "PUT",
                                     "/admin/v1/tenants/t1/overrides/beta", &m,
                                     NULL, 0),
                     GW_MATCH_FOUND);
    assert_string_equal(m.route->rpc, "SetOverride");
    assert_null(m.route->feature);
    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "POST",
                                     "/admin/v1/plans/pro", &m, allow,
                                     sizeof allow),
                     GW_MATCH_BAD_METHOD);
    assert_string_equal(allow, "GET, PATCH, DELETE");
    /* Admin routes need no feature; every tenant route authenticates. */
    size_t n;
    const gw_route_t *t = gw_routes_table(&n);
    for (size_t i = 0; i < n; i++) {
        if (t[i].host == GW_HOST_APEX)
            assert_null(t[i].feature);
        if (t[i].host == GW_HOST_TENANT)
            assert_int_equal(t[i].auth, GW_AUTH_API_KEY);
    }
    gw_routes_destroy(&r);
}

static void
test_route_file_lines(void **state)
{
    (void)state;
    gw_route_t table[3] = {
        {"GET", "/api/v1/tenant", GW_HOST_TENANT, NULL, GW_LOCAL_TENANT_SELF,
         NULL, true, NULL, GW_AUTH_API_KEY, 0},
        {"GET", "/app/{rest...}", GW_HOST_TENANT, NULL, GW_LOCAL_NONE, NULL,
         false, "advanced_reports", GW_AUTH_API_KEY, 0},
        {"POST", "/things/{id}/x", GW_HOST_TENANT, NULL, GW_LOCAL_NONE, NULL,
         false, NULL, GW_AUTH_API_KEY, 0},
    };
    kl_status_t st;
    gw_route_match_t m;
    gw_routes_t *r = gw_routes_new_ext(table, 3, 1, &st);
    assert_non_null(r);
    assert_int_equal(
        gw_routes_match(r, GW_HOST_TENANT, "GET", "/app/a/b/c.js", &m, NULL, 0),
        GW_MATCH_FOUND);
    assert_int_equal(m.index, 1);
    assert_string_equal(m.params[0].name, "rest");
    assert_string_equal(m.params[0].value, "a/b/c.js");
    assert_null(m.method);
    assert_int_equal(
        gw_routes_match(r, GW_HOST_TENANT, "GET", "/app/", &m, NULL, 0),
        GW_MATCH_NO_PATH);
    assert_int_equal(
        gw_routes_match(r, GW_HOST_TENANT, "GET", "/app", &m, NULL, 0),
        GW_MATCH_NO_PATH);
    char longp[400] = "/app/";
    memset(longp + 5, 'x', 300);
    assert_int_equal(
        gw_routes_match(r, GW_HOST_TENANT, "GET", longp, &m, NULL, 0),
        GW_MATCH_FOUND);
    assert_string_equal(m.params[0].value, "");
    gw_routes_destroy(&r);

    /* The built-in part accepts neither. */
    assert_null(gw_routes_new_ext(table, 3, 2, &st));
    assert_null(gw_routes_new_ext(table, 2, 2, &st));
    /* A catch-all only last. */
    gw_route_t bad[1] = {{"GET", "/app/{rest...}/x", GW_HOST_TENANT, NULL,
                          GW_LOCAL_NONE, NULL, false, NULL, GW_AUTH_API_KEY,
                          0}};
    assert_null(gw_routes_new_ext(bad, 1, 0, &st));
}

static void
test_billing_routes(void **state)
{
    (void)state;
    gw_routes_t *r = s_default();
    gw_route_match_t m;
    static const struct {
        const char *method, *path, *rpc;
        bool idempotent;
    } tenant[] = {
        {"GET", "/api/v1/billing", "GetBilling", true},
        {"POST", "/api/v1/billing/subscription", "StartSubscription", false},
        {"POST", "/api/v1/billing/checkout", "CreateCheckoutSession", false},
        {"POST", "/api/v1/billing/portal", "CreatePortalSession", false},
        {"POST", "/api/v1/billing/alipay", "CreateAlipayPayment", false},
        {"POST", "/api/v1/billing/plan", "ChangePlan", false},
        {"POST", "/api/v1/billing/cancel", "CancelAtPeriodEnd", false},
    };
    for (size_t i = 0; i < sizeof tenant / sizeof tenant[0]; i++) {
        assert_int_equal(gw_routes_match(r, GW_HOST_TENANT, tenant[i].method,
                                         tenant[i].path, &m, NULL, 0),
                         GW_MATCH_FOUND);
        assert_ptr_equal(m.route->service,
                         &kowloon__billing__billing_service__descriptor);
        assert_string_equal(m.route->rpc, tenant[i].rpc);
        assert_int_equal(m.route->idempotent, tenant[i].idempotent);
        assert_int_equal(m.route->auth, GW_AUTH_API_KEY);
        assert_int_equal(m.route->flags,
                         GW_ROUTE_UNPAID_OK | GW_ROUTE_CLIENT_PLAN);
        /* tenant routes only */
        assert_int_equal(gw_routes_match(r, GW_HOST_APEX, tenant[i].method,
                                         tenant[i].path, &m, NULL, 0),
                         GW_MATCH_NO_PATH);
    }
    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "GET",
                                     "/admin/v1/tenants/t1/billing", &m, NULL,
                                     0),
                     GW_MATCH_FOUND);
    assert_string_equal(m.route->rpc, "GetTenantBilling");
    assert_string_equal(m.params[0].name, "tenant_id");
    assert_true(m.route->idempotent);
    assert_int_equal(m.route->auth, GW_AUTH_ADMIN_TOKEN);
    assert_int_equal(m.route->flags, 0);

    /* The webhook: apex only, no auth, raw body. */
    assert_int_equal(gw_routes_match(r, GW_HOST_APEX, "POST",
                                     "/webhooks/stripe", &m, NULL, 0),
                     GW_MATCH_FOUND);
    assert_string_equal(m.route->rpc, "HandleWebhook");
    assert_int_equal(m.route->auth, GW_AUTH_NONE);
    assert_int_equal(m.route->flags, GW_ROUTE_WEBHOOK);
    assert_true(m.route->idempotent);
    assert_int_equal(gw_routes_match(r, GW_HOST_TENANT, "POST",
                                     "/webhooks/stripe", &m, NULL, 0),
                     GW_MATCH_NO_PATH);

    /* Nothing else is served to a tenant that owes. */
    size_t n;
    const gw_route_t *t = gw_routes_table(&n);
    for (size_t i = 0; i < n; i++)
        if (t[i].flags & GW_ROUTE_UNPAID_OK)
            assert_ptr_equal(t[i].service,
                             &kowloon__billing__billing_service__descriptor);
    gw_routes_destroy(&r);
}

static void
test_bad_flags(void **state)
{
    (void)state;
    kl_status_t st;
    const ProtobufCServiceDescriptor *bill =
        &kowloon__billing__billing_service__descriptor;
    /* A webhook's rpc must take bytes payload and string signature. */
    gw_route_t hook_bad[] = {{"POST", "/hook", GW_HOST_APEX, bill,
                              GW_LOCAL_NONE, "ChangePlan", true, NULL,
                              GW_AUTH_NONE, GW_ROUTE_WEBHOOK}};
    assert_null(gw_routes_new(hook_bad, 1, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_string_equal(st.message,
                        "route POST /hook: a webhook calls an rpc whose input "
                        "has bytes payload and string signature");
    gw_route_t hook_local[] = {{"POST", "/hook", GW_HOST_APEX, NULL,
                                GW_LOCAL_HEALTHZ, NULL, true, NULL,
                                GW_AUTH_NONE, GW_ROUTE_WEBHOOK}};
    assert_null(gw_routes_new(hook_local, 1, &st));
    /* Only tenant routes may be served to a tenant that owes. */
    gw_route_t unpaid_apex[] = {{"GET", "/b", GW_HOST_APEX, bill, GW_LOCAL_NONE,
                                 "GetBilling", true, NULL, GW_AUTH_ADMIN_TOKEN,
                                 GW_ROUTE_UNPAID_OK}};
    assert_null(gw_routes_new(unpaid_apex, 1, &st));
    assert_string_equal(st.message, "route GET /b: only a tenant route can be "
                                    "served while the tenant owes");
    gw_route_t plan_local[] = {{"GET", "/b", GW_HOST_TENANT, NULL,
                                GW_LOCAL_ENTITLEMENTS, NULL, true, NULL,
                                GW_AUTH_API_KEY, GW_ROUTE_CLIENT_PLAN}};
    assert_null(gw_routes_new(plan_local, 1, &st));
    assert_string_equal(st.message,
                        "route GET /b: only an rpc route takes a plan");
    gw_route_t unknown[] = {{"GET", "/b", GW_HOST_TENANT, bill, GW_LOCAL_NONE,
                             "GetBilling", true, NULL, GW_AUTH_API_KEY,
                             1u << 7}};
    assert_null(gw_routes_new(unknown, 1, &st));
    assert_string_equal(st.message, "route GET /b: unknown flags");
    /* The good ones compile. */
    gw_route_t good[] = {
        {"POST", "/hook", GW_HOST_APEX, bill, GW_LOCAL_NONE, "HandleWebhook",
         true, NULL, GW_AUTH_NONE, GW_ROUTE_WEBHOOK},
        {"GET", "/b", GW_HOST_TENANT, bill, GW_LOCAL_NONE, "GetBilling", true,
         NULL, GW_AUTH_API_KEY, GW_ROUTE_UNPAID_OK | GW_ROUTE_CLIENT_PLAN}};
    gw_routes_t *r = gw_routes_new(good, 2, &st);
    assert_non_null(r);
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
        cmocka_unit_test(test_issue3_routes),
        cmocka_unit_test(test_route_file_lines),
        cmocka_unit_test(test_billing_routes),
        cmocka_unit_test(test_bad_flags),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
