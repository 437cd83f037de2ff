/*
 * gw_bucket: refill on demand (no timer): each take first adds
 * elapsed * rate tokens, capped at the burst, then takes one.
 */
#include "gw_bucket.h"

#include <math.h>

void
gw_bucket_init(gw_bucket_t *b)
{
    atomic_flag_clear(&b->lock);
    b->primed = false;
    b->tokens = 0;
    b->last_us = 0;
}

double
gw_bucket_burst(int64_t limit_per_min, int64_t instances)
{
    if (instances < 1)
        instances = 1;
    double burst = ceil((double)limit_per_min / (6.0 * (double)instances));
    return burst < 1.0 ? 1.0 : burst;
}

bool
gw_bucket_take(gw_bucket_t *b, int64_t limit_per_min, int64_t instances,
               int64_t now_us, int64_t *retry_after_s)
{
    if (limit_per_min < 0)
        return true;
    if (limit_per_min == 0) {
        *retry_after_s = 60;
        return false;
    }
    if (instances < 1)
        instances = 1;
    double rate_per_us =
        (double)limit_per_min / (60e6 * (double)instances); /* tokens/us */
    double burst = gw_bucket_burst(limit_per_min, instances);
    bool ok;

    while (atomic_flag_test_and_set_explicit(&b->lock, memory_order_acquire))
        ;
    if (!b->primed) {
        b->primed = true;
        b->tokens = burst;
        b->last_us = now_us;
    } else if (now_us > b->last_us) {
        b->tokens += (double)(now_us - b->last_us) * rate_per_us;
        b->last_us = now_us;
    }
    if (b->tokens > burst)
        b->tokens = burst;
    ok = b->tokens >= 1.0;
    if (ok)
        b->tokens -= 1.0;
    double missing = 1.0 - b->tokens;
    atomic_flag_clear_explicit(&b->lock, memory_order_release);

    if (!ok) {
        double secs = ceil(missing / rate_per_us / 1e6);
        *retry_after_s = secs < 1.0 ? 1 : (int64_t)secs;
    }
    return ok;
}
