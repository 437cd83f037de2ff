/*
 * kl_log: JSON-lines logging on stderr, one object a line:
 *   {"ts":"2026-11-27T17:03:05.123Z","level":"info","component":"gateway",
 *    "request_id":"...","tenant":"...","msg":"..."}
 *
 * The request id and tenant come from a thread-local context that the RPC
 * server and the gateway set around each call. Libraries return errors; the
 * service layer logs them.
 */
#ifndef KL_LOG_H
#define KL_LOG_H

typedef enum { KL_DEBUG = 0, KL_INFO, KL_WARN, KL_ERROR } kl_log_level_t;

/* Set once at start, before threads: the component name ("gateway",
 * "tenant") and the minimum level. */
void kl_log_init(const char *component, kl_log_level_t level);

/* "debug" | "info" | "warn" | "error" -> level; -1 if unknown. */
int kl_log_level_from_name(const char *name);

/* Thread-local call context shown in every line logged on this thread until
 * cleared. Strings are copied (truncated to 64 bytes). NULL clears a field. */
void kl_log_set_context(const char *request_id, const char *tenant);
void kl_log_clear_context(void);

/* Whether a line at this level would be written. */
int kl_log_enabled(kl_log_level_t level);

void kl_log_write(kl_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* As kl_log_write, with extra JSON members: fields is a string of the form
 * "\"key\":value,..." already escaped by the caller (may be NULL). */
void kl_log_write_fields(kl_log_level_t level, const char *fields,
                         const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Checks the level before formatting anything. */
#define KL_LOG(level, ...)                                                     \
    do {                                                                       \
        if (kl_log_enabled(level))                                             \
            kl_log_write(level, __VA_ARGS__);                                  \
    } while (0)

#endif
