/*
 * gw_upstream: forwards one request to an HTTP upstream (an operator's
 * route file target, "http://127.0.0.1:3000") and streams the answer back.
 *
 * Transport: libcurl. The object keeps a pool of transfer handles (a curl
 * multi handle, which owns a connection cache, plus its easy handle); a
 * forward takes one from the pool and puts it back after, so connections
 * to upstreams stay open between requests (HTTP/1.1 keep-alive, TCP
 * keep-alive on) and are reused by the next request of any worker thread.
 * A pool rather than one handle per thread because civetweb's threads are
 * not ours to hook at exit. A connection idle for 4 s or more is closed
 * rather than reused (Node's default keep-alive timeout is 5 s: this
 * keeps the gateway from racing the app's close; a request that still
 * meets a dead kept-alive connection is resent on a new one by curl when
 * none of its body was read yet). No proxy from the
 * environment is used, only http:// is spoken, redirects are passed to the
 * client, not followed.
 *
 * Request headers sent upstream: the client's headers, except
 *   - hop-by-hop ones: Connection (and every header it names), Keep-Alive,
 *     Transfer-Encoding, TE, Trailer, Upgrade, Proxy-*; and Host,
 *     Content-Length, Expect (the transport sets its own);
 *   - Authorization: the API key authenticated the tenant at the edge;
 *     passing it on would hand tenants' keys to the app;
 *   - every X-Tenant-* header (case-insensitive), X-Request-Id,
 *     X-Forwarded-For and X-Forwarded-Host: clients cannot spoof them;
 * then the gateway adds X-Tenant-Id, X-Tenant-Subdomain, X-Tenant-Plan
 * (each only when known), X-Request-Id, X-Forwarded-For (the client's
 * list, if any, with the peer address appended) and X-Forwarded-Host (the
 * client's Host).
 *
 * Bodies stream both ways without being held whole: the request body is
 * read from the client as the upstream takes it (with its Content-Length,
 * or chunked when the client sent it chunked); the answer's status and
 * headers (hop-by-hop ones dropped, X-Request-Id set to the gateway's) are
 * sent when the upstream's header block ends, its body as it arrives, with
 * its Content-Length when the upstream gave one, else chunked (HTTP/1.1
 * clients) or delimited by closing the connection (HTTP/1.0 clients).
 *
 * Timeout (the route's timeout= option): the longest the gateway waits on
 * the upstream at any one point — to connect, to take more of the request
 * body, to start its answer, between pieces of its answer. Time spent
 * waiting on the client does not count.
 *
 * Errors, as the gateway's error body (gw_reply.h):
 *   connection refused, DNS failure       -> 502 UNAVAILABLE "upstream
 * unreachable" timeout before the answer started      -> 504 DEADLINE_EXCEEDED
 * "upstream timed out" upstream closed or spoke garbage before its answer
 * started                      -> 502 UNAVAILABLE "upstream failed" client body
 * unreadable                  -> 400 INVALID_ARGUMENT, connection closed After
 * the first byte of the answer has gone to the client, a failure (either side,
 * timeout included) closes the client connection so the client sees a truncated
 * answer, never a complete-looking one.
 */
#ifndef GW_UPSTREAM_H
#define GW_UPSTREAM_H

#include <stddef.h>

struct mg_connection;

typedef struct gw_upstream gw_upstream_t;

/* One request to forward. Every string is borrowed for the call. */
typedef struct {
    /* "http://host:port" or "http://host:port/prefix" (no trailing slash),
     * as gw_route_file validates it. */
    const char *upstream;
    int timeout_ms;         /* > 0 */
    const char *path;       /* decoded request path (ri->local_uri): sent
                               percent-encoded after the prefix */
    const char *query;      /* raw query string without '?', or NULL */
    const char *request_id; /* X-Request-Id */
    const char *tenant_id;  /* X-Tenant-Id; NULL: not sent */
    const char *subdomain;  /* X-Tenant-Subdomain; NULL: not sent */
    const char *plan;       /* X-Tenant-Plan; NULL: not sent */
} gw_upstream_req_t;

/* max_idle: transfer handles (each with its kept-alive connections) kept
 * between requests; the gateway's worker thread count is right. Calls
 * curl_global_init. Caller owns the result. */
gw_upstream_t *gw_upstream_new(size_t max_idle);
void gw_upstream_destroy(gw_upstream_t **self_p);

/* Forwards the request on conn (a civetweb server connection inside its
 * request callback; nothing of the answer sent yet, body unread) and
 * answers it. Thread safe. Returns the HTTP status sent to the client (the
 * upstream's, or the gateway's error status), for logs and metrics. */
int gw_upstream_forward(gw_upstream_t *self, struct mg_connection *conn,
                        const gw_upstream_req_t *req);

/* Upstream connections opened by this object so far (a counter for
 * tests and metrics: reuse keeps it low). */
size_t gw_upstream_connects(const gw_upstream_t *self);

#endif
