/* gw_metrics: counters and the Prometheus exposition. */
#include "gw_metrics.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static void
test_render(void **state)
{
    const char *labels[] = {"/healthz", "/admin/v1/tenants/{id}"};
    gw_metrics_t *m = gw_metrics_new(labels, 2);
    gw_metrics_observe(m, 0, 200, 100);
    gw_metrics_observe(m, 0, 200, 700);
    gw_metrics_observe(m, 1, 404, 3000000);
    gw_metrics_observe(m, 1, 418, 9000000);
    gw_metrics_observe(m, 2, 404, 10); /* unmatched */
    gw_tenant_cache_stats_t cs = {5, 2, 1, 0, 3, 1, 4};
    gw_metrics_rpc_t rpc = {"kowloon.tenant.TenantService", {7, 1, 0, 1}};
    size_t len;
    char *text = gw_metrics_render(m, &cs, &rpc, 1, &len);
    assert_int_equal(strlen(text), len);
    assert_non_null(strstr(text, "kowloon_tenant_cache_stale_total 4\n"));
    gw_entitlements_stats_t es = {10, 2, 3, 4, 5, 6};
    size_t elen;
    char *etext = gw_metrics_render_entitlements(&es, &elen);
    assert_int_equal(elen, strlen(etext));
    assert_non_null(
        strstr(etext, "kowloon_entitlements_cache_hits_total 10\n"));
    assert_non_null(
        strstr(etext, "kowloon_entitlements_stale_served_total 3\n"));
    assert_non_null(strstr(etext, "kowloon_entitlements_cache_entries 6\n"));
    free(etext);
    {
        /* Two routes, one pattern: told apart by their method. */
        const char *same[2] = {"/t", "/t"};
        const char *methods[2] = {"GET", "POST"};
        gw_metrics_t *m2 = gw_metrics_new(same, 2);
        gw_metrics_set_methods(m2, methods);
        gw_metrics_observe(m2, 0, 200, 10);
        gw_metrics_observe(m2, 1, 200, 10);
        size_t l2;
        char *t2 = gw_metrics_render(m2, NULL, NULL, 0, &l2);
        assert_non_null(strstr(t2, "kowloon_http_requests_total{route=\"/t\","
                                   "method=\"GET\",code=\"200\"} 1\n"));
        assert_non_null(strstr(t2, "kowloon_http_requests_total{route=\"/t\","
                                   "method=\"POST\",code=\"200\"} 1\n"));
        free(t2);
        gw_metrics_destroy(&m2);
    }
    assert_non_null(strstr(
        text, "kowloon_http_requests_total{route=\"/healthz\",code=\"200\"} "
              "2\n"));
    assert_non_null(
        strstr(text, "kowloon_http_requests_total{route=\"/admin/v1/tenants/"
                     "{id}\",code=\"404\"} 1\n"));
    assert_non_null(
        strstr(text, "kowloon_http_requests_total{route=\"/admin/v1/tenants/"
                     "{id}\",code=\"other\"} 1\n"));
    assert_non_null(strstr(
        text, "kowloon_http_requests_total{route=\"unmatched\",code=\"404\"} "
              "1\n"));
    /* cumulative buckets: 100us <= 0.0005, 700us <= 0.001 */
    assert_non_null(
        strstr(text, "kowloon_http_request_duration_seconds_bucket{route=\"/"
                     "healthz\",le=\"0.0005\"} 1\n"));
    assert_non_null(
        strstr(text, "kowloon_http_request_duration_seconds_bucket{route=\"/"
                     "healthz\",le=\"0.001\"} 2\n"));
    /* 3 s is under 5; 9 s only under +Inf */
    assert_non_null(strstr(text, "kowloon_http_request_duration_seconds_bucket"
                                 "{route=\"/admin/v1/tenants/{id}\",le=\"5\"} "
                                 "1\n"));
    assert_non_null(strstr(text, "kowloon_http_request_duration_seconds_bucket"
                                 "{route=\"/admin/v1/tenants/{id}\",le=\"+"
                                 "Inf\"} 2\n"));
    assert_non_null(strstr(text, "kowloon_http_request_duration_seconds_count"
                                 "{route=\"/healthz\"} 2\n"));
    assert_non_null(strstr(text, "kowloon_http_request_duration_seconds_sum"
                                 "{route=\"/healthz\"} 0.000800\n"));
    assert_non_null(strstr(text, "kowloon_tenant_cache_hits_total 5\n"));
    assert_non_null(strstr(text, "kowloon_tenant_cache_misses_total 2\n"));
    assert_non_null(strstr(text,
                           "kowloon_rpc_calls_total{service=\"kowloon.tenant."
                           "TenantService\"} 7\n"));
    assert_non_null(
        strstr(text, "kowloon_rpc_timeouts_total{service=\"kowloon.tenant."
                     "TenantService\"} 1\n"));
    free(text);
    gw_metrics_destroy(&m);
    assert_null(m);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
