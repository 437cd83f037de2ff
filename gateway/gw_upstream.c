/*
 * gw_upstream: one forward is one libcurl transfer driven by our own loop
 * over the multi interface, so that the route's timeout can be an idle
 * timeout measured to the millisecond (curl's own timeouts are either
 * whole-transfer or second-grained). The civetweb connection is read from
 * curl's read callback and written from its header and write callbacks:
 * nothing is held in memory beyond one callback's buffer and the
 * upstream's header block.
 */
#include "gw_upstream.h"

#include "gw_reply.h"
#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_rpc.h"

#include <civetweb.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Largest upstream header block passed on; a larger one is a 502. */
#define S_HEAD_MAX (64 * 1024)
/* Upstream connections idle longer than this are closed, not reused. */
#define S_MAX_IDLE_S 4
/* Longest single wait in the transfer loop, so a stuck poll cannot
 * outlive the timeout check by much. */
#define S_POLL_MAX_MS 1000

/* One pooled transfer: the multi handle owns the connection cache that
 * keeps upstream connections alive between requests. */
typedef struct s_handle {
    CURLM *multi;
    CURL *easy;
    struct s_handle *next; /* in the idle list */
} s_handle_t;

struct gw_upstream {
    pthread_mutex_t lock; /* guards idle and n_idle */
    s_handle_t *idle;     /* handles waiting for a request, LIFO */
    size_t n_idle;
    size_t max_idle;        /* idle handles kept; more are freed */
    atomic_size_t connects; /* upstream connections opened */
};

/* One forward's state, on the worker's stack. */
typedef struct {
    struct mg_connection *conn;
    const gw_upstream_req_t *req;
    int64_t last_ms;    /* monotonic time of the last progress */
    bool client_http10; /* the client spoke HTTP/1.0 */
    bool head_request;  /* method HEAD: no body in the answer */
    /* request body */
    bool has_body;       /* a body is forwarded */
    bool body_eof;       /* mg_read said the body is complete */
    bool body_error;     /* mg_read failed */
    long long body_read; /* bytes handed to curl */
    long long body_len;  /* the client's Content-Length; -1: chunked */
    /* answer */
    int status;         /* status of the current upstream header block */
    kl_buf_t head;      /* the block's header lines, "Name: value\r\n" */
    bool head_bad;      /* too large or malformed */
    bool head_sent;     /* status line and headers went to the client */
    bool chunked;       /* we chunk the body to the client */
    bool no_body;       /* HEAD, 204, 304: nothing after the headers */
    bool client_failed; /* a write to the client failed */
} s_xfer_t;

/* ---- pool ------------------------------------------------------------- */

gw_upstream_t *
gw_upstream_new(size_t max_idle)
{
    /* Thread safe and idempotent in the libcurl Debian 12 ships (7.88);
     * each call is paired with a cleanup in destroy. */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return NULL;
    gw_upstream_t *self = kl_calloc(1, sizeof *self);
    pthread_mutex_init(&self->lock, NULL);
    self->max_idle = max_idle;
    atomic_init(&self->connects, 0);
    return self;
}

static void
s_handle_free(s_handle_t *h)
{
    if (!h)
        return;
    if (h->easy)
        curl_easy_cleanup(h->easy);
    if (h->multi)
        curl_multi_cleanup(h->multi);
    free(h);
}

void
gw_upstream_destroy(gw_upstream_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gw_upstream_t *self = *self_p;
    while (self->idle) {
        s_handle_t *h = self->idle;
        self->idle = h->next;
        s_handle_free(h);
    }
    pthread_mutex_destroy(&self->lock);
    KL_FREE(self_p);
    curl_global_cleanup();
}

size_t
gw_upstream_connects(const gw_upstream_t *self)
{
    return atomic_load(&((gw_upstream_t *)self)->connects);
}

static s_handle_t *
s_take(gw_upstream_t *self)
{
    pthread_mutex_lock(&self->lock);
    s_handle_t *h = self->idle;
    if (h) {
        self->idle = h->next;
        self->n_idle--;
    }
    pthread_mutex_unlock(&self->lock);
    if (h)
        return h;
    h = kl_calloc(1, sizeof *h);
    h->multi = curl_multi_init();
    h->easy = curl_easy_init();
    if (!h->multi || !h->easy) {
        s_handle_free(h);
        return NULL;
    }
    return h;
}

static void
s_give(gw_upstream_t *self, s_handle_t *h)
{
    pthread_mutex_lock(&self->lock);
    if (self->n_idle < self->max_idle) {
        h->next = self->idle;
        self->idle = h;
        self->n_idle++;
        h = NULL;
    }
    pthread_mutex_unlock(&self->lock);
    s_handle_free(h);
}

/* ---- header rules ----------------------------------------------------- */

/* Whether name appears in the comma-separated list (a Connection value). */
static bool
s_in_list(const char *list, const char *name, size_t name_len)
{
    const char *p = list;
    while (p && *p) {
        p += strspn(p, " \t,");
        size_t n = strcspn(p, ",");
        size_t t = n;
        while (t > 0 && (p[t - 1] == ' ' || p[t - 1] == '\t'))
            t--;
        if (t == name_len && t > 0 && strncasecmp(p, name, t) == 0)
            return true;
        p += n;
    }
    return false;
}

/* Hop-by-hop headers (RFC 9110 7.6.1) and those the Connection header
 * names: never passed on, either way. */
static bool
s_hop_by_hop(const char *name, size_t len, const char *connection)
{
    static const char *const hop[] = {"Connection",        "Keep-Alive",
                                      "Transfer-Encoding", "TE",
                                      "Trailer",           "Upgrade"};
    for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++)
        if (strlen(hop[i]) == len && strncasecmp(name, hop[i], len) == 0)
            return true;
    if (len >= 6 && strncasecmp(name, "Proxy-", 6) == 0)
        return true;
    return connection && s_in_list(connection, name, len);
}

/* Request headers the gateway drops or sets itself. */
static bool
s_request_drop(const char *name, const char *connection)
{
    static const char *const drop[] = {
        "Host",         "Content-Length",  "Expect",          "Authorization",
        "X-Request-Id", "X-Forwarded-For", "X-Forwarded-Host"};
    size_t len = strlen(name);
    if (s_hop_by_hop(name, len, connection))
        return true;
    if (len >= 9 && strncasecmp(name, "X-Tenant-", 9) == 0)
        return true;
    for (size_t i = 0; i < sizeof drop / sizeof drop[0]; i++)
        if (strcasecmp(name, drop[i]) == 0)
            return true;
    return false;
}

/* Appends line to *l; on failure frees the list, sets *l to NULL and
 * returns false. */
static bool
s_append(struct curl_slist **l, const char *line)
{
    struct curl_slist *n = curl_slist_append(*l, line);
    if (!n) {
        curl_slist_free_all(*l);
        *l = NULL;
    } else {
        *l = n;
    }
    return n != NULL;
}

/* Appends "name: value". curl reads "Name:" as "remove this header" and
 * "Name;" as "send it empty". */
static bool
s_append_header(struct curl_slist **l, const char *name, const char *value)
{
    char *line = value && *value ? kl_asprintf("%s: %s", name, value)
                                 : kl_asprintf("%s;", name);
    bool ok = s_append(l, line);
    free(line);
    return ok;
}

/* The header list sent upstream (see the header comment), or NULL when
 * curl could not allocate it. Caller frees it with curl_slist_free_all. */
static struct curl_slist *
s_request_headers(const s_xfer_t *x, const struct mg_request_info *ri)
{
    const gw_upstream_req_t *req = x->req;
    struct curl_slist *l = NULL;
    const char *host = NULL;
    kl_buf_t xff = {0}, connection = {0};
    bool accept = false, ok = true;

    /* Every Connection header, joined: the names they list are dropped. */
    for (int i = 0; i < ri->num_headers; i++)
        if (strcasecmp(ri->http_headers[i].name, "Connection") == 0) {
            kl_buf_str(&connection, ",");
            kl_buf_str(&connection, ri->http_headers[i].value);
        }
    for (int i = 0; ok && i < ri->num_headers; i++) {
        const char *name = ri->http_headers[i].name;
        const char *value = ri->http_headers[i].value;
        if (strcasecmp(name, "Host") == 0 && !host)
            host = value;
        if (strcasecmp(name, "X-Forwarded-For") == 0 && value && *value) {
            if (xff.len)
                kl_buf_str(&xff, ", ");
            kl_buf_str(&xff, value);
        }
        if (strcasecmp(name, "Accept") == 0)
            accept = true;
        if (!s_request_drop(name, connection.p))
            ok = s_append_header(&l, name, value);
    }
    free(connection.p);
    if (xff.len)
        kl_buf_str(&xff, ", ");
    kl_buf_str(&xff, ri->remote_addr);

    struct {
        const char *name, *value;
    } add[] = {
        {"X-Tenant-Id", req->tenant_id}, {"X-Tenant-Subdomain", req->subdomain},
        {"X-Tenant-Plan", req->plan},    {"X-Request-Id", req->request_id},
        {"X-Forwarded-For", xff.p},      {"X-Forwarded-Host", host},
    };
    for (size_t i = 0; ok && i < sizeof add / sizeof add[0]; i++)
        if (add[i].value && *add[i].value)
            ok = s_append_header(&l, add[i].name, add[i].value);
    free(xff.p);
    /* Keep curl's defaults out: no "Expect: 100-continue" round trip, no
     * "Accept: * / *" the client did not send. */
    ok = ok && s_append(&l, "Expect:");
    if (ok && !accept)
        ok = s_append(&l, "Accept:");
    return ok ? l : NULL;
}

/* ---- URL -------------------------------------------------------------- */

/* Appends s, percent-encoding every byte outside keep (and every byte
 * outside printable ASCII). */
static void
s_encode(kl_buf_t *b, const char *s, const char *keep)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        bool plain = *p > 0x20 && *p < 0x7f &&
                     ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                      (*p >= '0' && *p <= '9') || strchr(keep, *p));
        if (plain) {
            kl_buf_add(b, (const char *)p, 1);
        } else {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            kl_buf_add(b, e, 3);
        }
    }
}

static char *
s_url(const gw_upstream_req_t *req)
{
    kl_buf_t b = {0};
    kl_buf_str(&b, req->upstream);
    /* The path as the gateway matched it (decoded), encoded again. */
    s_encode(&b, req->path, "-._~!$&'()*+,;=:@/");
    if (req->query && *req->query) {
        kl_buf_add(&b, "?", 1);
        /* Already encoded by the client; only unsafe bytes are escaped. */
        s_encode(&b, req->query, "-._~!$&'()*+,;=:@/?%[]");
    }
    return b.p;
}

/* ---- callbacks -------------------------------------------------------- */

static size_t
s_on_read(char *buf, size_t size, size_t nitems, void *user)
{
    s_xfer_t *x = user;
    if (x->body_eof)
        return 0;
    int got = mg_read(x->conn, buf, size * nitems);
    x->last_ms = kl_now_mono_ms();
    if (got < 0) {
        x->body_error = true;
        return CURL_READFUNC_ABORT;
    }
    if (got == 0) {
        x->body_eof = true;
        if (x->body_len >= 0 && x->body_read < x->body_len) {
            /* The client hung up before its Content-Length. */
            x->body_error = true;
            return CURL_READFUNC_ABORT;
        }
        return 0;
    }
    x->body_read += got;
    return (size_t)got;
}

/* curl rewinds the body to resend it when a kept-alive connection turns
 * out dead; that is possible only before any of it was read. */
static int
s_on_seek(void *user, curl_off_t offset, int origin)
{
    s_xfer_t *x = user;
    return offset == 0 && origin == SEEK_SET && x->body_read == 0
               ? CURL_SEEKFUNC_OK
               : CURL_SEEKFUNC_CANTSEEK;
}

/* Sends the status line and the collected headers to the client. Every
 * line of x->head ends with CRLF. */
static void
s_send_head(s_xfer_t *x)
{
    char *connection = NULL;
    kl_buf_t out = {0};
    bool has_length = false;
    char line[256];

    /* The upstream's Connection header names more hop-by-hop headers. */
    for (char *p = x->head.p; p && *p;) {
        char *eol = strstr(p, "\r\n");
        if (strncasecmp(p, "Connection:", 11) == 0) {
            free(connection);
            connection = kl_strndup(p + 11, (size_t)(eol - p - 11));
        }
        p = eol + 2;
    }
    const char *reason = mg_get_response_code_text(x->conn, x->status);
    snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", x->status,
             reason ? reason : "");
    kl_buf_str(&out, line);
    for (char *p = x->head.p; p && *p;) {
        char *eol = strstr(p, "\r\n");
        size_t name_len = strcspn(p, ":");
        if (name_len == 14 && strncasecmp(p, "Content-Length", 14) == 0)
            has_length = true;
        if (!s_hop_by_hop(p, name_len, connection) &&
            !(name_len == 12 && strncasecmp(p, "X-Request-Id", 12) == 0))
            kl_buf_add(&out, p, (size_t)(eol + 2 - p));
        p = eol + 2;
    }
    free(connection);
    kl_buf_str(&out, "X-Request-Id: ");
    kl_buf_str(&out, x->req->request_id ? x->req->request_id : "");
    kl_buf_str(&out, "\r\n");
    x->no_body = x->head_request || x->status == 204 || x->status == 304;
    if (!x->no_body && !has_length) {
        if (x->client_http10) {
            /* HTTP/1.0 has no chunks: the end of the body is the close. */
            mg_disable_connection_keep_alive(x->conn);
            kl_buf_str(&out, "Connection: close\r\n");
        } else {
            x->chunked = true;
            kl_buf_str(&out, "Transfer-Encoding: chunked\r\n");
        }
    }
    kl_buf_str(&out, "\r\n");
    x->head_sent = true;
    if (mg_write(x->conn, out.p, out.len) != (int)out.len)
        x->client_failed = true;
    free(out.p);
}

static size_t
s_on_header(char *data, size_t size, size_t nitems, void *user)
{
    s_xfer_t *x = user;
    size_t n = size * nitems;

    x->last_ms = kl_now_mono_ms();
    if (x->head_sent)
        return n; /* trailers after a chunked body: not passed on */
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        /* A new header block: "HTTP/1.1 200 OK". 1xx blocks come first. */
        const char *sp = memchr(data, ' ', n);
        x->status = 0;
        if (sp && (size_t)(sp - data) + 4 <= n)
            x->status = atoi(sp + 1);
        x->head.len = 0;
        if (x->head.p)
            x->head.p[0] = '\0';
        if (x->status < 100 || x->status > 999)
            x->head_bad = true;
        return x->head_bad ? 0 : n;
    }
    if (n <= 2 && (data[0] == '\r' || data[0] == '\n')) {
        if (x->status >= 200) {
            s_send_head(x);
            if (x->client_failed)
                return 0;
        }
        return n;
    }
    if (x->head.len + n > S_HEAD_MAX) {
        x->head_bad = true;
        return 0;
    }
    /* Folded continuation lines (obsolete) are refused, as RFC 9112
     * allows for a proxy. */
    if (data[0] == ' ' || data[0] == '\t' || !memchr(data, ':', n)) {
        x->head_bad = true;
        return 0;
    }
    size_t len = n;
    while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r'))
        len--;
    kl_buf_add(&x->head, data, len);
    kl_buf_add(&x->head, "\r\n", 2);
    return n;
}

static size_t
s_on_write(char *data, size_t size, size_t nmemb, void *user)
{
    s_xfer_t *x = user;
    size_t n = size * nmemb;

    x->last_ms = kl_now_mono_ms();
    if (!x->head_sent) {
        x->head_bad = true; /* a body before the end of headers */
        return 0;
    }
    if (x->no_body || n == 0)
        return n;
    int rc = x->chunked ? mg_send_chunk(x->conn, data, (unsigned)n)
                        : mg_write(x->conn, data, n);
    x->last_ms = kl_now_mono_ms();
    if (rc <= 0) {
        x->client_failed = true;
        return 0;
    }
    return n;
}

/* ---- the transfer ----------------------------------------------------- */

static int
s_setup(CURL *e, s_xfer_t *x, const struct mg_request_info *ri, const char *url,
        struct curl_slist *headers)
{
    const char *method = ri->request_method;
    long long cl = ri->content_length;
    const char *te = mg_get_header(x->conn, "Transfer-Encoding");
    bool chunked_in = te && strcasestr(te, "chunked");
    CURLcode rc = CURLE_OK;

#define S_SET(opt, val)                                                        \
    if (rc == CURLE_OK)                                                        \
    rc = curl_easy_setopt(e, opt, val)
    S_SET(CURLOPT_URL, url);
    S_SET(CURLOPT_PROTOCOLS_STR, "http");
    S_SET(CURLOPT_NOSIGNAL, 1L);
    S_SET(CURLOPT_PROXY, ""); /* never a proxy from http_proxy */
    S_SET(CURLOPT_TCP_KEEPALIVE, 1L);
    /* Node's http server (the seed's Express app) closes a connection idle
     * for 5 s; reusing one idle for less than that avoids racing its
     * close. */
    S_SET(CURLOPT_MAXAGE_CONN, (long)S_MAX_IDLE_S);
    S_SET(CURLOPT_TCP_NODELAY, 1L);
    S_SET(CURLOPT_CONNECTTIMEOUT_MS, (long)x->req->timeout_ms);
    S_SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    S_SET(CURLOPT_PATH_AS_IS, 1L);
    S_SET(CURLOPT_HTTP_CONTENT_DECODING, 0L);
    S_SET(CURLOPT_FOLLOWLOCATION, 0L);
    S_SET(CURLOPT_HTTPHEADER, headers);
    S_SET(CURLOPT_HEADERFUNCTION, s_on_header);
    S_SET(CURLOPT_HEADERDATA, x);
    S_SET(CURLOPT_WRITEFUNCTION, s_on_write);
    S_SET(CURLOPT_WRITEDATA, x);

    x->head_request = strcmp(method, "HEAD") == 0;
    x->has_body = !x->head_request && (cl >= 0 || chunked_in);
    x->body_len = chunked_in ? -1 : cl;
    if (x->head_request) {
        S_SET(CURLOPT_NOBODY, 1L);
    } else if (x->has_body) {
        S_SET(CURLOPT_UPLOAD, 1L);
        S_SET(CURLOPT_READFUNCTION, s_on_read);
        S_SET(CURLOPT_READDATA, x);
        S_SET(CURLOPT_SEEKFUNCTION, s_on_seek);
        S_SET(CURLOPT_SEEKDATA, x);
        /* Without a size curl sends the body chunked. */
        if (!chunked_in)
            S_SET(CURLOPT_INFILESIZE_LARGE, (curl_off_t)cl);
        S_SET(CURLOPT_CUSTOMREQUEST, method);
    } else if (strcmp(method, "GET") == 0) {
        S_SET(CURLOPT_HTTPGET, 1L);
    } else {
        S_SET(CURLOPT_CUSTOMREQUEST, method);
    }
#undef S_SET
    return rc == CURLE_OK ? 0 : -1;
}

/* Runs the transfer until it ends or makes no progress for the timeout.
 * Returns curl's result; *timed_out says the loop gave up. */
static CURLcode
s_run(s_handle_t *h, s_xfer_t *x, bool *timed_out)
{
    CURLcode result = CURLE_OK;
    int running = 1;

    *timed_out = false;
    x->last_ms = kl_now_mono_ms();
    if (curl_multi_add_handle(h->multi, h->easy) != CURLM_OK)
        return CURLE_FAILED_INIT;
    for (;;) {
        if (curl_multi_perform(h->multi, &running) != CURLM_OK) {
            result = CURLE_FAILED_INIT;
            break;
        }
        if (!running) {
            int left;
            CURLMsg *msg;
            while ((msg = curl_multi_info_read(h->multi, &left)))
                if (msg->msg == CURLMSG_DONE && msg->easy_handle == h->easy)
                    result = msg->data.result;
            break;
        }
        int64_t left = x->last_ms + x->req->timeout_ms - kl_now_mono_ms();
        if (left <= 0) {
            *timed_out = true;
            result = CURLE_OPERATION_TIMEDOUT;
            break;
        }
        long curl_ms = -1;
        curl_multi_timeout(h->multi, &curl_ms);
        int wait = left < S_POLL_MAX_MS ? (int)left : S_POLL_MAX_MS;
        if (curl_ms >= 0 && curl_ms < wait)
            wait = (int)curl_ms;
        curl_multi_poll(h->multi, NULL, 0, wait, NULL);
    }
    /* An unfinished transfer's connection is closed here, never reused. */
    curl_multi_remove_handle(h->multi, h->easy);
    return result;
}

static int
s_error(s_xfer_t *x, int http, kl_code_t code, const char *message)
{
    /* A request body left unread cannot be skipped safely: close. */
    bool close = x->has_body && !x->body_eof;
    if (close)
        mg_disable_connection_keep_alive(x->conn);
    return gw_reply_error(x->conn, x->req->request_id, http, code, message,
                          close ? "Connection: close\r\n" : NULL);
}

int
gw_upstream_forward(gw_upstream_t *self, struct mg_connection *conn,
                    const gw_upstream_req_t *req)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    s_xfer_t x = {.conn = conn, .req = req};
    bool timed_out = false;
    int status;

    x.client_http10 = ri->http_version && strcmp(ri->http_version, "1.0") == 0;
    s_handle_t *h = s_take(self);
    struct curl_slist *headers = s_request_headers(&x, ri);
    char *url = s_url(req);
    if (!h || !headers) {
        KL_LOG(KL_ERROR, "upstream %s: cannot set up a transfer",
               req->upstream);
        status = s_error(&x, 0, KL_INTERNAL, "upstream transfer failed");
        goto done;
    }
    curl_easy_reset(h->easy);
    if (s_setup(h->easy, &x, ri, url, headers) < 0) {
        KL_LOG(KL_ERROR, "upstream %s: curl_easy_setopt() failed",
               req->upstream);
        status = s_error(&x, 0, KL_INTERNAL, "upstream transfer failed");
        goto done;
    }
    CURLcode res = s_run(h, &x, &timed_out);
    long n_conn = 0;
    if (curl_easy_getinfo(h->easy, CURLINFO_NUM_CONNECTS, &n_conn) ==
            CURLE_OK &&
        n_conn > 0)
        atomic_fetch_add(&self->connects, (size_t)n_conn);

    if (x.head_sent) {
        status = x.status;
        if (res == CURLE_OK && !x.client_failed) {
            if (x.chunked && mg_write(conn, "0\r\n\r\n", 5) != 5)
                mg_disable_connection_keep_alive(conn);
            goto done;
        }
        /* Too late for an error answer: a truncated body and a close. */
        mg_disable_connection_keep_alive(conn);
        if (!x.client_failed)
            KL_LOG(KL_WARN, "upstream %s failed after the answer started: %s",
                   req->upstream,
                   timed_out ? "timed out" : curl_easy_strerror(res));
        goto done;
    }
    if (x.body_error) {
        mg_disable_connection_keep_alive(conn);
        status = gw_reply_error(conn, req->request_id, 400, KL_INVALID_ARGUMENT,
                                "request body could not be read",
                                "Connection: close\r\n");
    } else if (timed_out || res == CURLE_OPERATION_TIMEDOUT) {
        KL_LOG(KL_WARN, "upstream %s: no answer within %d ms", req->upstream,
               req->timeout_ms);
        status = s_error(&x, 504, KL_DEADLINE_EXCEEDED, "upstream timed out");
    } else if (res == CURLE_COULDNT_CONNECT ||
               res == CURLE_COULDNT_RESOLVE_HOST) {
        KL_LOG(KL_WARN, "upstream %s unreachable: %s", req->upstream,
               curl_easy_strerror(res));
        status = s_error(&x, 502, KL_UNAVAILABLE, "upstream unreachable");
    } else {
        KL_LOG(KL_WARN, "upstream %s failed: %s", req->upstream,
               x.head_bad ? "malformed answer" : curl_easy_strerror(res));
        status = s_error(&x, 502, KL_UNAVAILABLE, "upstream failed");
    }
done:
    curl_slist_free_all(headers);
    free(url);
    free(x.head.p);
    if (h) {
        /* Drop the handle's pointers to our stack before it idles. */
        curl_easy_reset(h->easy);
        s_give(self, h);
    }
    return status;
}
