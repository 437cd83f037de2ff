/*
 * billing_form: an application/x-www-form-urlencoded body as Stripe reads
 * it. Nested keys are written by the caller in Stripe's bracket notation:
 * "metadata[tenant_id]", "items[0][price]", "payment_method_types[]" (one
 * add per array element). Keys keep their brackets; every other byte of a
 * key or value that is not unreserved (A-Z a-z 0-9 - . _ ~) is
 * percent-encoded as %XX (upper case), a space included.
 */
#ifndef BILLING_FORM_H
#define BILLING_FORM_H

#include <stddef.h>

typedef struct billing_form billing_form_t;

billing_form_t *billing_form_new(void);
void billing_form_destroy(billing_form_t **self_p);

/* Appends key=value; both copied (encoded). */
void billing_form_add(billing_form_t *self, const char *key, const char *value);
void billing_form_addf(billing_form_t *self, const char *key, const char *fmt,
                       ...) __attribute__((format(printf, 3, 4)));

/* The body so far ("" when empty); valid until the next add or destroy. */
const char *billing_form_body(const billing_form_t *self);

/* Percent-encodes s as a value. Caller owns the result. */
char *billing_form_encode(const char *s);

#endif
