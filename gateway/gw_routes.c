/*
 * gw_routes: the route table and a matcher over compiled patterns. The
 * table is small (tens of lines), so a match is a linear scan that walks
 * the path in place without allocating.
 */
#include "gw_routes.h"

#include "kl_alloc.h"
#include "kowloon/billing.pb-c.h"
#include "kowloon/flags.pb-c.h"
#include "kowloon/tenant.pb-c.h"
#include "kowloon/workspace.pb-c.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TENANT_SVC (&kowloon__tenant__tenant_service__descriptor)
#define FLAGS_SVC (&kowloon__flags__flags_service__descriptor)
#define WS_SVC (&kowloon__workspace__workspace_service__descriptor)
#define BILL_SVC (&kowloon__billing__billing_service__descriptor)
#define BILL_FLAGS (GW_ROUTE_UNPAID_OK | GW_ROUTE_CLIENT_PLAN)

/* clang-format off */
static const gw_route_t s_table[] = {
/*  method    pattern                                       host            service     local                 rpc             idem   feature auth  flags */
    {"GET",    "/healthz",                                  GW_HOST_ANY,    NULL,       GW_LOCAL_HEALTHZ,     NULL,           true,  NULL, GW_AUTH_NONE, 0},
    {"GET",    "/readyz",                                   GW_HOST_ANY,    NULL,       GW_LOCAL_READYZ,      NULL,           true,  NULL, GW_AUTH_NONE, 0},
    {"GET",    "/metrics",                                  GW_HOST_ANY,    NULL,       GW_LOCAL_METRICS,     NULL,           true,  NULL, GW_AUTH_NONE, 0},
    {"POST",   "/admin/v1/tenants",                         GW_HOST_APEX,   TENANT_SVC, GW_LOCAL_NONE,        "Create",       false, NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"GET",    "/admin/v1/tenants",                         GW_HOST_APEX,   TENANT_SVC, GW_LOCAL_NONE,        "List",         true,  NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"GET",    "/admin/v1/tenants/{id}",                    GW_HOST_APEX,   TENANT_SVC, GW_LOCAL_NONE,        "Get",          true,  NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"PATCH",  "/admin/v1/tenants/{id}",                    GW_HOST_APEX,   TENANT_SVC, GW_LOCAL_NONE,        "Update",       true,  NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"DELETE", "/admin/v1/tenants/{id}",                    GW_HOST_APEX,   TENANT_SVC, GW_LOCAL_NONE,        "Delete",       false, NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"POST",   "/admin/v1/tenants/{id}:suspend",            GW_HOST_APEX,   TENANT_SVC, GW_LOCAL_NONE,        "Suspend",      true,  NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"POST",   "/admin/v1/tenants/{id}:resume",             GW_HOST_APEX,   TENANT_SVC, GW_LOCAL_NONE,        "Resume",       true,  NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"POST",   "/admin/v1/tenants/{tenant_id}/api-keys",    GW_HOST_APEX,   TENANT_SVC, GW_LOCAL_NONE,        "CreateApiKey", false, NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"GET",    "/admin/v1/tenants/{id}/api-keys",           GW_HOST_APEX,   TENANT_SVC, GW_LOCAL_NONE,        "ListApiKeys",  true,  NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"DELETE", "/admin/v1/tenants/{tenant_id}/api-keys/{key_id}", GW_HOST_APEX, TENANT_SVC, GW_LOCAL_NONE,    "DeleteApiKey", false, NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"GET",    "/api/v1/tenant",                            GW_HOST_TENANT, NULL,       GW_LOCAL_TENANT_SELF, NULL,           true,  NULL, GW_AUTH_API_KEY, 0},
    /* plans, overrides, flags (services/flags) */
    {"GET",    "/admin/v1/plans",                           GW_HOST_APEX,   FLAGS_SVC,  GW_LOCAL_NONE,        "ListPlans",    true,  NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"POST",   "/admin/v1/plans",                           GW_HOST_APEX,   FLAGS_SVC,  GW_LOCAL_NONE,        "CreatePlan",   false, NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"GET",    "/admin/v1/plans/{name}",                    GW_HOST_APEX,   FLAGS_SVC,  GW_LOCAL_NONE,        "GetPlan",      true,  NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"PATCH",  "/admin/v1/plans/{name}",                    GW_HOST_APEX,   FLAGS_SVC,  GW_LOCAL_NONE,        "UpdatePlan",   true,  NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"DELETE", "/admin/v1/plans/{name}",                    GW_HOST_APEX,   FLAGS_SVC,  GW_LOCAL_NONE,        "DeletePlan",   false, NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"GET",    "/admin/v1/tenants/{tenant_id}/overrides",   GW_HOST_APEX,   FLAGS_SVC,  GW_LOCAL_NONE,        "ListOverrides", true, NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"PUT",    "/admin/v1/tenants/{tenant_id}/overrides/{key}", GW_HOST_APEX, FLAGS_SVC, GW_LOCAL_NONE,       "SetOverride",  true,  NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"DELETE", "/admin/v1/tenants/{tenant_id}/overrides/{key}", GW_HOST_APEX, FLAGS_SVC, GW_LOCAL_NONE,       "ClearOverride", false, NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"GET",    "/admin/v1/flags",                           GW_HOST_APEX,   FLAGS_SVC,  GW_LOCAL_NONE,        "ListFlags",    true,  NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"POST",   "/admin/v1/flags",                           GW_HOST_APEX,   FLAGS_SVC,  GW_LOCAL_NONE,        "CreateFlag",   false, NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"GET",    "/admin/v1/flags/{key}",                     GW_HOST_APEX,   FLAGS_SVC,  GW_LOCAL_NONE,        "GetFlag",      true,  NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"PATCH",  "/admin/v1/flags/{key}",                     GW_HOST_APEX,   FLAGS_SVC,  GW_LOCAL_NONE,        "UpdateFlag",   true,  NULL, GW_AUTH_ADMIN_TOKEN, 0},
    {"DELETE", "/admin/v1/flags/{key}",                     GW_HOST_APEX,   FLAGS_SVC,  GW_LOCAL_NONE,        "DeleteFlag",   false, NULL, GW_AUTH_ADMIN_TOKEN, 0},
    /* the tenant's own entitlements and usage */
    {"GET",    "/api/v1/entitlements",                      GW_HOST_TENANT, NULL,       GW_LOCAL_ENTITLEMENTS, NULL,          true,  NULL, GW_AUTH_API_KEY, 0},
    {"GET",    "/api/v1/usage",                             GW_HOST_TENANT, FLAGS_SVC,  GW_LOCAL_NONE,        "GetUsage",     true,  NULL, GW_AUTH_API_KEY, 0},
    /* the product: services/workspace */
    {"POST",   "/api/v1/projects",                          GW_HOST_TENANT, WS_SVC,     GW_LOCAL_NONE,        "CreateProject", false, NULL, GW_AUTH_API_KEY, 0},
    {"GET",    "/api/v1/projects",                          GW_HOST_TENANT, WS_SVC,     GW_LOCAL_NONE,        "ListProjects", true,  NULL, GW_AUTH_API_KEY, 0},
    {"GET",    "/api/v1/projects/{id}",                     GW_HOST_TENANT, WS_SVC,     GW_LOCAL_NONE,        "GetProject",   true,  NULL, GW_AUTH_API_KEY, 0},
    {"PATCH",  "/api/v1/projects/{id}",                     GW_HOST_TENANT, WS_SVC,     GW_LOCAL_NONE,        "UpdateProject", true, NULL, GW_AUTH_API_KEY, 0},
    {"DELETE", "/api/v1/projects/{id}",                     GW_HOST_TENANT, WS_SVC,     GW_LOCAL_NONE,        "DeleteProject", false, NULL, GW_AUTH_API_KEY, 0},
    {"POST",   "/api/v1/projects/{project_id}/tasks",       GW_HOST_TENANT, WS_SVC,     GW_LOCAL_NONE,        "CreateTask",   false, NULL, GW_AUTH_API_KEY, 0},
    {"GET",    "/api/v1/projects/{project_id}/tasks",       GW_HOST_TENANT, WS_SVC,     GW_LOCAL_NONE,        "ListTasks",    true,  NULL, GW_AUTH_API_KEY, 0},
    {"GET",    "/api/v1/projects/{project_id}/tasks/{id}",  GW_HOST_TENANT, WS_SVC,     GW_LOCAL_NONE,        "GetTask",      true,  NULL, GW_AUTH_API_KEY, 0},
    {"PATCH",  "/api/v1/projects/{project_id}/tasks/{id}",  GW_HOST_TENANT, WS_SVC,     GW_LOCAL_NONE,        "UpdateTask",   true,  NULL, GW_AUTH_API_KEY, 0},
    {"DELETE", "/api/v1/projects/{project_id}/tasks/{id}",  GW_HOST_TENANT, WS_SVC,     GW_LOCAL_NONE,        "DeleteTask",   false, NULL, GW_AUTH_API_KEY, 0},
    {"GET",    "/api/export",                               GW_HOST_TENANT, NULL,       GW_LOCAL_EXPORT,      NULL,           true,  "data_export", GW_AUTH_API_KEY, 0},
    {"GET",    "/api/advanced-reports",                     GW_HOST_TENANT, WS_SVC,     GW_LOCAL_NONE,        "AdvancedReports", true, "advanced_reports", GW_AUTH_API_KEY, 0},
    /* billing (services/billing): reachable while the tenant owes, so
     * that it can pay; the plan in these bodies is the one asked for */
    {"GET",    "/api/v1/billing",                           GW_HOST_TENANT, BILL_SVC,   GW_LOCAL_NONE,        "GetBilling",   true,  NULL, GW_AUTH_API_KEY, BILL_FLAGS},
    {"POST",   "/api/v1/billing/subscription",              GW_HOST_TENANT, BILL_SVC,   GW_LOCAL_NONE,        "StartSubscription", false, NULL, GW_AUTH_API_KEY, BILL_FLAGS},
    {"POST",   "/api/v1/billing/checkout",                  GW_HOST_TENANT, BILL_SVC,   GW_LOCAL_NONE,        "CreateCheckoutSession", false, NULL, GW_AUTH_API_KEY, BILL_FLAGS},
    {"POST",   "/api/v1/billing/portal",                    GW_HOST_TENANT, BILL_SVC,   GW_LOCAL_NONE,        "CreatePortalSession", false, NULL, GW_AUTH_API_KEY, BILL_FLAGS},
    {"POST",   "/api/v1/billing/alipay",                    GW_HOST_TENANT, BILL_SVC,   GW_LOCAL_NONE,        "CreateAlipayPayment", false, NULL, GW_AUTH_API_KEY, BILL_FLAGS},
    {"POST",   "/api/v1/billing/plan",                      GW_HOST_TENANT, BILL_SVC,   GW_LOCAL_NONE,        "ChangePlan",   false, NULL, GW_AUTH_API_KEY, BILL_FLAGS},
    {"POST",   "/api/v1/billing/cancel",                    GW_HOST_TENANT, BILL_SVC,   GW_LOCAL_NONE,        "CancelAtPeriodEnd", false, NULL, GW_AUTH_API_KEY, BILL_FLAGS},
    {"GET",    "/admin/v1/tenants/{tenant_id}/billing",     GW_HOST_APEX,   BILL_SVC,   GW_LOCAL_NONE,        "GetTenantBilling", true, NULL, GW_AUTH_ADMIN_TOKEN, 0},
    /* Stripe's events: the raw body and its signature, no auth (billing
     * verifies the signature), not rate limited (no tenant) */
    {"POST",   "/webhooks/stripe",                          GW_HOST_APEX,   BILL_SVC,   GW_LOCAL_NONE,        "HandleWebhook", true, NULL, GW_AUTH_NONE,    GW_ROUTE_WEBHOOK},
};
/* clang-format on */

const gw_route_t *
gw_routes_table(size_t *n)
{
    *n = sizeof s_table / sizeof s_table[0];
    return s_table;
}

typedef struct {
    bool param;   /* a {name} segment */
    bool rest;    /* a {name...} segment: the rest of the path */
    char *text;   /* the literal, or the parameter's name */
    char *suffix; /* after "}": a custom verb such as ":suspend", or "" */
    size_t suffix_len;
    size_t text_len;
} s_seg_t;

typedef struct {
    s_seg_t *segs;
    size_t n_segs;
    const ProtobufCMethodDescriptor *method; /* NULL for local routes */
} s_compiled_t;

struct gw_routes {
    const gw_route_t *table; /* borrowed */
    s_compiled_t *compiled;  /* one per table line */
    size_t n;
};

static void
s_compiled_free(s_compiled_t *c)
{
    for (size_t i = 0; i < c->n_segs; i++) {
        free(c->segs[i].text);
        free(c->segs[i].suffix);
    }
    free(c->segs);
}

static bool
s_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

/* Splits pattern into segments; a last {name...} segment is accepted
 * when allow_rest. Returns 0 or -KL_INVALID_ARGUMENT. */
static int
s_compile(const char *pattern, bool allow_rest, s_compiled_t *c,
          kl_status_t *status)
{
    const char *p = pattern;
    size_t n_params = 0;

    if (!p || p[0] != '/' || p[1] == '\0')
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "route \"%s\": pattern must start with / and "
                             "name a path",
                             p ? p : "(null)");
    while (*p == '/') {
        const char *start = ++p;
        const char *end = strchr(start, '/');
        size_t len = end ? (size_t)(end - start) : strlen(start);
        s_seg_t seg = {0};

        if (len == 0)
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "route \"%s\": empty segment", pattern);
        if (start[0] == '{') {
            const char *close = memchr(start, '}', len);
            size_t name_len = close ? (size_t)(close - start - 1) : 0;
            if (allow_rest && close && !end && close == start + len - 1 &&
                name_len > 3 && memcmp(close - 3, "...", 3) == 0) {
                seg.rest = true;
                name_len -= 3;
            }
            if (!close || name_len == 0)
                return kl_status_set(status, KL_INVALID_ARGUMENT,
                                     "route \"%s\": bad parameter", pattern);
            for (size_t i = 0; i < name_len; i++)
                if (!s_name_char(start[1 + i]))
                    return kl_status_set(status, KL_INVALID_ARGUMENT,
                                         "route \"%s\": bad parameter name",
                                         pattern);
            seg.param = true;
            seg.text = kl_strndup(start + 1, name_len);
            seg.text_len = name_len;
            seg.suffix_len = seg.rest ? 0 : len - name_len - 2;
            seg.suffix = kl_strndup(close + 1, seg.suffix_len);
            if (memchr(seg.suffix, '{', seg.suffix_len) ||
                memchr(seg.suffix, '}', seg.suffix_len) ||
                ++n_params > GW_ROUTE_MAX_PARAMS) {
                free(seg.text);
                free(seg.suffix);
                return kl_status_set(status, KL_INVALID_ARGUMENT,
                                     "route \"%s\": bad parameter", pattern);
            }
        } else {
            if (memchr(start, '{', len) || memchr(start, '}', len))
                return kl_status_set(status, KL_INVALID_ARGUMENT,
                                     "route \"%s\": stray brace", pattern);
            seg.text = kl_strndup(start, len);
            seg.text_len = len;
            seg.suffix = kl_strdup("");
        }
        c->segs = kl_realloc(c->segs, (c->n_segs + 1) * sizeof(s_seg_t));
        c->segs[c->n_segs++] = seg;
        p = start + len;
    }
    return 0;
}

/* Whether desc has a singular field name of type. */
static bool
s_has_field(const ProtobufCMessageDescriptor *desc, const char *name,
            ProtobufCType type)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(desc, name);
    return f && f->type == type && f->label != PROTOBUF_C_LABEL_REPEATED;
}

/* Checks r's flags against the rest of the line; method is the rpc's
 * descriptor, NULL on a local or upstream route. */
static int
s_check_flags(const gw_route_t *r, const ProtobufCMethodDescriptor *method,
              kl_status_t *status)
{
    const unsigned known =
        GW_ROUTE_WEBHOOK | GW_ROUTE_UNPAID_OK | GW_ROUTE_CLIENT_PLAN;
    const char *why = NULL;

    if (r->flags & ~known)
        why = "unknown flags";
    else if ((r->flags & GW_ROUTE_WEBHOOK) &&
             (!method ||
              !s_has_field(method->input, "payload", PROTOBUF_C_TYPE_BYTES) ||
              !s_has_field(method->input, "signature", PROTOBUF_C_TYPE_STRING)))
        why = "a webhook calls an rpc whose input has bytes payload and "
              "string signature";
    else if ((r->flags & GW_ROUTE_UNPAID_OK) && r->host != GW_HOST_TENANT)
        why = "only a tenant route can be served while the tenant owes";
    else if ((r->flags & GW_ROUTE_CLIENT_PLAN) && !method)
        why = "only an rpc route takes a plan";
    if (why)
        return kl_status_set(status, KL_INVALID_ARGUMENT, "route %s %s: %s",
                             r->method, r->pattern, why);
    return 0;
}

gw_routes_t *
gw_routes_new(const gw_route_t *table, size_t n, kl_status_t *status)
{
    return gw_routes_new_ext(table, n, n, status);
}

gw_routes_t *
gw_routes_new_ext(const gw_route_t *table, size_t n, size_t n_builtin,
                  kl_status_t *status)
{
    gw_routes_t *self = kl_calloc(1, sizeof *self);
    self->table = table;
    self->compiled = kl_calloc(n ? n : 1, sizeof(s_compiled_t));
    self->n = n;
    for (size_t i = 0; i < n; i++) {
        const gw_route_t *r = &table[i];
        s_compiled_t *c = &self->compiled[i];
        bool extra = i >= n_builtin;
        if (s_compile(r->pattern, extra, c, status) < 0)
            goto fail;
        if (!r->method || !*r->method) {
            kl_status_set(status, KL_INVALID_ARGUMENT,
                          "route \"%s\": no method", r->pattern);
            goto fail;
        }
        if (r->local != GW_LOCAL_NONE) {
            if (r->service || r->rpc) {
                kl_status_set(status, KL_INVALID_ARGUMENT,
                              "route %s %s: a local route names no rpc",
                              r->method, r->pattern);
                goto fail;
            }
            if (s_check_flags(r, NULL, status) < 0)
                goto fail;
            continue;
        }
        if (extra && !r->service && !r->rpc) {
            /* an HTTP upstream route of the route file */
            if (s_check_flags(r, NULL, status) < 0)
                goto fail;
            continue;
        }
        if (!r->service || !r->rpc) {
            kl_status_set(status, KL_INVALID_ARGUMENT,
                          "route %s %s: no service or rpc", r->method,
                          r->pattern);
            goto fail;
        }
        c->method = protobuf_c_service_descriptor_get_method_by_name(r->service,
                                                                     r->rpc);
        if (!c->method) {
            kl_status_set(status, KL_INVALID_ARGUMENT,
                          "route %s %s: %s has no method %s", r->method,
                          r->pattern, r->service->name, r->rpc);
            goto fail;
        }
        if (s_check_flags(r, c->method, status) < 0)
            goto fail;
    }
    return self;
fail:
    gw_routes_destroy(&self);
    return NULL;
}

void
gw_routes_destroy(gw_routes_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gw_routes_t *self = *self_p;
    for (size_t i = 0; i < self->n; i++)
        s_compiled_free(&self->compiled[i]);
    free(self->compiled);
    KL_FREE(self_p);
}

size_t
gw_routes_count(const gw_routes_t *self)
{
    return self->n;
}

const gw_route_t *
gw_routes_at(const gw_routes_t *self, size_t index)
{
    return index < self->n ? &self->table[index] : NULL;
}

/* Whether path matches c; fills m's params when m is not NULL. */
static bool
s_match(const s_compiled_t *c, const char *path, gw_route_match_t *m)
{
    const char *p = path;
    size_t n_params = 0;

    for (size_t i = 0; i < c->n_segs; i++) {
        const s_seg_t *seg = &c->segs[i];
        if (*p != '/')
            return false;
        const char *start = ++p;
        if (seg->rest) {
            /* The rest of the path, slashes included; its value is kept
             * only when it fits (upstream routes forward the whole path). */
            size_t rlen = strlen(start);
            if (rlen == 0)
                return false;
            if (m) {
                m->params[n_params].name = seg->text;
                if (rlen > GW_ROUTE_PARAM_MAX)
                    rlen = 0;
                memcpy(m->params[n_params].value, start, rlen);
                m->params[n_params].value[rlen] = '\0';
                m->n_params = n_params + 1;
            }
            return true;
        }
        const char *end = strchr(start, '/');
        size_t len = end ? (size_t)(end - start) : strlen(start);
        if (!seg->param) {
            if (len != seg->text_len || memcmp(start, seg->text, len) != 0)
                return false;
        } else {
            if (len <= seg->suffix_len ||
                memcmp(start + len - seg->suffix_len, seg->suffix,
                       seg->suffix_len) != 0)
                return false;
            size_t vlen = len - seg->suffix_len;
            if (vlen > GW_ROUTE_PARAM_MAX || memchr(start, ':', vlen))
                return false;
            if (m) {
                m->params[n_params].name = seg->text;
                memcpy(m->params[n_params].value, start, vlen);
                m->params[n_params].value[vlen] = '\0';
            }
            n_params++;
        }
        p = start + len;
    }
    if (*p != '\0')
        return false;
    if (m)
        m->n_params = n_params;
    return true;
}

gw_match_result_t
gw_routes_match(const gw_routes_t *self, gw_host_kind_t host,
                const char *method, const char *path, gw_route_match_t *m,
                char *allow, size_t allow_size)
{
    bool path_found = false;
    size_t allow_len = 0;

    if (allow && allow_size)
        allow[0] = '\0';
    if (!path)
        return GW_MATCH_NO_PATH;
    for (size_t i = 0; i < self->n; i++) {
        const gw_route_t *r = &self->table[i];
        if (r->host != host || !s_match(&self->compiled[i], path, NULL))
            continue;
        if (strcmp(r->method, method) == 0) {
            s_match(&self->compiled[i], path, m);
            m->route = r;
            m->index = i;
            m->method = self->compiled[i].method;
            return GW_MATCH_FOUND;
        }
        path_found = true;
        if (allow && allow_size) {
            /* Skip a method already listed (two patterns, one path). */
            bool dup = false;
            for (size_t j = 0; j < i && !dup; j++)
                dup = self->table[j].host == host &&
                      strcmp(self->table[j].method, r->method) == 0 &&
                      s_match(&self->compiled[j], path, NULL);
            if (!dup) {
                int w = snprintf(allow + allow_len, allow_size - allow_len,
                                 "%s%s", allow_len ? ", " : "", r->method);
                if (w > 0 && (size_t)w < allow_size - allow_len)
                    allow_len += (size_t)w;
            }
        }
    }
    return path_found ? GW_MATCH_BAD_METHOD : GW_MATCH_NO_PATH;
}
