/*
 * gw_server: the request pipeline (one civetweb begin_request callback for
 * every request) and the objects it uses.
 *
 * Order of checks, and why:
 *   1. request id (everything after is logged under it);
 *   2. operational routes (/healthz, /readyz, /metrics) on any host, before
 *      any Host check, so that probes never depend on DNS names;
 *   3. exactly one Host header (RFC 9112; OWASP WSTG-INPV-17), then the
 *      tenant selector: X-Tenant-Subdomain from a trusted proxy, else Host;
 *   4. a tenant host resolves its tenant through the cache (unknown and
 *      deleted answer the same 404); then the route match, and a tenant
 *      that owes (past_due beyond the grace, suspended) gets 402 on every
 *      path, matched or not, except the routes it pays through
 *      (GW_ROUTE_UNPAID_OK), so that a path never reveals more than the
 *      DNS name does;
 *   5. route match (404 / 405), then authentication (401 / 403);
 *   6. on tenant routes, the tenant's entitlements from the cache: the
 *      rate limit (429 + Retry-After), then the route's feature (403 with
 *      an upgrade link) — after authentication, so that neither tells an
 *      anonymous caller anything about the tenant's plan;
 *   7. body, transcoding (tenant_id and plan forced to the tenant's own),
 *      rpc, reply; a webhook route (GW_ROUTE_WEBHOOK) passes the raw body
 *      instead. No body of a request or reply is ever logged: billing's
 *      replies carry bearer URLs (Checkout, Portal, Alipay).
 */
#include "gw_server.h"

#include "gw_auth.h"
#include "gw_cidr.h"
#include "gw_entitlements.h"
#include "gw_export.h"
#include "gw_metrics.h"
#include "gw_reply.h"
#include "gw_request.h"
#include "gw_request_id.h"
#include "gw_route_file.h"
#include "gw_routes.h"
#include "gw_tenant_cache.h"
#include "gw_tenant_rpc.h"
#include "gw_upstream.h"
#include "kl_alloc.h"
#include "kl_json.h"
#include "kl_log.h"
#include "kl_redis.h"
#include "kl_rpc_client.h"
#include "kl_subdomain.h"
#include "kowloon/billing.pb-c.h"
#include "kowloon/flags.pb-c.h"
#include "kowloon/rpc.pb-c.h"
#include "kowloon/tenant.pb-c.h"
#include "kowloon/workspace.pb-c.h"

#include <civetweb.h>
#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Longest /readyz waits for the tenant service. */
#define S_READY_TIMEOUT_MS 1000
/* Negative cache entries (unknown subdomains, refused keys) live this long
 * at most. */
#define S_NEGATIVE_TTL_MS 2000
/* Least time between two refreshes of one tenant's entitlements while the
 * flags service fails. */
#define S_STALE_RETRY_MS 1000

struct gw_server {
    const kl_config_t *cfg;      /* borrowed */
    const char *base_domain;     /* KOWLOON_BASE_DOMAIN */
    int64_t rpc_timeout_ms;      /* KOWLOON_RPC_TIMEOUT_MS */
    int64_t grace_ms;            /* KOWLOON_PAST_DUE_GRACE_S in ms */
    int64_t max_body;            /* KOWLOON_HTTP_MAX_BODY_BYTES */
    gw_cidr_list_t *trusted;     /* KOWLOON_TRUSTED_PROXIES */
    gw_auth_t *auth;             /* the admin token */
    gw_route_t *table;           /* built-in routes, then the file's */
    size_t n_builtin;            /* how many of table are built in */
    gw_route_file_t *route_file; /* KOWLOON_ROUTES_FILE; NULL: none */
    gw_upstream_t *upstream;     /* HTTP upstream forwarding; NULL: none */
    gw_routes_t *routes;         /* the compiled route table */
    const char **route_labels;   /* route patterns, for metrics */
    gw_metrics_t *metrics;
    kl_rpc_client_t *tenant;     /* TenantService, shared by all threads */
    kl_rpc_client_t *health;     /* Health at the tenant endpoints */
    gw_tenant_rpc_t *tenant_rpc; /* the cache's backend */
    gw_tenant_cache_t *cache;
    kl_rpc_client_t *flags;     /* FlagsService */
    kl_rpc_client_t *workspace; /* WorkspaceService */
    kl_rpc_client_t *billing;   /* BillingService */
    kl_rpc_env_t *rpc;          /* borrowed; NULL: clients are ours */
    gw_entitlements_t *ents;    /* tenant id -> entitlements + bucket */
    char *scheme;               /* KOWLOON_PUBLIC_SCHEME */
    kl_events_t *events;        /* change events -> caches; NULL: no Redis */
    struct mg_context *mg;      /* civetweb; NULL once stopped */
};

/* One request's state, on the worker's stack. */
typedef struct {
    struct mg_connection *conn;
    const struct mg_request_info *ri;
    char rid[GW_REQUEST_ID_SIZE];
    const char *path;   /* decoded path, no query */
    struct timespec t0; /* when the pipeline started */
    size_t route;       /* matched route index; n_routes: none */
    int status;         /* HTTP status sent */
    char subdomain[KL_SUBDOMAIN_MAX + 1];
    gw_tenant_t *tenant; /* a reference, on tenant hosts */
    gw_ent_t *ents;      /* a reference, on tenant routes (may be NULL) */
    char principal[GW_TENANT_ID_MAX + 8];
} s_req_t;

static int
s_error(s_req_t *r, int http, kl_code_t code, const char *message,
        const char *headers)
{
    r->status = gw_reply_error(r->conn, r->rid, http, code, message, headers);
    return r->status;
}

static int
s_error_status(s_req_t *r, const kl_status_t *st)
{
    const char *headers =
        st->code == KL_UNAUTHENTICATED ? "WWW-Authenticate: Bearer\r\n" : NULL;
    return s_error(r, 0, st->code, st->message, headers);
}

static int
s_send_json(s_req_t *r, int http, const char *body, size_t len)
{
    gw_reply_send(r->conn, http, "application/json", r->rid, NULL, body, len);
    r->status = http;
    return http;
}

/* ---- operational endpoints ------------------------------------------- */

static void
s_readyz(gw_server_t *self, s_req_t *r)
{
    Kowloon__Rpc__HealthCheckRequest req =
        KOWLOON__RPC__HEALTH_CHECK_REQUEST__INIT;
    kl_call_ctx_t ctx = {.request_id = r->rid};
    kl_call_opts_t opts = {self->rpc_timeout_ms < S_READY_TIMEOUT_MS
                               ? self->rpc_timeout_ms
                               : S_READY_TIMEOUT_MS,
                           true, &ctx};
    ProtobufCMessage *out = NULL;
    kl_status_t st;
    char msg[KL_STATUS_MESSAGE_MAX + 32];

    if (kl_rpc_client_call(self->health, "Check", &req.base, &opts, &out, &st) <
        0) {
        snprintf(msg, sizeof msg, "tenant service: %s: %s",
                 kl_code_name(st.code), st.message);
        s_error(r, 503, KL_UNAVAILABLE, msg, NULL);
        return;
    }
    Kowloon__Rpc__HealthCheckResponse *resp =
        (Kowloon__Rpc__HealthCheckResponse *)out;
    bool serving = resp->status ==
                   KOWLOON__RPC__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    protobuf_c_message_free_unpacked(out, NULL);
    if (!serving) {
        s_error(r, 503, KL_UNAVAILABLE, "tenant service: not serving", NULL);
        return;
    }
    static const char ok[] = "{\"status\":\"ready\"}";
    s_send_json(r, 200, ok, sizeof ok - 1);
}

static void
s_metrics(gw_server_t *self, s_req_t *r)
{
    gw_tenant_cache_stats_t cs;
    gw_metrics_rpc_t rpc[5] = {{"kowloon.tenant.TenantService", {0}},
                               {"kowloon.rpc.Health", {0}},
                               {"kowloon.flags.FlagsService", {0}},
                               {"kowloon.workspace.WorkspaceService", {0}},
                               {"kowloon.billing.BillingService", {0}}};
    size_t len;
    gw_tenant_cache_stats(self->cache, &cs);
    kl_rpc_client_stats(self->tenant, &rpc[0].stats);
    kl_rpc_client_stats(self->health, &rpc[1].stats);
    kl_rpc_client_stats(self->flags, &rpc[2].stats);
    kl_rpc_client_stats(self->workspace, &rpc[3].stats);
    kl_rpc_client_stats(self->billing, &rpc[4].stats);
    char *text = gw_metrics_render(self->metrics, &cs, rpc, 5, &len);
    gw_entitlements_stats_t es;
    size_t elen;
    gw_entitlements_stats(self->ents, &es);
    char *etext = gw_metrics_render_entitlements(&es, &elen);
    text = kl_realloc(text, len + elen + 1);
    memcpy(text + len, etext, elen + 1);
    len += elen;
    free(etext);
    gw_reply_send(r->conn, 200, "text/plain; version=0.0.4; charset=utf-8",
                  r->rid, NULL, text, len);
    r->status = 200;
    free(text);
}

/* ---- tenant selection ------------------------------------------------- */

/* Classifies the selector (a Host value, or X-Tenant-Subdomain from a
 * trusted proxy, which may be a full host or a bare label). */
static kl_host_kind_t
s_select(const gw_server_t *self, const char *sel, bool from_proxy, char *sub)
{
    kl_host_kind_t k =
        kl_host_parse(sel, self->base_domain, sub, KL_SUBDOMAIN_MAX + 1);
    if (k != KL_HOST_OTHER || !from_proxy || strchr(sel, '.') ||
        strchr(sel, ':'))
        return k;
    /* A bare label from the proxy: "acme". */
    char label[KL_SUBDOMAIN_MAX + 1];
    size_t n = strlen(sel);
    if (n > KL_SUBDOMAIN_MAX)
        return KL_HOST_OTHER;
    for (size_t i = 0; i <= n; i++)
        label[i] = (char)tolower((unsigned char)sel[i]);
    if (kl_subdomain_validate(label, NULL) < 0)
        return KL_HOST_OTHER;
    memcpy(sub, label, n + 1);
    return KL_HOST_TENANT;
}

/* Resolves the host into *kind (and r->tenant for a tenant host); sends
 * the error and returns < 0 when the request ends here. Whether the tenant
 * may be served is s_tenant_access's, once the route is known. */
static int
s_resolve_host(gw_server_t *self, s_req_t *r, gw_host_kind_t *kind)
{
    const char *host = NULL;
    int n_host = 0;
    kl_status_t st;

    for (int i = 0; i < r->ri->num_headers; i++)
        if (strcasecmp(r->ri->http_headers[i].name, "Host") == 0) {
            host = r->ri->http_headers[i].value;
            n_host++;
        }
    if (n_host == 0)
        return -s_error(r, 0, KL_INVALID_ARGUMENT, "missing Host header", NULL);
    if (n_host > 1)
        return -s_error(r, 0, KL_INVALID_ARGUMENT, "more than one Host header",
                        NULL);

    const char *sel = host;
    bool from_proxy = false;
    const char *xts = mg_get_header(r->conn, "X-Tenant-Subdomain");
    if (xts && gw_cidr_list_contains(self->trusted, r->ri->remote_addr)) {
        sel = xts;
        from_proxy = true;
    }
    switch (s_select(self, sel, from_proxy, r->subdomain)) {
    case KL_HOST_APEX:
        *kind = GW_HOST_APEX;
        return 0;
    case KL_HOST_TENANT:
        break;
    case KL_HOST_OTHER:
        return -s_error(r, 0, KL_NOT_FOUND, "unknown host", NULL);
    default:
        return -s_error(r, 0, KL_INVALID_ARGUMENT,
                        from_proxy ? "malformed X-Tenant-Subdomain header"
                                   : "malformed Host header",
                        NULL);
    }

    *kind = GW_HOST_TENANT;
    kl_log_set_context(r->rid, r->subdomain);
    kl_call_ctx_t ctx = {.request_id = r->rid, .subdomain = r->subdomain};
    int rc =
        gw_tenant_cache_get(self->cache, r->subdomain, &ctx, &r->tenant, &st);
    if (rc == -KL_NOT_FOUND)
        return -s_error(r, 0, KL_NOT_FOUND, "tenant not found", NULL);
    if (rc < 0) {
        KL_LOG(KL_WARN, "tenant lookup failed: %s: %s", kl_code_name(st.code),
               st.message);
        return -s_error_status(r, &st);
    }
    return 0;
}

/* Whether r->tenant may be served route (NULL: no route matched): deleted
 * is 404 everywhere; a tenant that owes gets 402 except on the routes it
 * pays through. Sends the error and returns < 0 when the request ends
 * here. */
static int
s_tenant_access(gw_server_t *self, s_req_t *r, const gw_route_t *route)
{
    kl_status_t st;
    int rc = gw_tenant_access(r->tenant, kl_now_unix_ms(), self->grace_ms, &st);
    if (rc == -KL_NOT_FOUND)
        return -s_error(r, 0, KL_NOT_FOUND, "tenant not found", NULL);
    if (rc < 0 && !(route && (route->flags & GW_ROUTE_UNPAID_OK)))
        return -s_error(r, 402, st.code, st.message, NULL);
    return 0;
}

/* ---- authentication --------------------------------------------------- */

static int
s_authenticate(gw_server_t *self, s_req_t *r, const gw_route_t *route)
{
    const char *authz = mg_get_header(r->conn, "Authorization");
    kl_status_t st;

    switch (route->auth) {
    case GW_AUTH_NONE:
        return 0;
    case GW_AUTH_ADMIN_TOKEN:
        if (gw_auth_check_admin(self->auth, authz, &st) < 0)
            return -s_error_status(r, &st);
        snprintf(r->principal, sizeof r->principal, "admin");
        return 0;
    case GW_AUTH_API_KEY: {
        size_t len;
        gw_api_key_t key;
        const char *secret = gw_auth_bearer(authz, &len);
        if (!secret) {
            kl_status_set(&st, KL_UNAUTHENTICATED, "missing API key");
            return -s_error_status(r, &st);
        }
        kl_call_ctx_t ctx = {.request_id = r->rid,
                             .tenant_id = r->tenant->msg->id,
                             .subdomain = r->subdomain};
        int rc = gw_tenant_cache_resolve_key(self->cache, secret, len, &ctx,
                                             &key, &st);
        if (rc == -KL_UNAUTHENTICATED ||
            (rc == 0 && strcmp(key.tenant_id, r->tenant->msg->id) != 0)) {
            /* Unknown, revoked and another tenant's key: one answer. */
            kl_status_set(&st, KL_UNAUTHENTICATED, "invalid API key");
            return -s_error_status(r, &st);
        }
        if (rc < 0) {
            KL_LOG(KL_WARN, "API key lookup failed: %s: %s",
                   kl_code_name(st.code), st.message);
            return -s_error_status(r, &st);
        }
        snprintf(r->principal, sizeof r->principal, "apikey:%s", key.key_id);
        return 0;
    }
    }
    return 0;
}

/* ---- rpc routes ------------------------------------------------------- */

/* Reads the body within KOWLOON_HTTP_MAX_BODY_BYTES. Returns 0 with *body
 * (caller frees) or sends the error and returns < 0. */
static int
s_read_body(gw_server_t *self, s_req_t *r, char **body, size_t *len)
{
    static const char close_hdr[] = "Connection: close\r\n";
    long long cl = r->ri->content_length;
    size_t max = (size_t)self->max_body;
    size_t cap = cl > 0 ? (size_t)cl + 1 : 4096;
    char msg[96];

    *body = NULL;
    *len = 0;
    snprintf(msg, sizeof msg, "request body larger than %zu bytes", max);
    if (cl > 0 && (unsigned long long)cl > max)
        return -s_error(r, 413, KL_INVALID_ARGUMENT, msg, close_hdr);
    if (cap > max + 1)
        cap = max + 1;
    char *buf = kl_malloc(cap);
    size_t n = 0;
    for (;;) {
        if (n == cap) {
            if (cap > max) {
                free(buf);
                return -s_error(r, 413, KL_INVALID_ARGUMENT, msg, close_hdr);
            }
            cap = cap * 2 > max + 1 ? max + 1 : cap * 2;
            buf = kl_realloc(buf, cap);
        }
        int got = mg_read(r->conn, buf + n, cap - n);
        if (got < 0) {
            free(buf);
            return -s_error(r, 400, KL_INVALID_ARGUMENT,
                            "request body could not be read", close_hdr);
        }
        if (got == 0)
            break;
        n += (size_t)got;
    }
    if (n > max) {
        free(buf);
        return -s_error(r, 413, KL_INVALID_ARGUMENT, msg, close_hdr);
    }
    *body = buf;
    *len = n;
    return 0;
}

static kl_rpc_client_t *
s_client_for(gw_server_t *self, const ProtobufCServiceDescriptor *service)
{
    if (service == &kowloon__tenant__tenant_service__descriptor)
        return self->tenant;
    if (service == &kowloon__flags__flags_service__descriptor)
        return self->flags;
    if (service == &kowloon__workspace__workspace_service__descriptor)
        return self->workspace;
    if (service == &kowloon__billing__billing_service__descriptor)
        return self->billing;
    return NULL;
}

/* A webhook route: the body exactly as received and its signature go to
 * the rpc, no JSON either way. The sender retries on anything but 2xx, so
 * a refused signature (INVALID_ARGUMENT) is 400 and every other failure
 * 5xx: the event is then delivered again, and the rpc detects duplicates. */
static void
s_webhook(gw_server_t *self, s_req_t *r, const gw_route_match_t *m,
          const char *body, size_t len, int64_t timeout_ms)
{
    static const char ok[] = "{\"received\":true}";
    uint8_t *in = NULL, *out = NULL;
    size_t in_len = 0, out_len = 0;
    kl_status_t st;
    kl_rpc_client_t *client = s_client_for(self, m->route->service);

    if (!client) {
        s_error(r, 0, KL_UNIMPLEMENTED, "no client for this service", NULL);
        return;
    }
    if (gw_request_webhook_input(m->method->input, body, len,
                                 mg_get_header(r->conn, "Stripe-Signature"),
                                 &in, &in_len, &st) < 0) {
        KL_LOG(KL_ERROR, "%s.%s: %s", m->route->service->name, m->route->rpc,
               st.message);
        s_error(r, 0, KL_INTERNAL, "webhook input did not build", NULL);
        return;
    }
    kl_call_ctx_t ctx = {.request_id = r->rid};
    kl_call_opts_t opts = {.timeout_ms = timeout_ms,
                           .idempotent = m->route->idempotent,
                           .ctx = &ctx};
    int rc = kl_rpc_client_call_raw(client, m->route->rpc, in, in_len, &opts,
                                    &out, &out_len, &st);
    free(in);
    free(out);
    if (rc == 0) {
        s_send_json(r, 200, ok, sizeof ok - 1);
        return;
    }
    if (st.code == KL_INVALID_ARGUMENT) {
        s_error_status(r, &st);
        return;
    }
    KL_LOG(KL_WARN, "%s.%s failed, the sender will retry: %s: %s",
           m->route->service->name, m->route->rpc, kl_code_name(st.code),
           st.message);
    int http = kl_code_http_status(st.code);
    s_error(r, http >= 500 ? http : 500, st.code, st.message, NULL);
}

static void
s_call(gw_server_t *self, s_req_t *r, const gw_route_match_t *m,
       int64_t timeout_ms)
{
    char *body = NULL;
    size_t body_len = 0;
    uint8_t *in = NULL, *out = NULL;
    size_t in_len = 0, out_len = 0;
    kl_status_t st;
    const char *method = r->ri->request_method;
    bool with_query =
        strcmp(method, "GET") == 0 || strcmp(method, "DELETE") == 0;

    if (s_read_body(self, r, &body, &body_len) < 0)
        return;
    if (m->route->flags & GW_ROUTE_WEBHOOK) {
        s_webhook(self, r, m, body, body_len, timeout_ms);
        free(body);
        return;
    }
    json_t *input = gw_request_input(body, body_len, m, r->ri->query_string,
                                     with_query, &st);
    free(body);
    if (!input) {
        s_error_status(r, &st);
        return;
    }
    if (r->tenant) {
        /* A tenant names no other tenant: its own id and plan win. */
        gw_request_force_field(input, m->method->input, "tenant_id",
                               r->tenant->msg->id);
        if (!(m->route->flags & GW_ROUTE_CLIENT_PLAN))
            gw_request_force_field(input, m->method->input, "plan",
                                   r->tenant->msg->plan);
    }
    int rc = kl_json_to_pb(m->method->input, input, &in, &in_len, &st);
    json_decref(input);
    if (rc < 0) {
        s_error_status(r, &st);
        return;
    }

    kl_rpc_client_t *client = s_client_for(self, m->route->service);
    if (!client) {
        free(in);
        s_error(r, 0, KL_UNIMPLEMENTED, "no client for this service", NULL);
        return;
    }
    kl_call_ctx_t ctx = {
        .request_id = r->rid,
        .tenant_id = r->tenant ? r->tenant->msg->id : NULL,
        .subdomain = r->tenant ? r->subdomain : NULL,
        .plan = r->tenant ? r->tenant->msg->plan : NULL,
        .principal = r->principal[0] ? r->principal : NULL,
    };
    kl_call_opts_t opts = {timeout_ms, m->route->idempotent, &ctx};
    rc = kl_rpc_client_call_raw(client, m->route->rpc, in, in_len, &opts, &out,
                                &out_len, &st);
    free(in);
    if (rc < 0) {
        if (st.code == KL_UNAVAILABLE || st.code == KL_DEADLINE_EXCEEDED ||
            st.code == KL_INTERNAL)
            KL_LOG(KL_WARN, "%s.%s failed: %s: %s", m->route->service->name,
                   m->route->rpc, kl_code_name(st.code), st.message);
        s_error_status(r, &st);
        return;
    }
    json_t *reply = kl_json_from_pb(m->method->output, out, out_len,
                                    KL_JSON_EMIT_DEFAULTS, &st);
    free(out);
    char *text = reply ? json_dumps(reply, JSON_COMPACT) : NULL;
    json_decref(reply);
    if (!text) {
        KL_LOG(KL_ERROR, "%s.%s reply did not transcode: %s",
               m->route->service->name, m->route->rpc,
               reply ? "json_dumps() failed" : st.message);
        s_error(r, 0, KL_INTERNAL, "reply did not transcode", NULL);
        return;
    }
    s_send_json(r, 200, text, strlen(text));
    free(text);
}

/* ---- entitlements: rate limit and feature gate ------------------------- */

/* Takes the tenant's entitlements (r->ents) and one token of its rate;
 * sends the error and returns < 0 when the request ends here. Admin
 * routes never come here (they have no tenant). */
static int
s_entitle(gw_server_t *self, s_req_t *r, const gw_route_t *route)
{
    kl_status_t st;
    bool stale;
    int64_t retry = 0;
    char hdr[64];
    kl_call_ctx_t ctx = {.request_id = r->rid,
                         .tenant_id = r->tenant->msg->id,
                         .subdomain = r->subdomain,
                         .plan = r->tenant->msg->plan,
                         .principal = r->principal[0] ? r->principal : NULL};
    int rc = gw_entitlements_get(self->ents, r->tenant->msg->id,
                                 r->tenant->msg->plan, &ctx, true, &r->ents,
                                 &stale, &retry, &st);
    if (rc == -KL_RESOURCE_EXHAUSTED) {
        snprintf(hdr, sizeof hdr, "Retry-After: %lld\r\n", (long long)retry);
        return -s_error(r, 429, KL_RESOURCE_EXHAUSTED, st.message, hdr);
    }
    if (rc < 0) {
        /* Never loaded and the flags service failing: a route that needs
         * nothing from the plan is served (without a rate limit); one that
         * does cannot be decided, so it is refused. */
        if (!route->feature && route->local != GW_LOCAL_ENTITLEMENTS)
            return 0;
        if (st.code != KL_DEADLINE_EXCEEDED)
            kl_status_set(&st, KL_UNAVAILABLE,
                          "entitlements unavailable, try again");
        return -s_error_status(r, &st);
    }
    if (route->feature && !gw_ent_allows(r->ents, route->feature)) {
        char url[KL_SUBDOMAIN_MAX + 300], body[GW_REPLY_ERROR_MAX];
        snprintf(url, sizeof url, "%s://%s.%s/upgrade", self->scheme,
                 r->subdomain, self->base_domain);
        size_t len =
            gw_reply_feature_body(body, sizeof body, route->feature, url);
        gw_reply_send(r->conn, 403, "application/json", r->rid, NULL, body,
                      len);
        r->status = 403;
        return -403;
    }
    return 0;
}

static void
s_export(gw_server_t *self, s_req_t *r)
{
    kl_status_t st;
    kl_call_ctx_t ctx = {.request_id = r->rid,
                         .tenant_id = r->tenant->msg->id,
                         .subdomain = r->subdomain,
                         .plan = r->tenant->msg->plan,
                         .principal = r->principal[0] ? r->principal : NULL};
    int rc = gw_export_stream(r->conn, self->workspace, &ctx,
                              self->rpc_timeout_ms, r->subdomain, &st);
    if (rc < 0) {
        if (st.code == KL_UNAVAILABLE || st.code == KL_DEADLINE_EXCEEDED ||
            st.code == KL_INTERNAL)
            KL_LOG(KL_WARN, "WorkspaceService.Export failed: %s: %s",
                   kl_code_name(st.code), st.message);
        s_error_status(r, &st);
        return;
    }
    r->status = rc;
}

/* ---- the pipeline ----------------------------------------------------- */

static void
s_handle(gw_server_t *self, s_req_t *r)
{
    gw_route_match_t m;
    char allow[64], msg[GW_ROUTE_PARAM_MAX * 2 + 64], hdr[96];
    const char *method = r->ri->request_method;
    gw_host_kind_t kind;

    if (!r->path || r->path[0] != '/') {
        s_error(r, 0, KL_INVALID_ARGUMENT, "malformed request target", NULL);
        return;
    }
    gw_match_result_t res = gw_routes_match(self->routes, GW_HOST_ANY, method,
                                            r->path, &m, allow, sizeof allow);
    if (res == GW_MATCH_NO_PATH) {
        if (s_resolve_host(self, r, &kind) < 0)
            return;
        res = gw_routes_match(self->routes, kind, method, r->path, &m, allow,
                              sizeof allow);
        if (r->tenant &&
            s_tenant_access(self, r, res == GW_MATCH_FOUND ? m.route : NULL) <
                0)
            return;
    }
    if (res == GW_MATCH_NO_PATH) {
        snprintf(msg, sizeof msg, "no route for %.16s %.*s", method,
                 GW_ROUTE_PARAM_MAX * 2, r->path);
        s_error(r, 0, KL_NOT_FOUND, msg, NULL);
        return;
    }
    if (res == GW_MATCH_BAD_METHOD) {
        snprintf(msg, sizeof msg, "method %.16s not allowed here", method);
        snprintf(hdr, sizeof hdr, "Allow: %s\r\n", allow);
        s_error(r, 405, KL_UNIMPLEMENTED, msg, hdr);
        return;
    }
    r->route = m.index;
    if (s_authenticate(self, r, m.route) < 0)
        return;
    if (r->tenant && s_entitle(self, r, m.route) < 0)
        return;

    switch (m.route->local) {
    case GW_LOCAL_HEALTHZ: {
        static const char ok[] = "{\"status\":\"ok\"}";
        s_send_json(r, 200, ok, sizeof ok - 1);
        return;
    }
    case GW_LOCAL_READYZ:
        s_readyz(self, r);
        return;
    case GW_LOCAL_METRICS:
        s_metrics(self, r);
        return;
    case GW_LOCAL_TENANT_SELF:
        s_send_json(r, 200, r->tenant->json, r->tenant->json_len);
        return;
    case GW_LOCAL_ENTITLEMENTS:
        s_send_json(r, 200, r->ents->json, r->ents->json_len);
        return;
    case GW_LOCAL_EXPORT:
        s_export(self, r);
        return;
    case GW_LOCAL_NONE:
        break;
    }
    /* A route of the route file: an HTTP upstream, or an rpc with its own
     * timeout. Built-in rpc routes use KOWLOON_RPC_TIMEOUT_MS. */
    const gw_route_file_target_t *target =
        m.index >= self->n_builtin
            ? gw_route_file_target(self->route_file, m.index - self->n_builtin)
            : NULL;
    if (target && target->upstream) {
        gw_upstream_req_t up = {
            .upstream = target->upstream,
            .timeout_ms = target->timeout_ms,
            .path = r->path,
            .query = r->ri->query_string,
            .request_id = r->rid,
            .tenant_id = r->tenant ? r->tenant->msg->id : NULL,
            .subdomain = r->tenant ? r->subdomain : NULL,
            .plan = r->tenant ? r->tenant->msg->plan : NULL,
        };
        r->status = gw_upstream_forward(self->upstream, r->conn, &up);
        return;
    }
    s_call(self, r, &m,
           target && target->timeout_ms > 0 ? target->timeout_ms
                                            : self->rpc_timeout_ms);
}

static void
s_access_log(s_req_t *r, int64_t us)
{
    char fields[1024];
    size_t len = 0;
    int n = snprintf(fields, sizeof fields, "\"method\":\"%.16s\",\"path\":\"",
                     r->ri->request_method);
    len = (size_t)n;
    gw_reply_json_escape(fields, &len, sizeof fields - 96,
                         r->path ? r->path : "");
    snprintf(fields + len, sizeof fields - len,
             "\",\"status\":%d,\"duration_ms\":%.3f", r->status,
             (double)us / 1000.0);
    kl_log_write_fields(KL_INFO, fields, "request");
}

static int
s_begin_request(struct mg_connection *conn)
{
    gw_server_t *self = mg_get_user_data(mg_get_context(conn));
    s_req_t r;
    struct timespec t1;

    memset(&r, 0, offsetof(s_req_t, subdomain));
    r.subdomain[0] = '\0';
    r.tenant = NULL;
    r.ents = NULL;
    r.principal[0] = '\0';
    clock_gettime(CLOCK_MONOTONIC, &r.t0);
    r.conn = conn;
    r.ri = mg_get_request_info(conn);
    r.path = r.ri->local_uri;
    r.route = gw_routes_count(self->routes);
    gw_request_id_pick(mg_get_header(conn, "X-Request-Id"), r.rid);
    kl_log_set_context(r.rid, NULL);

    s_handle(self, &r);

    clock_gettime(CLOCK_MONOTONIC, &t1);
    int64_t us = (int64_t)(t1.tv_sec - r.t0.tv_sec) * 1000000 +
                 (t1.tv_nsec - r.t0.tv_nsec) / 1000;
    if (!r.status)
        r.status = 500; /* cannot happen: every branch answers */
    gw_metrics_observe(self->metrics, r.route, r.status, us);
    if (kl_log_enabled(KL_INFO))
        s_access_log(&r, us);
    gw_ent_release(&r.ents);
    gw_tenant_release(&r.tenant);
    kl_log_clear_context();
    return r.status;
}

static int
s_log_message(const struct mg_connection *conn, const char *message)
{
    KL_LOG(KL_WARN, "civetweb: %s", message);
    return 1;
}

static void
s_on_event(const Kowloon__Events__ChangeEvent *event, void *user)
{
    gw_server_t *self = user;
    if (!event)
        KL_LOG(KL_INFO, "event subscription (re)started, tenant and "
                        "entitlements caches dropped");
    else
        KL_LOG(KL_DEBUG, "event %s %s %s", event->kind, event->action,
               event->id);
    gw_tenant_cache_on_event(self->cache, event);
    gw_entitlements_on_event(self->ents, event);
}

/* ---- lifecycle -------------------------------------------------------- */

static int
s_start_http(gw_server_t *self, kl_status_t *status)
{
    char threads[16], errbuf[256] = "";
    unsigned code = 0;
    snprintf(threads, sizeof threads, "%lld",
             (long long)kl_config_int(self->cfg, KL_CFG_HTTP_THREADS));
    const char *options[] = {
        "listening_ports",
        kl_config_str(self->cfg, KL_CFG_HTTP_LISTEN),
        "num_threads",
        threads,
        "request_timeout_ms",
        "30000",
        "enable_keep_alive",
        "yes",
        "keep_alive_timeout_ms",
        "30000",
        /* Request line plus headers: larger ones are refused (413/431)
         * before any of our code runs. */
        "max_request_size",
        "16384",
        "listen_backlog",
        "1024",
        "connection_queue",
        "1024",
        "tcp_nodelay",
        "1",
        NULL,
    };
    struct mg_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.begin_request = s_begin_request;
    cb.log_message = s_log_message;
    struct mg_init_data init = {&cb, self, options};
    struct mg_error_data err = {&code, errbuf, sizeof errbuf};
    self->mg = mg_start2(&init, &err);
    if (!self->mg)
        return kl_status_set(status, KL_UNAVAILABLE,
                             "KOWLOON_HTTP_LISTEN: cannot serve on \"%s\": %s",
                             kl_config_str(self->cfg, KL_CFG_HTTP_LISTEN),
                             errbuf[0] ? errbuf : "mg_start2() failed");
    return 0;
}

/* The cache's backend: FlagsService.Evaluate (idempotent). */
static int
s_evaluate(void *user, const char *tenant_id, const char *plan,
           const kl_call_ctx_t *ctx, Kowloon__Flags__Entitlements **out,
           kl_status_t *status)
{
    gw_server_t *self = user;
    Kowloon__Flags__EvaluateRequest req =
        KOWLOON__FLAGS__EVALUATE_REQUEST__INIT;
    kl_call_opts_t opts = {self->rpc_timeout_ms, true, ctx};
    ProtobufCMessage *reply = NULL;

    req.tenant_id = (char *)tenant_id;
    req.plan = (char *)plan;
    *out = NULL;
    int rc = kl_rpc_client_call(self->flags, "Evaluate", &req.base, &opts,
                                &reply, status);
    if (rc < 0)
        return rc;
    *out = (Kowloon__Flags__Entitlements *)reply;
    return 0;
}

/* A client of service at the endpoints of setting id (named env). With
 * an rpc env, the env makes (and owns) it. */
static int
s_new_client(const kl_config_t *cfg, kl_rpc_env_t *rpc, kl_config_id_t id,
             const char *env, const ProtobufCServiceDescriptor *service,
             kl_rpc_client_t **out, kl_status_t *status)
{
    kl_status_t st;
    if (rpc) {
        *out = kl_rpc_env_client(rpc, id, service, &st);
        if (!*out)
            return kl_status_set(status, KL_INVALID_ARGUMENT, "%s", st.message);
        return 0;
    }
    size_t n_ep = kl_config_list_len(cfg, id);
    const char **eps = kl_calloc(n_ep ? n_ep : 1, sizeof(char *));
    for (size_t i = 0; i < n_ep; i++)
        eps[i] = kl_config_list_at(cfg, id, i);
    kl_rpc_client_opts_t copts = {
        .endpoints = eps,
        .n_endpoints = n_ep,
        .max_message_bytes =
            (size_t)kl_config_int(cfg, KL_CFG_RPC_MAX_MESSAGE_BYTES),
    };
    *out = kl_rpc_client_new(service, &copts, &st);
    free(eps);
    if (!*out)
        return kl_status_set(status, KL_INVALID_ARGUMENT, "%s: %s", env,
                             st.message);
    return 0;
}

gw_server_t *
gw_server_new(const kl_config_t *cfg, kl_status_t *status)
{
    return gw_server_new_env(cfg, NULL, status);
}

gw_server_t *
gw_server_new_env(const kl_config_t *cfg, kl_rpc_env_t *rpc,
                  kl_status_t *status)
{
    static int s_mg_initialised;
    gw_server_t *self = kl_calloc(1, sizeof *self);
    size_t n_routes, n_extra = 0;
    const gw_route_t *builtin = gw_routes_table(&self->n_builtin);

    self->cfg = cfg;
    self->rpc = rpc;
    self->base_domain = kl_config_str(cfg, KL_CFG_BASE_DOMAIN);
    self->rpc_timeout_ms = kl_config_int(cfg, KL_CFG_RPC_TIMEOUT_MS);
    self->grace_ms = kl_config_int(cfg, KL_CFG_PAST_DUE_GRACE_S) * 1000;
    self->max_body = kl_config_int(cfg, KL_CFG_HTTP_MAX_BODY_BYTES);

    self->trusted = gw_cidr_list_new();
    for (size_t i = 0; i < kl_config_list_len(cfg, KL_CFG_TRUSTED_PROXIES);
         i++) {
        kl_status_t st;
        if (gw_cidr_list_add(self->trusted,
                             kl_config_list_at(cfg, KL_CFG_TRUSTED_PROXIES, i),
                             &st) < 0) {
            kl_status_set(status, KL_INVALID_ARGUMENT,
                          "KOWLOON_TRUSTED_PROXIES: %s", st.message);
            goto fail;
        }
    }
    self->auth = gw_auth_new(kl_config_str(cfg, KL_CFG_ADMIN_TOKEN));
    const char *rf_path = kl_config_str(cfg, KL_CFG_ROUTES_FILE);
    if (rf_path && *rf_path) {
        static const ProtobufCServiceDescriptor *const services[] = {
            &kowloon__tenant__tenant_service__descriptor,
            &kowloon__flags__flags_service__descriptor,
            &kowloon__workspace__workspace_service__descriptor,
        };
        gw_route_file_opts_t ro = {services,
                                   sizeof services / sizeof services[0],
                                   builtin, self->n_builtin};
        kl_status_t st;
        self->route_file = gw_route_file_load(rf_path, &ro, &st);
        if (!self->route_file) {
            kl_status_set(status, KL_INVALID_ARGUMENT,
                          "KOWLOON_ROUTES_FILE: %s", st.message);
            goto fail;
        }
    }
    const gw_route_t *extra = gw_route_file_routes(self->route_file, &n_extra);
    n_routes = self->n_builtin + n_extra;
    self->table = kl_calloc(n_routes, sizeof(gw_route_t));
    memcpy(self->table, builtin, self->n_builtin * sizeof(gw_route_t));
    if (n_extra)
        memcpy(self->table + self->n_builtin, extra,
               n_extra * sizeof(gw_route_t));
    for (size_t i = 0; i < n_extra; i++)
        if (gw_route_file_target(self->route_file, i)->upstream &&
            !self->upstream)
            self->upstream = gw_upstream_new(
                (size_t)kl_config_int(cfg, KL_CFG_HTTP_THREADS));
    const gw_route_t *table = self->table;
    self->routes = gw_routes_new_ext(table, n_routes, self->n_builtin, status);
    if (!self->routes)
        goto fail;
    self->route_labels = kl_calloc(n_routes, sizeof(char *));
    for (size_t i = 0; i < n_routes; i++)
        self->route_labels[i] = table[i].pattern;
    self->metrics = gw_metrics_new(self->route_labels, n_routes);
    const char **methods = kl_calloc(n_routes ? n_routes : 1, sizeof(char *));
    for (size_t i = 0; i < n_routes; i++)
        methods[i] = table[i].method;
    gw_metrics_set_methods(self->metrics, methods);
    free(methods);

    if (s_new_client(cfg, rpc, KL_CFG_TENANT_ENDPOINTS,
                     "KOWLOON_TENANT_ENDPOINTS",
                     &kowloon__tenant__tenant_service__descriptor,
                     &self->tenant, status) < 0 ||
        s_new_client(
            cfg, rpc, KL_CFG_TENANT_ENDPOINTS, "KOWLOON_TENANT_ENDPOINTS",
            &kowloon__rpc__health__descriptor, &self->health, status) < 0)
        goto fail;

    self->tenant_rpc = gw_tenant_rpc_new(self->tenant, self->rpc_timeout_ms);
    gw_tenant_backend_t backend = gw_tenant_rpc_backend(self->tenant_rpc);
    int64_t ttl = kl_config_int(cfg, KL_CFG_TENANT_CACHE_TTL_MS);
    gw_tenant_cache_opts_t opts = {
        ttl, ttl < S_NEGATIVE_TTL_MS ? ttl : S_NEGATIVE_TTL_MS,
        (size_t)kl_config_int(cfg, KL_CFG_TENANT_CACHE_MAX_ENTRIES),
        S_STALE_RETRY_MS};
    self->cache = gw_tenant_cache_new(&opts, &backend);

    self->scheme = kl_strdup(kl_config_str(cfg, KL_CFG_PUBLIC_SCHEME));
    if (s_new_client(cfg, rpc, KL_CFG_FLAGS_ENDPOINTS,
                     "KOWLOON_FLAGS_ENDPOINTS",
                     &kowloon__flags__flags_service__descriptor, &self->flags,
                     status) < 0 ||
        s_new_client(cfg, rpc, KL_CFG_WORKSPACE_ENDPOINTS,
                     "KOWLOON_WORKSPACE_ENDPOINTS",
                     &kowloon__workspace__workspace_service__descriptor,
                     &self->workspace, status) < 0 ||
        s_new_client(cfg, rpc, KL_CFG_BILLING_ENDPOINTS,
                     "KOWLOON_BILLING_ENDPOINTS",
                     &kowloon__billing__billing_service__descriptor,
                     &self->billing, status) < 0)
        goto fail;
    gw_entitlements_opts_t eopts = {
        kl_config_int(cfg, KL_CFG_ENTITLEMENTS_TTL_MS), S_STALE_RETRY_MS,
        (size_t)kl_config_int(cfg, KL_CFG_TENANT_CACHE_MAX_ENTRIES),
        kl_config_int(cfg, KL_CFG_GATEWAY_INSTANCES), NULL};
    gw_entitlements_backend_t ebackend = {s_evaluate, self};
    self->ents = gw_entitlements_new(&eopts, &ebackend);

    const char *redis = kl_config_str(cfg, KL_CFG_REDIS_URL);
    if (redis && *redis) {
        kl_status_t st;
        self->events = kl_events_subscribe(
            redis, kl_config_str(cfg, KL_CFG_EVENTS_CHANNEL), s_on_event, self,
            &st);
        if (!self->events) {
            kl_status_set(status, KL_INVALID_ARGUMENT, "KOWLOON_REDIS_URL: %s",
                          st.message);
            goto fail;
        }
    } else {
        KL_LOG(KL_WARN, "KOWLOON_REDIS_URL is empty: no change events, "
                        "cached tenants live their full TTL");
    }

    if (!s_mg_initialised) {
        mg_init_library(0);
        s_mg_initialised = 1;
    }
    if (s_start_http(self, status) < 0)
        goto fail;
    return self;
fail:
    gw_server_destroy(&self);
    return NULL;
}

void
gw_server_destroy(gw_server_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gw_server_t *self = *self_p;
    /* civetweb first: no request may run while its objects go away. */
    if (self->mg)
        mg_stop(self->mg);
    kl_events_destroy(&self->events);
    gw_entitlements_destroy(&self->ents);
    /* Clients made by an rpc env are the env's to destroy. */
    if (!self->rpc) {
        kl_rpc_client_destroy(&self->billing);
        kl_rpc_client_destroy(&self->workspace);
        kl_rpc_client_destroy(&self->flags);
    }
    free(self->scheme);
    gw_tenant_cache_destroy(&self->cache);
    gw_tenant_rpc_destroy(&self->tenant_rpc);
    if (!self->rpc) {
        kl_rpc_client_destroy(&self->health);
        kl_rpc_client_destroy(&self->tenant);
    }
    gw_metrics_destroy(&self->metrics);
    free(self->route_labels);
    gw_upstream_destroy(&self->upstream);
    gw_route_file_destroy(&self->route_file);
    free(self->table);
    gw_routes_destroy(&self->routes);
    gw_auth_destroy(&self->auth);
    gw_cidr_list_destroy(&self->trusted);
    KL_FREE(self_p);
}
