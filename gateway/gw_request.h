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
#include <stdint.h>

/* Caller owns the result; NULL + INVALID_ARGUMENT (kl_json_parse's line
 * and column message for malformed JSON). query is the raw query string
 * (may be NULL), used only when with_query. */
json_t *gw_request_input(const char *body, size_t len,
                         const gw_route_match_t *m, const char *query,
                         bool with_query, kl_status_t *status);

/*
 * Overwrites the string field named field (its proto name) of the message
 * desc in input with value, whatever the client sent under the proto name
 * or the JSON name: the gateway sets the tenant's own tenant_id and plan
 * this way, so that a tenant can never name another tenant. Returns true
 * when desc has such a string field (and input was changed), false when it
 * has none (input untouched).
 */
bool gw_request_force_field(json_t *input,
                            const ProtobufCMessageDescriptor *desc,
                            const char *field, const char *value);

/*
 * The packed input of a GW_ROUTE_WEBHOOK route (gw_routes.h), no JSON
 * involved: a message desc whose bytes field "payload" is body[0..len)
 * exactly as received and whose string field "signature" is signature
 * (NULL: ""). Returns 0 with *out (malloc'd, caller frees; *out_len may be
 * 0), or -KL_INVALID_ARGUMENT when desc has no such fields.
 */
int gw_request_webhook_input(const ProtobufCMessageDescriptor *desc,
                             const char *body, size_t len,
                             const char *signature, uint8_t **out,
                             size_t *out_len, kl_status_t *status);

#endif
