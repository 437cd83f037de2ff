/*
 * kl_alloc: allocation that never returns NULL. Out of memory is the one
 * failure Kowloon does not recover from: it logs and aborts (as Redis'
 * zmalloc and PostgreSQL's palloc do). Every other failure is checked.
 */
#ifndef KL_ALLOC_H
#define KL_ALLOC_H

#include <stddef.h>

void *kl_malloc(size_t size);
void *kl_calloc(size_t count, size_t size);
void *kl_realloc(void *ptr, size_t size);
char *kl_strdup(const char *s);
char *kl_strndup(const char *s, size_t n);
void *kl_memdup(const void *p, size_t n);
/* printf into a new string. Caller owns the result. */
char *kl_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A growing string. Starts as {0} (p NULL); after the first add, even of
 * nothing, p is a NUL-terminated string of len bytes. The owner frees p. */
typedef struct {
    char *p;
    size_t len, cap;
} kl_buf_t;

void kl_buf_add(kl_buf_t *b, const void *data, size_t n);
void kl_buf_str(kl_buf_t *b, const char *s);
void kl_buf_printf(kl_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Free *ptr_p (may be NULL) and set it to NULL. */
#define KL_FREE(ptr_p)                                                         \
    do {                                                                       \
        free(*(ptr_p));                                                        \
        *(ptr_p) = NULL;                                                       \
    } while (0)

#endif
