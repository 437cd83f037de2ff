/*
 * tenant_apikey: generating, parsing and hashing API keys.
 */
#include "tenant_apikey.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <string.h>
#include <sys/random.h>

static const char s_hexdigits[] = "0123456789abcdef";

static void
s_to_hex(const uint8_t *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = s_hexdigits[in[i] >> 4];
        out[2 * i + 1] = s_hexdigits[in[i] & 0xf];
    }
    out[2 * n] = '\0';
}

/* Lowercase hex only: a key has exactly one spelling. */
static int
s_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static bool
s_from_hex(const char *in, size_t n_bytes, uint8_t *out)
{
    for (size_t i = 0; i < n_bytes; i++) {
        int hi = s_hexval(in[2 * i]), lo = s_hexval(in[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

int
tenant_apikey_random(uint8_t *buf, size_t n, kl_status_t *status)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(buf + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return kl_status_set(status, KL_INTERNAL, "getrandom() failed: %s",
                                 strerror(errno));
        }
        got += (size_t)r;
    }
    return 0;
}

static void
s_hash(const uint8_t secret[TENANT_APIKEY_SECRET_LEN],
       uint8_t hash[TENANT_APIKEY_HASH_LEN])
{
    unsigned int len = TENANT_APIKEY_HASH_LEN;
    /* EVP_Digest fails only on allocation failure inside OpenSSL. */
    if (!EVP_Digest(secret, TENANT_APIKEY_SECRET_LEN, hash, &len, EVP_sha256(),
                    NULL))
        memset(hash, 0, TENANT_APIKEY_HASH_LEN);
}

int
tenant_apikey_generate(char id[TENANT_APIKEY_ID_LEN + 1],
                       char key[TENANT_APIKEY_LEN + 1],
                       uint8_t hash[TENANT_APIKEY_HASH_LEN],
                       kl_status_t *status)
{
    uint8_t raw_id[TENANT_APIKEY_ID_LEN / 2];
    uint8_t secret[TENANT_APIKEY_SECRET_LEN];
    int rc = tenant_apikey_random(raw_id, sizeof raw_id, status);
    if (rc == 0)
        rc = tenant_apikey_random(secret, sizeof secret, status);
    if (rc < 0)
        return rc;
    s_to_hex(raw_id, sizeof raw_id, id);
    memcpy(key, "kl_", 3);
    memcpy(key + 3, id, TENANT_APIKEY_ID_LEN);
    key[3 + TENANT_APIKEY_ID_LEN] = '_';
    s_to_hex(secret, sizeof secret, key + 4 + TENANT_APIKEY_ID_LEN);
    s_hash(secret, hash);
    OPENSSL_cleanse(secret, sizeof secret);
    return 0;
}

bool
tenant_apikey_id_valid(const char *id)
{
    if (!id || strlen(id) != TENANT_APIKEY_ID_LEN)
        return false;
    for (size_t i = 0; i < TENANT_APIKEY_ID_LEN; i++)
        if (s_hexval(id[i]) < 0)
            return false;
    return true;
}

bool
tenant_apikey_parse(const char *key, char id[TENANT_APIKEY_ID_LEN + 1],
                    uint8_t hash[TENANT_APIKEY_HASH_LEN])
{
    if (!key || strnlen(key, TENANT_APIKEY_LEN + 1) != TENANT_APIKEY_LEN)
        return false;
    if (memcmp(key, "kl_", 3) != 0 || key[3 + TENANT_APIKEY_ID_LEN] != '_')
        return false;
    memcpy(id, key + 3, TENANT_APIKEY_ID_LEN);
    id[TENANT_APIKEY_ID_LEN] = '\0';
    if (!tenant_apikey_id_valid(id))
        return false;
    uint8_t secret[TENANT_APIKEY_SECRET_LEN];
    if (!s_from_hex(key + 4 + TENANT_APIKEY_ID_LEN, sizeof secret, secret))
        return false;
    s_hash(secret, hash);
    OPENSSL_cleanse(secret, sizeof secret);
    return true;
}

bool
tenant_apikey_hash_equal(const uint8_t a[TENANT_APIKEY_HASH_LEN],
                         const uint8_t b[TENANT_APIKEY_HASH_LEN])
{
    return CRYPTO_memcmp(a, b, TENANT_APIKEY_HASH_LEN) == 0;
}
