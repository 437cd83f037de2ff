/*
 * gw_tenant: tenant snapshots. The deep copy is a pack/unpack round trip,
 * which protobuf-c gives us for free and which happens only on a cache
 * miss.
 */
#include "gw_tenant.h"

#include "kl_alloc.h"
#include "kl_json.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

gw_tenant_t *
gw_tenant_new(const Kowloon__Tenant__Tenant *msg)
{
    size_t len = kowloon__tenant__tenant__get_packed_size(msg);
    uint8_t *buf = kl_malloc(len ? len : 1);
    kowloon__tenant__tenant__pack(msg, buf);
    Kowloon__Tenant__Tenant *copy =
        kowloon__tenant__tenant__unpack(NULL, len, buf);
    free(buf);
    if (!copy)
        return NULL; /* cannot happen for bytes we packed, but checked */

    gw_tenant_t *t = kl_calloc(1, sizeof *t);
    t->msg = copy;
    json_t *j = kl_json_from_message(&copy->base, KL_JSON_EMIT_DEFAULTS);
    t->json = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!t->json)
        t->json = kl_strdup("{}");
    t->json_len = strlen(t->json);
    t->status_changed_ms = gw_tenant_parse_time(copy->status_changed_at);
    atomic_init(&t->refs, 1);
    return t;
}

gw_tenant_t *
gw_tenant_ref(gw_tenant_t *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
    return t;
}

void
gw_tenant_release(gw_tenant_t **t_p)
{
    if (!t_p || !*t_p)
        return;
    gw_tenant_t *t = *t_p;
    *t_p = NULL;
    if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
        return;
    kowloon__tenant__tenant__free_unpacked(t->msg, NULL);
    free(t->json);
    free(t);
}

int
gw_tenant_access(const gw_tenant_t *t, int64_t now_ms, int64_t grace_ms,
                 kl_status_t *status)
{
    const char *s = t->msg->status ? t->msg->status : "";
    if (strcmp(s, "active") == 0 || strcmp(s, "trialing") == 0)
        return 0;
    if (strcmp(s, "past_due") == 0) {
        if (t->status_changed_ms >= 0 &&
            now_ms - t->status_changed_ms <= grace_ms)
            return 0;
        return kl_status_set(status, KL_FAILED_PRECONDITION, "payment overdue");
    }
    if (strcmp(s, "suspended") == 0)
        return kl_status_set(status, KL_FAILED_PRECONDITION,
                             "tenant is suspended");
    if (strcmp(s, "deleted") == 0)
        return kl_status_set(status, KL_NOT_FOUND, "tenant not found");
    return kl_status_set(status, KL_FAILED_PRECONDITION,
                         "tenant is not active");
}

/* Reads exactly n digits at *p into *v; advances *p. */
static int
s_digits(const char **p, int n, int *v)
{
    *v = 0;
    for (int i = 0; i < n; i++, (*p)++) {
        if (**p < '0' || **p > '9')
            return -1;
        *v = *v * 10 + (**p - '0');
    }
    return 0;
}

int64_t
gw_tenant_parse_time(const char *s)
{
    struct tm tm = {0};
    int year, mon, day, hh, mm, ss, ms = 0, off = 0;
    const char *p = s;

    if (!s)
        return -1;
    if (s_digits(&p, 4, &year) || *p++ != '-' || s_digits(&p, 2, &mon) ||
        *p++ != '-' || s_digits(&p, 2, &day))
        return -1;
    if (*p != 'T' && *p != 't' && *p != ' ')
        return -1;
    p++;
    if (s_digits(&p, 2, &hh) || *p++ != ':' || s_digits(&p, 2, &mm) ||
        *p++ != ':' || s_digits(&p, 2, &ss))
        return -1;
    if (*p == '.') {
        int scale = 100;
        p++;
        if (*p < '0' || *p > '9')
            return -1;
        for (; *p >= '0' && *p <= '9'; p++) {
            ms += (*p - '0') * scale;
            scale /= 10;
        }
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1, oh, om;
        if (s_digits(&p, 2, &oh))
            return -1;
        /* "+08:00", "+0800" and PostgreSQL's "+08" */
        if (*p == ':')
            p++;
        if (*p == '\0')
            om = 0;
        else if (s_digits(&p, 2, &om))
            return -1;
        off = sign * (oh * 60 + om);
    } else {
        return -1;
    }
    if (*p || mon < 1 || mon > 12 || day < 1 || day > 31 || hh > 23 ||
        mm > 59 || ss > 60)
        return -1;
    tm.tm_year = year - 1900;
    tm.tm_mon = mon - 1;
    tm.tm_mday = day;
    tm.tm_hour = hh;
    tm.tm_min = mm;
    tm.tm_sec = ss;
    time_t t = timegm(&tm);
    return ((int64_t)t - (int64_t)off * 60) * 1000 + ms;
}
