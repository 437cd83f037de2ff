/*
 * billing_webhook: verification of Stripe's webhook signatures, done on
 * the raw body before anything parses it (docs/billing.md, SECURITY.md).
 *
 *   Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...][,v0=<hex>]
 *
 * The signed bytes are t + "." + payload; the key is the whole whsec_...
 * string; HMAC-SHA256, compared in constant time against every v1 of the
 * header with every configured secret (rotation). v0 and unknown schemes
 * are ignored, so a header with only v0 is refused.
 */
#ifndef BILLING_WEBHOOK_H
#define BILLING_WEBHOOK_H

#include "kl_code.h"

#include <stddef.h>
#include <stdint.h>

/*
 * Returns 0 when a v1 signature of header matches payload under one of
 * secrets and |now - t| <= tolerance_s. Otherwise -KL_INVALID_ARGUMENT and
 * status names the reason:
 *   "no signature"                       header empty or missing
 *   "malformed signature header"         no or bad t=, an item without =
 *   "no v1 signature in header"          only v0 or unknown schemes
 *   "timestamp outside tolerance"        |now - t| > tolerance_s
 *   "no matching signature"              no v1 matches any secret
 */
int billing_webhook_verify(const char *header, const uint8_t *payload,
                           size_t payload_len, const char *const *secrets,
                           size_t n_secrets, int64_t now, int64_t tolerance_s,
                           kl_status_t *status);

/* The lowercase hex v1 signature of payload at t under secret (65 bytes
 * with the NUL). For tests and the stand-in's checks. */
void billing_webhook_sign(const char *secret, int64_t t, const uint8_t *payload,
                          size_t payload_len, char out[65]);

#endif
