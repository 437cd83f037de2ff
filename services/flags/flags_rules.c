/*
 * flags_rules: validation and evaluation rules of the flags service.
 */
#include "flags_rules.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool
s_empty(const char *s)
{
    return !s || !*s;
}

/* 1..max characters, each a-z, 0-9 or one of extra. */
static bool
s_charset(const char *s, size_t max, const char *extra)
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
flags_rules_plan_name_valid(const char *s)
{
    return s_charset(s, FLAGS_NAME_MAX, "_-");
}

bool
flags_rules_feature_name_valid(const char *s)
{
    return s_charset(s, FLAGS_NAME_MAX, "_");
}

bool
flags_rules_flag_key_valid(const char *s)
{
    return s_charset(s, FLAGS_NAME_MAX, "_.-");
}

bool
flags_rules_price_id_valid(const char *s)
{
    return s_charset(s, FLAGS_PRICE_ID_MAX, "_ABCDEFGHIJKLMNOPQRSTUVWXYZ");
}

static bool
s_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
           (c >= 'A' && c <= 'F');
}

bool
flags_rules_uuid_valid(const char *s)
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
flags_rules_uuid_canonical(const char *s, char out[37])
{
    for (int i = 0; i < 36; i++) {
        char c = s[i];
        out[i] = (c >= 'A' && c <= 'F') ? (char)(c - 'A' + 'a') : c;
    }
    out[36] = '\0';
}

int
flags_rules_check_plan_name(const char *field, const char *s,
                            kl_status_t *status)
{
    if (s_empty(s))
        return kl_status_set(status, KL_INVALID_ARGUMENT, "%s is required",
                             field);
    if (!flags_rules_plan_name_valid(s))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "%s \"%.64s\" is invalid: want 1 to 63 of a-z, "
                             "0-9, _ and -",
                             field, s);
    return 0;
}

int
flags_rules_check_uuid(const char *field, const char *s, kl_status_t *status)
{
    if (s_empty(s))
        return kl_status_set(status, KL_INVALID_ARGUMENT, "%s is required",
                             field);
    if (!flags_rules_uuid_valid(s))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "%s \"%.64s\" is not a UUID", field, s);
    return 0;
}

int
flags_rules_check_feature_name(const char *what, const char *s,
                               kl_status_t *status)
{
    if (s_empty(s))
        return kl_status_set(status, KL_INVALID_ARGUMENT, "%s is required",
                             what);
    if (!flags_rules_feature_name_valid(s))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "%s \"%.64s\" is invalid: want 1 to 63 of a-z, "
                             "0-9 and _",
                             what, s);
    return 0;
}

int
flags_rules_check_limit(const char *name, int64_t value, kl_status_t *status)
{
    if (value < FLAGS_LIMIT_MIN || value > FLAGS_LIMIT_MAX)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "limit \"%s\": %lld is out of range (want "
                             "%lld..%lld)",
                             name, (long long)value, FLAGS_LIMIT_MIN,
                             FLAGS_LIMIT_MAX);
    return 0;
}

int
flags_rules_check_rollout(int32_t percent, kl_status_t *status)
{
    if (percent < 0 || percent > 100)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "rollout_percent: %d is out of range (want "
                             "0..100)",
                             (int)percent);
    return 0;
}

/* Characters in s if it is well-formed UTF-8 (no overlong forms,
 * surrogates or code points past U+10FFFF), else -1. */
static long
s_utf8_chars(const char *s)
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

int
flags_rules_check_text(const char *field, const char *s, long max,
                       kl_status_t *status)
{
    long n = s_utf8_chars(s ? s : "");
    if (n < 0)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "%s must be valid UTF-8", field);
    if (n > max)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "%s must be at most %ld characters, got %ld",
                             field, max, n);
    return 0;
}

/* Reads n digits at *p as a number in lo..hi; advances *p. */
static bool
s_digits(const char **p, int n, int lo, int hi)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (c - '0');
    }
    *p += n;
    return v >= lo && v <= hi;
}

static bool
s_lit(const char **p, char a, char b)
{
    if (**p != a && **p != b)
        return false;
    (*p)++;
    return true;
}

static bool
s_rfc3339(const char *s)
{
    const char *p = s;
    if (!s_digits(&p, 4, 1, 9999) || !s_lit(&p, '-', '-') ||
        !s_digits(&p, 2, 1, 12) || !s_lit(&p, '-', '-') ||
        !s_digits(&p, 2, 1, 31) || !s_lit(&p, 'T', 't') ||
        !s_digits(&p, 2, 0, 23) || !s_lit(&p, ':', ':') ||
        !s_digits(&p, 2, 0, 59) || !s_lit(&p, ':', ':') ||
        !s_digits(&p, 2, 0, 60))
        return false;
    if (*p == '.') {
        p++;
        int n = 0;
        while (*p >= '0' && *p <= '9' && n < 9) {
            p++;
            n++;
        }
        if (n == 0)
            return false;
    }
    if (*p == 'Z' || *p == 'z')
        return p[1] == '\0';
    if (*p != '+' && *p != '-')
        return false;
    p++;
    return s_digits(&p, 2, 0, 23) && s_lit(&p, ':', ':') &&
           s_digits(&p, 2, 0, 59) && *p == '\0';
}

int
flags_rules_check_time(const char *field, const char *s, kl_status_t *status)
{
    if (!s || !s_rfc3339(s))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "%s \"%.64s\" is not an RFC 3339 time", field,
                             s ? s : "");
    return 0;
}

static bool
s_ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

bool
flags_rules_limit_countable(const char *name)
{
    return !(s_ends_with(name, "_per_second") ||
             s_ends_with(name, "_per_minute") ||
             s_ends_with(name, "_per_hour") || s_ends_with(name, "_per_day"));
}

int
flags_rules_bucket(const char *tenant_id, const char *key)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    /* SHA-256 cannot fail on valid input; out of memory aborts like
     * kl_malloc does. */
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, tenant_id, strlen(tenant_id)) != 1 ||
        EVP_DigestUpdate(ctx, ":", 1) != 1 ||
        EVP_DigestUpdate(ctx, key, strlen(key)) != 1 ||
        EVP_DigestFinal_ex(ctx, md, &md_len) != 1 || md_len < 4)
        abort();
    EVP_MD_CTX_free(ctx);
    uint32_t v = (uint32_t)md[0] << 24 | (uint32_t)md[1] << 16 |
                 (uint32_t)md[2] << 8 | md[3];
    return (int)(v % 100u);
}

bool
flags_rules_flag_on(const flags_rules_flag_t *flag, const char *tenant_id)
{
    if (flag->killed)
        return false;
    if (flag->allowed)
        return true;
    if (flag->denied)
        return false;
    return flags_rules_bucket(tenant_id, flag->key) < flag->rollout_percent;
}
