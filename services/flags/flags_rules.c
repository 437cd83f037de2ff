/*
 * flags_rules: validation and evaluation rules of the flags service.
 */
#include "flags_rules.h"

#include "kl_valid.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool
flags_rules_plan_name_valid(const char *s)
{
    return kl_valid_plan(s);
}

bool
flags_rules_feature_name_valid(const char *s)
{
    return kl_valid_charset(s, FLAGS_NAME_MAX, "_");
}

bool
flags_rules_flag_key_valid(const char *s)
{
    return kl_valid_charset(s, FLAGS_NAME_MAX, "_.-");
}

bool
flags_rules_price_id_valid(const char *s)
{
    return kl_valid_charset(s, FLAGS_PRICE_ID_MAX,
                            "_ABCDEFGHIJKLMNOPQRSTUVWXYZ");
}

bool
flags_rules_uuid_valid(const char *s)
{
    return kl_valid_uuid(s);
}

void
flags_rules_uuid_canonical(const char *s, char out[37])
{
    kl_valid_uuid_lower(s, out);
}

int
flags_rules_check_plan_name(const char *field, const char *s,
                            kl_status_t *status)
{
    return kl_valid_check_plan(field, s, status);
}

int
flags_rules_check_uuid(const char *field, const char *s, kl_status_t *status)
{
    return kl_valid_check_uuid(field, s, status);
}

int
flags_rules_check_feature_name(const char *what, const char *s,
                               kl_status_t *status)
{
    if (kl_valid_empty(s))
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

int
flags_rules_check_text(const char *field, const char *s, long max,
                       kl_status_t *status)
{
    /* Empty text is allowed here; callers that need some check first. */
    return kl_valid_check_text(field, s, max, false, status);
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
