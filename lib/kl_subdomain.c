/*
 * kl_subdomain: subdomain rules and Host header parsing, shared by the
 * tenant service and the gateway.
 */
#include "kl_subdomain.h"

#include <ctype.h>
#include <string.h>

int
kl_subdomain_validate(const char *s, kl_status_t *status)
{
    size_t len = s ? strlen(s) : 0;
    if (len < KL_SUBDOMAIN_MIN || len > KL_SUBDOMAIN_MAX)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "subdomain must be %d to %d characters long, got "
                             "%zu",
                             KL_SUBDOMAIN_MIN, KL_SUBDOMAIN_MAX, len);
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "subdomain \"%s\": only lowercase letters, "
                                 "digits and inner hyphens are allowed",
                                 s);
    }
    if (s[0] == '-' || s[len - 1] == '-')
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "subdomain \"%s\": may not start or end with a "
                             "hyphen",
                             s);
    return 0;
}

bool
kl_subdomain_reserved(const char *s, const char *const *reserved,
                      size_t n_reserved)
{
    for (size_t i = 0; i < n_reserved; i++)
        if (strcmp(s, reserved[i]) == 0)
            return true;
    return false;
}

/* Host characters RFC 3986 reg-name allows that we accept: letters,
 * digits, '-' and '.'. IP literals and anything else are not tenant hosts. */
static bool
s_host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.';
}

kl_host_kind_t
kl_host_parse(const char *host, const char *base, char *out, size_t out_size)
{
    char buf[256];
    size_t len;

    if (out && out_size)
        out[0] = '\0';
    if (!host)
        return KL_HOST_MALFORMED;
    len = strlen(host);
    if (len == 0 || len >= sizeof buf)
        return KL_HOST_MALFORMED;

    /* Split off ":port": digits only, 1..65535. IPv6 literals start with
     * '[' and are never tenant hosts. */
    if (host[0] == '[') {
        const char *close = strchr(host, ']');
        if (!close)
            return KL_HOST_MALFORMED;
        return KL_HOST_OTHER;
    }
    const char *colon = strchr(host, ':');
    if (colon) {
        const char *p = colon + 1;
        long port = 0;
        if (!*p || strlen(p) > 5)
            return KL_HOST_MALFORMED;
        for (; *p; p++) {
            if (!isdigit((unsigned char)*p))
                return KL_HOST_MALFORMED;
            port = port * 10 + (*p - '0');
        }
        if (port < 1 || port > 65535)
            return KL_HOST_MALFORMED;
        len = (size_t)(colon - host);
    }
    if (len == 0)
        return KL_HOST_MALFORMED;
    for (size_t i = 0; i < len; i++) {
        char c = (char)tolower((unsigned char)host[i]);
        if (!s_host_char(c))
            return KL_HOST_MALFORMED;
        buf[i] = c;
    }
    buf[len] = '\0';
    if (buf[len - 1] == '.')
        buf[--len] = '\0';
    if (len == 0 || buf[0] == '.' || strstr(buf, ".."))
        return KL_HOST_MALFORMED;

    size_t blen = strlen(base);
    if (len == blen && strcmp(buf, base) == 0)
        return KL_HOST_APEX;
    if (len <= blen + 1 || buf[len - blen - 1] != '.' ||
        strcmp(buf + len - blen, base) != 0)
        return KL_HOST_OTHER;
    buf[len - blen - 1] = '\0';
    if (strchr(buf, '.'))
        return KL_HOST_OTHER;
    if (kl_subdomain_validate(buf, NULL) < 0)
        return KL_HOST_OTHER;
    if (out && out_size > strlen(buf))
        memcpy(out, buf, strlen(buf) + 1);
    return KL_HOST_TENANT;
}
