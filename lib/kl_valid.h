/*
 * kl_valid: the request checks every service makes the same way — empty
 * strings, UUID syntax, names and free text measured in UTF-8
 * characters, plan names, one-of lists, page sizes and keyset page
 * tokens. No I/O and no allocation.
 *
 * Every kl_valid_check_* returns 0, or -KL_INVALID_ARGUMENT with status
 * set to the exact message the caller gets (tests assert them; they are
 * quoted below).
 */
#ifndef KL_VALID_H
#define KL_VALID_H

#include "kl_code.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Plan names: [a-z0-9_-]{1,KL_VALID_PLAN_MAX}. */
#define KL_VALID_PLAN_MAX 63

/* Room for a page token made by kl_valid_page_token_encode. */
#define KL_VALID_PAGE_TOKEN_SIZE 128

/* NULL or "". */
bool kl_valid_empty(const char *s);

/* Whether s (not NULL) is one of set, a NULL-terminated list. */
bool kl_valid_one_of(const char *s, const char *const *set);

/* 8-4-4-4-12 hex digits, either case (PostgreSQL's uuid input). NULL is
 * not a UUID. */
bool kl_valid_uuid(const char *s);

/* Lower-cases a valid UUID into out (the form PostgreSQL prints). */
void kl_valid_uuid_lower(const char *s, char out[37]);

/* Characters in s if it is well-formed UTF-8 (no overlong forms,
 * surrogates or code points past U+10FFFF), else -1. */
long kl_valid_utf8_chars(const char *s);

/* 1..max bytes, each a-z, 0-9 or one of the characters of extra. */
bool kl_valid_charset(const char *s, size_t max, const char *extra);

/* A plan name: kl_valid_charset(s, KL_VALID_PLAN_MAX, "_-"). */
bool kl_valid_plan(const char *s);

/* field must be a UUID:
 *   "id is required", "id \"x\" is not a UUID" (value cut at 64 bytes) */
int kl_valid_check_uuid(const char *field, const char *s, kl_status_t *status);

/* field must be a plan name:
 *   "plan is required"
 *   "plan \"Pro!\" is invalid: want 1 to 63 of a-z, 0-9, _ and -" */
int kl_valid_check_plan(const char *field, const char *s, kl_status_t *status);

/* Text of at most max characters of valid UTF-8; NULL counts as "".
 * required: at least one character.
 *   "name is required"
 *   "name must be valid UTF-8"
 *   "name must be at most 200 characters, got 201" */
int kl_valid_check_text(const char *field, const char *s, long max,
                        bool required, kl_status_t *status);

/* A request's page_size: 0 means def, else 1..max goes through as is.
 *   "page_size must be 1 to 500, got 501" */
int kl_valid_check_page_size(int32_t size, int max, int def, int *out,
                             kl_status_t *status);

/* A keyset page token: base64url (no padding) of "<usec>:<uuid>", the
 * sort key of the last row of a page. Writes "" when out_size is too
 * small (KL_VALID_PAGE_TOKEN_SIZE always suffices for a UUID id). */
void kl_valid_page_token_encode(int64_t usec, const char *id, char *out,
                                size_t out_size);

/* Reads a token made by kl_valid_page_token_encode into *usec and id
 * (lower or upper case as encoded). Anything else:
 *   "invalid page_token" */
int kl_valid_page_token_decode(const char *token, int64_t *usec, char id[37],
                               kl_status_t *status);

#endif
