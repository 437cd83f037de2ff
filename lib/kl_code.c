/*
 * kl_code: names and HTTP statuses of the status codes, from KL_CODE_MAP.
 */
#include "kl_code.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const s_names[KL_CODE_COUNT] = {
#define KL_CODE_NAME(name, num, http) [num] = #name,
    KL_CODE_MAP(KL_CODE_NAME)
#undef KL_CODE_NAME
};

static const int s_http[KL_CODE_COUNT] = {
#define KL_CODE_HTTP(name, num, http) [num] = http,
    KL_CODE_MAP(KL_CODE_HTTP)
#undef KL_CODE_HTTP
};

const char *
kl_code_name(kl_code_t code)
{
    if ((int)code < 0 || code >= KL_CODE_COUNT)
        return "UNKNOWN";
    return s_names[code];
}

int
kl_code_http_status(kl_code_t code)
{
    if ((int)code < 0 || code >= KL_CODE_COUNT)
        return 500;
    return s_http[code];
}

kl_code_t
kl_code_from_int(int number)
{
    if (number < 0 || number >= KL_CODE_COUNT)
        return KL_UNKNOWN;
    return (kl_code_t)number;
}

const char *
kl_strerror(int rc)
{
    /* Test the range before negating: -INT_MIN does not exist. */
    if (rc > 0 || rc <= -KL_CODE_COUNT)
        return "UNKNOWN";
    return kl_code_name(kl_code_from_int(-rc));
}

int
kl_status_set(kl_status_t *status, kl_code_t code, const char *fmt, ...)
{
    if (status) {
        va_list ap;
        status->code = code;
        va_start(ap, fmt);
        vsnprintf(status->message, sizeof status->message, fmt, ap);
        va_end(ap);
    }
    return -(int)code;
}

void
kl_status_clear(kl_status_t *status)
{
    if (status) {
        status->code = KL_OK;
        status->message[0] = '\0';
    }
}
