/*
 * gw_tenant_rpc: cache misses as tenant service calls.
 */
#include "gw_tenant_rpc.h"

#include "kl_alloc.h"

#include <stdlib.h>

struct gw_tenant_rpc {
    kl_rpc_client_t *client; /* borrowed */
    int64_t timeout_ms;      /* per call */
};

gw_tenant_rpc_t *
gw_tenant_rpc_new(kl_rpc_client_t *client, int64_t timeout_ms)
{
    gw_tenant_rpc_t *self = kl_calloc(1, sizeof *self);
    self->client = client;
    self->timeout_ms = timeout_ms;
    return self;
}

void
gw_tenant_rpc_destroy(gw_tenant_rpc_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    KL_FREE(self_p);
}

static int
s_get_by_subdomain(void *user, const char *subdomain, const kl_call_ctx_t *ctx,
                   Kowloon__Tenant__Tenant **out, kl_status_t *status)
{
    gw_tenant_rpc_t *self = user;
    Kowloon__Tenant__GetBySubdomainRequest req =
        KOWLOON__TENANT__GET_BY_SUBDOMAIN_REQUEST__INIT;
    kl_call_opts_t opts = {self->timeout_ms, true, ctx};
    ProtobufCMessage *reply = NULL;

    req.subdomain = (char *)subdomain;
    *out = NULL;
    int rc = kl_rpc_client_call(self->client, "GetBySubdomain", &req.base,
                                &opts, &reply, status);
    if (rc < 0)
        return rc;
    *out = (Kowloon__Tenant__Tenant *)reply;
    return 0;
}

static int
s_resolve_api_key(void *user, const char *key, const kl_call_ctx_t *ctx,
                  Kowloon__Tenant__ResolveApiKeyResponse **out,
                  kl_status_t *status)
{
    gw_tenant_rpc_t *self = user;
    Kowloon__Tenant__ResolveApiKeyRequest req =
        KOWLOON__TENANT__RESOLVE_API_KEY_REQUEST__INIT;
    kl_call_opts_t opts = {self->timeout_ms, true, ctx};
    ProtobufCMessage *reply = NULL;

    req.key = (char *)key;
    *out = NULL;
    int rc = kl_rpc_client_call(self->client, "ResolveApiKey", &req.base, &opts,
                                &reply, status);
    if (rc < 0)
        return rc;
    *out = (Kowloon__Tenant__ResolveApiKeyResponse *)reply;
    return 0;
}

gw_tenant_backend_t
gw_tenant_rpc_backend(gw_tenant_rpc_t *self)
{
    gw_tenant_backend_t b = {s_get_by_subdomain, s_resolve_api_key, self};
    return b;
}
