/*
 * gw_metrics: the gateway's request counters and latency histograms, per
 * route and status, as relaxed atomics in fixed arrays (no locks, no
 * allocation on the hot path), rendered in the Prometheus text format:
 *
 *   kowloon_http_requests_total{route="<pattern>",method="<M>",code="<status>"}
 *   kowloon_http_request_duration_seconds_bucket{route=...,le=...}
 *   kowloon_tenant_cache_{hits,misses,evictions,invalidations}_total,
 *   kowloon_tenant_cache_stale_total, kowloon_tenant_cache_entries{table=...}
 *   kowloon_entitlements_cache_{hits,misses}_total,
 *   kowloon_entitlements_{stale_served,refresh_failures,invalidations}_total,
 *   kowloon_entitlements_cache_entries
 *   kowloon_rpc_{calls,failures,retries,timeouts}_total{service=...}
 *
 * Requests that matched no route are counted under route="unmatched".
 */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include "gw_entitlements.h"
#include "gw_tenant_cache.h"
#include "kl_rpc_client.h"

#include <stddef.h>
#include <stdint.h>

typedef struct gw_metrics gw_metrics_t;

/* labels: one route label per route index (borrowed; must outlive). */
gw_metrics_t *gw_metrics_new(const char *const *labels, size_t n_routes);
void gw_metrics_destroy(gw_metrics_t **self_p);

/* Adds a method="<METHOD>" label to every route's series (one method per
 * route index, borrowed only during the call), so that two routes sharing
 * a pattern (GET and POST /admin/v1/tenants) stay distinct series. */
void gw_metrics_set_methods(gw_metrics_t *self, const char *const *methods);

/* Counts one request; route == n_routes (or larger) means unmatched. */
void gw_metrics_observe(gw_metrics_t *self, size_t route, int http_status,
                        int64_t duration_us);

/* One rpc client's counters, for rendering. */
typedef struct {
    const char *service; /* "kowloon.tenant.TenantService" */
    kl_rpc_client_stats_t stats;
} gw_metrics_rpc_t;

/* The whole exposition. Caller frees the result. */
char *gw_metrics_render(gw_metrics_t *self,
                        const gw_tenant_cache_stats_t *cache,
                        const gw_metrics_rpc_t *rpc, size_t n_rpc, size_t *len);

/* The entitlements cache's counters (appended to the exposition by the
 * server). Caller frees the result. */
char *gw_metrics_render_entitlements(const gw_entitlements_stats_t *stats,
                                     size_t *len);

#endif
