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

/* A ":port" suffix without its colon: digits only, 1..65535. */
static bool
s_port_ok(const char *p)
{
    long port = 0;
    if (!*p || strlen(p) > 5)
        return false;
    for (; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return false;
        port = port * 10 + (*p - '0');
    }
    return port >= 1 && port <= 65535;
}

/* "[v6]" or "[v6]:port": hex digits, ':' and '.' (IPv4-mapped) inside
 * the brackets, at least one ':'. Never a tenant host, but well formed. */
static kl_host_kind_t
s_ipv6_literal(const char *host)
{
    const char *close = strchr(host, ']');
    if (!close || close == host + 1)
        return KL_HOST_MALFORMED;
    for (const char *p = host + 1; p < close; p++)
        if (!isxdigit((unsigned char)*p) && *p != ':' && *p != '.')
            return KL_HOST_MALFORMED;
    if (!memchr(host + 1, ':', (size_t)(close - host - 1)))
        return KL_HOST_MALFORMED;
    if (close[1] == '\0')
        return KL_HOST_OTHER;
    if (close[1] != ':' || !s_port_ok(close + 2))
        return KL_HOST_MALFORMED;
    return KL_HOST_OTHER;
}

/* Longest DNS name, without its trailing dot (RFC 1035). */
#define S_HOST_MAX 253

kl_host_kind_t
kl_host_parse(const char *host, const char *base, char *out, size_t out_size)
{
    char buf[S_HOST_MAX + 2];
    char bbuf[S_HOST_MAX + 2];
    size_t len;

    if (out && out_size)
        out[0] = '\0';
    if (!host)
        return KL_HOST_MALFORMED;
    len = strlen(host);
    if (len == 0)
        return KL_HOST_MALFORMED;

    /* IPv6 literals start with '[' and are never tenant hosts. */
    if (host[0] == '[')
        return s_ipv6_literal(host);
    /* Split off ":port". */
    const char *colon = strchr(host, ':');
    if (colon) {
        if (!s_port_ok(colon + 1))
            return KL_HOST_MALFORMED;
        len = (size_t)(colon - host);
    }
    /* One trailing dot (the root) is allowed; the name without it is at
     * most 253 characters. */
    if (len && host[len - 1] == '.')
        len--;
    if (len == 0 || len > S_HOST_MAX)
        return KL_HOST_MALFORMED;
    for (size_t i = 0; i < len; i++) {
        char c = (char)tolower((unsigned char)host[i]);
        if (!s_host_char(c))
            return KL_HOST_MALFORMED;
        buf[i] = c;
    }
    buf[len] = '\0';
    if (buf[0] == '.' || buf[len - 1] == '.' || strstr(buf, ".."))
        return KL_HOST_MALFORMED;

    /* The base comes from configuration: compare it lowercased and
     * without a trailing dot, as the host is. */
    size_t blen = base ? strlen(base) : 0;
    if (blen && base[blen - 1] == '.')
        blen--;
    if (blen > S_HOST_MAX)
        return KL_HOST_OTHER;
    for (size_t i = 0; i < blen; i++)
        bbuf[i] = (char)tolower((unsigned char)base[i]);
    bbuf[blen] = '\0';

    if (len == blen && strcmp(buf, bbuf) == 0)
        return KL_HOST_APEX;
    if (len <= blen + 1 || buf[len - blen - 1] != '.' ||
        strcmp(buf + len - blen, bbuf) != 0)
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
