/*
 * billing_form: the form encoder of the Stripe client.
 */
#include "billing_form.h"

#include "kl_alloc.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct billing_form {
    char *buf;  /* the body, NUL-terminated */
    size_t len; /* bytes used, without the NUL */
    size_t cap; /* bytes allocated */
};

billing_form_t *
billing_form_new(void)
{
    billing_form_t *self = kl_calloc(1, sizeof *self);
    self->cap = 256;
    self->buf = kl_calloc(1, self->cap);
    return self;
}

void
billing_form_destroy(billing_form_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->buf);
    free(*self_p);
    *self_p = NULL;
}

static void
s_reserve(billing_form_t *self, size_t more)
{
    if (self->len + more + 1 <= self->cap)
        return;
    while (self->len + more + 1 > self->cap)
        self->cap *= 2;
    self->buf = kl_realloc(self->buf, self->cap);
}

static bool
s_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
           c == '~';
}

/* Appends s encoded; brackets kept when keep_brackets (keys). */
static void
s_append(billing_form_t *self, const char *s, bool keep_brackets)
{
    static const char hex[] = "0123456789ABCDEF";
    s_reserve(self, strlen(s) * 3);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (s_unreserved(*p) || (keep_brackets && (*p == '[' || *p == ']'))) {
            self->buf[self->len++] = (char)*p;
        } else {
            self->buf[self->len++] = '%';
            self->buf[self->len++] = hex[*p >> 4];
            self->buf[self->len++] = hex[*p & 15];
        }
    }
    self->buf[self->len] = '\0';
}

void
billing_form_add(billing_form_t *self, const char *key, const char *value)
{
    s_reserve(self, 2);
    if (self->len > 0)
        self->buf[self->len++] = '&';
    s_append(self, key, true);
    s_reserve(self, 1);
    self->buf[self->len++] = '=';
    self->buf[self->len] = '\0';
    s_append(self, value ? value : "", false);
}

void
billing_form_addf(billing_form_t *self, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *value = NULL;
    if (vasprintf(&value, fmt, ap) < 0)
        abort(); /* out of memory, as kl_malloc */
    va_end(ap);
    billing_form_add(self, key, value);
    free(value);
}

const char *
billing_form_body(const billing_form_t *self)
{
    return self->buf;
}

char *
billing_form_encode(const char *s)
{
    billing_form_t *f = billing_form_new();
    s_append(f, s, false);
    char *out = f->buf;
    free(f);
    return out;
}
