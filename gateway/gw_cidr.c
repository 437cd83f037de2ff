/*
 * gw_cidr: address blocks kept as 16-byte network numbers (IPv4 in the
 * first 4 bytes) with a prefix length; a lookup is a linear scan, which is
 * right for the handful of proxies a deployment lists.
 */
#include "gw_cidr.h"

#include "kl_alloc.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int family;      /* AF_INET or AF_INET6 */
    unsigned prefix; /* 0..32 or 0..128 */
    uint8_t net[16]; /* network number, host bits zero */
} s_block_t;

struct gw_cidr_list {
    s_block_t *blocks; /* the blocks, in the order added */
    size_t n_blocks;   /* how many */
};

gw_cidr_list_t *
gw_cidr_list_new(void)
{
    return kl_calloc(1, sizeof(gw_cidr_list_t));
}

void
gw_cidr_list_destroy(gw_cidr_list_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->blocks);
    KL_FREE(self_p);
}

/* Zeroes every bit of addr past the first prefix bits. */
static void
s_mask(uint8_t *addr, size_t len, unsigned prefix)
{
    for (size_t i = 0; i < len; i++) {
        unsigned lo = (unsigned)i * 8;
        if (prefix >= lo + 8)
            continue;
        if (prefix <= lo)
            addr[i] = 0;
        else
            addr[i] &= (uint8_t)(0xffu << (8 - (prefix - lo)));
    }
}

/* Parses a textual address into out; returns AF_INET, AF_INET6 or 0. */
static int
s_parse_addr(const char *s, uint8_t out[16])
{
    memset(out, 0, 16);
    if (inet_pton(AF_INET, s, out) == 1)
        return AF_INET;
    if (inet_pton(AF_INET6, s, out) == 1)
        return AF_INET6;
    return 0;
}

int
gw_cidr_list_add(gw_cidr_list_t *self, const char *cidr, kl_status_t *status)
{
    char addr[64];
    const char *slash = strchr(cidr, '/');
    size_t alen = slash ? (size_t)(slash - cidr) : strlen(cidr);
    s_block_t b = {0};

    if (alen == 0 || alen >= sizeof addr)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "\"%s\" is not an address or CIDR block", cidr);
    memcpy(addr, cidr, alen);
    addr[alen] = '\0';
    b.family = s_parse_addr(addr, b.net);
    if (!b.family)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "\"%s\" is not an address or CIDR block", cidr);
    unsigned max = b.family == AF_INET ? 32 : 128;
    b.prefix = max;
    if (slash) {
        const char *p = slash + 1;
        unsigned v = 0;
        if (!*p || strlen(p) > 3)
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "\"%s\": bad prefix length (want 0..%u)", cidr,
                                 max);
        for (; *p; p++) {
            if (*p < '0' || *p > '9')
                return kl_status_set(status, KL_INVALID_ARGUMENT,
                                     "\"%s\": bad prefix length (want 0..%u)",
                                     cidr, max);
            v = v * 10 + (unsigned)(*p - '0');
        }
        if (v > max)
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "\"%s\": bad prefix length (want 0..%u)", cidr,
                                 max);
        b.prefix = v;
    }
    s_mask(b.net, b.family == AF_INET ? 4 : 16, b.prefix);
    self->blocks =
        kl_realloc(self->blocks, (self->n_blocks + 1) * sizeof(s_block_t));
    self->blocks[self->n_blocks++] = b;
    return 0;
}

static bool
s_in_block(const s_block_t *b, int family, const uint8_t addr[16])
{
    uint8_t tmp[16];
    if (b->family != family)
        return false;
    memcpy(tmp, addr, 16);
    s_mask(tmp, family == AF_INET ? 4 : 16, b->prefix);
    return memcmp(tmp, b->net, family == AF_INET ? 4 : 16) == 0;
}

bool
gw_cidr_list_contains(const gw_cidr_list_t *self, const char *addr)
{
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0,    0,
                                         0, 0, 0, 0, 0xff, 0xff};
    uint8_t a[16], a4[16] = {0};
    int family;
    bool mapped;

    if (!self || !addr)
        return false;
    family = s_parse_addr(addr, a);
    if (!family)
        return false;
    mapped = family == AF_INET6 && memcmp(a, v4mapped, 12) == 0;
    if (mapped)
        memcpy(a4, a + 12, 4);
    for (size_t i = 0; i < self->n_blocks; i++) {
        if (s_in_block(&self->blocks[i], family, a))
            return true;
        if (mapped && s_in_block(&self->blocks[i], AF_INET, a4))
            return true;
    }
    return false;
}
