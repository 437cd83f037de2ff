/*
 * gw_entitlements: the gateway's cache of what each tenant may do
 * (kowloon.flags.Entitlements: features, limits, flags, version), so that
 * the feature gate and the rate limit make no network call on a hit.
 *
 * tenant id -> entry { snapshot, fresh-until, token bucket }. A miss (no
 * entry, an entry past its freshness, or an entry for another plan than
 * the tenant's current one) asks the backend (FlagsService.Evaluate,
 * idempotent). Freshness: ttl_ms, shortened to the answer's expires_at
 * (an override that lapses) when that comes sooner.
 *
 * Change events mark entries stale (the next request refreshes them):
 *   "plan"     (id = plan name)  -> entries whose plan is that name;
 *   "flag"                       -> every entry;
 *   "override" (tenant_id)       -> that tenant;
 *   "tenant"   (id or tenant_id) -> that tenant (its plan may have changed);
 *   NULL (events may have been missed) -> every entry.
 * An answer fetched before an event is stored stale, never fresh.
 *
 * Stale-if-error: when a refresh fails (flags service unreachable, slow,
 * failing), a stale snapshot of the tenant is served instead, logged as a
 * warning at most once per tenant per ttl, and the refresh is retried no
 * more often than every retry_ms per tenant. A tenant never loaded gets
 * the error, remembered for retry_ms so that a dead flags service is not
 * asked on every request.
 *
 * The token bucket of a tenant lives in its entry and survives refreshes
 * and events (only eviction, under max_entries, resets it).
 *
 * Thread-safe: sharded, one rwlock per shard; a hit takes one read lock,
 * a reference on the snapshot, and the bucket's spinlock.
 */
#ifndef GW_ENTITLEMENTS_H
#define GW_ENTITLEMENTS_H

#include "kl_code.h"
#include "kl_rpc.h"
#include "kowloon/events.pb-c.h"
#include "kowloon/flags.pb-c.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The limit the gateway enforces itself. */
#define GW_ENTITLEMENTS_RATE_LIMIT "api_requests_per_minute"

/* An immutable, reference-counted snapshot of one answer. */
typedef struct {
    Kowloon__Flags__Entitlements *msg; /* owned deep copy; read only */
    char *json;                        /* msg as JSON, defaults emitted */
    size_t json_len;
    int64_t rate_limit; /* api_requests_per_minute; -1 when unlimited */
    atomic_int refs;
} gw_ent_t;

/* Adds a reference; returns e. */
gw_ent_t *gw_ent_ref(gw_ent_t *e);
/* Drops the reference *e_p (may be NULL) and sets it to NULL. */
void gw_ent_release(gw_ent_t **e_p);
/* Whether name is among the features or the flags that are on. */
bool gw_ent_allows(const gw_ent_t *e, const char *name);

typedef struct {
    /* 0 and *out (caller frees with
     * kowloon__flags__entitlements__free_unpacked), or -code. Called
     * without any cache lock held. */
    int (*evaluate)(void *user, const char *tenant_id, const char *plan,
                    const kl_call_ctx_t *ctx,
                    Kowloon__Flags__Entitlements **out, kl_status_t *status);
    void *user;
} gw_entitlements_backend_t;

typedef struct {
    int64_t ttl_ms;          /* freshness; >= 1 */
    int64_t retry_ms;        /* least time between failed refreshes; >= 1 */
    size_t max_entries;      /* >= 1 */
    int64_t instances;       /* gateways sharing the rate (>= 1) */
    int64_t (*now_ms)(void); /* monotonic clock; NULL = kl_now_mono_ms */
} gw_entitlements_opts_t;

typedef struct {
    uint64_t hits, misses, stale_served, refresh_failures, invalidations;
    size_t entries;
} gw_entitlements_stats_t;

typedef struct gw_entitlements gw_entitlements_t;

/* opts and backend are copied. */
gw_entitlements_t *
gw_entitlements_new(const gw_entitlements_opts_t *opts,
                    const gw_entitlements_backend_t *backend);
void gw_entitlements_destroy(gw_entitlements_t **self_p);

/*
 * The entitlements of tenant_id (whose plan is plan): 0 and *out (a
 * reference: gw_ent_release it), *stale telling whether it is a stale
 * snapshot served because the refresh failed; or the backend's error
 * (*out NULL) when nothing was ever loaded.
 *
 * When rate_limit, also takes one token of the tenant's bucket: an empty
 * bucket returns -KL_RESOURCE_EXHAUSTED with *out still set (its
 * rate_limit names the limit) and *retry_after_s (>= 1).
 */
int gw_entitlements_get(gw_entitlements_t *self, const char *tenant_id,
                        const char *plan, const kl_call_ctx_t *ctx,
                        bool rate_limit, gw_ent_t **out, bool *stale,
                        int64_t *retry_after_s, kl_status_t *status);

/* Applies a change event (see above); other kinds are ignored. */
void gw_entitlements_on_event(gw_entitlements_t *self,
                              const Kowloon__Events__ChangeEvent *event);

void gw_entitlements_stats(gw_entitlements_t *self,
                           gw_entitlements_stats_t *stats);

#endif
