/*
 * kl_rpc_balancer: which instance of a service gets the next call, and
 * which instances are kept out of rotation. Pure bookkeeping (no I/O, no
 * clock of its own, no locking: the caller passes the time and holds its
 * own lock), so the choice and ejection rules are unit-tested directly.
 *
 * Instances live in slots 0..KL_RPC_BALANCER_SLOTS-1; a slot keeps its
 * number while it is used, so a set of tried slots (a bit mask) stays
 * meaningful while instances are added and removed.
 *
 * Choice: least outstanding calls; among equals, in rotation (each choice
 * moves the rotation on by one), so equal instances share the load evenly
 * rather than the first one taking everything. Slots the call has already
 * tried come after every untried one.
 *
 * Ejection: an instance that fails opts.eject_after consecutive times (a
 * call timed out, it answered UNAVAILABLE, or a send found no live
 * connection) is ejected for a backoff period; an instance that refuses a
 * call as not executed (it is draining) is ejected at once. When the
 * backoff ends the instance is due for a probe (the client sends it a
 * Health.Check); a good probe brings it back, a bad one ejects it again
 * for twice as long (up to opts.backoff_max_ms). A call answered by an
 * ejected instance (see "panic" below) also brings it back.
 *
 * Panic: when every instance is ejected, the order lists them all anyway
 * (in the same least-outstanding order): trying an instance that may be
 * back beats failing every call.
 */
#ifndef KL_RPC_BALANCER_H
#define KL_RPC_BALANCER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KL_RPC_BALANCER_SLOTS 64

typedef struct kl_rpc_balancer kl_rpc_balancer_t;

typedef struct {
    int eject_after;        /* consecutive failures; 0 means 3 */
    int64_t backoff_ms;     /* first ejection; 0 means 1000 */
    int64_t backoff_max_ms; /* longest ejection; 0 means 30000 */
} kl_rpc_balancer_opts_t;

typedef enum {
    KL_RPC_LB_FREE = 0, /* slot not in use */
    KL_RPC_LB_UP,       /* gets calls */
    KL_RPC_LB_EJECTED,  /* out until its backoff ends */
    KL_RPC_LB_PROBING,  /* backoff over, a probe is out */
} kl_rpc_lb_state_t;

/* opts may be NULL (defaults). Caller owns the result. */
kl_rpc_balancer_t *kl_rpc_balancer_new(const kl_rpc_balancer_opts_t *opts);
void kl_rpc_balancer_destroy(kl_rpc_balancer_t **self_p);

/* Takes the lowest free slot, UP with nothing outstanding. Returns the
 * slot, or -1 when all are in use. */
int kl_rpc_balancer_add(kl_rpc_balancer_t *self);

/* How many slots in use are not in tried. */
size_t kl_rpc_balancer_untried(const kl_rpc_balancer_t *self, uint64_t tried);

/* Frees slot. */
void kl_rpc_balancer_remove(kl_rpc_balancer_t *self, int slot);

/*
 * Writes into order[] (room for KL_RPC_BALANCER_SLOTS) the slots to try
 * for one call, best first: UP slots not in tried (bit i = slot i), then
 * UP slots in tried, each group by outstanding calls, ties in rotation.
 * Ejected and probing slots are left out, except when no slot is UP
 * (panic) and, for a retry that has tried every UP slot, the ejected ones
 * it has not tried (offered before the tried UP ones). Moves the rotation
 * on. Returns how many were written.
 */
size_t kl_rpc_balancer_order(kl_rpc_balancer_t *self, uint64_t tried,
                             int *order);

/* A call went out on slot. */
void kl_rpc_balancer_sent(kl_rpc_balancer_t *self, int slot);

/* A call sent on slot ended (reply, caller gave up, or slot removed).
 * ok: the instance answered (any status but UNAVAILABLE); false: it timed
 * out or answered UNAVAILABLE, which counts as a failure. */
void kl_rpc_balancer_finished(kl_rpc_balancer_t *self, int slot, bool ok,
                              int64_t now_ms);

/* A failure that was not a sent call (a send found no connection). */
void kl_rpc_balancer_failed(kl_rpc_balancer_t *self, int slot, int64_t now_ms);

/* Ejects slot at once (it said it is draining). */
void kl_rpc_balancer_eject(kl_rpc_balancer_t *self, int slot, int64_t now_ms);

/* An ejected slot whose backoff has ended, now marked PROBING (the caller
 * sends the probe), or -1 when none is due. */
int kl_rpc_balancer_probe_due(kl_rpc_balancer_t *self, int64_t now_ms);

/* The probe of slot came back: ok brings it UP, otherwise it is ejected
 * for twice its last backoff. */
void kl_rpc_balancer_probe_result(kl_rpc_balancer_t *self, int slot, bool ok,
                                  int64_t now_ms);

/* Earliest time a probe is due, or INT64_MAX when none is pending. */
int64_t kl_rpc_balancer_next_probe_ms(const kl_rpc_balancer_t *self);

kl_rpc_lb_state_t kl_rpc_balancer_state(const kl_rpc_balancer_t *self,
                                        int slot);
uint64_t kl_rpc_balancer_outstanding(const kl_rpc_balancer_t *self, int slot);

/* Slots UP now. */
size_t kl_rpc_balancer_up_count(const kl_rpc_balancer_t *self);

#endif
