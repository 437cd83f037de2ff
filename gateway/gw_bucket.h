/*
 * gw_bucket: one tenant's token bucket at one gateway.
 *
 * A plan's limit api_requests_per_minute = L, enforced by N gateways
 * (KOWLOON_GATEWAY_INSTANCES) behind a round-robin balancer: each gateway
 * refills L / (60 N) tokens per second and holds at most
 * gw_bucket_burst(L, N) = max(1, ceil(L / (6 N))) tokens (ten seconds of
 * the gateway's share), so that over any 60 s window a tenant gets at most
 * L + L/6 requests through the N gateways together, and a steady L per
 * minute never sees a 429. A request takes one token; an empty bucket
 * answers how many whole seconds (>= 1) until one token is back.
 *
 * Thread-safe: a per-bucket spinlock guards a few arithmetic operations,
 * so many threads may take from one bucket; buckets of different tenants
 * never share a lock.
 */
#ifndef GW_BUCKET_H
#define GW_BUCKET_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    atomic_flag lock; /* spinlock over the fields below */
    bool primed;      /* false until the first take fills the bucket */
    double tokens;    /* available now (at last_us) */
    int64_t last_us;  /* monotonic microseconds of the last refill */
} gw_bucket_t;

/* A fresh (full on first use) bucket. */
void gw_bucket_init(gw_bucket_t *b);

/* The burst of limit per minute over instances gateways (see above). */
double gw_bucket_burst(int64_t limit_per_min, int64_t instances);

/*
 * Takes one token at now_us (monotonic microseconds). limit_per_min < 0:
 * unlimited (always 0, the bucket untouched). Returns true when allowed;
 * false with *retry_after_s (>= 1) when the bucket is empty. A limit of 0
 * refuses everything with a retry of 60 s. A changed limit keeps the
 * tokens, capped at the new burst.
 */
bool gw_bucket_take(gw_bucket_t *b, int64_t limit_per_min, int64_t instances,
                    int64_t now_us, int64_t *retry_after_s);

#endif
