/*
 * kl_valid: the request checks shared by the services. The messages are
 * part of the API (clients and tests read them); change them only with
 * every caller's tests.
 */
#include "kl_valid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool
kl_valid_empty(const char *s)
{
    return !s || !*s;
}

bool
kl_valid_one_of(const char *s, const char *const *set)
{
    for (; *set; set++)
        if (strcmp(s, *set) == 0)
            return true;
    return false;
}

static bool
s_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
           (c >= 'A' && c <= 'F');
}

bool
kl_valid_uuid(const char *s)
{
    if (!s || strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!s_hex(s[i])) {
            return false;
        }
    }
    return true;
}

void
kl_valid_uuid_lower(const char *s, char out[37])
{
    for (int i = 0; i < 36; i++) {
        char c = s[i];
        out[i] = (c >= 'A' && c <= 'F') ? (char)(c - 'A' + 'a') : c;
    }
    out[36] = '\0';
}

long
kl_valid_utf8_chars(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    long n = 0;
    while (*p) {
        unsigned c = *p;
        int extra;
        unsigned cp;
        if (c < 0x80) {
            extra = 0;
            cp = c;
        } else if (c >= 0xc2 && c <= 0xdf) {
            extra = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            extra = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            extra = 3;
            cp = c & 0x07;
        } else {
            return -1;
        }
        /* A NUL continuation byte fails the mask test, so the loop never
         * reads past the terminator. */
        for (int i = 1; i <= extra; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return -1;
            cp = cp << 6 | (p[i] & 0x3f);
        }
        if ((extra == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (extra == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return -1;
        p += 1 + extra;
        n++;
    }
    return n;
}

bool
kl_valid_charset(const char *s, size_t max, const char *extra)
{
    size_t len = s ? strlen(s) : 0;
    if (len < 1 || len > max)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              strchr(extra, c)))
            return false;
    }
    return true;
}

bool
kl_valid_plan(const char *s)
{
    return kl_valid_charset(s, KL_VALID_PLAN_MAX, "_-");
}

int
kl_valid_check_uuid(const char *field, const char *s, kl_status_t *status)
{
    if (kl_valid_empty(s))
        return kl_status_set(status, KL_INVALID_ARGUMENT, "%s is required",
                             field);
    if (!kl_valid_uuid(s))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "%s \"%.64s\" is not a UUID", field, s);
    return 0;
}

int
kl_valid_check_plan(const char *field, const char *s, kl_status_t *status)
{
    if (kl_valid_empty(s))
        return kl_status_set(status, KL_INVALID_ARGUMENT, "%s is required",
                             field);
    if (!kl_valid_plan(s))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "%s \"%.64s\" is invalid: want 1 to 63 of a-z, "
                             "0-9, _ and -",
                             field, s);
    return 0;
}

int
kl_valid_check_text(const char *field, const char *s, long max, bool required,
                    kl_status_t *status)
{
    if (kl_valid_empty(s))
        return required ? kl_status_set(status, KL_INVALID_ARGUMENT,
                                        "%s is required", field)
                        : 0;
    long n = kl_valid_utf8_chars(s);
    if (n < 0)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "%s must be valid UTF-8", field);
    if (n > max)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "%s must be at most %ld characters, got %ld",
                             field, max, n);
    return 0;
}

int
kl_valid_check_page_size(int32_t size, int max, int def, int *out,
                         kl_status_t *status)
{
    if (size < 0 || size > max)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "page_size must be 1 to %d, got %d", max,
                             (int)size);
    *out = size == 0 ? def : size;
    return 0;
}

/* --- page tokens ------------------------------------------------------- */

static const char s_b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void
s_b64url_encode(const uint8_t *in, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = s_b64[v >> 18 & 63];
        out[o++] = s_b64[v >> 12 & 63];
        if (i + 1 < n)
            out[o++] = s_b64[v >> 6 & 63];
        if (i + 2 < n)
            out[o++] = s_b64[v & 63];
    }
    out[o] = '\0';
}

/* Strict: no padding, no other characters, no stray bits. Returns the
 * decoded length or -1. */
static long
s_b64url_decode(const char *in, uint8_t *out, size_t out_size)
{
    size_t len = strlen(in), o = 0;
    if (len % 4 == 1)
        return -1;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        const char *p = in[i] ? strchr(s_b64, in[i]) : NULL;
        if (!p)
            return -1;
        acc = acc << 6 | (uint32_t)(p - s_b64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= out_size)
                return -1;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0)
        return -1;
    return (long)o;
}

void
kl_valid_page_token_encode(int64_t usec, const char *id, char *out,
                           size_t out_size)
{
    char raw[64];
    int n = snprintf(raw, sizeof raw, "%lld:%s", (long long)usec, id);
    if (n < 0 || (size_t)n >= sizeof raw ||
        (size_t)(n + 2) / 3 * 4 + 1 > out_size) {
        out[0] = '\0';
        return;
    }
    s_b64url_encode((const uint8_t *)raw, (size_t)n, out);
}

int
kl_valid_page_token_decode(const char *token, int64_t *usec, char id[37],
                           kl_status_t *status)
{
    uint8_t raw[64];
    long n = token && strlen(token) < 100
                 ? s_b64url_decode(token, raw, sizeof raw - 1)
                 : -1;
    if (n > 0) {
        raw[n] = '\0';
        const char *s = (const char *)raw;
        const char *colon = memchr(s, ':', (size_t)n);
        char *end = NULL;
        long long v = colon ? strtoll(s, &end, 10) : 0;
        /* The number must end at the colon and the text hold no NUL. */
        if (colon && end == colon && colon > s && strlen(s) == (size_t)n &&
            kl_valid_uuid(colon + 1)) {
            *usec = v;
            snprintf(id, 37, "%s", colon + 1);
            return 0;
        }
    }
    return kl_status_set(status, KL_INVALID_ARGUMENT, "invalid page_token");
}
