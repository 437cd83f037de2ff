/*
 * gw_server: the gateway's HTTP pipeline on civetweb. For each request:
 * request id -> operational routes (/healthz, /readyz, /metrics) -> Host
 * checks -> tenant resolution (cache) -> route match -> authentication ->
 * body and transcoding -> rpc (or local handler) -> JSON reply, metrics and
 * one access-log line. See docs/api.md for the contract.
 */
#ifndef GW_SERVER_H
#define GW_SERVER_H

#include "kl_code.h"
#include "kl_config.h"
#include "kl_rpc_env.h"

typedef struct gw_server gw_server_t;

/* Builds everything from cfg (borrowed; must outlive the server): the rpc
 * clients, the caches and their event subscription, the routes, and starts
 * civetweb listening. NULL + status (naming the setting at fault when one
 * is) on failure. */
gw_server_t *gw_server_new(const kl_config_t *cfg, kl_status_t *status);

/* As gw_server_new, with the service clients made by rpc (borrowed; must
 * outlive the server): Curve keys, "@file" endpoint lists, and endpoints
 * replaced on kl_rpc_env_reload (SIGHUP). rpc NULL: as gw_server_new. */
gw_server_t *gw_server_new_env(const kl_config_t *cfg, kl_rpc_env_t *rpc,
                               kl_status_t *status);

/* Stops civetweb (waits for in-flight requests), then frees the rest. */
void gw_server_destroy(gw_server_t **self_p);

#endif
