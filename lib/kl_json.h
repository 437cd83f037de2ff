/*
 * kl_json: JSON <-> protobuf transcoding driven by protoc-c descriptors,
 * following the proto3 JSON mapping, so no message needs hand-written JSON
 * code. Built on jansson.
 *
 * Input (JSON -> protobuf):
 *   - field names: lowerCamelCase (json name) or the original proto name;
 *   - int32/uint32/sint/fixed: JSON numbers (integral) or decimal strings;
 *     64-bit integers: strings or numbers; out of the type's range is an
 *     error; bool: true/false; float/double: numbers, or "NaN",
 *     "Infinity", "-Infinity"; string: JSON strings (valid UTF-8);
 *     bytes: standard or URL-safe base64;
 *   - enums: the value's name, or its number;
 *   - repeated: arrays; maps (map<K,V>): JSON objects; nested messages:
 *     objects; null: the field's default; oneof: at most one member set.
 *   - anything else — an unknown field, a wrong type, a value out of
 *     range — is INVALID_ARGUMENT naming the field's path:
 *       "field \"items[2].price\": expected a number, got a string"
 *       "unknown field \"colour\""
 * Output (protobuf -> JSON): lowerCamelCase names (KL_JSON_ORIGINAL_NAMES
 * for proto names), 64-bit integers as strings, enums by name, bytes as
 * base64; fields equal to their default are omitted unless
 * KL_JSON_EMIT_DEFAULTS.
 */
#ifndef KL_JSON_H
#define KL_JSON_H

#include "kl_code.h"

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#define KL_JSON_EMIT_DEFAULTS 0x01u
#define KL_JSON_ORIGINAL_NAMES 0x02u

/* Strict parse (duplicate keys rejected, one value, no trailing data).
 * NULL + INVALID_ARGUMENT on bad input:
 *   "malformed JSON at line 1, column 9: ..." Caller owns the result. */
json_t *kl_json_parse(const char *text, size_t len, kl_status_t *status);

/* JSON object -> packed message of type desc. Returns 0 and a malloc'd
 * *out (caller frees; *out_len may be 0), or -KL_INVALID_ARGUMENT. */
int kl_json_to_pb(const ProtobufCMessageDescriptor *desc, const json_t *json,
                  uint8_t **out, size_t *out_len, kl_status_t *status);

/* JSON object -> unpacked message; caller frees it with
 * protobuf_c_message_free_unpacked(msg, NULL). NULL + status on error. */
ProtobufCMessage *kl_json_to_message(const ProtobufCMessageDescriptor *desc,
                                     const json_t *json, kl_status_t *status);

/* Message -> new JSON object (caller owns the reference). */
json_t *kl_json_from_message(const ProtobufCMessage *msg, unsigned flags);

/* Packed bytes of type desc -> new JSON object; NULL + INVALID_ARGUMENT if
 * the bytes do not unpack. */
json_t *kl_json_from_pb(const ProtobufCMessageDescriptor *desc,
                        const uint8_t *data, size_t len, unsigned flags,
                        kl_status_t *status);

/* The proto3 JSON name of a proto field name: "created_at" -> "createdAt".
 * Writes at most size bytes (NUL included). */
void kl_json_camel_name(const char *proto_name, char *buf, size_t size);

#endif
