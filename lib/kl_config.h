/*
 * kl_config: the process's settings, read from KOWLOON_* environment
 * variables through the table in kl_config_table.h, validated at start.
 * A loaded config is immutable and may be read from any thread.
 */
#ifndef KL_CONFIG_H
#define KL_CONFIG_H

#include "kl_code.h"
#include "kl_config_table.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
#define KL_CFG_ID(id, type, def, min, max, choices, flags, procs, help)        \
    KL_CFG_##id,
    KL_CONFIG_TABLE(KL_CFG_ID)
#undef KL_CFG_ID
        KL_CFG_COUNT
} kl_config_id_t;

typedef struct kl_config kl_config_t;

/* Looks a variable up; returns NULL when unset. */
typedef const char *(*kl_config_getenv_fn)(const char *name, void *user);

/*
 * Reads and validates every setting whose processes include one of the bits
 * in procs. getenv_fn NULL means the process environment. On a missing or
 * malformed value returns NULL and sets status to INVALID_ARGUMENT with a
 * message naming the variable, its value (unless secret) and what is wanted:
 *   "KOWLOON_WORKERS: \"abc\" is not an integer (want 1..256)".
 * Caller owns the result.
 */
kl_config_t *kl_config_load(unsigned procs, kl_config_getenv_fn getenv_fn,
                            void *user, kl_status_t *status);
void kl_config_destroy(kl_config_t **self_p);

/* Typed reads. Reading a setting not loaded for this process, or with the
 * wrong type, is a programmer error (assert). */
const char *kl_config_str(const kl_config_t *self, kl_config_id_t id);
int64_t kl_config_int(const kl_config_t *self, kl_config_id_t id);
bool kl_config_bool(const kl_config_t *self, kl_config_id_t id);
/* LIST: items trimmed, empty items dropped. */
size_t kl_config_list_len(const kl_config_t *self, kl_config_id_t id);
const char *kl_config_list_at(const kl_config_t *self, kl_config_id_t id,
                              size_t index);

/* Environment variable name of a setting, "KOWLOON_WORKERS". */
const char *kl_config_name(kl_config_id_t id);

/* Logs the effective settings at info, secrets redacted, and a warning for
 * every KOWLOON_* variable in the environment that the table lacks. */
void kl_config_log(const kl_config_t *self);

/* Writes the whole table as a Markdown table (for docs/configuration.md). */
void kl_config_write_markdown(FILE *out);

#endif
