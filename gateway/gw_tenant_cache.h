/*
 * gw_tenant_cache: the gateway's in-process caches, so that the hot path
 * makes no network call:
 *   - subdomain -> tenant snapshot (gw_tenant_t), with short negative
 *     entries for unknown subdomains so that random hosts cannot flood the
 *     tenant service;
 *   - SHA-256(full API key) -> {tenant_id, key_id}, with short negative
 *     entries for keys the service refused.
 * A miss asks the backend (in the gateway: TenantService.GetBySubdomain and
 * ResolveApiKey over one shared kl_rpc_client). Entries live ttl_ms;
 * each of the two tables holds at most max_entries and evicts by CLOCK
 * (second chance: expired entries first, then the oldest entry not read
 * since the hand last passed). Change events drop entries early.
 *
 * Stale-if-error: when a refresh of an expired positive entry fails with
 * UNAVAILABLE or DEADLINE_EXCEEDED (the tenant service is down or slow),
 * the expired entry is served instead and lives stale_retry_ms more, so
 * that a dead service is asked at most once per stale_retry_ms per entry.
 * Entries dropped by events are gone and never served stale.
 *
 * Thread-safe: sharded, one rwlock per shard; a hit takes one read lock and
 * touches no shared cache line but the entry's and the hit counter.
 */
#ifndef GW_TENANT_CACHE_H
#define GW_TENANT_CACHE_H

#include "gw_tenant.h"
#include "kl_code.h"
#include "kl_rpc.h"
#include "kowloon/events.pb-c.h"
#include "kowloon/tenant.pb-c.h"

#include <stddef.h>
#include <stdint.h>

#define GW_TENANT_ID_MAX 128

/* Where misses go. Functions are called without any cache lock held, from
 * the requesting thread. */
typedef struct {
    /* 0 and *out (caller frees with
     * kowloon__tenant__tenant__free_unpacked) when found; -KL_NOT_FOUND
     * when no such tenant; any other -code when the answer is unknown. */
    int (*get_by_subdomain)(void *user, const char *subdomain,
                            const kl_call_ctx_t *ctx,
                            Kowloon__Tenant__Tenant **out, kl_status_t *status);
    /* 0 and *out (caller frees with
     * kowloon__tenant__resolve_api_key_response__free_unpacked) for a
     * valid key; -KL_UNAUTHENTICATED for an invalid one; other -code when
     * the answer is unknown. */
    int (*resolve_api_key)(void *user, const char *key,
                           const kl_call_ctx_t *ctx,
                           Kowloon__Tenant__ResolveApiKeyResponse **out,
                           kl_status_t *status);
    void *user;
} gw_tenant_backend_t;

typedef struct {
    int64_t ttl_ms;          /* 0: nothing is cached */
    int64_t negative_ttl_ms; /* unknown subdomains, refused keys; capped
                                at ttl_ms */
    size_t max_entries;      /* per table, >= 1 */
    int64_t stale_retry_ms;  /* stale-if-error: life added to an expired
                                entry served because the backend failed */
} gw_tenant_cache_opts_t;

typedef struct {
    char tenant_id[GW_TENANT_ID_MAX];
    char key_id[GW_TENANT_ID_MAX];
} gw_api_key_t;

typedef struct {
    uint64_t hits, misses, evictions, invalidations;
    size_t tenants, keys; /* entries now, negative ones included */
    uint64_t stale;       /* answers served stale (backend failing) */
} gw_tenant_cache_stats_t;

typedef struct gw_tenant_cache gw_tenant_cache_t;

/* backend is copied. */
gw_tenant_cache_t *gw_tenant_cache_new(const gw_tenant_cache_opts_t *opts,
                                       const gw_tenant_backend_t *backend);
void gw_tenant_cache_destroy(gw_tenant_cache_t **self_p);

/* The tenant of subdomain: 0 and *out (a reference: gw_tenant_release it);
 * -KL_NOT_FOUND "tenant not found"; or the backend's error (not cached).
 * Deleted tenants are returned like any other (gw_tenant_access decides). */
int gw_tenant_cache_get(gw_tenant_cache_t *self, const char *subdomain,
                        const kl_call_ctx_t *ctx, gw_tenant_t **out,
                        kl_status_t *status);

/* Who key (len bytes) belongs to: 0 and *out; -KL_UNAUTHENTICATED
 * "invalid API key"; or the backend's error (not cached). */
int gw_tenant_cache_resolve_key(gw_tenant_cache_t *self, const char *key,
                                size_t len, const kl_call_ctx_t *ctx,
                                gw_api_key_t *out, kl_status_t *status);

/*
 * Applies a change event: kind "tenant" drops the tenant by subdomain
 * (positive or negative entry) and by id (and the keys of that tenant);
 * kind "api_key" drops the key by key id; NULL (events may have been
 * missed) drops everything. Other kinds are ignored.
 */
void gw_tenant_cache_on_event(gw_tenant_cache_t *self,
                              const Kowloon__Events__ChangeEvent *event);

void gw_tenant_cache_stats(gw_tenant_cache_t *self,
                           gw_tenant_cache_stats_t *stats);

#endif
