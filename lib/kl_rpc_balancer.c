/*
 * kl_rpc_balancer: a fixed table of slots. The rules are in the header;
 * here only how they are kept.
 */
#include "kl_rpc_balancer.h"

#include "kl_alloc.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    kl_rpc_lb_state_t state; /* FREE, UP, EJECTED, PROBING */
    uint64_t outstanding;    /* calls sent and not finished */
    int failures;            /* consecutive failures */
    int64_t backoff_ms;      /* length of the current or last ejection */
    int64_t until_ms;        /* EJECTED: when a probe is due */
} s_slot_t;

struct kl_rpc_balancer {
    kl_rpc_balancer_opts_t opts;           /* with defaults filled in */
    s_slot_t slots[KL_RPC_BALANCER_SLOTS]; /* the table */
    unsigned rr;                           /* rotation among equals */
};

kl_rpc_balancer_t *
kl_rpc_balancer_new(const kl_rpc_balancer_opts_t *opts)
{
    kl_rpc_balancer_t *self = kl_calloc(1, sizeof *self);
    if (opts)
        self->opts = *opts;
    if (self->opts.eject_after <= 0)
        self->opts.eject_after = 3;
    if (self->opts.backoff_ms <= 0)
        self->opts.backoff_ms = 1000;
    if (self->opts.backoff_max_ms < self->opts.backoff_ms)
        self->opts.backoff_max_ms =
            self->opts.backoff_ms > 30000 ? self->opts.backoff_ms : 30000;
    return self;
}

void
kl_rpc_balancer_destroy(kl_rpc_balancer_t **self_p)
{
    if (self_p && *self_p)
        KL_FREE(self_p);
}

static bool
s_valid(const kl_rpc_balancer_t *self, int slot)
{
    return self && slot >= 0 && slot < KL_RPC_BALANCER_SLOTS &&
           self->slots[slot].state != KL_RPC_LB_FREE;
}

int
kl_rpc_balancer_add(kl_rpc_balancer_t *self)
{
    for (int i = 0; i < KL_RPC_BALANCER_SLOTS; i++)
        if (self->slots[i].state == KL_RPC_LB_FREE) {
            memset(&self->slots[i], 0, sizeof self->slots[i]);
            self->slots[i].state = KL_RPC_LB_UP;
            return i;
        }
    return -1;
}

void
kl_rpc_balancer_remove(kl_rpc_balancer_t *self, int slot)
{
    if (s_valid(self, slot))
        memset(&self->slots[slot], 0, sizeof self->slots[slot]);
}

/* Sort rank of a slot for one call: untried UP first, then untried
 * ejected, then tried UP, then tried ejected; the outstanding count (never
 * near 2^60) orders slots within a rank. */
static uint64_t
s_rank(bool up, bool tried)
{
    return ((uint64_t)(tried ? 2 : 0) + (up ? 0 : 1)) << 60;
}

size_t
kl_rpc_balancer_order(kl_rpc_balancer_t *self, uint64_t tried, int *order)
{
    int used[KL_RPC_BALANCER_SLOTS];
    size_t n_used = 0;
    bool any_up = false;
    bool all_up_tried = true;
    for (int i = 0; i < KL_RPC_BALANCER_SLOTS; i++) {
        if (self->slots[i].state == KL_RPC_LB_FREE)
            continue;
        used[n_used++] = i;
        if (self->slots[i].state == KL_RPC_LB_UP) {
            any_up = true;
            all_up_tried &= (tried >> i) & 1;
        }
    }
    if (n_used == 0)
        return 0;
    size_t n = 0;
    unsigned start = self->rr++ % (unsigned)n_used;
    for (size_t k = 0; k < n_used; k++) {
        int idx = used[(start + k) % n_used];
        const s_slot_t *s = &self->slots[idx];
        bool up = s->state == KL_RPC_LB_UP;
        bool was_tried = (tried >> idx) & 1;
        /* An ejected slot is offered when nothing is UP (panic), or to a
         * retry that has tried every UP slot already: an untried ejected
         * instance is a better bet than the one that just failed, and a
         * send to one with no connection fails at once and moves on. */
        if (!up && any_up && !(all_up_tried && !was_tried))
            continue;
        uint64_t key = s_rank(up, was_tried) + s->outstanding;
        /* Insertion sort is stable: equal keys keep the rotation order. */
        size_t j = n;
        while (j > 0) {
            int prev = order[j - 1];
            const s_slot_t *p = &self->slots[prev];
            uint64_t pkey =
                s_rank(p->state == KL_RPC_LB_UP, (tried >> prev) & 1) +
                p->outstanding;
            if (pkey <= key)
                break;
            order[j] = prev;
            j--;
        }
        order[j] = idx;
        n++;
    }
    return n;
}

size_t
kl_rpc_balancer_untried(const kl_rpc_balancer_t *self, uint64_t tried)
{
    size_t n = 0;
    for (int i = 0; i < KL_RPC_BALANCER_SLOTS; i++)
        if (self->slots[i].state != KL_RPC_LB_FREE && !((tried >> i) & 1))
            n++;
    return n;
}

void
kl_rpc_balancer_sent(kl_rpc_balancer_t *self, int slot)
{
    if (s_valid(self, slot))
        self->slots[slot].outstanding++;
}

static void
s_eject(kl_rpc_balancer_t *self, s_slot_t *s, int64_t now_ms)
{
    if (s->state == KL_RPC_LB_EJECTED || s->state == KL_RPC_LB_PROBING)
        return;
    s->state = KL_RPC_LB_EJECTED;
    s->backoff_ms = self->opts.backoff_ms;
    s->until_ms = now_ms + s->backoff_ms;
}

void
kl_rpc_balancer_failed(kl_rpc_balancer_t *self, int slot, int64_t now_ms)
{
    if (!s_valid(self, slot))
        return;
    s_slot_t *s = &self->slots[slot];
    if (++s->failures >= self->opts.eject_after)
        s_eject(self, s, now_ms);
}

void
kl_rpc_balancer_finished(kl_rpc_balancer_t *self, int slot, bool ok,
                         int64_t now_ms)
{
    if (!s_valid(self, slot))
        return;
    s_slot_t *s = &self->slots[slot];
    if (s->outstanding)
        s->outstanding--;
    if (!ok) {
        kl_rpc_balancer_failed(self, slot, now_ms);
        return;
    }
    /* It answered: whatever we thought of it, it is serving. */
    s->failures = 0;
    s->state = KL_RPC_LB_UP;
    s->backoff_ms = 0;
}

void
kl_rpc_balancer_eject(kl_rpc_balancer_t *self, int slot, int64_t now_ms)
{
    if (s_valid(self, slot))
        s_eject(self, &self->slots[slot], now_ms);
}

int
kl_rpc_balancer_probe_due(kl_rpc_balancer_t *self, int64_t now_ms)
{
    for (int i = 0; i < KL_RPC_BALANCER_SLOTS; i++) {
        s_slot_t *s = &self->slots[i];
        if (s->state == KL_RPC_LB_EJECTED && now_ms >= s->until_ms) {
            s->state = KL_RPC_LB_PROBING;
            return i;
        }
    }
    return -1;
}

void
kl_rpc_balancer_probe_result(kl_rpc_balancer_t *self, int slot, bool ok,
                             int64_t now_ms)
{
    if (!s_valid(self, slot))
        return;
    s_slot_t *s = &self->slots[slot];
    if (s->state != KL_RPC_LB_PROBING)
        return;
    if (ok) {
        s->state = KL_RPC_LB_UP;
        s->failures = 0;
        s->backoff_ms = 0;
        return;
    }
    s->backoff_ms *= 2;
    if (s->backoff_ms > self->opts.backoff_max_ms)
        s->backoff_ms = self->opts.backoff_max_ms;
    s->state = KL_RPC_LB_EJECTED;
    s->until_ms = now_ms + s->backoff_ms;
}

int64_t
kl_rpc_balancer_next_probe_ms(const kl_rpc_balancer_t *self)
{
    int64_t next = INT64_MAX;
    for (int i = 0; i < KL_RPC_BALANCER_SLOTS; i++)
        if (self->slots[i].state == KL_RPC_LB_EJECTED &&
            self->slots[i].until_ms < next)
            next = self->slots[i].until_ms;
    return next;
}

kl_rpc_lb_state_t
kl_rpc_balancer_state(const kl_rpc_balancer_t *self, int slot)
{
    return s_valid(self, slot) ? self->slots[slot].state : KL_RPC_LB_FREE;
}

uint64_t
kl_rpc_balancer_outstanding(const kl_rpc_balancer_t *self, int slot)
{
    return s_valid(self, slot) ? self->slots[slot].outstanding : 0;
}

size_t
kl_rpc_balancer_up_count(const kl_rpc_balancer_t *self)
{
    size_t n = 0;
    for (int i = 0; i < KL_RPC_BALANCER_SLOTS; i++)
        n += self->slots[i].state == KL_RPC_LB_UP;
    return n;
}
