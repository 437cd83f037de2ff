/*
 * kl_redis against a real Redis: KLTEST_REDIS_URL names it
 * (redis://127.0.0.1:PORT/0).
 */
#include "kl_alloc.h"
#include "kl_redis.h"
#include "kl_rpc.h"

#include <hiredis/hiredis.h>

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

static const char *s_url; /* KLTEST_REDIS_URL */
static char s_channel[64];

/* What the subscriber callback saw. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int resubscribed;   /* fn(NULL) calls */
    int events;         /* events received */
    char last_kind[32]; /* of the last event */
    char last_id[64];
    char last_tenant[64];
    char last_sub[64];
    char last_action[32];
    int64_t last_at;
} s_seen_t;

static void
s_on_event(const Kowloon__Events__ChangeEvent *ev, void *user)
{
    s_seen_t *seen = user;
    pthread_mutex_lock(&seen->mu);
    if (!ev) {
        seen->resubscribed++;
    } else {
        seen->events++;
        snprintf(seen->last_kind, sizeof seen->last_kind, "%s", ev->kind);
        snprintf(seen->last_id, sizeof seen->last_id, "%s", ev->id);
        snprintf(seen->last_tenant, sizeof seen->last_tenant, "%s",
                 ev->tenant_id);
        snprintf(seen->last_sub, sizeof seen->last_sub, "%s", ev->subdomain);
        snprintf(seen->last_action, sizeof seen->last_action, "%s", ev->action);
        seen->last_at = ev->at_unix_ms;
    }
    pthread_cond_broadcast(&seen->cond);
    pthread_mutex_unlock(&seen->mu);
}

/* Waits up to ms for *counter >= want. */
static bool
s_wait_for(s_seen_t *seen, const int *counter, int want, int ms)
{
    int64_t until = kl_now_mono_ms() + ms;
    pthread_mutex_lock(&seen->mu);
    while (*counter < want && kl_now_mono_ms() < until) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&seen->cond, &seen->mu, &ts);
    }
    bool ok = *counter >= want;
    pthread_mutex_unlock(&seen->mu);
    return ok;
}

/* A plain hiredis connection to the test server (host and port only). */
static redisContext *
s_admin(void)
{
    char host[128] = "127.0.0.1";
    int port = 6379;
    sscanf(s_url, "redis://%127[^:/]:%d", host, &port);
    redisContext *c = redisConnect(host, port);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    return c;
}

/* CLIENT KILL TYPE pubsub, limited to the clients made after watermark,
 * so that other tests subscribed to the same Redis keep their
 * subscriptions. Returns how many were killed. */
static long long
s_kill_pubsub_since(redisContext *admin, long long watermark)
{
    redisReply *list = redisCommand(admin, "CLIENT LIST TYPE pubsub");
    assert_non_null(list);
    assert_int_equal(list->type, REDIS_REPLY_STRING);
    long long killed = 0;
    for (const char *p = list->str; p && *p;) {
        long long id = 0;
        if (sscanf(p, "id=%lld", &id) == 1 && id > watermark) {
            redisReply *r =
                redisCommand(admin, "CLIENT KILL ID %lld TYPE pubsub", id);
            assert_non_null(r);
            assert_int_equal(r->type, REDIS_REPLY_INTEGER);
            killed += r->integer;
            freeReplyObject(r);
        }
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    freeReplyObject(list);
    return killed;
}

static int
s_group_setup(void **state)
{
    s_url = getenv("KLTEST_REDIS_URL");
    if (!s_url || !*s_url) {
        fprintf(stderr, "test_kl_redis needs a Redis: set "
                        "KLTEST_REDIS_URL=redis://127.0.0.1:PORT/0 (see "
                        "deploy/local/lib.sh kl_redis_start)\n");
        return -1;
    }
    snprintf(s_channel, sizeof s_channel, "kltest:events:%d", (int)getpid());
    return 0;
}

static void
test_url_parsing(void **state)
{
    static const char *const bad[] = {
        "http://127.0.0.1", "redis://",           "redis://:6379",
        "redis://host:0",   "redis://host:99999", "redis://host:12ab",
        "redis://host/abc", "redis://host/1?x=1", "unix://relative.sock",
        "unix://",          "redis://user@host",  "redis://:%zz@host",
        "redis://[::1",     "127.0.0.1:6379",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kl_status_t st;
        kl_status_clear(&st);
        kl_redis_t *r = kl_redis_new(bad[i], &st);
        if (r)
            fail_msg("accepted %s", bad[i]);
        assert_int_equal(st.code, KL_INVALID_ARGUMENT);
        assert_non_null(strstr(st.message, "invalid redis URL"));
        kl_events_t *ev =
            kl_events_subscribe(bad[i], "c", s_on_event, NULL, &st);
        assert_null(ev);
        assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    }
    static const char *const good[] = {
        "redis://127.0.0.1",     "redis://localhost:6380/2",
        "redis://:secret@h:1/0", "redis://u:p%40ss@h",
        "redis://[::1]:6379/1",  "unix:///run/redis/redis.sock",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        kl_status_t st;
        kl_redis_t *r = kl_redis_new(good[i], &st);
        if (!r)
            fail_msg("refused %s: %s", good[i], st.message);
        kl_redis_destroy(&r);
        assert_null(r);
    }
}

static void
test_disabled(void **state)
{
    kl_status_t st;
    kl_redis_t *r = kl_redis_new("", &st);
    assert_non_null(r);
    assert_null(kl_redis_context(r, &st));
    assert_int_equal(st.code, KL_UNAVAILABLE);
    Kowloon__Events__ChangeEvent ev = KOWLOON__EVENTS__CHANGE_EVENT__INIT;
    assert_int_equal(kl_redis_publish_event(r, "c", &ev, &st), -KL_UNAVAILABLE);
    assert_string_equal(st.message, "redis is disabled");
    kl_redis_destroy(&r);

    assert_null(kl_events_subscribe("", "c", s_on_event, NULL, &st));
    assert_int_equal(st.code, KL_UNAVAILABLE);
}

static void
test_unreachable(void **state)
{
    kl_status_t st;
    kl_redis_t *r = kl_redis_new("redis://127.0.0.1:1/0", &st);
    assert_non_null(r);
    Kowloon__Events__ChangeEvent ev = KOWLOON__EVENTS__CHANGE_EVENT__INIT;
    int64_t t0 = kl_now_mono_ms();
    assert_int_equal(kl_redis_publish_event(r, "c", &ev, &st), -KL_UNAVAILABLE);
    assert_non_null(strstr(st.message, "cannot connect"));
    /* Within a second no new attempt is made: fails at once. */
    assert_int_equal(kl_redis_publish_event(r, "c", &ev, &st), -KL_UNAVAILABLE);
    assert_non_null(strstr(st.message, "next attempt"));
    assert_true(kl_now_mono_ms() - t0 < 600);
    kl_redis_destroy(&r);

    /* A password the server does not want: AUTH fails, UNAVAILABLE. */
    char *url = kl_asprintf("redis://:wrong@%s", s_url + strlen("redis://"));
    r = kl_redis_new(url, &st);
    free(url);
    assert_non_null(r);
    assert_null(kl_redis_context(r, &st));
    assert_int_equal(st.code, KL_UNAVAILABLE);
    assert_non_null(strstr(st.message, "AUTH"));
    kl_redis_destroy(&r);

    /* A subscriber to nowhere keeps trying and still stops quickly. */
    s_seen_t seen = {.mu = PTHREAD_MUTEX_INITIALIZER,
                     .cond = PTHREAD_COND_INITIALIZER};
    kl_events_t *sub = kl_events_subscribe("redis://127.0.0.1:1/0", "c",
                                           s_on_event, &seen, &st);
    assert_non_null(sub);
    usleep(300000);
    t0 = kl_now_mono_ms();
    kl_events_destroy(&sub);
    assert_null(sub);
    assert_true(kl_now_mono_ms() - t0 < 200);
    assert_int_equal(seen.resubscribed, 0);
}

static void
s_publish(kl_redis_t *r, const char *id)
{
    kl_status_t st;
    Kowloon__Events__ChangeEvent ev = KOWLOON__EVENTS__CHANGE_EVENT__INIT;
    ev.kind = "tenant";
    ev.id = (char *)id;
    ev.tenant_id = (char *)id;
    ev.subdomain = "acme";
    ev.action = "updated";
    if (kl_redis_publish_event(r, s_channel, &ev, &st) != 0)
        fail_msg("publish: %s", st.message);
}

static void
test_publish_subscribe(void **state)
{
    kl_status_t st;
    s_seen_t seen = {.mu = PTHREAD_MUTEX_INITIALIZER,
                     .cond = PTHREAD_COND_INITIALIZER};
    /* Client ids grow: those above this one's were made after it. */
    redisContext *admin = s_admin();
    redisReply *rep = redisCommand(admin, "CLIENT ID");
    long long watermark = rep->integer;
    freeReplyObject(rep);
    kl_events_t *sub =
        kl_events_subscribe(s_url, s_channel, s_on_event, &seen, &st);
    assert_non_null(sub);
    assert_true(s_wait_for(&seen, &seen.resubscribed, 1, 3000));

    kl_redis_t *r = kl_redis_new(s_url, &st);
    assert_non_null(r);
    int64_t before = kl_now_unix_ms();
    s_publish(r, "t-1");
    assert_true(s_wait_for(&seen, &seen.events, 1, 3000));
    pthread_mutex_lock(&seen.mu);
    assert_string_equal(seen.last_kind, "tenant");
    assert_string_equal(seen.last_id, "t-1");
    assert_string_equal(seen.last_tenant, "t-1");
    assert_string_equal(seen.last_sub, "acme");
    assert_string_equal(seen.last_action, "updated");
    assert_true(seen.last_at >= before && seen.last_at <= kl_now_unix_ms());
    pthread_mutex_unlock(&seen.mu);

    /* Something that is not an event on the channel is ignored. */
    rep = redisCommand(admin, "PUBLISH %s %b", s_channel, "\xff\xff\xff",
                       (size_t)3);
    freeReplyObject(rep);

    /* The server drops the subscription: it comes back, says so with
     * fn(NULL), and events flow again. */
    assert_true(s_kill_pubsub_since(admin, watermark) >= 1);
    assert_true(s_wait_for(&seen, &seen.resubscribed, 2, 3000));
    s_publish(r, "t-2");
    assert_true(s_wait_for(&seen, &seen.events, 2, 3000));
    pthread_mutex_lock(&seen.mu);
    assert_string_equal(seen.last_id, "t-2");
    assert_int_equal(seen.events, 2);
    pthread_mutex_unlock(&seen.mu);

    /* The publisher's own connection killed: noticed before the next
     * PUBLISH, which reconnects. */
    redisContext *pc = kl_redis_context(r, &st);
    assert_non_null(pc);
    rep = redisCommand(pc, "CLIENT ID");
    long long id = rep->integer;
    freeReplyObject(rep);
    rep = redisCommand(admin, "CLIENT KILL ID %lld", id);
    assert_int_equal(rep->integer, 1);
    freeReplyObject(rep);
    usleep(50000);
    s_publish(r, "t-3");
    assert_true(s_wait_for(&seen, &seen.events, 3, 3000));
    redisFree(admin);

    int64_t t0 = kl_now_mono_ms();
    kl_events_destroy(&sub);
    assert_true(kl_now_mono_ms() - t0 < 200);
    kl_redis_destroy(&r);
}

static void
test_select_db(void **state)
{
    kl_status_t st;
    char host[128] = "127.0.0.1";
    int port = 6379;
    sscanf(s_url, "redis://%127[^:/]:%d", host, &port);
    char *url = kl_asprintf("redis://%s:%d/3", host, port);
    kl_redis_t *r = kl_redis_new(url, &st);
    free(url);
    redisContext *c = kl_redis_context(r, &st);
    assert_non_null(c);
    redisReply *rep = redisCommand(c, "CLIENT INFO");
    assert_non_null(rep);
    assert_non_null(strstr(rep->str, " db=3 "));
    freeReplyObject(rep);
    kl_redis_destroy(&r);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_parsing),
        cmocka_unit_test(test_disabled),
        cmocka_unit_test(test_unreachable),
        cmocka_unit_test(test_publish_subscribe),
        cmocka_unit_test(test_select_db),
    };
    return cmocka_run_group_tests(tests, s_group_setup, NULL);
}
