/*
 * gw_tenant: an immutable, reference-counted snapshot of one tenant as the
 * gateway caches it: every field of kowloon.tenant.Tenant, the same
 * rendered as JSON once (so GET /api/v1/tenant copies bytes), and the
 * parsed status_changed_at. Snapshots are shared between threads; take a
 * reference to keep one past the cache's lock.
 */
#ifndef GW_TENANT_H
#define GW_TENANT_H

#include "kl_code.h"
#include "kowloon/tenant.pb-c.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    Kowloon__Tenant__Tenant *msg; /* owned deep copy; read only */
    char *json;                   /* msg as compact JSON, defaults emitted */
    size_t json_len;
    int64_t status_changed_ms; /* unix ms; -1 when absent or unparsable */
    atomic_int refs;           /* references; freed at 0 */
} gw_tenant_t;

/* A snapshot of msg (deep copied; msg stays the caller's), with one
 * reference. */
gw_tenant_t *gw_tenant_new(const Kowloon__Tenant__Tenant *msg);

/* Adds a reference; returns t. */
gw_tenant_t *gw_tenant_ref(gw_tenant_t *t);

/* Drops the reference *t_p (may be NULL) and sets it to NULL. */
void gw_tenant_release(gw_tenant_t **t_p);

/*
 * Whether the tenant may be served now:
 *   trialing, active          -> 0
 *   past_due within grace_ms of status_changed_at -> 0
 *   past_due beyond it (or with no usable timestamp)
 *                             -> -KL_FAILED_PRECONDITION "payment overdue"
 *   suspended                 -> -KL_FAILED_PRECONDITION "tenant is suspended"
 *   deleted                   -> -KL_NOT_FOUND "tenant not found"
 *   any other status          -> -KL_FAILED_PRECONDITION "tenant is not active"
 * The gateway answers FAILED_PRECONDITION here with HTTP 402.
 */
int gw_tenant_access(const gw_tenant_t *t, int64_t now_ms, int64_t grace_ms,
                     kl_status_t *status);

/* RFC 3339 ("2026-11-27T17:03:05.123Z", "...+08:00") -> unix ms; -1 on a
 * malformed value. */
int64_t gw_tenant_parse_time(const char *s);

#endif
