/*
 * gw_tenant_rpc: the tenant cache's backend over the tenant service —
 * GetBySubdomain and ResolveApiKey (both idempotent, so retried on another
 * instance after a timeout) through one shared kl_rpc_client.
 */
#ifndef GW_TENANT_RPC_H
#define GW_TENANT_RPC_H

#include "gw_tenant_cache.h"
#include "kl_rpc_client.h"

typedef struct gw_tenant_rpc gw_tenant_rpc_t;

/* client is borrowed and must outlive the result. */
gw_tenant_rpc_t *gw_tenant_rpc_new(kl_rpc_client_t *client, int64_t timeout_ms);
void gw_tenant_rpc_destroy(gw_tenant_rpc_t **self_p);

/* The backend functions, with self as their user pointer. */
gw_tenant_backend_t gw_tenant_rpc_backend(gw_tenant_rpc_t *self);

#endif
