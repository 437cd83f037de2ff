/*
 * tenant_apikey: the format of a tenant's API keys and how they are hashed.
 *
 * A key is "kl_<id>_<secret>": id is 16 lowercase hex characters (8 random
 * bytes, public, the database key), secret is 64 lowercase hex characters
 * (32 random bytes from getrandom). Only SHA-256 of the 32 secret bytes is
 * stored; the whole key is shown once, when it is created.
 */
#ifndef TENANT_APIKEY_H
#define TENANT_APIKEY_H

#include "kl_code.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TENANT_APIKEY_ID_LEN 16
#define TENANT_APIKEY_SECRET_LEN 32 /* bytes; 64 hex characters */
#define TENANT_APIKEY_LEN                                                      \
    (3 + TENANT_APIKEY_ID_LEN + 1 + 2 * TENANT_APIKEY_SECRET_LEN)
#define TENANT_APIKEY_HASH_LEN 32

/* A new random key: id gets the key id (NUL-terminated), key the whole key
 * (NUL-terminated), hash the SHA-256 of its secret. Returns 0, or
 * -KL_INTERNAL when the system has no randomness to give. */
int tenant_apikey_generate(char id[TENANT_APIKEY_ID_LEN + 1],
                           char key[TENANT_APIKEY_LEN + 1],
                           uint8_t hash[TENANT_APIKEY_HASH_LEN],
                           kl_status_t *status);

/* Fills buf with n random bytes from getrandom (retried on EINTR; it
 * blocks only before the kernel's pool is first initialised). Returns 0, or
 * -KL_INTERNAL when the system has no randomness to give. Also makes new
 * tenant ids (tenant_creations). */
int tenant_apikey_random(uint8_t *buf, size_t n, kl_status_t *status);

/* Splits a presented key into its id and the hash of its secret. Returns
 * false when key is not exactly of the format above. */
bool tenant_apikey_parse(const char *key, char id[TENANT_APIKEY_ID_LEN + 1],
                         uint8_t hash[TENANT_APIKEY_HASH_LEN]);

/* Whether id has the key id format (16 lowercase hex characters). */
bool tenant_apikey_id_valid(const char *id);

/* Compares two hashes in constant time. */
bool tenant_apikey_hash_equal(const uint8_t a[TENANT_APIKEY_HASH_LEN],
                              const uint8_t b[TENANT_APIKEY_HASH_LEN]);

#endif
