/*
 * kl_redis: a Redis connection for publishing events (and caches), and a
 * subscriber thread that delivers change events. Both fail softly: Redis
 * is never the only copy of anything.
 */
#include "kl_redis.h"

#include "kl_alloc.h"
#include "kl_rpc.h"

#include <hiredis/hiredis.h>

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* Connect and command timeout of the publishing connection. */
#define S_TIMEOUT_MS 500
/* Least time between two connection attempts. */
#define S_RECONNECT_MS 1000
/* How often the subscriber thread looks at its stop flag. */
#define S_POLL_MS 50
/* Subscriber backoff between failed attempts: doubles up to the max. */
#define S_BACKOFF_MIN_MS 50
#define S_BACKOFF_MAX_MS 1000
/* Largest event the subscriber unpacks. */
#define S_MAX_EVENT_BYTES 65536

/* Where Redis is and how to log in, parsed from the URL. */
typedef struct {
    char *host;     /* TCP host, or NULL for a unix socket */
    int port;       /* TCP port */
    char *path;     /* unix socket path, or NULL */
    char *user;     /* ACL user, or NULL */
    char *password; /* AUTH password, or NULL */
    int db;         /* SELECT db, 0 by default */
} s_url_t;

static void
s_url_free(s_url_t *u)
{
    free(u->host);
    free(u->path);
    free(u->user);
    free(u->password);
    memset(u, 0, sizeof *u);
}

static int
s_hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..len) into a new string; NULL if malformed. */
static char *
s_decode(const char *s, size_t len)
{
    char *out = kl_malloc(len + 1);
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            int hi = i + 2 < len ? s_hex(s[i + 1]) : -1;
            int lo = i + 2 < len ? s_hex(s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                free(out);
                return NULL;
            }
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
            continue;
        }
        out[o++] = s[i];
    }
    out[o] = '\0';
    return out;
}

/* Parses "redis://[[user]:password@]host[:port][/db]" or
 * "unix:///path". Messages never repeat the URL: it may hold a password. */
static int
s_url_parse(const char *url, s_url_t *u, kl_status_t *status)
{
    memset(u, 0, sizeof *u);
    u->port = 6379;
    if (strncmp(url, "unix://", 7) == 0) {
        const char *path = url + 7;
        if (path[0] != '/' || path[1] == '\0')
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "invalid redis URL: unix:// needs an "
                                 "absolute socket path");
        u->path = kl_strdup(path);
        return 0;
    }
    if (strncmp(url, "redis://", 8) != 0)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "invalid redis URL: want redis://host[:port][/db]"
                             " or unix:///path");
    const char *p = url + 8;
    const char *end = p + strcspn(p, "/?#");
    const char *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@')
            at = q;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon)
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "invalid redis URL: user info must be "
                                 "[user]:password");
        if (colon > p)
            u->user = s_decode(p, (size_t)(colon - p));
        u->password = s_decode(colon + 1, (size_t)(at - colon - 1));
        if ((colon > p && !u->user) || !u->password) {
            s_url_free(u);
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "invalid redis URL: bad percent-encoding");
        }
        p = at + 1;
    }
    const char *host_end;
    const char *port_at = NULL;
    if (*p == '[') {
        const char *close = memchr(p, ']', (size_t)(end - p));
        if (!close) {
            s_url_free(u);
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "invalid redis URL: unclosed [ in host");
        }
        u->host = kl_strndup(p + 1, (size_t)(close - p - 1));
        host_end = close + 1;
        if (host_end < end && *host_end == ':')
            port_at = host_end + 1;
        else if (host_end != end) {
            s_url_free(u);
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "invalid redis URL: bad host");
        }
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        host_end = colon ? colon : end;
        u->host = kl_strndup(p, (size_t)(host_end - p));
        if (colon)
            port_at = colon + 1;
    }
    if (!u->host[0]) {
        s_url_free(u);
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "invalid redis URL: missing host");
    }
    if (port_at) {
        long port = 0;
        const char *q = port_at;
        for (; q < end && *q >= '0' && *q <= '9' && port <= 65535; q++)
            port = port * 10 + (*q - '0');
        if (q != end || q == port_at || port < 1 || port > 65535) {
            s_url_free(u);
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "invalid redis URL: port must be 1..65535");
        }
        u->port = (int)port;
    }
    if (*end == '/') {
        const char *q = end + 1;
        long db = 0;
        for (; *q >= '0' && *q <= '9' && db <= 1000000; q++)
            db = db * 10 + (*q - '0');
        if (*q != '\0' || db > 1000000) {
            s_url_free(u);
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "invalid redis URL: database must be a "
                                 "number");
        }
        u->db = (int)db;
    } else if (*end != '\0') {
        s_url_free(u);
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "invalid redis URL: unexpected query or "
                             "fragment");
    }
    return 0;
}

static struct timeval
s_tv(int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

/* Copies a hiredis reply's error or status text into status. */
static int
s_reply_error(const redisReply *r, const char *what, kl_status_t *status)
{
    if (!r)
        return kl_status_set(status, KL_UNAVAILABLE, "redis %s failed", what);
    return kl_status_set(status, KL_UNAVAILABLE, "redis %s failed: %.*s", what,
                         (int)(r->len > 200 ? 200 : r->len),
                         r->str ? r->str : "");
}

/* --- kl_redis ---------------------------------------------------------- */

struct kl_redis {
    bool disabled;           /* empty URL: every call is UNAVAILABLE */
    s_url_t url;             /* where and how to connect */
    redisContext *ctx;       /* connection, or NULL until the next use */
    int64_t last_attempt_ms; /* monotonic time of the last failed attempt */
    bool attempted;          /* whether the last attempt failed */
    char last_error[128];    /* why the last attempt failed */
};

kl_redis_t *
kl_redis_new(const char *url, kl_status_t *status)
{
    kl_redis_t *self = kl_calloc(1, sizeof *self);
    if (!url || !*url) {
        self->disabled = true;
        return self;
    }
    if (s_url_parse(url, &self->url, status) < 0) {
        free(self);
        return NULL;
    }
    return self;
}

void
kl_redis_destroy(kl_redis_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kl_redis_t *self = *self_p;
    if (self->ctx)
        redisFree(self->ctx);
    s_url_free(&self->url);
    free(self);
    *self_p = NULL;
}

/* Sends AUTH and SELECT as the URL asks on a blocking context. */
static int
s_login(redisContext *ctx, const s_url_t *u, kl_status_t *status)
{
    redisReply *r;
    if (u->password) {
        if (u->user)
            r = redisCommand(ctx, "AUTH %s %s", u->user, u->password);
        else
            r = redisCommand(ctx, "AUTH %s", u->password);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            int rc = s_reply_error(r, "AUTH", status);
            if (r)
                freeReplyObject(r);
            return rc;
        }
        freeReplyObject(r);
    }
    if (u->db != 0) {
        r = redisCommand(ctx, "SELECT %d", u->db);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            int rc = s_reply_error(r, "SELECT", status);
            if (r)
                freeReplyObject(r);
            return rc;
        }
        freeReplyObject(r);
    }
    return 0;
}

static int
s_connect(kl_redis_t *self, kl_status_t *status)
{
    int64_t now = kl_now_mono_ms();
    /* After a failed attempt, wait before the next one so that a dead
     * Redis costs each caller nothing but this check. A connection that
     * worked and was then lost is made again at once. */
    if (self->attempted && now - self->last_attempt_ms < S_RECONNECT_MS)
        return kl_status_set(status, KL_UNAVAILABLE,
                             "redis unavailable: %s (next attempt within 1 s)",
                             self->last_error);
    self->attempted = true;
    self->last_attempt_ms = now;

    redisContext *ctx =
        self->url.path
            ? redisConnectUnixWithTimeout(self->url.path, s_tv(S_TIMEOUT_MS))
            : redisConnectWithTimeout(self->url.host, self->url.port,
                                      s_tv(S_TIMEOUT_MS));
    kl_status_t st;
    if (!ctx || ctx->err) {
        kl_status_set(&st, KL_UNAVAILABLE, "cannot connect: %s",
                      ctx ? ctx->errstr : "out of memory");
    } else if (redisSetTimeout(ctx, s_tv(S_TIMEOUT_MS)) != REDIS_OK) {
        kl_status_set(&st, KL_UNAVAILABLE, "redisSetTimeout() failed: %s",
                      ctx->errstr);
    } else if (s_login(ctx, &self->url, &st) == 0) {
        self->ctx = ctx;
        self->attempted = false;
        return 0;
    }
    if (ctx)
        redisFree(ctx);
    snprintf(self->last_error, sizeof self->last_error, "%.127s", st.message);
    return kl_status_set(status, KL_UNAVAILABLE, "redis unavailable: %s",
                         self->last_error);
}

/* Whether an idle connection has something to read: the server closed it
 * (timeout, CLIENT KILL, restart), since no reply is pending between our
 * commands. Writing to it would fail, or raise SIGPIPE once reset. */
static bool
s_closed_by_peer(const redisContext *ctx)
{
    struct pollfd pfd = {ctx->fd, POLLIN, 0};
    return poll(&pfd, 1, 0) != 0;
}

void *
kl_redis_context(kl_redis_t *self, kl_status_t *status)
{
    if (self->disabled) {
        kl_status_set(status, KL_UNAVAILABLE, "redis is disabled");
        return NULL;
    }
    if (self->ctx && (self->ctx->err || s_closed_by_peer(self->ctx))) {
        redisFree(self->ctx);
        self->ctx = NULL;
    }
    if (!self->ctx && s_connect(self, status) < 0)
        return NULL;
    return self->ctx;
}

int
kl_redis_publish_event(kl_redis_t *self, const char *channel,
                       const Kowloon__Events__ChangeEvent *event,
                       kl_status_t *status)
{
    redisContext *ctx = kl_redis_context(self, status);
    if (!ctx)
        return -KL_UNAVAILABLE;
    Kowloon__Events__ChangeEvent ev = *event;
    if (ev.at_unix_ms == 0)
        ev.at_unix_ms = kl_now_unix_ms();
    size_t len = kowloon__events__change_event__get_packed_size(&ev);
    uint8_t *buf = kl_malloc(len ? len : 1);
    kowloon__events__change_event__pack(&ev, buf);
    redisReply *r = redisCommand(ctx, "PUBLISH %s %b", channel, buf, len);
    free(buf);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        int rc;
        if (!r) {
            snprintf(self->last_error, sizeof self->last_error, "%.127s",
                     ctx->errstr);
            rc = kl_status_set(status, KL_UNAVAILABLE,
                               "redis PUBLISH failed: %s", ctx->errstr);
            /* The connection is in an unknown state: make a new one. */
            redisFree(self->ctx);
            self->ctx = NULL;
        } else {
            rc = s_reply_error(r, "PUBLISH", status);
            freeReplyObject(r);
        }
        return rc;
    }
    freeReplyObject(r);
    return 0;
}

/* --- kl_events --------------------------------------------------------- */

struct kl_events {
    s_url_t url;      /* where to subscribe */
    char *channel;    /* the channel, owned */
    kl_events_fn fn;  /* called on the thread for each event */
    void *user;       /* passed to fn */
    atomic_bool stop; /* set by destroy */
    pthread_t thread; /* the subscriber */
};

/* Sleeps ms in short slices; returns false when asked to stop. */
static bool
s_nap(kl_events_t *self, int ms)
{
    while (ms > 0 && !atomic_load(&self->stop)) {
        int slice = ms < S_POLL_MS ? ms : S_POLL_MS;
        struct timespec ts = {0, (long)slice * 1000000L};
        nanosleep(&ts, NULL);
        ms -= slice;
    }
    return !atomic_load(&self->stop);
}

/* Waits for events on the context's socket for at most ms, in slices that
 * look at the stop flag. Returns 1 ready, 0 timeout, -1 stop or error. */
static int
s_wait(kl_events_t *self, redisContext *ctx, short events, int ms)
{
    int64_t until = kl_now_mono_ms() + ms;
    for (;;) {
        if (atomic_load(&self->stop))
            return -1;
        int64_t left = until - kl_now_mono_ms();
        if (left <= 0)
            return 0;
        struct pollfd pfd = {ctx->fd, events, 0};
        int n = poll(&pfd, 1, left < S_POLL_MS ? (int)left : S_POLL_MS);
        if (n < 0 && errno != EINTR)
            return -1;
        if (n > 0)
            return (pfd.revents & (POLLERR | POLLNVAL)) &&
                           !(pfd.revents & events)
                       ? -1
                       : 1;
    }
}

/* Flushes what was appended to ctx and reads one reply, without ever
 * blocking longer than S_POLL_MS at a time. NULL on failure. */
static redisReply *
s_roundtrip(kl_events_t *self, redisContext *ctx)
{
    int done = 0;
    while (!done) {
        if (redisBufferWrite(ctx, &done) != REDIS_OK)
            return NULL;
        if (!done && s_wait(self, ctx, POLLOUT, S_TIMEOUT_MS) != 1)
            return NULL;
    }
    void *reply = NULL;
    for (;;) {
        if (redisGetReplyFromReader(ctx, &reply) != REDIS_OK)
            return NULL;
        if (reply)
            return reply;
        if (s_wait(self, ctx, POLLIN, S_TIMEOUT_MS) != 1)
            return NULL;
        if (redisBufferRead(ctx) != REDIS_OK)
            return NULL;
    }
}

/* Runs one command on the subscriber's connection; true if it did not
 * answer an error. */
static bool
s_sub_command(kl_events_t *self, redisContext *ctx, int argc, const char **argv)
{
    if (redisAppendCommandArgv(ctx, argc, argv, NULL) != REDIS_OK)
        return false;
    redisReply *r = s_roundtrip(self, ctx);
    bool ok = r && r->type != REDIS_REPLY_ERROR;
    if (r)
        freeReplyObject(r);
    return ok;
}

/* Connects without blocking past S_POLL_MS at a time, logs in and
 * subscribes. NULL on failure. */
static redisContext *
s_subscribe(kl_events_t *self)
{
    redisContext *ctx =
        self->url.path ? redisConnectUnixNonBlock(self->url.path)
                       : redisConnectNonBlock(self->url.host, self->url.port);
    if (!ctx)
        return NULL;
    if (ctx->err)
        goto fail;
    if (s_wait(self, ctx, POLLOUT, S_TIMEOUT_MS) != 1)
        goto fail;
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (getsockopt(ctx->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0 || soerr)
        goto fail;
    if (self->url.password) {
        const char *argv[3] = {
            "AUTH", self->url.user ? self->url.user : self->url.password,
            self->url.password};
        if (!s_sub_command(self, ctx, self->url.user ? 3 : 2, argv))
            goto fail;
    }
    const char *sub[2] = {"SUBSCRIBE", self->channel};
    if (!s_sub_command(self, ctx, 2, sub))
        goto fail;
    return ctx;
fail:
    redisFree(ctx);
    return NULL;
}

/* Handles one pushed reply: ["message", channel, payload]. */
static void
s_deliver(kl_events_t *self, const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3)
        return;
    const redisReply *kind = r->element[0], *payload = r->element[2];
    if (kind->type != REDIS_REPLY_STRING || strcmp(kind->str, "message") != 0)
        return;
    if (payload->type != REDIS_REPLY_STRING || payload->len > S_MAX_EVENT_BYTES)
        return;
    Kowloon__Events__ChangeEvent *ev = kowloon__events__change_event__unpack(
        NULL, payload->len, (const uint8_t *)payload->str);
    if (!ev)
        return; /* not ours, or damaged: a hint lost, bounded by TTLs */
    self->fn(ev, self->user);
    kowloon__events__change_event__free_unpacked(ev, NULL);
}

static void *
s_events_thread(void *arg)
{
    kl_events_t *self = arg;
    int backoff = S_BACKOFF_MIN_MS;
    while (!atomic_load(&self->stop)) {
        redisContext *ctx = s_subscribe(self);
        if (!ctx) {
            if (!s_nap(self, backoff))
                break;
            backoff =
                backoff * 2 > S_BACKOFF_MAX_MS ? S_BACKOFF_MAX_MS : backoff * 2;
            continue;
        }
        backoff = S_BACKOFF_MIN_MS;
        /* Anything published while we were not subscribed is lost. */
        self->fn(NULL, self->user);
        for (;;) {
            void *reply = NULL;
            if (redisGetReplyFromReader(ctx, &reply) != REDIS_OK)
                break;
            if (reply) {
                s_deliver(self, reply);
                freeReplyObject(reply);
                continue;
            }
            int w = s_wait(self, ctx, POLLIN, INT_MAX);
            if (w != 1 || redisBufferRead(ctx) != REDIS_OK)
                break;
        }
        redisFree(ctx);
        /* A lost subscription is retried at once, then with backoff. */
        if (!s_nap(self, backoff))
            break;
        backoff =
            backoff * 2 > S_BACKOFF_MAX_MS ? S_BACKOFF_MAX_MS : backoff * 2;
    }
    return NULL;
}

kl_events_t *
kl_events_subscribe(const char *url, const char *channel, kl_events_fn fn,
                    void *user, kl_status_t *status)
{
    if (!url || !*url) {
        kl_status_set(status, KL_UNAVAILABLE, "redis is disabled");
        return NULL;
    }
    if (!channel || !*channel || !fn) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "kl_events_subscribe needs a channel and a callback");
        return NULL;
    }
    kl_events_t *self = kl_calloc(1, sizeof *self);
    if (s_url_parse(url, &self->url, status) < 0) {
        free(self);
        return NULL;
    }
    self->channel = kl_strdup(channel);
    self->fn = fn;
    self->user = user;
    atomic_init(&self->stop, false);
    int rc = pthread_create(&self->thread, NULL, s_events_thread, self);
    if (rc != 0) {
        kl_status_set(status, KL_INTERNAL, "pthread_create() failed: %s",
                      strerror(rc));
        s_url_free(&self->url);
        free(self->channel);
        free(self);
        return NULL;
    }
    return self;
}

void
kl_events_destroy(kl_events_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kl_events_t *self = *self_p;
    atomic_store(&self->stop, true);
    pthread_join(self->thread, NULL);
    s_url_free(&self->url);
    free(self->channel);
    free(self);
    *self_p = NULL;
}
