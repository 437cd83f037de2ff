/*
 * gw_request_id: the X-Request-Id of a request. A client's id is kept when
 * it is well formed (1..64 characters of [A-Za-z0-9._-]); otherwise the
 * gateway makes a new one of 32 lowercase hex digits.
 */
#ifndef GW_REQUEST_ID_H
#define GW_REQUEST_ID_H

#include <stdbool.h>
#include <stddef.h>

#define GW_REQUEST_ID_MAX 64
/* Size of a buffer that holds any request id and its NUL. */
#define GW_REQUEST_ID_SIZE (GW_REQUEST_ID_MAX + 1)

/* Whether s (may be NULL) is an acceptable client-supplied id. */
bool gw_request_id_valid(const char *s);

/* Writes a new random id (32 hex digits) into out (>= 33 bytes). Thread
 * safe; seeded per thread from the OS random source. */
void gw_request_id_generate(char *out);

/* out (GW_REQUEST_ID_SIZE bytes) := incoming if valid, else a new id. */
void gw_request_id_pick(const char *incoming, char *out);

#endif
