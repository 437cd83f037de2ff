/*
 * gw_reply: response rendering. A response goes out in one mg_write when
 * headers and body fit in a stack buffer, so that a small answer is one
 * send(2).
 */
#include "gw_reply.h"

#include "kl_alloc.h"

#include <civetweb.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Length of the valid UTF-8 sequence at s, or 0 if s does not start one. */
static size_t
s_utf8_len(const unsigned char *s)
{
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        return (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (s[0] >= 0xe0 && s[0] <= 0xef) {
        if ((s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80)
            return 0;
        if (s[0] == 0xe0 && s[1] < 0xa0)
            return 0; /* overlong */
        if (s[0] == 0xed && s[1] >= 0xa0)
            return 0; /* surrogate */
        return 3;
    }
    if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        if ((s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 ||
            (s[3] & 0xc0) != 0x80)
            return 0;
        if ((s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90))
            return 0;
        return 4;
    }
    return 0;
}

void
gw_reply_json_escape(char *buf, size_t *len, size_t cap, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = *len;
    const unsigned char *p = (const unsigned char *)s;

    if (cap == 0)
        return;
    /* Every step writes at most 6 bytes; keep one for the NUL. */
    while (*p && n + 7 <= cap) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            buf[n++] = '\\';
            buf[n++] = (char)c;
            p++;
        } else if (c < 0x20 || c == 0x7f) {
            buf[n++] = '\\';
            buf[n++] = 'u';
            buf[n++] = '0';
            buf[n++] = '0';
            buf[n++] = hex[c >> 4];
            buf[n++] = hex[c & 0xf];
            p++;
        } else if (c < 0x80) {
            buf[n++] = (char)c;
            p++;
        } else {
            size_t k = s_utf8_len(p);
            if (k == 0) {
                memcpy(buf + n, "\\ufffd", 6);
                n += 6;
                p++;
            } else {
                memcpy(buf + n, p, k);
                n += k;
                p += k;
            }
        }
    }
    buf[n < cap ? n : cap - 1] = '\0';
    *len = n < cap ? n : cap - 1;
}

size_t
gw_reply_error_body(char *buf, size_t cap, kl_code_t code, const char *message)
{
    static const char tail[] = "\"}}";
    size_t len = 0;
    int n = snprintf(buf, cap, "{\"error\":{\"code\":\"%s\",\"message\":\"",
                     kl_code_name(code));
    if (n < 0 || (size_t)n + sizeof tail > cap) {
        if (cap)
            buf[0] = '\0';
        return 0;
    }
    len = (size_t)n;
    gw_reply_json_escape(buf, &len, cap - (sizeof tail - 1),
                         message ? message : "");
    memcpy(buf + len, tail, sizeof tail);
    return len + sizeof tail - 1;
}

int
gw_reply_send(struct mg_connection *conn, int http_status,
              const char *content_type, const char *request_id,
              const char *extra_headers, const char *body, size_t len)
{
    char buf[8192];
    const char *reason = mg_get_response_code_text(conn, http_status);
    int n = snprintf(buf, sizeof buf,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "X-Request-Id: %s\r\n"
                     "Cache-Control: no-store\r\n"
                     "%s\r\n",
                     http_status, reason ? reason : "", content_type, len,
                     request_id ? request_id : "",
                     extra_headers ? extra_headers : "");
    if (n < 0 || (size_t)n >= sizeof buf)
        return -1;
    if (len <= sizeof buf - (size_t)n) {
        memcpy(buf + n, body, len);
        return mg_write(conn, buf, (size_t)n + len) == (int)((size_t)n + len)
                   ? 0
                   : -1;
    }
    if (mg_write(conn, buf, (size_t)n) != n)
        return -1;
    return mg_write(conn, body, len) == (int)len ? 0 : -1;
}

int
gw_reply_error(struct mg_connection *conn, const char *request_id,
               int http_status, kl_code_t code, const char *message,
               const char *extra_headers)
{
    char body[GW_REPLY_ERROR_MAX];
    size_t len = gw_reply_error_body(body, sizeof body, code, message);
    int status = http_status ? http_status : kl_code_http_status(code);
    gw_reply_send(conn, status, "application/json", request_id, extra_headers,
                  body, len);
    return status;
}

size_t
gw_reply_feature_body(char *buf, size_t cap, const char *feature,
                      const char *upgrade_url)
{
    static const char head[] =
        "{\"error\":{\"code\":\"PERMISSION_DENIED\",\"message\":\"Feature not "
        "available on your plan\",\"feature\":\"";
    static const char mid[] = "\",\"upgrade_url\":\"";
    static const char tail[] = "\"}}";
    size_t len = sizeof head - 1;

    if (cap < sizeof head + sizeof mid + sizeof tail + 2) {
        if (cap)
            buf[0] = '\0';
        return 0;
    }
    memcpy(buf, head, len);
    /* The feature takes at most half of buf, the URL the rest. */
    gw_reply_json_escape(buf, &len, cap / 2, feature ? feature : "");
    memcpy(buf + len, mid, sizeof mid - 1);
    len += sizeof mid - 1;
    gw_reply_json_escape(buf, &len, cap - (sizeof tail - 1),
                         upgrade_url ? upgrade_url : "");
    memcpy(buf + len, tail, sizeof tail);
    return len + sizeof tail - 1;
}
