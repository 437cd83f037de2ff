/*
 * gw_request_id: request ids. New ids need to be unique, not secret, so a
 * per-thread splitmix64 generator seeded once from RAND_bytes keeps the
 * hot path free of system calls and locks.
 */
#include "gw_request_id.h"

#include <openssl/rand.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Thread_local uint64_t s_state; /* generator state */
static _Thread_local int s_seeded;     /* whether s_state was seeded */

bool
gw_request_id_valid(const char *s)
{
    size_t n = 0;
    if (!s)
        return false;
    for (; s[n]; n++) {
        char c = s[n];
        if (n >= GW_REQUEST_ID_MAX)
            return false;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return false;
    }
    return n > 0;
}

static uint64_t
s_next(void)
{
    uint64_t z = (s_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void
gw_request_id_generate(char *out)
{
    static const char hex[] = "0123456789abcdef";
    if (!s_seeded) {
        if (RAND_bytes((unsigned char *)&s_state, sizeof s_state) != 1) {
            /* No OS randomness: fall back to time and thread identity;
             * ids only need to be distinct. */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            s_state = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^
                      (uint64_t)(uintptr_t)&s_state ^ (uint64_t)getpid();
        }
        s_seeded = 1;
    }
    uint64_t a = s_next(), b = s_next();
    for (int i = 0; i < 16; i++) {
        out[i] = hex[(a >> (60 - 4 * i)) & 0xf];
        out[16 + i] = hex[(b >> (60 - 4 * i)) & 0xf];
    }
    out[32] = '\0';
}

void
gw_request_id_pick(const char *incoming, char *out)
{
    if (gw_request_id_valid(incoming)) {
        size_t n = strlen(incoming);
        memcpy(out, incoming, n + 1);
    } else {
        gw_request_id_generate(out);
    }
}
