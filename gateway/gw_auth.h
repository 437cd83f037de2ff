/*
 * gw_auth: bearer credentials. The admin token is compared as SHA-256
 * digests with CRYPTO_memcmp, so neither its content nor its length leaks
 * through timing.
 */
#ifndef GW_AUTH_H
#define GW_AUTH_H

#include "kl_code.h"

#include <stddef.h>

typedef struct gw_auth gw_auth_t;

/* admin_token is hashed and not kept. */
gw_auth_t *gw_auth_new(const char *admin_token);
void gw_auth_destroy(gw_auth_t **self_p);

/* The credential of an Authorization header value "Bearer <token>" (the
 * scheme case-insensitive, spaces after it skipped, trailing spaces
 * trimmed). Returns a pointer into header and its length in *len, or NULL
 * when header is NULL, another scheme, or an empty token. */
const char *gw_auth_bearer(const char *header, size_t *len);

/*
 * Checks an Authorization header value against the admin token:
 *   0; -KL_UNAUTHENTICATED "missing bearer token" when absent or not
 *   Bearer; -KL_PERMISSION_DENIED "invalid admin token" when wrong.
 */
int gw_auth_check_admin(const gw_auth_t *self, const char *header,
                        kl_status_t *status);

#endif
