/*
 * gw_reply: how the gateway answers. Every error is
 *   {"error":{"code":"NOT_FOUND","message":"tenant not found"}}
 * with the HTTP status of the code (kl_code_http_status, grpc-gateway's
 * mapping) unless the caller names another (402, 405, 413). Every answer
 * carries Content-Type, Content-Length and X-Request-Id.
 */
#ifndef GW_REPLY_H
#define GW_REPLY_H

#include "kl_code.h"

#include <stddef.h>

struct mg_connection;

/* Big enough for any error body (a 512-byte message escaped). */
#define GW_REPLY_ERROR_MAX 4096

/* Appends s (NUL-terminated) to buf[*len..cap) as the inside of a JSON
 * string: quotes, backslashes and control characters escaped, invalid
 * UTF-8 replaced by U+FFFD. Stops before cap - 1 without splitting an
 * escape; buf stays NUL-terminated. */
void gw_reply_json_escape(char *buf, size_t *len, size_t cap, const char *s);

/* Renders the error body of code and message into buf (cap >=
 * GW_REPLY_ERROR_MAX never truncates). Returns its length. */
size_t gw_reply_error_body(char *buf, size_t cap, kl_code_t code,
                           const char *message);

/* Renders the 403 of a feature the tenant's plan lacks:
 *   {"error":{"code":"PERMISSION_DENIED","message":"Feature not available
 *   on your plan","feature":"<feature>","upgrade_url":"<upgrade_url>"}}
 * Returns its length (0 when cap is too small; GW_REPLY_ERROR_MAX is
 * enough for a feature and a URL of up to 1 KiB each). */
size_t gw_reply_feature_body(char *buf, size_t cap, const char *feature,
                             const char *upgrade_url);

/* Sends a complete response. extra_headers: NULL or "Name: value\r\n"
 * lines. Returns 0, or -1 when the connection failed. */
int gw_reply_send(struct mg_connection *conn, int http_status,
                  const char *content_type, const char *request_id,
                  const char *extra_headers, const char *body, size_t len);

/* Sends the error body of code and message; http_status 0 means the
 * code's own status. Returns the HTTP status sent. */
int gw_reply_error(struct mg_connection *conn, const char *request_id,
                   int http_status, kl_code_t code, const char *message,
                   const char *extra_headers);

#endif
