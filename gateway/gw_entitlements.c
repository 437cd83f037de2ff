/*
 * gw_entitlements: a sharded hash table of tenant id -> entry, like the
 * tenant cache, except that entries are not dropped by events but marked
 * stale: a stale snapshot is what stale-if-error serves, and the entry
 * carries the tenant's token bucket, which must outlive refreshes.
 *
 * Races between a refresh and an event: the cache has a generation,
 * bumped by every event before it marks anything. A refresh notes the
 * generation before asking the backend and stores its answer stale
 * (fresh_until 0) if the generation moved meanwhile, so the next request
 * asks again.
 */
#include "gw_entitlements.h"

#include "gw_bucket.h"
#include "gw_tenant.h"
#include "kl_alloc.h"
#include "kl_json.h"
#include "kl_log.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define S_MAX_SHARDS 64
#define S_MIN_PER_SHARD 64

typedef struct s_entry {
    struct s_entry *hnext; /* next in the hash bucket */
    struct s_entry *prev;  /* insertion list, toward the oldest */
    struct s_entry *next;  /* insertion list, toward the newest */
    uint64_t hash;
    gw_ent_t *snap;       /* the last good answer (one ref); NULL: none */
    int64_t fresh_until;  /* mono ms; snap is stale from then on */
    int64_t retry_at;     /* mono ms; no refresh before (after a failure) */
    int64_t warned_until; /* mono ms; no stale warning before */
    kl_status_t error;    /* the failure remembered when snap is NULL */
    gw_bucket_t bucket;   /* the tenant's rate (see gw_bucket.h) */
    size_t id_len;
    char id[]; /* tenant id, NUL-terminated */
} s_entry_t;

typedef struct {
    pthread_rwlock_t lock;
    s_entry_t **buckets; /* mask + 1 chains */
    size_t mask;
    s_entry_t *head, *tail; /* insertion order: head is the oldest */
    size_t count, cap;
    char pad[64]; /* keep neighbouring shards' locks apart */
} s_shard_t;

struct gw_entitlements {
    gw_entitlements_opts_t opts;
    gw_entitlements_backend_t backend;
    s_shard_t *shards;
    size_t n_shards;          /* a power of two */
    atomic_uint_fast64_t gen; /* bumped by every event */
    atomic_uint_fast64_t hits, misses, stale_served, refresh_failures,
        invalidations;
};

/* ---- snapshots -------------------------------------------------------- */

gw_ent_t *
gw_ent_ref(gw_ent_t *e)
{
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    return e;
}

void
gw_ent_release(gw_ent_t **e_p)
{
    if (!e_p || !*e_p)
        return;
    gw_ent_t *e = *e_p;
    *e_p = NULL;
    if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1)
        return;
    kowloon__flags__entitlements__free_unpacked(e->msg, NULL);
    free(e->json);
    free(e);
}

bool
gw_ent_allows(const gw_ent_t *e, const char *name)
{
    for (size_t i = 0; i < e->msg->n_features; i++)
        if (strcmp(e->msg->features[i], name) == 0)
            return true;
    for (size_t i = 0; i < e->msg->n_flags; i++)
        if (strcmp(e->msg->flags[i], name) == 0)
            return true;
    return false;
}

/* A snapshot of msg (deep copied through its wire form), or NULL. */
static gw_ent_t *
s_ent_new(const Kowloon__Flags__Entitlements *msg)
{
    size_t len = protobuf_c_message_get_packed_size(&msg->base);
    uint8_t *buf = kl_malloc(len ? len : 1);
    protobuf_c_message_pack(&msg->base, buf);
    Kowloon__Flags__Entitlements *copy =
        kowloon__flags__entitlements__unpack(NULL, len, buf);
    free(buf);
    if (!copy)
        return NULL;
    json_t *j = kl_json_from_message(&copy->base, KL_JSON_EMIT_DEFAULTS);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) {
        kowloon__flags__entitlements__free_unpacked(copy, NULL);
        return NULL;
    }
    gw_ent_t *e = kl_calloc(1, sizeof *e);
    e->msg = copy;
    e->json = text;
    e->json_len = strlen(text);
    e->rate_limit = -1;
    for (size_t i = 0; i < copy->n_limits; i++)
        if (copy->limits[i]->key &&
            strcmp(copy->limits[i]->key, GW_ENTITLEMENTS_RATE_LIMIT) == 0)
            e->rate_limit =
                copy->limits[i]->value < 0 ? -1 : copy->limits[i]->value;
    atomic_init(&e->refs, 1);
    return e;
}

/* ---- the table -------------------------------------------------------- */

static uint64_t
s_hash(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a, then a final mix */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static int64_t
s_now(const gw_entitlements_t *self)
{
    return self->opts.now_ms ? self->opts.now_ms() : kl_now_mono_ms();
}

static s_shard_t *
s_shard_of(const gw_entitlements_t *self, uint64_t hash)
{
    return &self->shards[(hash >> 40) & (self->n_shards - 1)];
}

static s_entry_t *
s_find(const s_shard_t *s, uint64_t hash, const char *id, size_t len)
{
    for (s_entry_t *e = s->buckets[hash & s->mask]; e; e = e->hnext)
        if (e->hash == hash && e->id_len == len && memcmp(e->id, id, len) == 0)
            return e;
    return NULL;
}

/* Removes e from its chain and list and frees it. Write lock. */
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
    gw_ent_release(&e->snap);
    free(e);
}

/* The entry of id, created (evicting when the shard is full: the oldest
 * stale entry, else the oldest) when absent. Write lock. */
static s_entry_t *
s_find_or_add(s_shard_t *s, uint64_t hash, const char *id, size_t len,
              int64_t now)
{
    s_entry_t *e = s_find(s, hash, id, len);
    if (e)
        return e;
    if (s->count >= s->cap) {
        s_entry_t *victim = s->head;
        for (s_entry_t *c = s->head; c; c = c->next)
            if (c->fresh_until <= now) {
                victim = c;
                break;
            }
        if (victim)
            s_unlink(s, victim);
    }
    e = kl_calloc(1, sizeof *e + len + 1);
    memcpy(e->id, id, len);
    e->id_len = len;
    e->hash = hash;
    gw_bucket_init(&e->bucket);
    e->hnext = s->buckets[hash & s->mask];
    s->buckets[hash & s->mask] = e;
    e->prev = s->tail;
    if (s->tail)
        s->tail->next = e;
    else
        s->head = e;
    s->tail = e;
    s->count++;
    return e;
}

gw_entitlements_t *
gw_entitlements_new(const gw_entitlements_opts_t *opts,
                    const gw_entitlements_backend_t *backend)
{
    gw_entitlements_t *self = kl_calloc(1, sizeof *self);
    self->opts = *opts;
    if (self->opts.ttl_ms < 1)
        self->opts.ttl_ms = 1;
    if (self->opts.retry_ms < 1)
        self->opts.retry_ms = 1;
    if (self->opts.max_entries < 1)
        self->opts.max_entries = 1;
    if (self->opts.instances < 1)
        self->opts.instances = 1;
    self->backend = *backend;

    size_t n = S_MAX_SHARDS;
    while (n > 1 && self->opts.max_entries / n < S_MIN_PER_SHARD)
        n /= 2;
    self->n_shards = n;
    self->shards = kl_calloc(n, sizeof(s_shard_t));
    for (size_t i = 0; i < n; i++) {
        s_shard_t *s = &self->shards[i];
        size_t buckets = 8;
        pthread_rwlock_init(&s->lock, NULL);
        s->cap = self->opts.max_entries / n +
                 (i < self->opts.max_entries % n ? 1 : 0);
        if (s->cap == 0)
            s->cap = 1;
        while (buckets < s->cap)
            buckets *= 2;
        s->buckets = kl_calloc(buckets, sizeof(s_entry_t *));
        s->mask = buckets - 1;
    }
    atomic_init(&self->gen, 0);
    atomic_init(&self->hits, 0);
    atomic_init(&self->misses, 0);
    atomic_init(&self->stale_served, 0);
    atomic_init(&self->refresh_failures, 0);
    atomic_init(&self->invalidations, 0);
    return self;
}

void
gw_entitlements_destroy(gw_entitlements_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gw_entitlements_t *self = *self_p;
    for (size_t i = 0; i < self->n_shards; i++) {
        s_shard_t *s = &self->shards[i];
        while (s->head)
            s_unlink(s, s->head);
        pthread_rwlock_destroy(&s->lock);
        free(s->buckets);
    }
    free(self->shards);
    KL_FREE(self_p);
}

/* ---- lookups ---------------------------------------------------------- */

static bool
s_same_plan(const gw_ent_t *snap, const char *plan)
{
    const char *have = snap->msg->plan ? snap->msg->plan : "";
    return strcmp(have, plan ? plan : "") == 0;
}

/* Hands out e's snapshot (a new reference) and takes a token when asked.
 * Any lock on e's shard. */
static int
s_serve(gw_entitlements_t *self, s_entry_t *e, bool rate_limit, int64_t now,
        gw_ent_t **out, int64_t *retry_after_s, kl_status_t *status)
{
    *out = gw_ent_ref(e->snap);
    if (rate_limit &&
        !gw_bucket_take(&e->bucket, e->snap->rate_limit, self->opts.instances,
                        now * 1000, retry_after_s))
        return kl_status_set(status, KL_RESOURCE_EXHAUSTED,
                             "rate limit exceeded: %lld requests per minute",
                             (long long)e->snap->rate_limit);
    return 0;
}

/* The backend's answer is unknown (rather than a definite refusal), so a
 * stale snapshot is better than nothing. */
static bool
s_transient(int rc)
{
    return rc == -KL_UNAVAILABLE || rc == -KL_DEADLINE_EXCEEDED ||
           rc == -KL_INTERNAL || rc == -KL_UNKNOWN ||
           rc == -KL_RESOURCE_EXHAUSTED || rc == -KL_ABORTED;
}

/* When the answer stops being fresh: now + ttl, or sooner when an applied
 * override expires sooner. */
static int64_t
s_fresh_until(const gw_entitlements_t *self, const gw_ent_t *snap, int64_t now)
{
    int64_t until = now + self->opts.ttl_ms;
    const char *exp = snap->msg->expires_at;
    if (exp && *exp) {
        int64_t at = gw_tenant_parse_time(exp);
        if (at < 0)
            return now; /* unparsable: do not cache */
        int64_t left = at - kl_now_unix_ms();
        if (now + left < until)
            until = now + (left > 0 ? left : 0);
    }
    return until;
}

int
gw_entitlements_get(gw_entitlements_t *self, const char *tenant_id,
                    const char *plan, const kl_call_ctx_t *ctx, bool rate_limit,
                    gw_ent_t **out, bool *stale, int64_t *retry_after_s,
                    kl_status_t *status)
{
    size_t len = strlen(tenant_id);
    uint64_t hash = s_hash(tenant_id, len);
    s_shard_t *s = s_shard_of(self, hash);
    int64_t now = s_now(self);
    int rc;

    *out = NULL;
    *stale = false;
    *retry_after_s = 0;

    pthread_rwlock_rdlock(&s->lock);
    s_entry_t *e = s_find(s, hash, tenant_id, len);
    if (e && e->snap && e->fresh_until > now && s_same_plan(e->snap, plan)) {
        rc = s_serve(self, e, rate_limit, now, out, retry_after_s, status);
        pthread_rwlock_unlock(&s->lock);
        atomic_fetch_add_explicit(&self->hits, 1, memory_order_relaxed);
        return rc;
    }
    if (e && e->retry_at > now) {
        /* A refresh failed lately: do not ask again yet. */
        if (e->snap) {
            *stale = true;
            rc = s_serve(self, e, rate_limit, now, out, retry_after_s, status);
            atomic_fetch_add_explicit(&self->stale_served, 1,
                                      memory_order_relaxed);
        } else {
            rc = kl_status_set(status, e->error.code, "%s", e->error.message);
        }
        pthread_rwlock_unlock(&s->lock);
        return rc;
    }
    pthread_rwlock_unlock(&s->lock);

    atomic_fetch_add_explicit(&self->misses, 1, memory_order_relaxed);
    uint64_t gen0 = atomic_load(&self->gen);
    Kowloon__Flags__Entitlements *msg = NULL;
    kl_status_t st;
    int brc = self->backend.evaluate(self->backend.user, tenant_id, plan, ctx,
                                     &msg, &st);
    gw_ent_t *snap = NULL;
    if (brc == 0) {
        snap = s_ent_new(msg);
        kowloon__flags__entitlements__free_unpacked(msg, NULL);
        if (!snap)
            brc = kl_status_set(&st, KL_INTERNAL,
                                "Evaluate answered entitlements that do "
                                "not transcode");
    }

    bool warn = false;
    gw_ent_t *old = NULL;
    now = s_now(self);
    pthread_rwlock_wrlock(&s->lock);
    e = s_find_or_add(s, hash, tenant_id, len, now);
    if (snap) {
        old = e->snap;
        e->snap = snap;
        e->fresh_until = atomic_load(&self->gen) == gen0
                             ? s_fresh_until(self, snap, now)
                             : 0;
        e->retry_at = 0;
        e->warned_until = 0;
        rc = s_serve(self, e, rate_limit, now, out, retry_after_s, status);
    } else {
        e->retry_at = now + self->opts.retry_ms;
        atomic_fetch_add_explicit(&self->refresh_failures, 1,
                                  memory_order_relaxed);
        if (e->snap && s_transient(brc)) {
            *stale = true;
            if (e->warned_until <= now) {
                e->warned_until = now + self->opts.ttl_ms;
                warn = true;
            }
            rc = s_serve(self, e, rate_limit, now, out, retry_after_s, status);
            atomic_fetch_add_explicit(&self->stale_served, 1,
                                      memory_order_relaxed);
        } else {
            /* A definite refusal, or nothing to fall back on. */
            old = e->snap;
            e->snap = NULL;
            e->error = st;
            rc = kl_status_set(status, st.code, "%s", st.message);
        }
    }
    pthread_rwlock_unlock(&s->lock);
    gw_ent_release(&old);
    if (!*out && rc != -KL_RESOURCE_EXHAUSTED)
        KL_LOG(KL_WARN, "entitlements of tenant %s: Evaluate failed (%s: %s)",
               tenant_id, kl_code_name(st.code), st.message);
    if (warn)
        KL_LOG(KL_WARN,
               "entitlements of tenant %s: refresh failed (%s: %s), serving "
               "the last known ones",
               tenant_id, kl_code_name(st.code), st.message);
    return rc;
}

/* ---- events ----------------------------------------------------------- */

typedef enum { S_ALL, S_PLAN, S_TENANT } s_scope_t;

static void
s_mark(gw_entitlements_t *self, s_scope_t scope, const char *arg)
{
    if (scope == S_TENANT) {
        size_t len = strlen(arg);
        uint64_t hash = s_hash(arg, len);
        s_shard_t *s = s_shard_of(self, hash);
        pthread_rwlock_wrlock(&s->lock);
        s_entry_t *e = s_find(s, hash, arg, len);
        if (e) {
            e->fresh_until = 0;
            e->retry_at = 0;
        }
        pthread_rwlock_unlock(&s->lock);
        return;
    }
    for (size_t i = 0; i < self->n_shards; i++) {
        s_shard_t *s = &self->shards[i];
        pthread_rwlock_wrlock(&s->lock);
        for (s_entry_t *e = s->head; e; e = e->next)
            if (scope == S_ALL || (e->snap && s_same_plan(e->snap, arg))) {
                e->fresh_until = 0;
                e->retry_at = 0;
            }
        pthread_rwlock_unlock(&s->lock);
    }
}

void
gw_entitlements_on_event(gw_entitlements_t *self,
                         const Kowloon__Events__ChangeEvent *event)
{
    const char *kind = event && event->kind ? event->kind : "";
    const char *id = event && event->id ? event->id : "";
    const char *tid = event && event->tenant_id ? event->tenant_id : "";

    if (event && strcmp(kind, "plan") != 0 && strcmp(kind, "flag") != 0 &&
        strcmp(kind, "override") != 0 && strcmp(kind, "tenant") != 0)
        return;
    atomic_fetch_add(&self->gen, 1);
    atomic_fetch_add_explicit(&self->invalidations, 1, memory_order_relaxed);
    if (!event || strcmp(kind, "flag") == 0) {
        s_mark(self, S_ALL, NULL);
    } else if (strcmp(kind, "plan") == 0) {
        if (*id)
            s_mark(self, S_PLAN, id);
        else
            s_mark(self, S_ALL, NULL);
    } else if (strcmp(kind, "override") == 0) {
        if (*tid)
            s_mark(self, S_TENANT, tid);
        else
            s_mark(self, S_ALL, NULL);
    } else { /* tenant */
        const char *t = *id ? id : tid;
        if (*t)
            s_mark(self, S_TENANT, t);
    }
}

void
gw_entitlements_stats(gw_entitlements_t *self, gw_entitlements_stats_t *stats)
{
    stats->hits = atomic_load_explicit(&self->hits, memory_order_relaxed);
    stats->misses = atomic_load_explicit(&self->misses, memory_order_relaxed);
    stats->stale_served =
        atomic_load_explicit(&self->stale_served, memory_order_relaxed);
    stats->refresh_failures =
        atomic_load_explicit(&self->refresh_failures, memory_order_relaxed);
    stats->invalidations =
        atomic_load_explicit(&self->invalidations, memory_order_relaxed);
    stats->entries = 0;
    for (size_t i = 0; i < self->n_shards; i++) {
        pthread_rwlock_rdlock(&self->shards[i].lock);
        stats->entries += self->shards[i].count;
        pthread_rwlock_unlock(&self->shards[i].lock);
    }
}
