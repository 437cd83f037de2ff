/*
 * kl_subdomain: what a tenant's subdomain may be, and how the gateway reads
 * one from a Host header. Shared by the tenant service (validation at
 * creation) and the gateway (resolution), so both agree.
 */
#ifndef KL_SUBDOMAIN_H
#define KL_SUBDOMAIN_H

#include "kl_code.h"

#include <stdbool.h>
#include <stddef.h>

#define KL_SUBDOMAIN_MIN 3
#define KL_SUBDOMAIN_MAX 63

/* One DNS label: lowercase a-z, 0-9 and inner hyphens, 3..63 characters.
 * Returns 0, or -KL_INVALID_ARGUMENT with a message saying what is wrong
 * ("subdomain \"Acme\": only lowercase letters, digits and inner hyphens
 * are allowed"). Reserved names are the caller's business. */
int kl_subdomain_validate(const char *s, kl_status_t *status);

/* Whether s is in the reserved list (exact match). */
bool kl_subdomain_reserved(const char *s, const char *const *reserved,
                           size_t n_reserved);

typedef enum {
    KL_HOST_TENANT = 0, /* <sub>.<base>: sub written to out */
    KL_HOST_APEX,       /* <base> itself */
    KL_HOST_OTHER,      /* a well-formed host that is neither */
    KL_HOST_MALFORMED   /* empty, bad characters, bad port, ... */
} kl_host_kind_t;

/* Parses a Host header value against base (e.g. "localhost",
 * "yoursaas.com"): strips a ":port" (digits only, 1..65535), lowercases,
 * ignores one trailing dot, and classifies. A tenant host is exactly one
 * label (valid per kl_subdomain_validate) followed by "." and base;
 * "a.b.<base>" is OTHER. out gets the subdomain for TENANT (size >= 64). */
kl_host_kind_t kl_host_parse(const char *host, const char *base, char *out,
                             size_t out_size);

#endif
