/*
 * workspace_placement: a small TTL cache of tenant placements in front of
 * TenantService.Get.
 */
#include "workspace_placement.h"

#include "kl_alloc.h"
#include "kl_rpc.h"
#include "kowloon/tenant.pb-c.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_TTL_MS 30000
#define S_MAX_ENTRIES 10000
#define S_TIMEOUT_MS 3000

/* One cached placement. */
typedef struct {
    kl_tenant_place_t place;
    int64_t expires_ms; /* monotonic; 0: free slot */
} s_entry_t;

struct workspace_placement {
    kl_rpc_client_t *tenants; /* borrowed */
    int64_t timeout_ms;
    workspace_placement_fn fn;
    void *fn_arg;
    char shared_schema[KL_TENANT_NAME_MAX];
    int64_t ttl_ms;
    pthread_mutex_t lock; /* guards entries */
    /* Linear-probed on lookup; a few thousand tenants per instance keep
     * this cheap next to the database round trip it saves. */
    s_entry_t *entries;
    size_t max_entries;
};

workspace_placement_t *
workspace_placement_new(const workspace_placement_opts_t *opts)
{
    workspace_placement_t *self = kl_calloc(1, sizeof *self);
    self->tenants = opts->tenants;
    self->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : S_TIMEOUT_MS;
    self->fn = opts->fn;
    self->fn_arg = opts->fn_arg;
    snprintf(self->shared_schema, sizeof self->shared_schema, "%s",
             opts->shared_schema && *opts->shared_schema ? opts->shared_schema
                                                         : "workspace");
    self->ttl_ms = opts->ttl_ms > 0 ? opts->ttl_ms : S_TTL_MS;
    self->max_entries = opts->max_entries ? opts->max_entries : S_MAX_ENTRIES;
    self->entries = kl_calloc(self->max_entries, sizeof *self->entries);
    pthread_mutex_init(&self->lock, NULL);
    return self;
}

void
workspace_placement_destroy(workspace_placement_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    workspace_placement_t *self = *self_p;
    pthread_mutex_destroy(&self->lock);
    free(self->entries);
    free(self);
    *self_p = NULL;
}

/* Asks the tenant service. */
static int
s_ask(workspace_placement_t *self, const char *tenant_id,
      kl_tenant_place_t *out, kl_status_t *status)
{
    Kowloon__Tenant__GetTenantRequest req =
        KOWLOON__TENANT__GET_TENANT_REQUEST__INIT;
    req.id = (char *)tenant_id;
    kl_call_ctx_t ctx = {.tenant_id = tenant_id};
    kl_call_opts_t copts = {
        .timeout_ms = self->timeout_ms, .idempotent = true, .ctx = &ctx};
    Kowloon__Tenant__Tenant *t = NULL;
    int rc = kl_rpc_client_call(self->tenants, "Get", &req.base, &copts,
                                (ProtobufCMessage **)&t, status);
    if (rc < 0)
        return rc;
    kl_isolation_t iso;
    rc = kl_isolation_parse(t->isolation, &iso, status);
    if (rc == 0)
        rc = kl_tenant_place(tenant_id, iso, self->shared_schema, t->db_server,
                             out, status);
    /* The record's own database name must be the derived one. */
    if (rc == 0 && iso == KL_ISOLATION_DATABASE &&
        strcmp(t->db_name, out->db_name) != 0)
        rc = kl_status_set(status, KL_INVALID_ARGUMENT,
                           "tenant %s: database name does not match its id",
                           tenant_id);
    protobuf_c_message_free_unpacked(&t->base, NULL);
    return rc;
}

int
workspace_placement_get(workspace_placement_t *self, const char *tenant_id,
                        kl_tenant_place_t *out, kl_status_t *status)
{
    int64_t now = kl_now_mono_ms();
    pthread_mutex_lock(&self->lock);
    for (size_t i = 0; i < self->max_entries; i++) {
        s_entry_t *e = &self->entries[i];
        if (e->expires_ms > now && strcmp(e->place.tenant_id, tenant_id) == 0) {
            *out = e->place;
            pthread_mutex_unlock(&self->lock);
            return 0;
        }
    }
    pthread_mutex_unlock(&self->lock);

    int rc;
    if (self->fn)
        rc = self->fn(self->fn_arg, tenant_id, out, status);
    else if (self->tenants)
        rc = s_ask(self, tenant_id, out, status);
    else
        rc = kl_tenant_place(tenant_id, KL_ISOLATION_ROW, self->shared_schema,
                             NULL, out, status);
    if (rc < 0)
        return rc;

    /* Into a free or expired slot, else over the one expiring first. */
    pthread_mutex_lock(&self->lock);
    size_t slot = 0;
    for (size_t i = 0; i < self->max_entries; i++) {
        if (self->entries[i].expires_ms <= now ||
            strcmp(self->entries[i].place.tenant_id, tenant_id) == 0) {
            slot = i;
            break;
        }
        if (self->entries[i].expires_ms < self->entries[slot].expires_ms)
            slot = i;
    }
    self->entries[slot].place = *out;
    self->entries[slot].expires_ms = now + self->ttl_ms;
    pthread_mutex_unlock(&self->lock);
    return 0;
}

void
workspace_placement_drop(workspace_placement_t *self, const char *tenant_id)
{
    pthread_mutex_lock(&self->lock);
    for (size_t i = 0; i < self->max_entries; i++)
        if (!tenant_id ||
            strcmp(self->entries[i].place.tenant_id, tenant_id) == 0)
            self->entries[i].expires_ms = 0;
    pthread_mutex_unlock(&self->lock);
}
