/*
 * kl_curve: this process's CurveZMQ key pair, the allow-list of client
 * public keys that may call it, and the ZAP handler that enforces the list
 * (docs/operations/curve.md).
 *
 * Keys live in files in czmq's zcert format: `kowloonctl keygen NAME`
 * writes NAME.key (public certificate, safe to copy to other hosts) and
 * NAME.key_secret (both keys, mode 0600). A process loads its own
 * NAME.key_secret and uses that pair both as server key (when it serves)
 * and as client key (when it calls). A server's allow-list is a directory
 * of public certificates (NAME.key files); every file in it whose name does
 * not end in "_secret" and does not start with "." is one allowed client.
 * During a key rotation the directory holds the old and the new
 * certificate, so both are accepted.
 *
 * Without a ZAP handler libzmq lets any client that knows the server key
 * in, so a Curve server always runs one (kl_curve_zap_new) on its own
 * ZeroMQ context, before its first bind. The handler answers 400 to every
 * mechanism but CURVE and to every key not in the list. It re-reads the
 * directory when the directory changes (checked once a second) and on
 * kl_curve_reload.
 *
 * A kl_curve_t is thread-safe and shared by every server and client of the
 * process; it must outlive them.
 */
#ifndef KL_CURVE_H
#define KL_CURVE_H

#include "kl_code.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KL_CURVE_KEY_BYTES 32
#define KL_CURVE_Z85_LEN 40

typedef struct kl_curve kl_curve_t;

/*
 * Loads the key pair from secret_key_file (a zcert secret certificate) and,
 * when allowed_clients_dir is non-NULL and non-empty, the allow-list from
 * that directory. NULL + status (INVALID_ARGUMENT naming the file and the
 * cause) when the file does not load or has no secret key, or the
 * directory cannot be read. Caller owns the result.
 */
kl_curve_t *kl_curve_new(const char *secret_key_file,
                         const char *allowed_clients_dir, kl_status_t *status);
void kl_curve_destroy(kl_curve_t **self_p);

/* This process's public key, Z85 (40 characters). */
const char *kl_curve_public_key(const kl_curve_t *self);

/* Whether an allow-list directory was given (a server needs one). */
bool kl_curve_has_allow_list(const kl_curve_t *self);

/* Re-reads the allow-list directory. On failure the previous list stays
 * and status says why. Returns 0 or a negative code. */
int kl_curve_reload(kl_curve_t *self, kl_status_t *status);

/* Keys in the allow-list now. */
size_t kl_curve_allowed_count(const kl_curve_t *self);

/* Whether key (32 bytes) is in the allow-list. */
bool kl_curve_allows(const kl_curve_t *self, const uint8_t *key);

/* Makes socket a Curve server with this key pair and ZAP domain
 * "kowloon". Call before bind. */
int kl_curve_setup_server(const kl_curve_t *self, void *socket,
                          kl_status_t *status);

/* Makes socket a Curve client of the server whose public key is
 * server_key_z85. Call before connect. */
int kl_curve_setup_client(const kl_curve_t *self, void *socket,
                          const char *server_key_z85, kl_status_t *status);

/* Whether text is a 40-character Z85 key. */
bool kl_curve_key_valid(const char *text);

/*
 * Writes a new key pair: dir/name.key (public, mode 0644) and
 * dir/name.key_secret (mode 0600), with metadata name. Refuses to
 * overwrite existing files (ALREADY_EXISTS). If public_z85 is non-NULL it
 * receives the public key (41 bytes with the NUL).
 */
int kl_curve_keygen(const char *dir, const char *name, char *public_z85,
                    kl_status_t *status);

/* --- the ZAP handler ---------------------------------------------------- */

typedef struct kl_curve_zap kl_curve_zap_t;

/* Binds inproc://zeromq.zap.01 on zctx and answers ZAP requests from a
 * thread of its own against self's allow-list. Destroy it before
 * zmq_ctx_term(zctx). NULL + status when the bind fails (a handler is
 * already bound on that context). */
kl_curve_zap_t *kl_curve_zap_new(kl_curve_t *self, void *zctx,
                                 kl_status_t *status);
void kl_curve_zap_destroy(kl_curve_zap_t **self_p);

/* Requests answered since start: allowed and refused. */
void kl_curve_zap_counts(const kl_curve_zap_t *self, uint64_t *allowed,
                         uint64_t *refused);

#endif
