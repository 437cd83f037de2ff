/*
 * workspace_placement: a small TTL cache of tenant placements in front of
 * TenantService.Get.
 */
#include "workspace_placement.h"

#include "kl_alloc.h"
#include "kl_rpc.h"
#include "kowloon/tenant.pb-c.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_TTL_MS 30000
#define S_MAX_ENTRIES 10000
#define S_TIMEOUT_MS 3000
#define S_NONE UINT32_MAX /* no entry */

/* One cached placement. */
typedef struct {
    kl_tenant_place_t place;
    int64_t expires_ms; /* monotonic; an expired entry is a miss */
    uint32_t next;      /* next entry of its bucket, or of the free list */
} s_entry_t;

struct workspace_placement {
    kl_rpc_client_t *tenants; /* borrowed */
    int64_t timeout_ms;
    workspace_placement_fn fn;
    void *fn_arg;
    char shared_schema[KL_TENANT_NAME_MAX];
    int64_t ttl_ms;
    pthread_mutex_t lock; /* guards everything below */
    /* Every request looks its tenant up here, under the lock: a hash of
     * the tenant id keeps that a few hundred nanoseconds with thousands of
     * tenants cached (a scan of the whole table took microseconds). */
    s_entry_t *entries; /* max_entries, chained per bucket or free */
    size_t max_entries;
    uint32_t *buckets; /* n_buckets chain heads */
    size_t n_buckets;  /* a power of two >= max_entries */
    uint32_t free;     /* free entries, chained */
};

/* FNV-1a of the tenant id. */
static size_t
s_bucket(const workspace_placement_t *self, const char *tenant_id)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)tenant_id; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h & (self->n_buckets - 1);
}

/* Every entry free, every bucket empty. */
static void
s_reset(workspace_placement_t *self)
{
    for (size_t i = 0; i < self->n_buckets; i++)
        self->buckets[i] = S_NONE;
    for (size_t i = 0; i < self->max_entries; i++)
        self->entries[i].next =
            i + 1 < self->max_entries ? (uint32_t)(i + 1) : S_NONE;
    self->free = 0;
}

/* tenant_id's entry, expired or not, or S_NONE. */
static uint32_t
s_find(const workspace_placement_t *self, const char *tenant_id)
{
    uint32_t i = self->buckets[s_bucket(self, tenant_id)];
    while (i != S_NONE && strcmp(self->entries[i].place.tenant_id, tenant_id))
        i = self->entries[i].next;
    return i;
}

/* Takes entry i out of its bucket and onto the free list. */
static void
s_unlink(workspace_placement_t *self, uint32_t i)
{
    uint32_t *link =
        &self->buckets[s_bucket(self, self->entries[i].place.tenant_id)];
    while (*link != i)
        link = &self->entries[*link].next;
    *link = self->entries[i].next;
    self->entries[i].next = self->free;
    self->free = i;
}

/* A free entry, evicting the one expiring first when none is: a scan, but
 * only on a miss with the cache full, next to the call that miss costs. */
static uint32_t
s_take(workspace_placement_t *self)
{
    if (self->free == S_NONE) {
        uint32_t victim = 0;
        for (uint32_t i = 1; i < self->max_entries; i++)
            if (self->entries[i].expires_ms < self->entries[victim].expires_ms)
                victim = i;
        s_unlink(self, victim);
    }
    uint32_t i = self->free;
    self->free = self->entries[i].next;
    return i;
}

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
    if (self->max_entries >= S_NONE)
        self->max_entries = S_NONE - 1;
    self->entries = kl_calloc(self->max_entries, sizeof *self->entries);
    self->n_buckets = 1;
    while (self->n_buckets < self->max_entries)
        self->n_buckets *= 2;
    self->buckets = kl_calloc(self->n_buckets, sizeof *self->buckets);
    s_reset(self);
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
    free(self->buckets);
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
    uint32_t i = s_find(self, tenant_id);
    if (i != S_NONE && self->entries[i].expires_ms > now) {
        *out = self->entries[i].place;
        pthread_mutex_unlock(&self->lock);
        return 0;
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

    /* Over the tenant's own (expired) entry, else into a free one. The
     * entry is keyed by out->tenant_id: the validated id. */
    pthread_mutex_lock(&self->lock);
    i = s_find(self, out->tenant_id);
    if (i == S_NONE) {
        i = s_take(self);
        size_t b = s_bucket(self, out->tenant_id);
        self->entries[i].next = self->buckets[b];
        self->buckets[b] = i;
    }
    self->entries[i].place = *out;
    self->entries[i].expires_ms = now + self->ttl_ms;
    pthread_mutex_unlock(&self->lock);
    return 0;
}

void
workspace_placement_drop(workspace_placement_t *self, const char *tenant_id)
{
    pthread_mutex_lock(&self->lock);
    if (!tenant_id) {
        s_reset(self);
    } else {
        uint32_t i = s_find(self, tenant_id);
        if (i != S_NONE)
            s_unlink(self, i);
    }
    pthread_mutex_unlock(&self->lock);
}
