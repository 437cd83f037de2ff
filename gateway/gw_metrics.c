/*
 * gw_metrics: counters in arrays indexed by [route][status slot]; statuses
 * outside the known list share the last slot, labelled "other".
 */
#include "gw_metrics.h"

#include "kl_alloc.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const int s_statuses[] = {200, 201, 204, 400, 401, 402, 403, 404, 405,
                                 409, 413, 429, 499, 500, 501, 502, 503, 504};
#define S_N_STATUS (sizeof s_statuses / sizeof s_statuses[0] + 1)

/* Upper bounds in microseconds; seconds in the exposition. */
static const int64_t s_bounds_us[] = {500,     1000,    2500,   5000,   10000,
                                      25000,   50000,   100000, 250000, 500000,
                                      1000000, 2500000, 5000000};
static const char *const s_bounds_s[] = {
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1",    "0.25",  "0.5",    "1",     "2.5",  "5"};
#define S_N_BUCKETS (sizeof s_bounds_us / sizeof s_bounds_us[0])

typedef struct {
    atomic_uint_fast64_t count[S_N_STATUS];
    atomic_uint_fast64_t bucket[S_N_BUCKETS]; /* not cumulative */
    atomic_uint_fast64_t n;                   /* observations */
    atomic_uint_fast64_t sum_us;
} s_route_t;

struct gw_metrics {
    const char *const *labels; /* borrowed */
    char **full;               /* owned: label plus method, or NULL */
    size_t n_routes;
    s_route_t *routes; /* n_routes + 1: the last is "unmatched" */
};

gw_metrics_t *
gw_metrics_new(const char *const *labels, size_t n_routes)
{
    gw_metrics_t *self = kl_calloc(1, sizeof *self);
    self->labels = labels;
    self->n_routes = n_routes;
    self->routes = kl_calloc(n_routes + 1, sizeof(s_route_t));
    return self;
}

void
gw_metrics_set_methods(gw_metrics_t *self, const char *const *methods)
{
    /* The text between the route's quotes: closing the route label and
     * opening the method label keeps every format string unchanged. */
    self->full = kl_calloc(self->n_routes ? self->n_routes : 1, sizeof(char *));
    for (size_t i = 0; i < self->n_routes; i++)
        self->full[i] =
            kl_asprintf("%s\",method=\"%s", self->labels[i], methods[i]);
}

static const char *
s_label(const gw_metrics_t *self, size_t r)
{
    if (r >= self->n_routes)
        return "unmatched";
    return self->full ? self->full[r] : self->labels[r];
}

void
gw_metrics_destroy(gw_metrics_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    if ((*self_p)->full)
        for (size_t i = 0; i < (*self_p)->n_routes; i++)
            free((*self_p)->full[i]);
    free((*self_p)->full);
    free((*self_p)->routes);
    KL_FREE(self_p);
}

static size_t
s_status_slot(int status)
{
    for (size_t i = 0; i < S_N_STATUS - 1; i++)
        if (s_statuses[i] == status)
            return i;
    return S_N_STATUS - 1;
}

void
gw_metrics_observe(gw_metrics_t *self, size_t route, int http_status,
                   int64_t duration_us)
{
    s_route_t *r =
        &self->routes[route < self->n_routes ? route : self->n_routes];
    size_t b = 0;
    if (duration_us < 0)
        duration_us = 0;
    while (b < S_N_BUCKETS && duration_us > s_bounds_us[b])
        b++;
    atomic_fetch_add_explicit(&r->count[s_status_slot(http_status)], 1,
                              memory_order_relaxed);
    if (b < S_N_BUCKETS)
        atomic_fetch_add_explicit(&r->bucket[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->n, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->sum_us, (uint64_t)duration_us,
                              memory_order_relaxed);
}

typedef struct {
    char *buf;
    size_t len, cap;
} s_out_t;

static void __attribute__((format(printf, 2, 3)))
s_printf(s_out_t *o, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        o->cap = (o->cap + (size_t)n + 1) * 2;
        o->buf = kl_realloc(o->buf, o->cap);
    }
}

static uint64_t
s_load(atomic_uint_fast64_t *a)
{
    return atomic_load_explicit(a, memory_order_relaxed);
}

char *
gw_metrics_render(gw_metrics_t *self, const gw_tenant_cache_stats_t *cache,
                  const gw_metrics_rpc_t *rpc, size_t n_rpc, size_t *len)
{
    s_out_t o = {kl_malloc(4096), 0, 4096};
    o.buf[0] = '\0';

    s_printf(&o, "# HELP kowloon_http_requests_total HTTP requests by route "
                 "pattern and status.\n"
                 "# TYPE kowloon_http_requests_total counter\n");
    for (size_t r = 0; r <= self->n_routes; r++) {
        const char *label = s_label(self, r);
        for (size_t s = 0; s < S_N_STATUS; s++) {
            uint64_t v = s_load(&self->routes[r].count[s]);
            if (!v)
                continue;
            if (s < S_N_STATUS - 1)
                s_printf(&o,
                         "kowloon_http_requests_total{route=\"%s\","
                         "code=\"%d\"} %llu\n",
                         label, s_statuses[s], (unsigned long long)v);
            else
                s_printf(&o,
                         "kowloon_http_requests_total{route=\"%s\","
                         "code=\"other\"} %llu\n",
                         label, (unsigned long long)v);
        }
    }

    s_printf(&o, "# HELP kowloon_http_request_duration_seconds Time from "
                 "request to response.\n"
                 "# TYPE kowloon_http_request_duration_seconds histogram\n");
    for (size_t r = 0; r <= self->n_routes; r++) {
        const char *label = s_label(self, r);
        s_route_t *rt = &self->routes[r];
        uint64_t n = s_load(&rt->n), cum = 0;
        if (!n)
            continue;
        for (size_t b = 0; b < S_N_BUCKETS; b++) {
            cum += s_load(&rt->bucket[b]);
            s_printf(
                &o,
                "kowloon_http_request_duration_seconds_bucket{route=\"%s\","
                "le=\"%s\"} %llu\n",
                label, s_bounds_s[b], (unsigned long long)cum);
        }
        s_printf(&o,
                 "kowloon_http_request_duration_seconds_bucket{route=\"%s\","
                 "le=\"+Inf\"} %llu\n"
                 "kowloon_http_request_duration_seconds_sum{route=\"%s\"} "
                 "%.6f\n"
                 "kowloon_http_request_duration_seconds_count{route=\"%s\"} "
                 "%llu\n",
                 label, (unsigned long long)n, label,
                 (double)s_load(&rt->sum_us) / 1e6, label,
                 (unsigned long long)n);
    }

    if (cache) {
        s_printf(&o,
                 "# TYPE kowloon_tenant_cache_hits_total counter\n"
                 "kowloon_tenant_cache_hits_total %llu\n"
                 "# TYPE kowloon_tenant_cache_misses_total counter\n"
                 "kowloon_tenant_cache_misses_total %llu\n"
                 "# TYPE kowloon_tenant_cache_evictions_total counter\n"
                 "kowloon_tenant_cache_evictions_total %llu\n"
                 "# TYPE kowloon_tenant_cache_invalidations_total counter\n"
                 "kowloon_tenant_cache_invalidations_total %llu\n"
                 "# TYPE kowloon_tenant_cache_stale_total counter\n"
                 "kowloon_tenant_cache_stale_total %llu\n"
                 "# TYPE kowloon_tenant_cache_entries gauge\n"
                 "kowloon_tenant_cache_entries{table=\"tenants\"} %zu\n"
                 "kowloon_tenant_cache_entries{table=\"api_keys\"} %zu\n",
                 (unsigned long long)cache->hits,
                 (unsigned long long)cache->misses,
                 (unsigned long long)cache->evictions,
                 (unsigned long long)cache->invalidations,
                 (unsigned long long)cache->stale, cache->tenants, cache->keys);
    }

    static const char *const names[] = {"calls", "failures", "retries",
                                        "timeouts"};
    for (size_t k = 0; k < 4; k++) {
        s_printf(&o, "# TYPE kowloon_rpc_%s_total counter\n", names[k]);
        for (size_t i = 0; i < n_rpc; i++) {
            const kl_rpc_client_stats_t *st = &rpc[i].stats;
            uint64_t v = k == 0   ? st->calls
                         : k == 1 ? st->failures
                         : k == 2 ? st->retries
                                  : st->timeouts;
            s_printf(&o, "kowloon_rpc_%s_total{service=\"%s\"} %llu\n",
                     names[k], rpc[i].service, (unsigned long long)v);
        }
    }
    *len = o.len;
    return o.buf;
}

char *
gw_metrics_render_entitlements(const gw_entitlements_stats_t *st, size_t *len)
{
    char *buf = kl_asprintf(
        "# TYPE kowloon_entitlements_cache_hits_total counter\n"
        "kowloon_entitlements_cache_hits_total %llu\n"
        "# TYPE kowloon_entitlements_cache_misses_total counter\n"
        "kowloon_entitlements_cache_misses_total %llu\n"
        "# TYPE kowloon_entitlements_stale_served_total counter\n"
        "kowloon_entitlements_stale_served_total %llu\n"
        "# TYPE kowloon_entitlements_refresh_failures_total counter\n"
        "kowloon_entitlements_refresh_failures_total %llu\n"
        "# TYPE kowloon_entitlements_invalidations_total counter\n"
        "kowloon_entitlements_invalidations_total %llu\n"
        "# TYPE kowloon_entitlements_cache_entries gauge\n"
        "kowloon_entitlements_cache_entries %zu\n",
        (unsigned long long)st->hits, (unsigned long long)st->misses,
        (unsigned long long)st->stale_served,
        (unsigned long long)st->refresh_failures,
        (unsigned long long)st->invalidations, st->entries);
    *len = strlen(buf);
    return buf;
}
