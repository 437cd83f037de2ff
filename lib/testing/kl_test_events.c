/*
 * kl_test_events: a Redis subscriber that keeps the events it receives,
 * for tests that wait for one.
 */
#include "kl_test_events.h"

#include "kl_alloc.h"
#include "kl_redis.h"
#include "kl_rpc.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_MAX_EVENTS 1024

typedef struct {
    char kind[16], id[64], tenant_id[64], subdomain[64], action[16];
} s_event_t;

struct kl_test_events {
    pthread_mutex_t mu;             /* guards everything below */
    pthread_cond_t cond;            /* an event or a subscription came */
    int subscribed;                 /* fn(NULL) calls: (re)subscriptions */
    int n;                          /* events kept */
    s_event_t events[S_MAX_EVENTS]; /* in arrival order */
    kl_events_t *sub;               /* the subscriber thread */
};

static void
s_on_event(const Kowloon__Events__ChangeEvent *ev, void *user)
{
    kl_test_events_t *self = user;
    pthread_mutex_lock(&self->mu);
    if (!ev) {
        self->subscribed++;
    } else if (self->n < S_MAX_EVENTS) {
        s_event_t *e = &self->events[self->n++];
        snprintf(e->kind, sizeof e->kind, "%s", ev->kind);
        snprintf(e->id, sizeof e->id, "%s", ev->id);
        snprintf(e->tenant_id, sizeof e->tenant_id, "%s", ev->tenant_id);
        snprintf(e->subdomain, sizeof e->subdomain, "%s", ev->subdomain);
        snprintf(e->action, sizeof e->action, "%s", ev->action);
    }
    pthread_cond_broadcast(&self->cond);
    pthread_mutex_unlock(&self->mu);
}

/* Waits on cond for at most until (monotonic ms); mu held. */
static void
s_wait_until(kl_test_events_t *self, int64_t until)
{
    int64_t left = until - kl_now_mono_ms();
    if (left > 100)
        left = 100;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)left * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&self->cond, &self->mu, &ts);
}

kl_test_events_t *
kl_test_events_new(const char *redis_url, const char *channel)
{
    kl_test_events_t *self = kl_calloc(1, sizeof *self);
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->cond, NULL);
    kl_status_t st;
    self->sub = kl_events_subscribe(redis_url, channel, s_on_event, self, &st);
    if (!self->sub) {
        fprintf(stderr, "kl_events_subscribe(%s): %s\n", channel, st.message);
        kl_test_events_destroy(&self);
        return NULL;
    }
    int64_t until = kl_now_mono_ms() + 5000;
    pthread_mutex_lock(&self->mu);
    while (self->subscribed == 0 && kl_now_mono_ms() < until)
        s_wait_until(self, until);
    int subscribed = self->subscribed;
    pthread_mutex_unlock(&self->mu);
    if (!subscribed) {
        fprintf(stderr, "no subscription to %s within 5 s\n", channel);
        kl_test_events_destroy(&self);
        return NULL;
    }
    return self;
}

void
kl_test_events_destroy(kl_test_events_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kl_test_events_t *self = *self_p;
    kl_events_destroy(&self->sub);
    pthread_cond_destroy(&self->cond);
    pthread_mutex_destroy(&self->mu);
    free(self);
    *self_p = NULL;
}

static bool
s_field(const char *want, const char *got)
{
    return !want || strcmp(want, got) == 0;
}

int
kl_test_events_wait(kl_test_events_t *self, const char *kind, const char *id,
                    const char *tenant_id, const char *subdomain,
                    const char *action, int timeout_ms)
{
    int64_t until = kl_now_mono_ms() + timeout_ms;
    pthread_mutex_lock(&self->mu);
    for (;;) {
        for (int i = 0; i < self->n; i++) {
            const s_event_t *e = &self->events[i];
            if (s_field(kind, e->kind) && s_field(id, e->id) &&
                s_field(tenant_id, e->tenant_id) &&
                s_field(subdomain, e->subdomain) &&
                s_field(action, e->action)) {
                pthread_mutex_unlock(&self->mu);
                return 0;
            }
        }
        if (kl_now_mono_ms() >= until)
            break;
        s_wait_until(self, until);
    }
    pthread_mutex_unlock(&self->mu);
    return -1;
}
