/*
 * gw_request: the JSON object an rpc route's input message is transcoded
 * from. It is the request body (an empty body is {}), with the path
 * parameters and, for GET and DELETE, the query parameters merged in under
 * their names, as strings (kl_json accepts decimal strings for integer
 * fields and names for enums).
 *
 * Conflicts are errors, never silent overrides: a body field that differs
 * from the path parameter of the same name is 400 ("field \"id\": \"b\"
 * differs from the path (\"a\")"); a query parameter given twice, or also
 * present in the path or body, is 400.
 */
#ifndef GW_REQUEST_H
#define GW_REQUEST_H

#include "gw_routes.h"
#include "kl_code.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* Caller owns the result; NULL + INVALID_ARGUMENT (kl_json_parse's line
 * and column message for malformed JSON). query is the raw query string
 * (may be NULL), used only when with_query. */
json_t *gw_request_input(const char *body, size_t len,
                         const gw_route_match_t *m, const char *query,
                         bool with_query, kl_status_t *status);

#endif
