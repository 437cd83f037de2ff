/*
 * kl_log: one JSON object a line on stderr. Each line is formatted into one
 * buffer and written with a single write(2), so lines from several threads
 * never interleave.
 */
#include "kl_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define S_LINE_MAX 8192
#define S_CTX_MAX 65

static char s_component[32] = "kowloon"; /* set once before threads */
static kl_log_level_t s_level = KL_INFO; /* set once before threads */

static _Thread_local char s_request_id[S_CTX_MAX]; /* current call's id */
static _Thread_local char s_tenant[S_CTX_MAX];     /* current call's tenant */

static const char *const s_level_names[] = {"debug", "info", "warn", "error"};

void
kl_log_init(const char *component, kl_log_level_t level)
{
    snprintf(s_component, sizeof s_component, "%s", component);
    s_level = level;
}

int
kl_log_level_from_name(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, s_level_names[i]) == 0)
            return i;
    return -1;
}

void
kl_log_set_context(const char *request_id, const char *tenant)
{
    snprintf(s_request_id, sizeof s_request_id, "%s",
             request_id ? request_id : "");
    snprintf(s_tenant, sizeof s_tenant, "%s", tenant ? tenant : "");
}

void
kl_log_clear_context(void)
{
    s_request_id[0] = '\0';
    s_tenant[0] = '\0';
}

int
kl_log_enabled(kl_log_level_t level)
{
    return level >= s_level;
}

/* Appends s to buf as the inside of a JSON string. Returns the new length;
 * stops (without breaking an escape) when the buffer is nearly full. */
static size_t
s_escape(char *buf, size_t len, size_t cap, const char *s)
{
    for (; *s && len + 8 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[len++] = '\\';
            buf[len++] = (char)c;
        } else if (c == '\n') {
            buf[len++] = '\\';
            buf[len++] = 'n';
        } else if (c < 0x20) {
            len += (size_t)snprintf(buf + len, cap - len, "\\u%04x", c);
        } else {
            buf[len++] = (char)c;
        }
    }
    return len;
}

static void
s_write(kl_log_level_t level, const char *fields, const char *fmt, va_list ap)
{
    char msg[S_LINE_MAX / 2];
    char line[S_LINE_MAX];
    struct timeval tv;
    struct tm tm;
    size_t len;

    vsnprintf(msg, sizeof msg, fmt, ap);
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    len = strftime(line, sizeof line, "{\"ts\":\"%Y-%m-%dT%H:%M:%S", &tm);
    len += (size_t)snprintf(line + len, sizeof line - len,
                            ".%03ldZ\",\"level\":\"%s\",\"component\":\"%s\"",
                            (long)(tv.tv_usec / 1000), s_level_names[level & 3],
                            s_component);
    if (s_request_id[0]) {
        len += (size_t)snprintf(line + len, sizeof line - len,
                                ",\"request_id\":\"");
        len = s_escape(line, len, sizeof line, s_request_id);
        line[len++] = '"';
    }
    if (s_tenant[0]) {
        len +=
            (size_t)snprintf(line + len, sizeof line - len, ",\"tenant\":\"");
        len = s_escape(line, len, sizeof line, s_tenant);
        line[len++] = '"';
    }
    if (fields && *fields && len + strlen(fields) + 2 < sizeof line / 2) {
        line[len++] = ',';
        memcpy(line + len, fields, strlen(fields));
        len += strlen(fields);
    }
    len += (size_t)snprintf(line + len, sizeof line - len, ",\"msg\":\"");
    len = s_escape(line, len, sizeof line - 3, msg);
    line[len++] = '"';
    line[len++] = '}';
    line[len++] = '\n';
    /* One write per line; a short write to stderr is not worth retrying. */
    if (write(STDERR_FILENO, line, len) < 0)
        return;
}

void
kl_log_write(kl_log_level_t level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_write(level, NULL, fmt, ap);
    va_end(ap);
}

void
kl_log_write_fields(kl_log_level_t level, const char *fields, const char *fmt,
                    ...)
{
    va_list ap;
    if (!kl_log_enabled(level))
        return;
    va_start(ap, fmt);
    s_write(level, fields, fmt, ap);
    va_end(ap);
}
