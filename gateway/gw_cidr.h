/*
 * gw_cidr: a list of address blocks (IPv4 and IPv6 CIDR), and whether a
 * peer address falls in one of them. The gateway believes
 * X-Tenant-Subdomain only from peers inside KOWLOON_TRUSTED_PROXIES.
 *
 * Immutable once built: contains() may be called from any thread.
 */
#ifndef GW_CIDR_H
#define GW_CIDR_H

#include "kl_code.h"

#include <stdbool.h>

typedef struct gw_cidr_list gw_cidr_list_t;

/* An empty list (contains() is false for every address). */
gw_cidr_list_t *gw_cidr_list_new(void);
void gw_cidr_list_destroy(gw_cidr_list_t **self_p);

/* Adds one block: "10.0.0.0/8", "::1/128", or a bare address (a /32 or
 * /128). Host bits below the prefix are ignored ("10.1.2.3/8" is
 * 10.0.0.0/8). Returns 0, or -KL_INVALID_ARGUMENT with a message naming the
 * bad entry. */
int gw_cidr_list_add(gw_cidr_list_t *self, const char *cidr,
                     kl_status_t *status);

/* Whether addr (textual IPv4 or IPv6, as civetweb's remote_addr) is in one
 * of the blocks. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is also
 * matched against the IPv4 blocks. A malformed address is never inside. */
bool gw_cidr_list_contains(const gw_cidr_list_t *self, const char *addr);

#endif
