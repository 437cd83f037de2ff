/*
 * billing_webhook: Stripe-Signature verification.
 */
#include "billing_webhook.h"

#include "kl_alloc.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_MAX_V1 16 /* more v1 entries than this: malformed */
#define S_HEADER_MAX 4096

/* HMAC-SHA256 of "<t>.<payload>" under secret into mac. */
static void
s_mac(const char *secret, int64_t t, const uint8_t *payload, size_t len,
      uint8_t mac[32])
{
    char prefix[32];
    int n = snprintf(prefix, sizeof prefix, "%lld.", (long long)t);
    uint8_t *msg = kl_malloc((size_t)n + len + 1);
    memcpy(msg, prefix, (size_t)n);
    if (len)
        memcpy(msg + n, payload, len);
    unsigned int out_len = 32;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), msg, (size_t)n + len, mac,
         &out_len);
    free(msg);
}

void
billing_webhook_sign(const char *secret, int64_t t, const uint8_t *payload,
                     size_t payload_len, char out[65])
{
    uint8_t mac[32];
    s_mac(secret, t, payload, payload_len, mac);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", mac[i]);
}

static int
s_hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* 64 hex digits -> 32 bytes; false when it is not that. */
static bool
s_unhex(const char *s, size_t len, uint8_t out[32])
{
    if (len != 64)
        return false;
    for (size_t i = 0; i < 32; i++) {
        int hi = s_hex(s[2 * i]), lo = s_hex(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

int
billing_webhook_verify(const char *header, const uint8_t *payload,
                       size_t payload_len, const char *const *secrets,
                       size_t n_secrets, int64_t now, int64_t tolerance_s,
                       kl_status_t *status)
{
    if (!header || !*header)
        return kl_status_set(status, KL_INVALID_ARGUMENT, "no signature");
    size_t hlen = strlen(header);
    if (hlen > S_HEADER_MAX)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "malformed signature header");

    /* Parse: comma-separated key=value items. */
    bool have_t = false;
    int64_t t = 0;
    uint8_t v1[S_MAX_V1][32];
    bool v1_ok[S_MAX_V1];
    int n_v1 = 0;
    const char *p = header;
    while (p <= header + hlen) {
        const char *end = strchr(p, ',');
        if (!end)
            end = header + hlen;
        const char *eq = memchr(p, '=', (size_t)(end - p));
        if (!eq || eq == p)
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "malformed signature header");
        size_t klen = (size_t)(eq - p);
        const char *val = eq + 1;
        size_t vlen = (size_t)(end - val);
        if (klen == 1 && p[0] == 't') {
            if (have_t || vlen == 0 || vlen > 15)
                return kl_status_set(status, KL_INVALID_ARGUMENT,
                                     "malformed signature header");
            t = 0;
            for (size_t i = 0; i < vlen; i++) {
                if (val[i] < '0' || val[i] > '9')
                    return kl_status_set(status, KL_INVALID_ARGUMENT,
                                         "malformed signature header");
                t = t * 10 + (val[i] - '0');
            }
            have_t = true;
        } else if (klen == 2 && p[0] == 'v' && p[1] == '1') {
            if (n_v1 == S_MAX_V1)
                return kl_status_set(status, KL_INVALID_ARGUMENT,
                                     "malformed signature header");
            /* A v1 that is not 64 hex digits can never match; it still
             * counts as a v1 entry. */
            v1_ok[n_v1] = s_unhex(val, vlen, v1[n_v1]);
            n_v1++;
        }
        /* v0 and unknown schemes: ignored. */
        p = end + 1;
    }
    if (!have_t)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "malformed signature header");
    if (n_v1 == 0)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "no v1 signature in header");
    int64_t skew = now - t;
    if (skew > tolerance_s || skew < -tolerance_s)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "timestamp outside tolerance");

    /* Every secret against every v1, without stopping early. */
    int match = 0;
    for (size_t s = 0; s < n_secrets; s++) {
        if (!secrets[s] || !*secrets[s])
            continue;
        uint8_t mac[32];
        s_mac(secrets[s], t, payload, payload_len, mac);
        for (int i = 0; i < n_v1; i++)
            if (v1_ok[i] && CRYPTO_memcmp(mac, v1[i], 32) == 0)
                match = 1;
        OPENSSL_cleanse(mac, sizeof mac);
    }
    if (!match)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "no matching signature");
    return 0;
}
