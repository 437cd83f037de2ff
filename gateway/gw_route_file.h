/*
 * gw_route_file: the operator's route file (KOWLOON_ROUTES_FILE), the
 * product's own routes, read and validated once at start. The format is
 * documented in docs/routes.md; in short, one route per line:
 *
 *   # method  pattern            target                          options
 *   GET       /app/{rest...}     http://127.0.0.1:3000           auth=apikey
 * feature=advanced_reports timeout=5000 POST      /api/v1/things
 * zmq:kowloon.workspace.WorkspaceService/CreateProject auth=apikey
 *
 * Every error names the file and the line, and the load stops at the first
 * one: "routes.conf:12: unknown option \"timout\"".
 *
 * How the gateway uses it (gw_server, wired by the gateway's owner):
 *
 *   gw_route_file_t *rf = NULL;
 *   if (*kl_config_str(cfg, KL_CFG_ROUTES_FILE)) {
 *       gw_route_file_opts_t o = {services, n_services, builtin, n_builtin};
 *       rf = gw_route_file_load(path, &o, status);  // NULL: refuse to start
 *   }
 *   const gw_route_t *extra = gw_route_file_routes(rf, &n_extra);
 *   // append extra[0..n_extra) after the built-in table, then compile;
 *   // after a match at index i >= n_builtin:
 *   const gw_route_file_target_t *t = gw_route_file_target(rf, i - n_builtin);
 *   if (t->upstream) -> gw_upstream_forward() (gw_upstream.h), else the rpc
 *   path with t->timeout_ms (0: KOWLOON_RPC_TIMEOUT_MS).
 *
 * The routes of a file are gw_route_t lines like the built-in table's, with
 * local = GW_LOCAL_NONE; an upstream route has service = NULL and rpc =
 * NULL (its target says where it goes), so the table compiler must accept
 * such a line when it comes from the file. A pattern's last segment may be
 * a catch-all "{name...}" (upstream routes only): it matches the rest of
 * the path, one or more characters, slashes included; the matcher must
 * support it for such routes to be reachable. The upstream data live in a
 * parallel array (gw_route_file_target) rather than in gw_route_t so that
 * the built-in table's positional initialisers keep compiling.
 */
#ifndef GW_ROUTE_FILE_H
#define GW_ROUTE_FILE_H

#include "gw_routes.h"
#include "kl_code.h"

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

/* Bounds and default of the timeout= option, milliseconds. */
#define GW_ROUTE_FILE_TIMEOUT_MIN 10
#define GW_ROUTE_FILE_TIMEOUT_MAX 600000
#define GW_ROUTE_FILE_UPSTREAM_TIMEOUT_DEFAULT 30000
/* Largest route file read. */
#define GW_ROUTE_FILE_MAX_BYTES (1024 * 1024)

typedef struct {
    /* Services a zmq: target may name, by their full .proto name
     * ("kowloon.workspace.WorkspaceService"). Borrowed. */
    const ProtobufCServiceDescriptor *const *services;
    size_t n_services;
    /* The built-in table, so that a file cannot redefine one of its
     * routes. May be NULL. Borrowed. */
    const gw_route_t *builtin;
    size_t n_builtin;
} gw_route_file_opts_t;

/* Where a file route goes, parallel to gw_route_file_routes(). */
typedef struct {
    /* "http://host:port" or "http://host:port/prefix" (no trailing slash);
     * NULL for a zmq: route. */
    const char *upstream;
    /* timeout= in ms; 0 when not given on a zmq: route (use
     * KOWLOON_RPC_TIMEOUT_MS); upstream routes default to
     * GW_ROUTE_FILE_UPSTREAM_TIMEOUT_DEFAULT. */
    int timeout_ms;
    int line; /* line number in the file, for messages */
} gw_route_file_target_t;

typedef struct gw_route_file gw_route_file_t;

/* Reads and validates the file at path. NULL + INVALID_ARGUMENT
 * "path:line: what" on the first error (or "path: cannot open: reason").
 * Caller owns the result; opts is only read during the call. */
gw_route_file_t *gw_route_file_load(const char *path,
                                    const gw_route_file_opts_t *opts,
                                    kl_status_t *status);

/* The same from text already in memory; name stands for the file name in
 * messages. */
gw_route_file_t *gw_route_file_parse(const char *name, const char *text,
                                     size_t len,
                                     const gw_route_file_opts_t *opts,
                                     kl_status_t *status);

void gw_route_file_destroy(gw_route_file_t **self_p);

/* The routes, in file order (self may be NULL: no routes). The array and
 * every string in it belong to self and live until it is destroyed. */
const gw_route_t *gw_route_file_routes(const gw_route_file_t *self, size_t *n);

/* The target of route index (0-based, as in gw_route_file_routes); NULL
 * when out of range. */
const gw_route_file_target_t *gw_route_file_target(const gw_route_file_t *self,
                                                   size_t index);

/* The service of the given full name among services, or NULL. */
const ProtobufCServiceDescriptor *
gw_route_file_find_service(const char *name,
                           const ProtobufCServiceDescriptor *const *services,
                           size_t n_services);

#endif
