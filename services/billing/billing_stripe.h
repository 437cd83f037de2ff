/*
 * billing_stripe: the Stripe API over libcurl.
 *
 * Every request carries Authorization: Bearer <secret key> and the pinned
 * Stripe-Version; a POST carries the caller's Idempotency-Key (which the
 * caller persisted before calling, so a retry after a crash reuses it).
 * Network errors, 409, 429 and 5xx are retried with exponential backoff
 * and jitter (Retry-After respected), within max_attempts and
 * max_total_ms. Stripe's error object is turned into a status:
 *
 *   card_error                         FAILED_PRECONDITION, Stripe's message
 *   invalid_request_error (400, 404)   INVALID_ARGUMENT (NOT_FOUND for 404)
 *   idempotency_error                  INTERNAL (a key reused with other
 *                                      parameters is our bug)
 *   authentication/permission (401/3)  INTERNAL "Stripe rejected the API
 *                                      key (check KOWLOON_STRIPE_SECRET_KEY)"
 *   429 after the retries              UNAVAILABLE
 *   5xx/409 after the retries          UNAVAILABLE
 *   unreachable, timed out             UNAVAILABLE "Stripe unreachable"
 *
 * The secret key is never logged, and neither are response bodies (they
 * hold Checkout and Portal URLs). Thread-safe: one per process.
 */
#ifndef BILLING_STRIPE_H
#define BILLING_STRIPE_H

#include "kl_code.h"

#include <jansson.h>
#include <stdint.h>

typedef struct {
    const char *api_base;    /* "https://api.stripe.com", no trailing / */
    const char *secret_key;  /* sk_... */
    const char *api_version; /* pinned Stripe-Version */
    long connect_timeout_ms; /* 0: 5000 */
    long request_timeout_ms; /* one attempt; 0: 30000 */
    int max_attempts;        /* 0: 4 */
    long max_total_ms;       /* all attempts and waits; 0: 60000 */
    long backoff_ms;         /* first wait; 0: 500 */
} billing_stripe_opts_t;

typedef struct billing_stripe billing_stripe_t;

/* Copies opts. Call curl_global_init once per process first. */
billing_stripe_t *billing_stripe_new(const billing_stripe_opts_t *opts,
                                     kl_status_t *status);
void billing_stripe_destroy(billing_stripe_t **self_p);

/*
 * method "GET" or "POST"; path "/v1/customers"; form the encoded body (POST)
 * or query (GET), may be ""; idempotency_key required for POST.
 * On success returns 0 and *out is the parsed JSON object (caller
 * json_decref()s). Otherwise -code, status as above, *out NULL.
 */
int billing_stripe_request(billing_stripe_t *self, const char *method,
                           const char *path, const char *form,
                           const char *idempotency_key, json_t **out,
                           kl_status_t *status);

/* Counters since start. */
typedef struct {
    uint64_t requests; /* HTTP attempts */
    uint64_t retries;
    uint64_t failures; /* calls that ended in an error */
} billing_stripe_stats_t;
void billing_stripe_stats(billing_stripe_t *self,
                          billing_stripe_stats_t *stats);

#endif
