/*
 * kl_alloc: allocation that aborts on out of memory, so that every caller
 * can treat allocation as infallible and check every other failure.
 */
#include "kl_alloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void
s_oom(size_t size)
{
    /* No allocation and no stdio buffering here: memory is what failed. */
    char buf[96];
    int n = snprintf(buf, sizeof buf,
                     "{\"level\":\"error\",\"msg\":\"out of memory "
                     "allocating %zu bytes\"}\n",
                     size);
    if (n > 0 && write(STDERR_FILENO, buf, (size_t)n) < 0)
        abort();
    abort();
}

void *
kl_malloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p)
        s_oom(size);
    return p;
}

void *
kl_calloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        s_oom(count * size);
    return p;
}

void *
kl_realloc(void *ptr, size_t size)
{
    void *p = realloc(ptr, size ? size : 1);
    if (!p)
        s_oom(size);
    return p;
}

char *
kl_strdup(const char *s)
{
    return kl_memdup(s, strlen(s) + 1);
}

char *
kl_strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = kl_malloc(len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

void *
kl_memdup(const void *p, size_t n)
{
    void *q = kl_malloc(n);
    if (n)
        memcpy(q, p, n);
    return q;
}

char *
kl_asprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        s_oom(0);
    char *p = kl_malloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

void
kl_buf_add(kl_buf_t *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap)
            cap *= 2;
        b->p = kl_realloc(b->p, cap);
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void
kl_buf_str(kl_buf_t *b, const char *s)
{
    kl_buf_add(b, s, strlen(s));
}

void
kl_buf_printf(kl_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        s_oom(0);
    kl_buf_add(b, "", 0);
    if (b->len + (size_t)n + 1 > b->cap) {
        size_t cap = b->cap;
        while (b->len + (size_t)n + 1 > cap)
            cap *= 2;
        b->p = kl_realloc(b->p, cap);
        b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}
