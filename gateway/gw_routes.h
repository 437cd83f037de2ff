/*
 * gw_routes: the gateway's one declarative route table and its matcher.
 *
 * A route is one line: method, path pattern, which host serves it, the
 * service and rpc it calls (or a local handler), whether the rpc is
 * idempotent (may be retried on another instance), the feature the
 * tenant's entitlements must include (a plan feature, an override or a
 * flag key that is on; enforced by gw_server: 403), and how the caller
 * authenticates.
 *
 * Tenant routes (GW_HOST_TENANT) need no column for the tenant's identity:
 * gw_server overwrites the string fields tenant_id and plan of any such
 * route's input message with the resolved tenant's (by descriptor,
 * whatever the client sent), except plan on GW_ROUTE_CLIENT_PLAN routes.
 *
 * The last column, flags, holds the rare exceptions (gw_route_flag_t).
 *
 * Patterns are literal segments and {name} segments; a {name} segment may
 * be followed by a custom verb, "/admin/v1/tenants/{id}:suspend". A
 * parameter matches one non-empty segment without ':' (so a custom verb is
 * never swallowed by a plain {id}), at most GW_ROUTE_PARAM_MAX bytes.
 */
#ifndef GW_ROUTES_H
#define GW_ROUTES_H

#include "kl_code.h"

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>

typedef enum {
    GW_HOST_APEX,   /* KOWLOON_BASE_DOMAIN itself: the admin API */
    GW_HOST_TENANT, /* <sub>.<base> */
    GW_HOST_ANY     /* any host, before tenant resolution (/healthz) */
} gw_host_kind_t;

typedef enum {
    GW_AUTH_NONE,
    GW_AUTH_ADMIN_TOKEN, /* Authorization: Bearer <KOWLOON_ADMIN_TOKEN> */
    GW_AUTH_API_KEY      /* Authorization: Bearer <the tenant's API key> */
} gw_auth_kind_t;

typedef enum {
    GW_LOCAL_NONE = 0,    /* an rpc route */
    GW_LOCAL_TENANT_SELF, /* GET /api/v1/tenant: the resolved tenant */
    GW_LOCAL_HEALTHZ,
    GW_LOCAL_READYZ,
    GW_LOCAL_METRICS,
    GW_LOCAL_ENTITLEMENTS, /* GET /api/v1/entitlements: from the cache */
    GW_LOCAL_EXPORT        /* GET /api/export: WorkspaceService.Export
                              page after page, streamed */
} gw_local_t;

/* Bits of gw_route_t.flags. */
typedef enum {
    /* A webhook: the body is not transcoded. The rpc's input message has a
     * bytes field "payload", which gets the body exactly as received, and a
     * string field "signature", which gets the Stripe-Signature header (""
     * when absent). OK answers 200 {"received":true}; INVALID_ARGUMENT 400;
     * any other failure 5xx, so that the sender retries. */
    GW_ROUTE_WEBHOOK = 1u << 0,
    /* Served to a tenant that otherwise gets 402 (past_due beyond the
     * grace, suspended, any status but the serving ones and deleted): the
     * billing routes, through which it pays. Tenant routes only. */
    GW_ROUTE_UNPAID_OK = 1u << 1,
    /* The input's string field "plan" is the client's (a plan to move to),
     * not overwritten with the tenant's current plan. */
    GW_ROUTE_CLIENT_PLAN = 1u << 2
} gw_route_flag_t;

typedef struct {
    const char *method;  /* "GET", "POST", ... */
    const char *pattern; /* "/admin/v1/tenants/{id}:suspend" */
    gw_host_kind_t host;
    const ProtobufCServiceDescriptor *service; /* NULL for a local route */
    gw_local_t local;
    const char *rpc;     /* method name in the .proto; NULL when local */
    bool idempotent;     /* may be retried on another instance */
    const char *feature; /* plan feature required; NULL for none */
    gw_auth_kind_t auth;
    unsigned flags; /* gw_route_flag_t bits; 0 for most routes */
} gw_route_t;

/* The gateway's table (static storage). */
const gw_route_t *gw_routes_table(size_t *n);

#define GW_ROUTE_MAX_PARAMS 4
#define GW_ROUTE_PARAM_MAX 128

typedef struct {
    const gw_route_t *route;
    size_t index; /* position in the table (metrics label) */
    const ProtobufCMethodDescriptor *method; /* NULL for local routes */
    size_t n_params;
    struct {
        const char *name; /* borrowed from the compiled table */
        char value[GW_ROUTE_PARAM_MAX + 1];
    } params[GW_ROUTE_MAX_PARAMS];
} gw_route_match_t;

typedef struct gw_routes gw_routes_t;

/* Compiles table (borrowed; must outlive the result). Checks every line:
 * pattern syntax, the rpc exists in the service, the flags fit the line (a
 * webhook is an rpc route whose input has the two fields; the others are
 * tenant rpc routes). NULL + INVALID_ARGUMENT naming the line on error. */
gw_routes_t *gw_routes_new(const gw_route_t *table, size_t n,
                           kl_status_t *status);

/* As gw_routes_new, for the built-in table followed by the route file's
 * lines (gw_route_file.h): lines from n_builtin on may be HTTP upstream
 * routes (local GW_LOCAL_NONE, no service, no rpc) and may end with a
 * catch-all segment "{name...}", which matches the rest of the path (one
 * or more characters, slashes included; its parameter value is empty when
 * longer than GW_ROUTE_PARAM_MAX). */
gw_routes_t *gw_routes_new_ext(const gw_route_t *table, size_t n,
                               size_t n_builtin, kl_status_t *status);
void gw_routes_destroy(gw_routes_t **self_p);

size_t gw_routes_count(const gw_routes_t *self);
const gw_route_t *gw_routes_at(const gw_routes_t *self, size_t index);

typedef enum {
    GW_MATCH_FOUND = 0,
    GW_MATCH_NO_PATH,   /* 404: no route of this host has the path */
    GW_MATCH_BAD_METHOD /* 405: the path exists with other methods */
} gw_match_result_t;

/* Matches method and path (decoded, without query) among the routes of
 * host. On FOUND fills *m; on BAD_METHOD writes the allowed methods,
 * comma-separated, into allow (may be NULL). */
gw_match_result_t gw_routes_match(const gw_routes_t *self, gw_host_kind_t host,
                                  const char *method, const char *path,
                                  gw_route_match_t *m, char *allow,
                                  size_t allow_size);

#endif
