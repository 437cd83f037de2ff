/*
 * kl_test_events: records the change events a service publishes, for tests
 * that assert them (test support only: library kowloon_testing). Subscribes
 * with kl_events_subscribe on its own thread and keeps every event seen.
 */
#ifndef KL_TEST_EVENTS_H
#define KL_TEST_EVENTS_H

typedef struct kl_test_events kl_test_events_t;

/* Subscribes to channel on redis_url and waits (up to 5 s) until the
 * subscription is made, so that no later event is missed. NULL after
 * printing why. Caller owns the result. */
kl_test_events_t *kl_test_events_new(const char *redis_url,
                                     const char *channel);

/* Unsubscribes and frees. Accepts NULL. */
void kl_test_events_destroy(kl_test_events_t **self_p);

/* Waits up to timeout_ms for an event seen since new() whose fields equal
 * the given ones; a NULL field matches anything ("" matches only an empty
 * field). Returns 0, or -1 when none came. */
int kl_test_events_wait(kl_test_events_t *self, const char *kind,
                        const char *id, const char *tenant_id,
                        const char *subdomain, const char *action,
                        int timeout_ms);

#endif
