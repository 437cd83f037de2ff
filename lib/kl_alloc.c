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
