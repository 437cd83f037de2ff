/*
 * gw_auth: bearer parsing and the admin token check.
 */
#include "gw_auth.h"

#include "kl_alloc.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct gw_auth {
    unsigned char admin_digest[SHA256_DIGEST_LENGTH]; /* sha256(token) */
};

gw_auth_t *
gw_auth_new(const char *admin_token)
{
    gw_auth_t *self = kl_calloc(1, sizeof *self);
    SHA256((const unsigned char *)admin_token, strlen(admin_token),
           self->admin_digest);
    return self;
}

void
gw_auth_destroy(gw_auth_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    OPENSSL_cleanse((*self_p)->admin_digest, sizeof(*self_p)->admin_digest);
    KL_FREE(self_p);
}

const char *
gw_auth_bearer(const char *header, size_t *len)
{
    if (!header || strncasecmp(header, "Bearer ", 7) != 0)
        return NULL;
    const char *p = header + 7;
    while (*p == ' ' || *p == '\t')
        p++;
    size_t n = strlen(p);
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    if (n == 0)
        return NULL;
    *len = n;
    return p;
}

int
gw_auth_check_admin(const gw_auth_t *self, const char *header,
                    kl_status_t *status)
{
    unsigned char digest[SHA256_DIGEST_LENGTH];
    size_t len;
    const char *token = gw_auth_bearer(header, &len);
    if (!token)
        return kl_status_set(status, KL_UNAUTHENTICATED,
                             "missing bearer token");
    SHA256((const unsigned char *)token, len, digest);
    if (CRYPTO_memcmp(digest, self->admin_digest, sizeof digest) != 0)
        return kl_status_set(status, KL_PERMISSION_DENIED,
                             "invalid admin token");
    return 0;
}
