/*
 * kl_code: the one status-code set of Kowloon (gRPC's codes and numbers),
 * with its names and its HTTP mapping, generated from one X-macro.
 *
 * Library functions return 0 on success and a negative code on failure
 * (-KL_UNAVAILABLE, ...); kl_strerror() names either form.
 */
#ifndef KL_CODE_H
#define KL_CODE_H

#include <stddef.h>

/*  X(name, number, http status) — as grpc-gateway maps them. */
#define KL_CODE_MAP(X)                                                         \
    X(OK, 0, 200)                                                              \
    X(CANCELLED, 1, 499)                                                       \
    X(UNKNOWN, 2, 500)                                                         \
    X(INVALID_ARGUMENT, 3, 400)                                                \
    X(DEADLINE_EXCEEDED, 4, 504)                                               \
    X(NOT_FOUND, 5, 404)                                                       \
    X(ALREADY_EXISTS, 6, 409)                                                  \
    X(PERMISSION_DENIED, 7, 403)                                               \
    X(RESOURCE_EXHAUSTED, 8, 429)                                              \
    X(FAILED_PRECONDITION, 9, 400)                                             \
    X(ABORTED, 10, 409)                                                        \
    X(OUT_OF_RANGE, 11, 400)                                                   \
    X(UNIMPLEMENTED, 12, 501)                                                  \
    X(INTERNAL, 13, 500)                                                       \
    X(UNAVAILABLE, 14, 503)                                                    \
    X(DATA_LOSS, 15, 500)                                                      \
    X(UNAUTHENTICATED, 16, 401)

typedef enum {
#define KL_CODE_ENUM(name, num, http) KL_##name = num,
    KL_CODE_MAP(KL_CODE_ENUM)
#undef KL_CODE_ENUM
        KL_CODE_COUNT
} kl_code_t;

/* A status: a code and a human message (lower case, no trailing period). */
#define KL_STATUS_MESSAGE_MAX 512
typedef struct {
    kl_code_t code;
    char message[KL_STATUS_MESSAGE_MAX];
} kl_status_t;

/* "NOT_FOUND" for KL_NOT_FOUND; "UNKNOWN" for a number outside the set. */
const char *kl_code_name(kl_code_t code);

/* The HTTP status grpc-gateway uses for code; 500 outside the set. */
int kl_code_http_status(kl_code_t code);

/* Code from a number received on the wire; KL_UNKNOWN outside the set. */
kl_code_t kl_code_from_int(int number);

/* Name of a return value: 0 is "OK", -KL_X is "X", others "UNKNOWN". */
const char *kl_strerror(int rc);

/* Fill status (may be NULL) and return -code. printf-style message. */
int kl_status_set(kl_status_t *status, kl_code_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Reset status to OK with an empty message. */
void kl_status_clear(kl_status_t *status);

#endif
