/*
 * gw_tenant_cache: two sharded hash tables (tenants by subdomain, API keys
 * by SHA-256 of the key) with CLOCK eviction.
 *
 * Each shard has its own rwlock, hash buckets and CLOCK list (insertion
 * order). A hit takes the read lock, checks the expiry, sets the entry's
 * "referenced" bit (an atomic store, done only when the bit is clear so
 * that hot entries are not written on every hit) and, for a tenant, takes a
 * reference on the snapshot. Inserts and invalidations take the write lock.
 *
 * Races between a miss and an invalidation: the cache has a generation,
 * bumped by every invalidation before it drops anything. A miss notes the
 * generation before asking the backend and does not insert its answer if
 * the generation moved, so an answer fetched before a change event is never
 * cached after it.
 */
#include "gw_tenant_cache.h"

#include "kl_alloc.h"

#include <openssl/sha.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define S_MAX_SHARDS 64
#define S_MIN_PER_SHARD 64

typedef struct s_entry {
    struct s_entry *hnext; /* next in the hash bucket */
    struct s_entry *prev;  /* CLOCK list, toward the oldest */
    struct s_entry *next;  /* CLOCK list, toward the newest */
    uint64_t hash;
    int64_t expires_ms;     /* monotonic ms; unusable from then on */
    atomic_bool referenced; /* read since the CLOCK hand last passed */
    bool negative;          /* "no such tenant" / "invalid key" */
    gw_tenant_t *tenant;    /* tenants table: the snapshot (one ref) */
    gw_api_key_t api;       /* keys table: the key's owner */
    size_t key_len;
    unsigned char key[]; /* subdomain bytes, or the 32-byte digest */
} s_entry_t;

typedef struct {
    pthread_rwlock_t lock;
    s_entry_t **buckets; /* mask + 1 chains */
    size_t mask;
    s_entry_t *head, *tail; /* CLOCK list: head is the oldest */
    size_t count, cap;
    char pad[64]; /* keep neighbouring shards' locks apart */
} s_shard_t;

typedef struct {
    s_shard_t *shards;
    size_t n_shards; /* a power of two */
} s_table_t;

struct gw_tenant_cache {
    gw_tenant_cache_opts_t opts;
    gw_tenant_backend_t backend;
    s_table_t tenants;        /* subdomain -> snapshot */
    s_table_t keys;           /* sha256(key) -> owner */
    atomic_uint_fast64_t gen; /* bumped by every invalidation */
    atomic_uint_fast64_t hits, misses, evictions, invalidations;
    atomic_uint_fast64_t stale; /* answers served stale */
};

static uint64_t
s_hash(const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a, then a final mix */
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static void
s_table_init(s_table_t *t, size_t max_entries)
{
    size_t n = S_MAX_SHARDS;
    while (n > 1 && max_entries / n < S_MIN_PER_SHARD)
        n /= 2;
    t->n_shards = n;
    t->shards = kl_calloc(n, sizeof(s_shard_t));
    for (size_t i = 0; i < n; i++) {
        s_shard_t *s = &t->shards[i];
        size_t buckets = 8;
        pthread_rwlock_init(&s->lock, NULL);
        s->cap = max_entries / n + (i < max_entries % n ? 1 : 0);
        if (s->cap == 0)
            s->cap = 1;
        while (buckets < s->cap)
            buckets *= 2;
        s->buckets = kl_calloc(buckets, sizeof(s_entry_t *));
        s->mask = buckets - 1;
    }
}

static void
s_entry_free(s_entry_t *e)
{
    gw_tenant_release(&e->tenant);
    free(e);
}

/* Removes e from its bucket and the CLOCK list and frees it. Write lock. */
static void
s_unlink(s_shard_t *s, s_entry_t *e)
{
    s_entry_t **pp = &s->buckets[e->hash & s->mask];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    if (e->prev)
        e->prev->next = e->next;
    else
        s->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        s->tail = e->prev;
    s->count--;
    s_entry_free(e);
}

static void
s_list_append(s_shard_t *s, s_entry_t *e)
{
    e->next = NULL;
    e->prev = s->tail;
    if (s->tail)
        s->tail->next = e;
    else
        s->head = e;
    s->tail = e;
}

static void
s_table_clear(s_table_t *t)
{
    for (size_t i = 0; i < t->n_shards; i++) {
        s_shard_t *s = &t->shards[i];
        pthread_rwlock_wrlock(&s->lock);
        while (s->head)
            s_unlink(s, s->head);
        pthread_rwlock_unlock(&s->lock);
    }
}

static void
s_table_fini(s_table_t *t)
{
    if (!t->shards)
        return;
    s_table_clear(t);
    for (size_t i = 0; i < t->n_shards; i++) {
        pthread_rwlock_destroy(&t->shards[i].lock);
        free(t->shards[i].buckets);
    }
    free(t->shards);
    t->shards = NULL;
}

static s_shard_t *
s_shard_of(const s_table_t *t, uint64_t hash)
{
    return &t->shards[(hash >> 40) & (t->n_shards - 1)];
}

/* The entry for key, or NULL. Any lock. */
static s_entry_t *
s_find(const s_shard_t *s, uint64_t hash, const unsigned char *key, size_t len)
{
    for (s_entry_t *e = s->buckets[hash & s->mask]; e; e = e->hnext)
        if (e->hash == hash && e->key_len == len &&
            memcmp(e->key, key, len) == 0)
            return e;
    return NULL;
}

/* Makes room for one entry: CLOCK with a second chance. Write lock. */
static void
s_evict_one(gw_tenant_cache_t *self, s_shard_t *s, int64_t now)
{
    for (size_t spins = 0; s->head && spins <= 2 * s->count; spins++) {
        s_entry_t *e = s->head;
        if (e->expires_ms <= now || e == s->tail ||
            !atomic_load_explicit(&e->referenced, memory_order_relaxed) ||
            spins == 2 * s->count) {
            s_unlink(s, e);
            atomic_fetch_add_explicit(&self->evictions, 1,
                                      memory_order_relaxed);
            return;
        }
        atomic_store_explicit(&e->referenced, false, memory_order_relaxed);
        /* Move to the tail: it was used, so it gets another round. */
        s->head = e->next;
        s->head->prev = NULL;
        s_list_append(s, e);
    }
}

/* Inserts e (built by the caller) unless the generation moved since gen0;
 * frees e when it is not inserted. */
static void
s_insert(gw_tenant_cache_t *self, s_table_t *t, s_entry_t *e, uint64_t gen0)
{
    s_shard_t *s = s_shard_of(t, e->hash);
    int64_t now = kl_now_mono_ms();
    pthread_rwlock_wrlock(&s->lock);
    if (atomic_load(&self->gen) != gen0) {
        pthread_rwlock_unlock(&s->lock);
        s_entry_free(e);
        return;
    }
    s_entry_t *old = s_find(s, e->hash, e->key, e->key_len);
    if (old)
        s_unlink(s, old);
    if (s->count >= s->cap)
        s_evict_one(self, s, now);
    e->hnext = s->buckets[e->hash & s->mask];
    s->buckets[e->hash & s->mask] = e;
    s_list_append(s, e);
    s->count++;
    pthread_rwlock_unlock(&s->lock);
}

static s_entry_t *
s_entry_new(const unsigned char *key, size_t len, uint64_t hash, int64_t ttl_ms)
{
    s_entry_t *e = kl_calloc(1, sizeof *e + len);
    memcpy(e->key, key, len);
    e->key_len = len;
    e->hash = hash;
    e->expires_ms = kl_now_mono_ms() + ttl_ms;
    atomic_init(&e->referenced, false);
    return e;
}

gw_tenant_cache_t *
gw_tenant_cache_new(const gw_tenant_cache_opts_t *opts,
                    const gw_tenant_backend_t *backend)
{
    gw_tenant_cache_t *self = kl_calloc(1, sizeof *self);
    self->opts = *opts;
    if (self->opts.max_entries < 1)
        self->opts.max_entries = 1;
    if (self->opts.ttl_ms < 0)
        self->opts.ttl_ms = 0;
    if (self->opts.negative_ttl_ms > self->opts.ttl_ms)
        self->opts.negative_ttl_ms = self->opts.ttl_ms;
    if (self->opts.negative_ttl_ms < 0)
        self->opts.negative_ttl_ms = 0;
    self->backend = *backend;
    s_table_init(&self->tenants, self->opts.max_entries);
    s_table_init(&self->keys, self->opts.max_entries);
    atomic_init(&self->gen, 0);
    atomic_init(&self->hits, 0);
    atomic_init(&self->misses, 0);
    atomic_init(&self->evictions, 0);
    atomic_init(&self->invalidations, 0);
    atomic_init(&self->stale, 0);
    return self;
}

void
gw_tenant_cache_destroy(gw_tenant_cache_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    s_table_fini(&(*self_p)->tenants);
    s_table_fini(&(*self_p)->keys);
    KL_FREE(self_p);
}

/* Looks key up for a hit. Returns the entry with the shard read-locked
 * (the caller copies what it needs and unlocks), or NULL unlocked. */
static s_entry_t *
s_lookup(s_table_t *t, const unsigned char *key, size_t len, uint64_t hash,
         s_shard_t **shard_p)
{
    s_shard_t *s = s_shard_of(t, hash);
    pthread_rwlock_rdlock(&s->lock);
    s_entry_t *e = s_find(s, hash, key, len);
    if (e && e->expires_ms > kl_now_mono_ms()) {
        if (!atomic_load_explicit(&e->referenced, memory_order_relaxed))
            atomic_store_explicit(&e->referenced, true, memory_order_relaxed);
        *shard_p = s;
        return e;
    }
    pthread_rwlock_unlock(&s->lock);
    return NULL;
}

/* Stale-if-error: whether the backend's failure means "answer unknown"
 * (rather than a definite refusal). */
static bool
s_transient(int rc)
{
    return rc == -KL_UNAVAILABLE || rc == -KL_DEADLINE_EXCEEDED;
}

/* Finds a positive entry of key however old, extends its life by ext_ms
 * (so that a dead backend is not asked on every request) and returns it
 * with the shard write-locked (the caller copies and unlocks), or NULL
 * unlocked. */
static s_entry_t *
s_lookup_stale(s_table_t *t, const unsigned char *key, size_t len,
               uint64_t hash, int64_t ext_ms, s_shard_t **shard_p)
{
    s_shard_t *s = s_shard_of(t, hash);
    pthread_rwlock_wrlock(&s->lock);
    s_entry_t *e = s_find(s, hash, key, len);
    if (e && !e->negative) {
        int64_t until = kl_now_mono_ms() + ext_ms;
        if (e->expires_ms < until)
            e->expires_ms = until;
        *shard_p = s;
        return e;
    }
    pthread_rwlock_unlock(&s->lock);
    return NULL;
}

int
gw_tenant_cache_get(gw_tenant_cache_t *self, const char *subdomain,
                    const kl_call_ctx_t *ctx, gw_tenant_t **out,
                    kl_status_t *status)
{
    size_t len = strlen(subdomain);
    uint64_t hash = s_hash((const unsigned char *)subdomain, len);
    s_shard_t *s;
    Kowloon__Tenant__Tenant *msg = NULL;

    *out = NULL;
    if (self->opts.ttl_ms > 0) {
        s_entry_t *e = s_lookup(
            &self->tenants, (const unsigned char *)subdomain, len, hash, &s);
        if (e) {
            bool negative = e->negative;
            if (!negative)
                *out = gw_tenant_ref(e->tenant);
            pthread_rwlock_unlock(&s->lock);
            atomic_fetch_add_explicit(&self->hits, 1, memory_order_relaxed);
            if (negative)
                return kl_status_set(status, KL_NOT_FOUND, "tenant not found");
            return 0;
        }
    }
    atomic_fetch_add_explicit(&self->misses, 1, memory_order_relaxed);

    uint64_t gen0 = atomic_load(&self->gen);
    int rc = self->backend.get_by_subdomain(self->backend.user, subdomain, ctx,
                                            &msg, status);
    if (rc == -KL_NOT_FOUND) {
        if (self->opts.negative_ttl_ms > 0) {
            s_entry_t *e = s_entry_new((const unsigned char *)subdomain, len,
                                       hash, self->opts.negative_ttl_ms);
            e->negative = true;
            s_insert(self, &self->tenants, e, gen0);
        }
        return kl_status_set(status, KL_NOT_FOUND, "tenant not found");
    }
    if (rc < 0 && s_transient(rc) && self->opts.ttl_ms > 0) {
        s_entry_t *e =
            s_lookup_stale(&self->tenants, (const unsigned char *)subdomain,
                           len, hash, self->opts.stale_retry_ms, &s);
        if (e) {
            *out = gw_tenant_ref(e->tenant);
            pthread_rwlock_unlock(&s->lock);
            atomic_fetch_add_explicit(&self->stale, 1, memory_order_relaxed);
            return 0;
        }
    }
    if (rc < 0)
        return rc;
    gw_tenant_t *t = gw_tenant_new(msg);
    kowloon__tenant__tenant__free_unpacked(msg, NULL);
    if (!t)
        return kl_status_set(status, KL_INTERNAL, "tenant snapshot failed");
    if (self->opts.ttl_ms > 0) {
        s_entry_t *e = s_entry_new((const unsigned char *)subdomain, len, hash,
                                   self->opts.ttl_ms);
        e->tenant = gw_tenant_ref(t);
        s_insert(self, &self->tenants, e, gen0);
    }
    *out = t;
    return 0;
}

int
gw_tenant_cache_resolve_key(gw_tenant_cache_t *self, const char *key,
                            size_t len, const kl_call_ctx_t *ctx,
                            gw_api_key_t *out, kl_status_t *status)
{
    unsigned char digest[SHA256_DIGEST_LENGTH];
    uint64_t hash;
    s_shard_t *s;
    Kowloon__Tenant__ResolveApiKeyResponse *resp = NULL;

    memset(out, 0, sizeof *out);
    SHA256((const unsigned char *)key, len, digest);
    memcpy(&hash, digest, sizeof hash);
    if (self->opts.ttl_ms > 0) {
        s_entry_t *e = s_lookup(&self->keys, digest, sizeof digest, hash, &s);
        if (e) {
            bool negative = e->negative;
            if (!negative)
                *out = e->api;
            pthread_rwlock_unlock(&s->lock);
            atomic_fetch_add_explicit(&self->hits, 1, memory_order_relaxed);
            if (negative)
                return kl_status_set(status, KL_UNAUTHENTICATED,
                                     "invalid API key");
            return 0;
        }
    }
    atomic_fetch_add_explicit(&self->misses, 1, memory_order_relaxed);

    /* The backend wants a C string; a key with a NUL in it is invalid. */
    if (memchr(key, '\0', len))
        return kl_status_set(status, KL_UNAUTHENTICATED, "invalid API key");
    char *kz = kl_strndup(key, len);
    uint64_t gen0 = atomic_load(&self->gen);
    int rc = self->backend.resolve_api_key(self->backend.user, kz, ctx, &resp,
                                           status);
    free(kz);
    if (rc == -KL_UNAUTHENTICATED || rc == -KL_NOT_FOUND ||
        rc == -KL_PERMISSION_DENIED) {
        if (self->opts.negative_ttl_ms > 0) {
            s_entry_t *e = s_entry_new(digest, sizeof digest, hash,
                                       self->opts.negative_ttl_ms);
            e->negative = true;
            s_insert(self, &self->keys, e, gen0);
        }
        return kl_status_set(status, KL_UNAUTHENTICATED, "invalid API key");
    }
    if (rc < 0 && s_transient(rc) && self->opts.ttl_ms > 0) {
        s_entry_t *e = s_lookup_stale(&self->keys, digest, sizeof digest, hash,
                                      self->opts.stale_retry_ms, &s);
        if (e) {
            *out = e->api;
            pthread_rwlock_unlock(&s->lock);
            atomic_fetch_add_explicit(&self->stale, 1, memory_order_relaxed);
            return 0;
        }
    }
    if (rc < 0)
        return rc;
    const char *tid = resp->tenant_id ? resp->tenant_id : "";
    const char *kid = resp->key_id ? resp->key_id : "";
    if (!*tid || strlen(tid) >= GW_TENANT_ID_MAX ||
        strlen(kid) >= GW_TENANT_ID_MAX) {
        kowloon__tenant__resolve_api_key_response__free_unpacked(resp, NULL);
        return kl_status_set(status, KL_INTERNAL,
                             "ResolveApiKey answered an unusable id");
    }
    memcpy(out->tenant_id, tid, strlen(tid) + 1);
    memcpy(out->key_id, kid, strlen(kid) + 1);
    kowloon__tenant__resolve_api_key_response__free_unpacked(resp, NULL);
    if (self->opts.ttl_ms > 0) {
        s_entry_t *e =
            s_entry_new(digest, sizeof digest, hash, self->opts.ttl_ms);
        e->api = *out;
        s_insert(self, &self->keys, e, gen0);
    }
    return 0;
}

/* Drops the entries of t for which drop(e, arg) is true. */
static void
s_table_drop_if(s_table_t *t, bool (*drop)(const s_entry_t *, const char *),
                const char *arg)
{
    for (size_t i = 0; i < t->n_shards; i++) {
        s_shard_t *s = &t->shards[i];
        pthread_rwlock_wrlock(&s->lock);
        for (s_entry_t *e = s->head, *next; e; e = next) {
            next = e->next;
            if (drop(e, arg))
                s_unlink(s, e);
        }
        pthread_rwlock_unlock(&s->lock);
    }
}

static bool
s_is_tenant(const s_entry_t *e, const char *id)
{
    return e->tenant && e->tenant->msg->id &&
           strcmp(e->tenant->msg->id, id) == 0;
}

static bool
s_key_of_tenant(const s_entry_t *e, const char *id)
{
    return !e->negative && strcmp(e->api.tenant_id, id) == 0;
}

static bool
s_is_key(const s_entry_t *e, const char *id)
{
    return !e->negative && strcmp(e->api.key_id, id) == 0;
}

static void
s_drop_subdomain(s_table_t *t, const char *subdomain)
{
    size_t len = strlen(subdomain);
    uint64_t hash = s_hash((const unsigned char *)subdomain, len);
    s_shard_t *s = s_shard_of(t, hash);
    pthread_rwlock_wrlock(&s->lock);
    s_entry_t *e = s_find(s, hash, (const unsigned char *)subdomain, len);
    if (e)
        s_unlink(s, e);
    pthread_rwlock_unlock(&s->lock);
}

void
gw_tenant_cache_on_event(gw_tenant_cache_t *self,
                         const Kowloon__Events__ChangeEvent *event)
{
    atomic_fetch_add(&self->gen, 1);
    atomic_fetch_add_explicit(&self->invalidations, 1, memory_order_relaxed);
    if (!event) {
        s_table_clear(&self->tenants);
        s_table_clear(&self->keys);
        return;
    }
    const char *kind = event->kind ? event->kind : "";
    if (strcmp(kind, "tenant") == 0) {
        const char *id = event->id && *event->id ? event->id : event->tenant_id;
        if (event->subdomain && *event->subdomain)
            s_drop_subdomain(&self->tenants, event->subdomain);
        if (id && *id) {
            s_table_drop_if(&self->tenants, s_is_tenant, id);
            s_table_drop_if(&self->keys, s_key_of_tenant, id);
        }
    } else if (strcmp(kind, "api_key") == 0) {
        if (event->id && *event->id)
            s_table_drop_if(&self->keys, s_is_key, event->id);
    }
}

static size_t
s_table_count(s_table_t *t)
{
    size_t n = 0;
    for (size_t i = 0; i < t->n_shards; i++) {
        pthread_rwlock_rdlock(&t->shards[i].lock);
        n += t->shards[i].count;
        pthread_rwlock_unlock(&t->shards[i].lock);
    }
    return n;
}

void
gw_tenant_cache_stats(gw_tenant_cache_t *self, gw_tenant_cache_stats_t *stats)
{
    stats->hits = atomic_load_explicit(&self->hits, memory_order_relaxed);
    stats->misses = atomic_load_explicit(&self->misses, memory_order_relaxed);
    stats->evictions =
        atomic_load_explicit(&self->evictions, memory_order_relaxed);
    stats->invalidations =
        atomic_load_explicit(&self->invalidations, memory_order_relaxed);
    stats->stale = atomic_load_explicit(&self->stale, memory_order_relaxed);
    stats->tenants = s_table_count(&self->tenants);
    stats->keys = s_table_count(&self->keys);
}
