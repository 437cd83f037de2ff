/*
 * gw_upstream: a civetweb server whose handler calls gw_upstream_forward,
 * in front of a tiny HTTP/1.1 upstream written here (a thread per
 * connection on 127.0.0.1:0), driven by a libcurl client.
 */
#include "gw_upstream.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define S_BIG (5 * 1024 * 1024)
#define S_MAX_CONNS 64

/* The byte at offset i of every test body. */
static unsigned char
s_pat(size_t i)
{
    return (unsigned char)((i * 7 + 3) & 0xff);
}

static int64_t
s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the upstream ----------------------------------------------------- */

typedef struct {
    int lfd;
    int port;
    pthread_t accept_thread;
    atomic_bool stop;
    atomic_int accepts;
    pthread_mutex_t lock; /* guards the fields below */
    pthread_t conns[S_MAX_CONNS];
    int n_conns;
    char last_head[16384];     /* the last request's head */
    atomic_long body_progress; /* body bytes of the current request read */
    atomic_bool release;       /* /drip may send the rest */
    atomic_bool released;      /* /drip saw release before its deadline */
    long long last_body;       /* its body length, -1 on a pattern mismatch */
} s_up_t;

typedef struct {
    s_up_t *up;
    int fd;
    char buf[65536];
    size_t len, off;
} s_conn_t;

/* Reads more into c->buf; 0 on EOF or stop. */
static ssize_t
s_fill(s_conn_t *c)
{
    if (c->off == c->len)
        c->off = c->len = 0;
    while (!atomic_load(&c->up->stop)) {
        struct pollfd p = {c->fd, POLLIN, 0};
        int r = poll(&p, 1, 50);
        if (r < 0)
            return -1;
        if (r == 0)
            continue;
        ssize_t n = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
        if (n > 0)
            c->len += (size_t)n;
        return n;
    }
    return 0;
}

static bool
s_send_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w <= 0)
            return false;
        s += w;
        n -= (size_t)w;
    }
    return true;
}

/* Reads exactly n body bytes, checking the pattern from *pos. */
static bool
s_read_body(s_conn_t *c, size_t n, size_t *pos, bool *ok)
{
    while (n) {
        if (c->off == c->len && s_fill(c) <= 0)
            return false;
        size_t k = c->len - c->off < n ? c->len - c->off : n;
        for (size_t i = 0; i < k; i++)
            if ((unsigned char)c->buf[c->off + i] != s_pat(*pos + i))
                *ok = false;
        *pos += k;
        c->off += k;
        n -= k;
        atomic_store(&c->up->body_progress, (long)*pos);
    }
    return true;
}

/* Reads a CRLF-terminated line into out. */
static bool
s_read_line(s_conn_t *c, char *out, size_t cap)
{
    size_t n = 0;
    for (;;) {
        if (c->off == c->len && s_fill(c) <= 0)
            return false;
        char ch = c->buf[c->off++];
        if (ch == '\n') {
            if (n && out[n - 1] == '\r')
                n--;
            out[n] = '\0';
            return true;
        }
        if (n + 1 < cap)
            out[n++] = ch;
    }
}

static const char *
s_header(const char *head, const char *name, char *out, size_t cap)
{
    size_t nlen = strlen(name);
    for (const char *p = strstr(head, "\r\n"); p && p[2];
         p = strstr(p + 2, "\r\n")) {
        if (strncasecmp(p + 2, name, nlen) == 0 && p[2 + nlen] == ':') {
            const char *v = p + 3 + nlen;
            v += strspn(v, " ");
            size_t l = strcspn(v, "\r");
            snprintf(out, cap, "%.*s", (int)l, v);
            return out;
        }
    }
    return NULL;
}

/* Sends n pattern bytes, chunked or plain. */
static bool
s_send_pattern(int fd, size_t n, bool chunked)
{
    char block[16384];
    for (size_t pos = 0; pos < n;) {
        size_t k = n - pos < sizeof block ? n - pos : sizeof block;
        for (size_t i = 0; i < k; i++)
            block[i] = (char)s_pat(pos + i);
        if (chunked) {
            char hdr[32];
            int h = snprintf(hdr, sizeof hdr, "%zx\r\n", k);
            if (!s_send_all(fd, hdr, (size_t)h))
                return false;
        }
        if (!s_send_all(fd, block, k) ||
            (chunked && !s_send_all(fd, "\r\n", 2)))
            return false;
        pos += k;
    }
    return !chunked || s_send_all(fd, "0\r\n\r\n", 5);
}

static void
s_respond(int fd, const char *status_and_headers, const char *body)
{
    char buf[4096];
    int n = snprintf(buf, sizeof buf,
                     "HTTP/1.1 %s\r\nContent-Length: %zu\r\n\r\n%s",
                     status_and_headers, strlen(body), body);
    s_send_all(fd, buf, (size_t)n);
}

static void *
s_conn_main(void *arg)
{
    s_conn_t *c = arg;
    char head[16384], line[8192], val[64];

    for (;;) {
        /* The head. */
        size_t hl = 0;
        head[0] = '\0';
        for (;;) {
            if (!s_read_line(c, line, sizeof line))
                goto out;
            if (!line[0])
                break;
            hl += (size_t)snprintf(head + hl, sizeof head - hl, "%s\r\n", line);
            if (hl >= sizeof head)
                goto out;
        }
        /* The body, checked against the pattern. */
        size_t pos = 0;
        bool ok = true;
        if (s_header(head, "Content-Length", val, sizeof val)) {
            if (!s_read_body(c, strtoull(val, NULL, 10), &pos, &ok))
                goto out;
        } else if (s_header(head, "Transfer-Encoding", val, sizeof val)) {
            for (;;) {
                if (!s_read_line(c, line, sizeof line))
                    goto out;
                size_t k = strtoull(line, NULL, 16);
                if (k == 0) {
                    if (!s_read_line(c, line, sizeof line))
                        goto out;
                    break;
                }
                if (!s_read_body(c, k, &pos, &ok) ||
                    !s_read_line(c, line, sizeof line))
                    goto out;
            }
        }
        pthread_mutex_lock(&c->up->lock);
        snprintf(c->up->last_head, sizeof c->up->last_head, "%s", head);
        c->up->last_body = ok ? (long long)pos : -1;
        pthread_mutex_unlock(&c->up->lock);

        char path[1024];
        sscanf(head, "%*s %1023s", path);
        if (strncmp(path, "/echo", 5) == 0) {
            s_respond(c->fd, "200 OK\r\nContent-Type: text/plain", "ok");
        } else if (strcmp(path, "/big") == 0 || strcmp(path, "/both") == 0) {
            char hdr[128];
            int n = snprintf(hdr, sizeof hdr,
                             "HTTP/1.1 200 OK\r\nX-Body-Ok: %d\r\n"
                             "Transfer-Encoding: chunked\r\n\r\n",
                             ok && pos == (strcmp(path, "/both") ? 0 : S_BIG));
            if (!s_send_all(c->fd, hdr, (size_t)n) ||
                !s_send_pattern(c->fd, S_BIG, true))
                goto out;
        } else if (strcmp(path, "/sized") == 0) {
            char hdr[128];
            int n = snprintf(hdr, sizeof hdr,
                             "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n",
                             S_BIG);
            if (!s_send_all(c->fd, hdr, (size_t)n) ||
                !s_send_pattern(c->fd, S_BIG, false))
                goto out;
        } else if (strcmp(path, "/hop") == 0) {
            s_respond(c->fd,
                      "201 Created\r\nConnection: keep-alive, X-Secret\r\n"
                      "X-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
                      "Proxy-Authenticate: Basic\r\nUpgrade: h2c\r\n"
                      "X-Request-Id: from-upstream\r\nX-Keep: yes",
                      "created");
        } else if (strcmp(path, "/partial") == 0) {
            static const char r[] = "HTTP/1.1 200 OK\r\nContent-Length: "
                                    "100\r\n\r\n0123456789";
            s_send_all(c->fd, r, sizeof r - 1);
            goto out;
        } else if (strcmp(path, "/drip") == 0 || strcmp(path, "/stall") == 0) {
            /* One piece of the body, then (/drip) the rest once the client
             * has seen the first, or (/stall) nothing more. */
            static const char r[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: "
                                    "chunked\r\n\r\n5\r\nfirst\r\n";
            if (!s_send_all(c->fd, r, sizeof r - 1))
                goto out;
            if (strcmp(path, "/stall") == 0) {
                while (s_fill(c) > 0)
                    ;
                goto out;
            }
            int64_t deadline = s_now_ms() + 3000;
            while (!atomic_load(&c->up->release) && s_now_ms() < deadline)
                usleep(1000);
            atomic_store(&c->up->released, atomic_load(&c->up->release));
            static const char rest[] = "6\r\nsecond\r\n0\r\n\r\n";
            if (!s_send_all(c->fd, rest, sizeof rest - 1))
                goto out;
        } else if (strcmp(path, "/close") == 0) {
            goto out;
        } else if (strcmp(path, "/hang") == 0) {
            /* Never answer; wait for the gateway to give up. */
            while (s_fill(c) > 0)
                ;
            goto out;
        } else {
            s_respond(c->fd, "404 Not Found", "no");
        }
    }
out:
    close(c->fd);
    free(c);
    return NULL;
}

static void *
s_accept_main(void *arg)
{
    s_up_t *up = arg;
    while (!atomic_load(&up->stop)) {
        struct pollfd p = {up->lfd, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0)
            continue;
        int fd = accept(up->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        atomic_fetch_add(&up->accepts, 1);
        s_conn_t *c = calloc(1, sizeof *c);
        c->up = up;
        c->fd = fd;
        pthread_mutex_lock(&up->lock);
        if (up->n_conns < S_MAX_CONNS &&
            pthread_create(&up->conns[up->n_conns], NULL, s_conn_main, c) == 0)
            up->n_conns++;
        else {
            close(fd);
            free(c);
        }
        pthread_mutex_unlock(&up->lock);
    }
    return NULL;
}

/* A listening socket on 127.0.0.1:0; its port in *port. */
static int
s_listen(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof a;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
        listen(fd, 64) < 0 || getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        fail_msg("cannot listen on 127.0.0.1:0");
    *port = ntohs(a.sin_port);
    return fd;
}

static void
s_up_start(s_up_t *up)
{
    memset(up, 0, sizeof *up);
    pthread_mutex_init(&up->lock, NULL);
    up->lfd = s_listen(&up->port);
    assert_int_equal(
        pthread_create(&up->accept_thread, NULL, s_accept_main, up), 0);
}

static void
s_up_stop(s_up_t *up)
{
    atomic_store(&up->stop, true);
    pthread_join(up->accept_thread, NULL);
    for (int i = 0; i < up->n_conns; i++)
        pthread_join(up->conns[i], NULL);
    close(up->lfd);
    pthread_mutex_destroy(&up->lock);
}

/* ---- the gateway under test ------------------------------------------- */

typedef struct {
    s_up_t up;
    gw_upstream_t *fwd;
    struct mg_context *mg;
    int port;          /* civetweb's */
    char upstream[64]; /* "http://127.0.0.1:<up.port>" */
    int timeout_ms;
    atomic_int last_status; /* what gw_upstream_forward returned */
    atomic_int forwards;    /* gw_upstream_forward calls returned */
    atomic_int in_flight;   /* gw_upstream_forward calls running */
} s_fix_t;

static int
s_begin_request(struct mg_connection *conn)
{
    s_fix_t *f = mg_get_user_data(mg_get_context(conn));
    const struct mg_request_info *ri = mg_get_request_info(conn);
    gw_upstream_req_t req = {
        .upstream = f->upstream,
        .timeout_ms = f->timeout_ms,
        .path = ri->local_uri,
        .query = ri->query_string,
        .request_id = "rid-123",
        .tenant_id = "t-1",
        .subdomain = "acme",
        .plan = "pro",
    };
    atomic_fetch_add(&f->in_flight, 1);
    int status = gw_upstream_forward(f->fwd, conn, &req);
    atomic_store(&f->last_status, status);
    atomic_fetch_add(&f->forwards, 1);
    atomic_fetch_sub(&f->in_flight, 1);
    return status;
}

/* One civetweb server for the whole run (stopping one takes civetweb
 * about 2 s); a fresh upstream and gw_upstream_t for every test. */
static s_fix_t s_fix;

static int
s_group_setup(void **state)
{
    const char *options[] = {"listening_ports",
                             "127.0.0.1:0",
                             "num_threads",
                             "4",
                             "enable_keep_alive",
                             "yes",
                             "keep_alive_timeout_ms",
                             "5000",
                             NULL};
    struct mg_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.begin_request = s_begin_request;
    s_fix.mg = mg_start(&cb, &s_fix, options);
    if (!s_fix.mg)
        return -1;
    struct mg_server_port ports[1];
    if (mg_get_server_ports(s_fix.mg, 1, ports) != 1)
        return -1;
    s_fix.port = ports[0].port;
    return 0;
}

static int
s_group_teardown(void **state)
{
    mg_stop(s_fix.mg);
    return 0;
}

/* Waits until no forward runs (a client can see its whole answer before
 * the forward has returned). */
static void
s_quiesce(s_fix_t *f)
{
    int64_t deadline = s_now_ms() + 10000;
    while (atomic_load(&f->in_flight) > 0 && s_now_ms() < deadline)
        usleep(1000);
    assert_int_equal(atomic_load(&f->in_flight), 0);
}

static int
s_setup(void **state)
{
    s_fix_t *f = &s_fix;
    s_quiesce(f);
    s_up_start(&f->up);
    snprintf(f->upstream, sizeof f->upstream, "http://127.0.0.1:%d",
             f->up.port);
    f->timeout_ms = 5000;
    atomic_store(&f->forwards, 0);
    atomic_store(&f->last_status, 0);
    f->fwd = gw_upstream_new(8);
    assert_non_null(f->fwd);
    *state = f;
    return 0;
}

static int
s_teardown(void **state)
{
    s_fix_t *f = *state;
    s_quiesce(f);
    gw_upstream_destroy(&f->fwd);
    assert_null(f->fwd);
    s_up_stop(&f->up);
    return 0;
}

/* ---- the client ------------------------------------------------------- */

typedef struct {
    long status;
    CURLcode rc;
    char head[8192]; /* response header lines */
    size_t head_len;
    char body[4096]; /* first bytes of the body */
    size_t body_len; /* all of it */
    bool body_ok;    /* the body is the pattern */
    /* upload */
    size_t up_len, up_pos;
    /* streaming checks */
    s_up_t *up;            /* set: the upload waits for the upstream */
    bool up_saw_partial;   /* the upstream had part of the body before the
                              client had sent it all */
    atomic_bool *on_first; /* set when "first" arrives */
    bool http10;           /* speak HTTP/1.0 */
} s_resp_t;

static size_t
s_cl_head(char *d, size_t s, size_t n, void *u)
{
    s_resp_t *r = u;
    size_t k = s * n;
    if (r->head_len + k < sizeof r->head) {
        memcpy(r->head + r->head_len, d, k);
        r->head_len += k;
        r->head[r->head_len] = '\0';
    }
    return k;
}

static size_t
s_cl_body(char *d, size_t s, size_t n, void *u)
{
    s_resp_t *r = u;
    size_t k = s * n;
    for (size_t i = 0; i < k; i++) {
        if (r->body_len + i < sizeof r->body - 1)
            r->body[r->body_len + i] = d[i];
        if ((unsigned char)d[i] != s_pat(r->body_len + i))
            r->body_ok = false;
    }
    r->body_len += k;
    r->body[r->body_len < sizeof r->body ? r->body_len : sizeof r->body - 1] =
        '\0';
    if (r->on_first && strstr(r->body, "first"))
        atomic_store(r->on_first, true);
    return k;
}

static size_t
s_cl_read(char *d, size_t s, size_t n, void *u)
{
    s_resp_t *r = u;
    size_t k = s * n;
    if (k > r->up_len - r->up_pos)
        k = r->up_len - r->up_pos;
    if (r->up && r->up_pos >= 256 * 1024 && !r->up_saw_partial) {
        /* Half way: the upstream must already be reading (a gateway that
         * buffered the whole body would not have sent it any yet). */
        int64_t deadline = s_now_ms() + 3000;
        while (atomic_load(&r->up->body_progress) < 64 * 1024 &&
               s_now_ms() < deadline)
            usleep(1000);
        r->up_saw_partial = atomic_load(&r->up->body_progress) >= 64 * 1024;
        if (!r->up_saw_partial)
            return CURL_READFUNC_ABORT;
    }
    for (size_t i = 0; i < k; i++)
        d[i] = (char)s_pat(r->up_pos + i);
    r->up_pos += k;
    return k;
}

/* One request; easy may be reused (client keep-alive). upload: body size
 * (0 none); chunked: send it without a length. */
static void
s_request(CURL *easy, s_fix_t *f, const char *method, const char *target,
          struct curl_slist *headers, size_t upload, bool chunked, s_resp_t *r)
{
    char url[1024];
    s_up_t *up = r->up;
    atomic_bool *on_first = r->on_first;
    bool http10 = r->http10;
    memset(r, 0, sizeof *r);
    r->up = up;
    r->on_first = on_first;
    r->http10 = http10;
    r->body_ok = true;
    r->up_len = upload;
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", f->port, target);
    curl_easy_reset(easy);
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_PROXY, "");
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, s_cl_head);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, s_cl_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, r);
    struct curl_slist *h = NULL;
    for (struct curl_slist *p = headers; p; p = p->next)
        h = curl_slist_append(h, p->data);
    h = curl_slist_append(h, "Expect:");
    if (upload) {
        curl_easy_setopt(easy, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(easy, CURLOPT_READFUNCTION, s_cl_read);
        curl_easy_setopt(easy, CURLOPT_READDATA, r);
        if (!chunked)
            curl_easy_setopt(easy, CURLOPT_INFILESIZE_LARGE,
                             (curl_off_t)upload);
        else
            h = curl_slist_append(h, "Transfer-Encoding: chunked");
    }
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
    if (r->http10)
        curl_easy_setopt(easy, CURLOPT_HTTP_VERSION,
                         (long)CURL_HTTP_VERSION_1_0);
    r->rc = curl_easy_perform(easy);
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(h);
}

static int
s_count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strcasestr(hay, needle); p;
         p = strcasestr(p + 1, needle))
        n++;
    return n;
}

static void
s_last_head(s_fix_t *f, char *out, size_t cap, long long *body)
{
    pthread_mutex_lock(&f->up.lock);
    snprintf(out, cap, "%s", f->up.last_head);
    if (body)
        *body = f->up.last_body;
    pthread_mutex_unlock(&f->up.lock);
}

/* The status the n-th forward returned (the client may see the answer
 * before the forward returns). */
static int
s_forward_status(s_fix_t *f, int n)
{
    while (atomic_load(&f->forwards) < n)
        usleep(1000);
    return atomic_load(&f->last_status);
}

/* ---- tests ------------------------------------------------------------ */

static void
test_headers(void **state)
{
    s_fix_t *f = *state;
    CURL *easy = curl_easy_init();
    struct curl_slist *h = NULL;
    h = curl_slist_append(h, "X-Tenant-Id: evil");
    h = curl_slist_append(h, "x-tenant-plan: enterprise");
    h = curl_slist_append(h, "X-TENANT-Subdomain: other");
    h = curl_slist_append(h, "X-Tenant-Whatever: spoof");
    h = curl_slist_append(h, "Authorization: Bearer kl_secret_key");
    h = curl_slist_append(h, "X-Request-Id: client-rid");
    h = curl_slist_append(h, "X-Forwarded-For: 10.1.2.3");
    h = curl_slist_append(h, "X-Forwarded-Host: evil.example");
    h = curl_slist_append(h, "Connection: keep-alive, X-Drop-Me");
    h = curl_slist_append(h, "X-Drop-Me: 1");
    h = curl_slist_append(h, "Proxy-Authorization: Basic eA==");
    h = curl_slist_append(h, "Keep-Alive: timeout=5");
    h = curl_slist_append(h, "TE: trailers");
    h = curl_slist_append(h, "Upgrade: websocket");
    h = curl_slist_append(h, "X-Custom: kept");
    h = curl_slist_append(h, "Cookie: session=abc");
    h = curl_slist_append(h, "Host: acme.example.test");
    h = curl_slist_append(h, "Accept:"); /* curl's own, off */
    s_resp_t r = {0};
    s_request(easy, f, "GET", "/echo/a%20b/caf%C3%A9?x=1&y=%2F&z", h, 0, false,
              &r);
    curl_slist_free_all(h);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok");

    char head[16384];
    s_last_head(f, head, sizeof head, NULL);
    /* Path re-encoded, query as sent. */
    assert_true(strncmp(head,
                        "GET /echo/a%20b/caf%C3%A9?x=1&y=%2F&z HTTP/1.1\r\n",
                        48) == 0);
    char want[128];
    snprintf(want, sizeof want, "\r\nHost: 127.0.0.1:%d\r\n", f->up.port);
    assert_non_null(strstr(head, want));
    /* The gateway's tenant headers, and no other X-Tenant-* at all. */
    assert_non_null(strstr(head, "\r\nX-Tenant-Id: t-1\r\n"));
    assert_non_null(strstr(head, "\r\nX-Tenant-Subdomain: acme\r\n"));
    assert_non_null(strstr(head, "\r\nX-Tenant-Plan: pro\r\n"));
    assert_int_equal(s_count(head, "\nx-tenant-"), 3);
    assert_null(strstr(head, "evil"));
    assert_null(strstr(head, "enterprise"));
    assert_null(strstr(head, "spoof"));
    /* The API key stays at the edge. */
    assert_int_equal(s_count(head, "authorization"), 0);
    assert_null(strstr(head, "kl_secret_key"));
    /* Our request id, once. */
    assert_non_null(strstr(head, "\r\nX-Request-Id: rid-123\r\n"));
    assert_int_equal(s_count(head, "x-request-id"), 1);
    assert_non_null(
        strstr(head, "\r\nX-Forwarded-For: 10.1.2.3, 127.0.0.1\r\n"));
    assert_non_null(
        strstr(head, "\r\nX-Forwarded-Host: acme.example.test\r\n"));
    /* Hop-by-hop ones gone, end-to-end ones kept. */
    assert_int_equal(s_count(head, "x-drop-me"), 0);
    assert_int_equal(s_count(head, "proxy-"), 0);
    assert_int_equal(s_count(head, "keep-alive"), 0);
    assert_int_equal(s_count(head, "\nte:"), 0);
    assert_int_equal(s_count(head, "upgrade"), 0);
    assert_int_equal(s_count(head, "expect"), 0);
    assert_non_null(strstr(head, "\r\nX-Custom: kept\r\n"));
    assert_non_null(strstr(head, "\r\nCookie: session=abc\r\n"));
    /* No Accept the client did not send. */
    assert_int_equal(s_count(head, "\naccept:"), 0);
    curl_easy_cleanup(easy);
}

static void
test_response_headers(void **state)
{
    s_fix_t *f = *state;
    CURL *easy = curl_easy_init();
    s_resp_t r = {0};
    s_request(easy, f, "GET", "/hop", NULL, 0, false, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 201);
    assert_string_equal(r.body, "created");
    assert_non_null(strstr(r.head, "\r\nX-Keep: yes\r\n"));
    assert_non_null(strstr(r.head, "\r\nContent-Length: 7\r\n"));
    assert_int_equal(s_count(r.head, "x-secret"), 0);
    assert_int_equal(s_count(r.head, "keep-alive"), 0);
    assert_int_equal(s_count(r.head, "proxy-"), 0);
    assert_int_equal(s_count(r.head, "upgrade"), 0);
    assert_int_equal(s_count(r.head, "x-request-id"), 1);
    assert_non_null(strstr(r.head, "\r\nX-Request-Id: rid-123\r\n"));
    assert_int_equal(s_forward_status(f, 1), 201);

    /* HEAD: the headers, no body. */
    s_request(easy, f, "HEAD", "/echo", NULL, 0, false, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    char head[16384];
    s_last_head(f, head, sizeof head, NULL);
    assert_true(strncmp(head, "HEAD /echo HTTP/1.1\r\n", 21) == 0);
    curl_easy_cleanup(easy);
}

static void
test_big_bodies(void **state)
{
    s_fix_t *f = *state;
    CURL *easy = curl_easy_init();
    s_resp_t r = {0};
    long long body;
    char head[16384];

    /* 5 MB up with a length, 5 MB down chunked, in one request. */
    s_request(easy, f, "POST", "/both", NULL, S_BIG, false, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    s_last_head(f, head, sizeof head, &body);
    assert_int_equal(body, S_BIG);
    assert_non_null(strstr(head, "\r\nContent-Length: 5242880\r\n"));
    assert_non_null(strstr(r.head, "X-Body-Ok: 1\r\n"));
    assert_non_null(strstr(r.head, "Transfer-Encoding: chunked\r\n"));
    assert_int_equal(r.body_len, S_BIG);
    assert_true(r.body_ok);

    /* A chunked upload stays chunked upstream. */
    s_request(easy, f, "PUT", "/echo", NULL, 1000003, true, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    s_last_head(f, head, sizeof head, &body);
    assert_int_equal(body, 1000003);
    assert_true(strncmp(head, "PUT /echo HTTP/1.1\r\n", 20) == 0);
    assert_non_null(strcasestr(head, "\nTransfer-Encoding: chunked\r\n"));

    /* A length from upstream is passed on, and the body as it is. */
    s_request(easy, f, "GET", "/sized", NULL, 0, false, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_non_null(strstr(r.head, "\r\nContent-Length: 5242880\r\n"));
    assert_null(strcasestr(r.head, "Transfer-Encoding"));
    assert_int_equal(r.body_len, S_BIG);
    assert_true(r.body_ok);

    /* An empty POST says so. */
    struct curl_slist *h = curl_slist_append(NULL, "Content-Length: 0");
    s_request(easy, f, "POST", "/echo", h, 0, false, &r);
    curl_slist_free_all(h);
    assert_int_equal(r.status, 200);
    s_last_head(f, head, sizeof head, &body);
    assert_int_equal(body, 0);
    assert_non_null(strstr(head, "\r\nContent-Length: 0\r\n"));
    curl_easy_cleanup(easy);
}

static void
test_keep_alive(void **state)
{
    s_fix_t *f = *state;
    CURL *easy = curl_easy_init();
    s_resp_t r = {0};
    for (int i = 0; i < 20; i++) {
        s_request(easy, f, i % 2 ? "POST" : "GET", "/echo", NULL,
                  i % 2 ? 1000 : 0, false, &r);
        assert_int_equal(r.rc, CURLE_OK);
        assert_int_equal(r.status, 200);
    }
    assert_int_equal(atomic_load(&f->up.accepts), 1);
    assert_int_equal(gw_upstream_connects(f->fwd), 1);

    /* A fresh client connection each time (so another civetweb thread):
     * still one upstream connection, once the last forward has returned
     * its handle to the pool (the client can be faster than that). */
    for (int i = 0; i < 5; i++) {
        while (atomic_load(&f->forwards) < 20 + i)
            usleep(1000);
        CURL *e = curl_easy_init();
        s_request(e, f, "GET", "/echo", NULL, 0, false, &r);
        assert_int_equal(r.status, 200);
        curl_easy_cleanup(e);
    }
    assert_int_equal(atomic_load(&f->up.accepts), 1);
    curl_easy_cleanup(easy);
}

static void
test_unreachable_502(void **state)
{
    s_fix_t *f = *state;
    int port, fd = s_listen(&port);
    close(fd); /* nothing listens there now */
    snprintf(f->upstream, sizeof f->upstream, "http://127.0.0.1:%d", port);
    CURL *easy = curl_easy_init();
    s_resp_t r = {0};
    s_request(easy, f, "GET", "/echo", NULL, 0, false, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 502);
    assert_string_equal(
        r.body, "{\"error\":{\"code\":\"UNAVAILABLE\",\"message\":\"upstream "
                "unreachable\"}}");
    assert_non_null(strstr(r.head, "\r\nX-Request-Id: rid-123\r\n"));

    /* With a body the client sent: the same, and the client may retry. */
    s_request(easy, f, "POST", "/echo", NULL, 10000, false, &r);
    assert_int_equal(r.status, 502);

    /* A name that does not resolve is unreachable too. */
    snprintf(f->upstream, sizeof f->upstream, "http://no-such-host.invalid:80");
    s_request(easy, f, "GET", "/echo", NULL, 0, false, &r);
    assert_int_equal(r.status, 502);
    assert_non_null(strstr(r.body, "upstream unreachable"));
    curl_easy_cleanup(easy);
}

static void
test_upstream_fails(void **state)
{
    s_fix_t *f = *state;
    CURL *easy = curl_easy_init();
    s_resp_t r = {0};
    /* Closed before answering: 502. */
    s_request(easy, f, "GET", "/close", NULL, 0, false, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 502);
    assert_string_equal(
        r.body, "{\"error\":{\"code\":\"UNAVAILABLE\",\"message\":\"upstream "
                "failed\"}}");
    /* Closed halfway through the body: the client connection is closed,
     * so the client sees a short body, never a complete one. */
    s_request(easy, f, "GET", "/partial", NULL, 0, false, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.rc, CURLE_PARTIAL_FILE);
    assert_int_equal(r.body_len, 10);
    /* And the gateway is fine after. */
    s_request(easy, f, "GET", "/echo", NULL, 0, false, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    curl_easy_cleanup(easy);
}

static void
test_timeout_504(void **state)
{
    s_fix_t *f = *state;
    f->timeout_ms = 300;
    CURL *easy = curl_easy_init();
    s_resp_t r = {0};
    int64_t t0 = s_now_ms();
    s_request(easy, f, "GET", "/hang", NULL, 0, false, &r);
    int64_t took = s_now_ms() - t0;
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 504);
    assert_string_equal(r.body, "{\"error\":{\"code\":\"DEADLINE_EXCEEDED\","
                                "\"message\":\"upstream timed out\"}}");
    assert_true(took >= 300);
    assert_true(took < 2000);
    assert_int_equal(s_forward_status(f, 1), 504);
    /* The next request still works (a new upstream connection). */
    f->timeout_ms = 5000;
    s_request(easy, f, "GET", "/echo", NULL, 0, false, &r);
    assert_int_equal(r.status, 200);
    curl_easy_cleanup(easy);
}

static void
test_prefix(void **state)
{
    s_fix_t *f = *state;
    snprintf(f->upstream, sizeof f->upstream, "http://127.0.0.1:%d/echo/v2",
             f->up.port);
    CURL *easy = curl_easy_init();
    s_resp_t r = {0};
    s_request(easy, f, "DELETE", "/app/x", NULL, 0, false, &r);
    assert_int_equal(r.status, 200);
    char head[16384];
    s_last_head(f, head, sizeof head, NULL);
    assert_true(strncmp(head, "DELETE /echo/v2/app/x HTTP/1.1\r\n", 32) == 0);
    curl_easy_cleanup(easy);
}

static void
test_streaming(void **state)
{
    s_fix_t *f = *state;
    CURL *easy = curl_easy_init();
    s_resp_t r = {0};

    /* Down: the client gets the first piece while the upstream is still
     * waiting to send the rest. */
    r.on_first = &f->up.release;
    s_request(easy, f, "GET", "/drip", NULL, 0, false, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_string_equal(r.body, "firstsecond");
    assert_true(atomic_load(&f->up.released));

    /* Up: the upstream reads the body while the client is still sending. */
    memset(&r, 0, sizeof r);
    r.up = &f->up;
    s_request(easy, f, "POST", "/echo", NULL, 2 * 1024 * 1024, false, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_true(r.up_saw_partial);
    long long body;
    char head[16384];
    s_last_head(f, head, sizeof head, &body);
    assert_int_equal(body, 2 * 1024 * 1024);
    curl_easy_cleanup(easy);
}

static void
test_stall_after_answer_started(void **state)
{
    s_fix_t *f = *state;
    f->timeout_ms = 300;
    CURL *easy = curl_easy_init();
    s_resp_t r = {0};
    int64_t t0 = s_now_ms();
    s_request(easy, f, "GET", "/stall", NULL, 0, false, &r);
    /* The status was sent already: the client sees a cut body and a
     * closed connection, not an answer that looks complete. */
    assert_int_equal(r.status, 200);
    assert_int_not_equal(r.rc, CURLE_OK);
    assert_string_equal(r.body, "first");
    assert_true(s_now_ms() - t0 < 2000);
    assert_int_equal(s_forward_status(f, 1), 200);
    curl_easy_cleanup(easy);
}

static void
test_http10_client(void **state)
{
    s_fix_t *f = *state;
    CURL *easy = curl_easy_init();
    s_resp_t r = {.http10 = true};
    /* No chunks in HTTP/1.0: the body ends with the connection. */
    s_request(easy, f, "GET", "/big", NULL, 0, false, &r);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_null(strcasestr(r.head, "Transfer-Encoding"));
    assert_non_null(strcasestr(r.head, "\nConnection: close\r\n"));
    assert_int_equal(r.body_len, S_BIG);
    assert_true(r.body_ok);
    curl_easy_cleanup(easy);
}

static void
test_client_body_cut(void **state)
{
    s_fix_t *f = *state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)f->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    static const char req[] = "POST /echo HTTP/1.1\r\nHost: x\r\n"
                              "Content-Length: 1000\r\n\r\n0123456789";
    assert_true(s_send_all(fd, req, sizeof req - 1));
    shutdown(fd, SHUT_WR);
    char buf[4096];
    size_t n = 0;
    ssize_t got;
    while (n < sizeof buf - 1 &&
           (got = read(fd, buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)got;
    buf[n] = '\0';
    close(fd);
    /* The client's fault, not the upstream's: 400, and the connection
     * closed. */
    assert_true(strncmp(buf, "HTTP/1.1 400 ", 13) == 0);
    assert_non_null(strstr(buf, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(buf, "{\"error\":{\"code\":\"INVALID_ARGUMENT\","
                                "\"message\":\"request body could not be "
                                "read\"}}"));
}

int
main(void)
{
    mg_init_library(0);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_headers, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_response_headers, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_big_bodies, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_keep_alive, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_unreachable_502, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_upstream_fails, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_timeout_504, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_prefix, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_streaming, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_stall_after_answer_started,
                                        s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_http10_client, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_client_body_cut, s_setup,
                                        s_teardown),
    };
    int rc = cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
    curl_global_cleanup();
    mg_exit_library();
    return rc;
}
