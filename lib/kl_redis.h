/*
 * kl_redis: Redis for events and caches. Redis is never the only copy of
 * anything: every function here fails softly (returns an error, never
 * blocks long) so callers carry on without it.
 *
 * URLs: "redis://[:password@]host[:port][/db]" or "unix:///path/redis.sock";
 * an empty URL means Redis is off (every call returns -KL_UNAVAILABLE).
 */
#ifndef KL_REDIS_H
#define KL_REDIS_H

#include "kl_code.h"
#include "kowloon/events.pb-c.h"

#include <stddef.h>
#include <stdint.h>

/* One connection, owned by one thread. Connects lazily with a short
 * timeout and reconnects after errors (at most once a second). */
typedef struct kl_redis kl_redis_t;

kl_redis_t *kl_redis_new(const char *url, kl_status_t *status);
void kl_redis_destroy(kl_redis_t **self_p);

/* The hiredis context, connecting if needed; NULL + UNAVAILABLE. Opaque
 * here so that callers need not include hiredis; cast to redisContext *. */
void *kl_redis_context(kl_redis_t *self, kl_status_t *status);

/* PUBLISH channel <packed event>. Returns 0 or -KL_UNAVAILABLE. */
int kl_redis_publish_event(kl_redis_t *self, const char *channel,
                           const Kowloon__Events__ChangeEvent *event,
                           kl_status_t *status);

/* Subscribes on its own thread and calls fn for every event received on
 * channel (on that thread). After the subscription was lost and made again,
 * or when it is first made, fn is called with event NULL: events may have
 * been missed, so drop whatever you cached. Reconnects by itself with
 * backoff up to 1 s. */
typedef void (*kl_events_fn)(const Kowloon__Events__ChangeEvent *event,
                             void *user);
typedef struct kl_events kl_events_t;

kl_events_t *kl_events_subscribe(const char *url, const char *channel,
                                 kl_events_fn fn, void *user,
                                 kl_status_t *status);
/* Stops the thread (within about 100 ms) and frees. */
void kl_events_destroy(kl_events_t **self_p);

#endif
