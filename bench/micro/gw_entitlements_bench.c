/*
 * gw_entitlements_bench: lookups per second of the gateway's entitlements
 * cache (gw_entitlements_get) followed by the feature check the edge makes
 * for GET /api/advanced-reports (gw_ent_allows "advanced_reports"), the
 * same calls gw_server makes on every tenant request, in process, with no
 * HTTP, no RPC and no allocation per lookup.
 *
 *   gw_entitlements_bench [TENANTS] [SECONDS] [THREADS...]
 *
 * TENANTS (10000) tenants, even ones on plan "pro" (has advanced_reports),
 * odd ones on "starter" (has not), as the seed's setup.sql. The cache is
 * loaded through a backend that answers the plan's entitlements (the
 * flags service's answer, built in process), then each thread looks up a
 * pseudo-random tenant in a loop for SECONDS (2) and checks the feature.
 * Two modes per thread count: "get" (rate_limit false) and "get+bucket"
 * (rate_limit true: also takes a token of the tenant's bucket, as the
 * gateway does; the limit is set high enough never to refuse, so every
 * lookup takes the same path). Each line of stdout:
 *
 *   micro mode=<get|get+bucket> threads=<n> tenants=<n> lookups=<n>
 *         seconds=<s> lookups_per_s=<x> allowed=<n> denied=<n>
 *
 * Exit status 1 if any lookup fails or the allowed/denied split is not
 * the plans' (every pro lookup allowed, every starter one denied).
 */
#include "gw_entitlements.h"
#include "kl_alloc.h"
#include "kl_rpc.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_MAX_THREADS 64

/* High enough that no bucket ever runs dry during a run. */
#define S_NO_REFUSAL_LIMIT 6000000000000LL

typedef struct {
    gw_entitlements_t *cache;
    char (*ids)[37];
    size_t n_ids;
    bool rate_limit;
    double seconds;
    atomic_bool *go;
    unsigned seed;
    /* results */
    uint64_t lookups, allowed, denied, errors, wrong;
} s_worker_t;

static const char *s_pro_features[] = {"basic", "data_export",
                                       "advanced_reports"};
static const char *s_starter_features[] = {"basic"};

/* The flags service's answer for plan, built in process. */
static int
s_evaluate(void *user, const char *tenant_id, const char *plan,
           const kl_call_ctx_t *ctx, Kowloon__Flags__Entitlements **out,
           kl_status_t *status)
{
    (void)user;
    (void)ctx;
    bool pro = strcmp(plan, "pro") == 0;
    Kowloon__Flags__Entitlements *e = kl_calloc(1, sizeof *e);
    kowloon__flags__entitlements__init(e);
    e->tenant_id = kl_strdup(tenant_id);
    e->plan = kl_strdup(plan);
    const char **f = pro ? s_pro_features : s_starter_features;
    e->n_features = pro ? 3 : 1;
    e->features = kl_calloc(e->n_features, sizeof *e->features);
    for (size_t i = 0; i < e->n_features; i++)
        e->features[i] = kl_strdup(f[i]);
    e->n_limits = 1;
    e->limits = kl_calloc(1, sizeof *e->limits);
    e->limits[0] = kl_calloc(1, sizeof *e->limits[0]);
    kowloon__flags__entitlements__limits_entry__init(e->limits[0]);
    e->limits[0]->key = kl_strdup(GW_ENTITLEMENTS_RATE_LIMIT);
    e->limits[0]->value = S_NO_REFUSAL_LIMIT;
    e->version = 1;
    e->expires_at = kl_strdup("");
    *out = e;
    (void)status;
    return 0;
}

static double
s_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* xorshift32: a cheap per-thread pseudo-random tenant. */
static uint32_t
s_next(uint32_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

static void *
s_run(void *arg)
{
    s_worker_t *w = arg;
    uint32_t x = w->seed ? w->seed : 1;
    while (!atomic_load(w->go))
        ;
    double end = s_now_s() + w->seconds;
    kl_status_t st;
    for (;;) {
        /* Check the clock every 4096 lookups. */
        for (int k = 0; k < 4096; k++) {
            size_t i = s_next(&x) % w->n_ids;
            gw_ent_t *e = NULL;
            bool stale = false;
            int64_t retry = 0;
            int rc = gw_entitlements_get(
                w->cache, w->ids[i], i % 2 == 0 ? "pro" : "starter", NULL,
                w->rate_limit, &e, &stale, &retry, &st);
            if (rc < 0 || !e || stale) {
                w->errors++;
                gw_ent_release(&e);
                continue;
            }
            bool ok = gw_ent_allows(e, "advanced_reports");
            if (ok)
                w->allowed++;
            else
                w->denied++;
            if (ok != (i % 2 == 0))
                w->wrong++;
            gw_ent_release(&e);
            w->lookups++;
        }
        if (s_now_s() >= end)
            break;
    }
    return NULL;
}

/* One measurement; 0, or -1 when a lookup failed or answered wrong. */
static int
s_measure(gw_entitlements_t *cache, char (*ids)[37], size_t n_ids,
          bool rate_limit, int threads, double seconds)
{
    s_worker_t w[S_MAX_THREADS];
    pthread_t th[S_MAX_THREADS];
    atomic_bool go;
    atomic_init(&go, false);
    for (int t = 0; t < threads; t++) {
        w[t] = (s_worker_t){.cache = cache,
                            .ids = ids,
                            .n_ids = n_ids,
                            .rate_limit = rate_limit,
                            .seconds = seconds,
                            .go = &go,
                            .seed = 2463534242u + 7919u * (unsigned)t};
        if (pthread_create(&th[t], NULL, s_run, &w[t]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return -1;
        }
    }
    double t0 = s_now_s();
    atomic_store(&go, true);
    uint64_t lookups = 0, allowed = 0, denied = 0, errors = 0, wrong = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(th[t], NULL);
        lookups += w[t].lookups;
        allowed += w[t].allowed;
        denied += w[t].denied;
        errors += w[t].errors;
        wrong += w[t].wrong;
    }
    double secs = s_now_s() - t0;
    printf("micro mode=%s threads=%d tenants=%zu lookups=%llu seconds=%.3f "
           "lookups_per_s=%.0f allowed=%llu denied=%llu\n",
           rate_limit ? "get+bucket" : "get", threads, n_ids,
           (unsigned long long)lookups, secs, (double)lookups / secs,
           (unsigned long long)allowed, (unsigned long long)denied);
    fflush(stdout);
    if (errors || wrong) {
        fprintf(stderr,
                "gw_entitlements_bench: %llu failed lookups, %llu wrong "
                "answers\n",
                (unsigned long long)errors, (unsigned long long)wrong);
        return -1;
    }
    return 0;
}

int
main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 10000;
    double seconds = argc > 2 ? strtod(argv[2], NULL) : 2.0;
    if (n < 2 || n > 10000000 || !(seconds > 0)) {
        fprintf(stderr, "usage: %s [TENANTS>=2] [SECONDS>0] [THREADS...]\n",
                argv[0]);
        return 2;
    }
    int thread_counts[S_MAX_THREADS] = {1, 2};
    int n_counts = 2;
    if (argc > 3) {
        n_counts = 0;
        for (int a = 3; a < argc && n_counts < S_MAX_THREADS; a++) {
            long t = strtol(argv[a], NULL, 10);
            if (t < 1 || t > S_MAX_THREADS) {
                fprintf(stderr, "threads must be 1..%d\n", S_MAX_THREADS);
                return 2;
            }
            thread_counts[n_counts++] = (int)t;
        }
    }
    char(*ids)[37] = kl_calloc((size_t)n, sizeof *ids);
    for (long i = 0; i < n; i++)
        snprintf(ids[i], sizeof ids[i], "00000000-0000-4000-8000-%012lx",
                 (unsigned long)i + 1);
    gw_entitlements_opts_t opts = {.ttl_ms = 3600 * 1000,
                                   .retry_ms = 1000,
                                   .max_entries = (size_t)n * 2,
                                   .instances = 1};
    gw_entitlements_backend_t backend = {.evaluate = s_evaluate};
    gw_entitlements_t *cache = gw_entitlements_new(&opts, &backend);
    if (!cache) {
        fprintf(stderr, "gw_entitlements_new failed\n");
        free(ids);
        return 1;
    }
    /* Load every tenant once (the misses), then measure hits only. */
    kl_status_t st;
    for (long i = 0; i < n; i++) {
        gw_ent_t *e = NULL;
        bool stale = false;
        int64_t retry = 0;
        if (gw_entitlements_get(cache, ids[i], i % 2 == 0 ? "pro" : "starter",
                                NULL, false, &e, &stale, &retry, &st) < 0) {
            fprintf(stderr, "loading tenant %ld: %s\n", i, st.message);
            gw_entitlements_destroy(&cache);
            free(ids);
            return 1;
        }
        gw_ent_release(&e);
    }
    gw_entitlements_stats_t s0, s1;
    gw_entitlements_stats(cache, &s0);
    int rc = 0;
    for (int c = 0; c < n_counts && rc == 0; c++)
        for (int mode = 0; mode < 2 && rc == 0; mode++)
            rc = s_measure(cache, ids, (size_t)n, mode == 1, thread_counts[c],
                           seconds);
    gw_entitlements_stats(cache, &s1);
    if (rc == 0 && s1.misses != s0.misses) {
        fprintf(stderr, "gw_entitlements_bench: %llu misses while measuring\n",
                (unsigned long long)(s1.misses - s0.misses));
        rc = -1;
    }
    gw_entitlements_destroy(&cache);
    free(ids);
    return rc == 0 ? 0 : 1;
}
