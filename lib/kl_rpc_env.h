/*
 * kl_rpc_env: a process's RPC settings in one object, so that each main.c
 * needs two or three lines to run with Curve, drain on SIGTERM and reload
 * endpoints on SIGHUP (docs/operations/curve.md):
 *
 *   kl_rpc_env_t *rpc = kl_rpc_env_new(cfg, KL_PROC_TENANT, &status);
 *   kl_rpc_env_server_opts(rpc, &opts);          // before kl_rpc_server_new
 *   kl_rpc_client_t *flags = kl_rpc_env_client(rpc, KL_CFG_FLAGS_ENDPOINTS,
 *       &kowloon__flags__flags_service__descriptor, &status);
 *   kl_rpc_env_handle_sighup(rpc);
 *   ...
 *   kl_rpc_env_destroy(&rpc);                    // after the server
 *
 * Settings: KOWLOON_CURVE_SECRET_KEY_FILE (this process's key pair, as
 * server and as client), KOWLOON_CURVE_ALLOWED_CLIENTS_DIR (services),
 * KOWLOON_CURVE_SERVER_PUBLIC_KEY (server key of endpoints written without
 * "?key="), KOWLOON_RPC_DRAIN_GRACE_MS (services).
 *
 * Endpoint lists: each item of a *_ENDPOINTS setting is an endpoint
 * ("tcp://10.0.0.2:7101" or "tcp://10.0.0.2:7101?key=<Z85>") or "@PATH", a
 * file with one endpoint per line (or comma-separated; '#' starts a
 * comment). Files are read again on reload, which is how instances are
 * added to or removed from running callers: the environment of a running
 * process cannot change, a file can.
 */
#ifndef KL_RPC_ENV_H
#define KL_RPC_ENV_H

#include "kl_code.h"
#include "kl_config.h"
#include "kl_curve.h"
#include "kl_rpc_client.h"
#include "kl_rpc_server.h"

typedef struct kl_rpc_env kl_rpc_env_t;

/*
 * Reads the settings above from cfg, loaded with procs (the same bits given
 * to kl_config_load), and loads the Curve keys when configured. NULL +
 * status naming the setting on a bad key file or directory, or an allow
 * directory without a key file. cfg must outlive the env. Caller owns it.
 */
kl_rpc_env_t *kl_rpc_env_new(const kl_config_t *cfg, unsigned procs,
                             kl_status_t *status);

/* Destroys the clients made by kl_rpc_env_client, stops the SIGHUP
 * thread, frees the keys. Destroy the servers using the env first. */
void kl_rpc_env_destroy(kl_rpc_env_t **self_p);

/* The Curve keys, or NULL when KOWLOON_CURVE_SECRET_KEY_FILE is empty. */
kl_curve_t *kl_rpc_env_curve(const kl_rpc_env_t *self);

/* Sets opts->curve and opts->drain_grace_ms from the settings. */
void kl_rpc_env_server_opts(const kl_rpc_env_t *self,
                            kl_rpc_server_opts_t *opts);

/*
 * A client of service over the endpoints of the LIST setting id (with
 * "@PATH" items read), with this process's Curve keys and the
 * RPC_MAX_MESSAGE_BYTES cap. The env owns it (destroy only through
 * kl_rpc_env_destroy) and replaces its endpoints on reload. NULL + status
 * naming the setting on a bad list or unreadable file.
 */
kl_rpc_client_t *kl_rpc_env_client(kl_rpc_env_t *self, kl_config_id_t id,
                                   const ProtobufCServiceDescriptor *service,
                                   kl_status_t *status);

/*
 * Fills opts (endpoints, curve, server key, message cap) for a client the
 * caller makes and owns itself with kl_rpc_client_new; such a client is
 * not reloaded. The endpoint strings stay valid until the env is
 * destroyed.
 */
int kl_rpc_env_client_opts(kl_rpc_env_t *self, kl_config_id_t id,
                           kl_rpc_client_opts_t *opts, kl_status_t *status);

/* Re-reads every "@PATH" endpoint file into the env's clients and the
 * Curve allow-list. Every client is tried; returns the first error. */
int kl_rpc_env_reload(kl_rpc_env_t *self, kl_status_t *status);

/* Makes SIGHUP run kl_rpc_env_reload on a thread of the env (the handler
 * only writes to an eventfd), logging the outcome. One env per process
 * may do this. Returns 0 or -KL_INTERNAL. */
int kl_rpc_env_handle_sighup(kl_rpc_env_t *self);

/*
 * Reads endpoint list items (as in a *_ENDPOINTS setting) into a new array
 * of strings, following "@PATH" items. Caller frees with
 * kl_rpc_env_free_list. Exposed for tests and kowloonctl.
 */
int kl_rpc_env_expand(const char *const *items, size_t n, char ***out,
                      size_t *n_out, kl_status_t *status);
void kl_rpc_env_free_list(char ***list_p, size_t n);

#endif
