/*
 * workspace_placement: where each tenant's workspace data lives, cached.
 *
 * A tenant's placement (isolation model, and for the database model its
 * server) belongs to the tenant service. The workspace service asks it
 * (TenantService.Get) on a miss and keeps the answer for ttl_ms; it never
 * trusts the call context for it. An entry is dropped early when a
 * tenant-scoped transaction finds the placement stale (a move finished:
 * kl_tenant_tx_begin answers UNAVAILABLE "tenant placement changed,
 * retry"), so correctness never waits for the TTL or an event.
 *
 * Thread-safe: one per service, shared by its workers.
 */
#ifndef WORKSPACE_PLACEMENT_H
#define WORKSPACE_PLACEMENT_H

#include "kl_code.h"
#include "kl_rpc_client.h"
#include "kl_tenant_db.h"

#include <stddef.h>
#include <stdint.h>

/* A placement source other than the tenant service (tests, embedders):
 * fills *out for tenant_id or returns -code with status. */
typedef int (*workspace_placement_fn)(void *arg, const char *tenant_id,
                                      kl_tenant_place_t *out,
                                      kl_status_t *status);

typedef struct {
    /* kowloon.tenant.TenantService client (borrowed, thread-safe); NULL
     * with fn NULL: every tenant is in the row model. */
    kl_rpc_client_t *tenants;
    int64_t timeout_ms;        /* deadline of a Get; 0: 3000 */
    workspace_placement_fn fn; /* used instead of tenants when set */
    void *fn_arg;
    const char *shared_schema; /* row model's schema; NULL: "workspace" */
    int64_t ttl_ms;            /* 0: 30000 */
    size_t max_entries;        /* 0: 10000 */
} workspace_placement_opts_t;

typedef struct workspace_placement workspace_placement_t;

workspace_placement_t *
workspace_placement_new(const workspace_placement_opts_t *opts);
void workspace_placement_destroy(workspace_placement_t **self_p);

/* The placement of tenant_id (a uuid). UNAVAILABLE when the tenant
 * service cannot be asked, NOT_FOUND for an unknown tenant, INVALID_
 * ARGUMENT when the record's placement is malformed. */
int workspace_placement_get(workspace_placement_t *self, const char *tenant_id,
                            kl_tenant_place_t *out, kl_status_t *status);

/* Forgets tenant_id's entry (NULL: every entry). */
void workspace_placement_drop(workspace_placement_t *self,
                              const char *tenant_id);

#endif
