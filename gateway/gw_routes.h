/*
 * gw_routes: the gateway's one declarative route table and its matcher.
 *
 * A route is one line: method, path pattern, which host serves it, the
 * service and rpc it calls (or a local handler), whether the rpc is
 * idempotent (may be retried on another instance), the feature the
 * tenant's plan must include (stored and exposed; enforced in a later
 * issue), and how the caller authenticates.
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
    GW_LOCAL_METRICS
} gw_local_t;

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
 * pattern syntax, the rpc exists in the service. NULL + INVALID_ARGUMENT
 * naming the line on error. */
gw_routes_t *gw_routes_new(const gw_route_t *table, size_t n,
                           kl_status_t *status);
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
