/*
 * kl_json_out: the protobuf -> JSON half of kl_json (kl_json.h). It walks
 * the descriptor of an unpacked message. Packed bytes from outside are
 * scanned for their nesting depth before protobuf_c_message_unpack() sees
 * them, because unpack recurses without a limit.
 */
#include "kl_json.h"

#include "kl_alloc.h"
#include "kl_json_priv.h"

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Base64 encoding                                                     */

static const char s_b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Standard alphabet with padding. Caller frees the result. */
static char *
s_b64_encode(const uint8_t *data, size_t len)
{
    char *out = kl_malloc((len + 2) / 3 * 4 + 1);
    char *o = out;
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v =
            (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
        *o++ = s_b64[v >> 18];
        *o++ = s_b64[(v >> 12) & 63];
        *o++ = s_b64[(v >> 6) & 63];
        *o++ = s_b64[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)data[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)data[i + 1] << 8;
        *o++ = s_b64[v >> 18];
        *o++ = s_b64[(v >> 12) & 63];
        *o++ = i + 1 < len ? s_b64[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

/* ------------------------------------------------------------------ */
/* Message -> JSON                                                     */

static json_t *s_out_message(kl_json_ctx_t *ctx, const ProtobufCMessage *msg,
                             int depth);

static json_t *
s_out_float(double d)
{
    if (isnan(d))
        return json_string("NaN");
    if (isinf(d))
        return json_string(d > 0 ? "Infinity" : "-Infinity");
    return json_real(d);
}

/* One value of field f's type at p -> new JSON value; NULL + status. */
static json_t *
s_out_value(kl_json_ctx_t *ctx, const ProtobufCFieldDescriptor *f,
            const void *p, int depth)
{
    char buf[32];
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32: {
        int32_t v;
        memcpy(&v, p, sizeof v);
        return json_integer(v);
    }
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: {
        uint32_t v;
        memcpy(&v, p, sizeof v);
        return json_integer(v);
    }
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64: {
        int64_t v;
        memcpy(&v, p, sizeof v);
        snprintf(buf, sizeof buf, "%" PRId64, v);
        return json_string(buf);
    }
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: {
        uint64_t v;
        memcpy(&v, p, sizeof v);
        snprintf(buf, sizeof buf, "%" PRIu64, v);
        return json_string(buf);
    }
    case PROTOBUF_C_TYPE_FLOAT: {
        float v;
        memcpy(&v, p, sizeof v);
        if (!isfinite(v))
            return s_out_float(v);
        /* The shortest decimal that reads back as this float, so 0.1f
         * comes out as 0.1 rather than 0.10000000149011612. */
        for (int prec = 6; prec <= 9; prec++) {
            snprintf(buf, sizeof buf, "%.*g", prec, (double)v);
            if (strtof(buf, NULL) == v)
                break;
        }
        return json_real(strtod(buf, NULL));
    }
    case PROTOBUF_C_TYPE_DOUBLE: {
        double v;
        memcpy(&v, p, sizeof v);
        return s_out_float(v);
    }
    case PROTOBUF_C_TYPE_BOOL: {
        protobuf_c_boolean v;
        memcpy(&v, p, sizeof v);
        return json_boolean(v);
    }
    case PROTOBUF_C_TYPE_ENUM: {
        int32_t v;
        memcpy(&v, p, sizeof v);
        const ProtobufCEnumValue *ev =
            protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        return ev ? json_string(ev->name) : json_integer(v);
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s;
        memcpy(&s, p, sizeof s);
        json_t *j = json_string(s ? s : "");
        if (!j)
            kl_status_set(ctx->status, KL_INVALID_ARGUMENT,
                          "field \"%s\": string is not valid UTF-8", ctx->path);
        return j;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        ProtobufCBinaryData bd;
        memcpy(&bd, p, sizeof bd);
        char *s = s_b64_encode(bd.data, bd.len);
        json_t *j = json_string(s);
        free(s);
        return j;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub;
        memcpy(&sub, p, sizeof sub);
        if (!sub)
            return json_object();
        return s_out_message(ctx, sub, depth + 1);
    }
    }
    kl_status_set(ctx->status, KL_INTERNAL,
                  "field \"%s\": unsupported field type %d", ctx->path,
                  (int)f->type);
    return NULL;
}

/* A map field's entries -> JSON object with string keys. */
static json_t *
s_out_map(kl_json_ctx_t *ctx, const ProtobufCFieldDescriptor *f, size_t n,
          ProtobufCMessage *const *entries, int depth)
{
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    const ProtobufCFieldDescriptor *kf = &ed->fields[0];
    const ProtobufCFieldDescriptor *vf = &ed->fields[1];
    json_t *obj = json_object();

    for (size_t i = 0; i < n; i++) {
        const char *e = (const char *)entries[i];
        if (!e)
            continue;
        char kbuf[32];
        const char *key = kbuf;
        if (kf->type == PROTOBUF_C_TYPE_STRING) {
            memcpy(&key, e + kf->offset, sizeof key);
            key = key ? key : "";
        } else if (kf->type == PROTOBUF_C_TYPE_BOOL) {
            protobuf_c_boolean b;
            memcpy(&b, e + kf->offset, sizeof b);
            key = b ? "true" : "false";
        } else {
            json_t *k = s_out_value(ctx, kf, e + kf->offset, depth);
            if (json_is_string(k))
                snprintf(kbuf, sizeof kbuf, "%s", json_string_value(k));
            else
                snprintf(kbuf, sizeof kbuf, "%" JSON_INTEGER_FORMAT,
                         json_integer_value(k));
            json_decref(k);
        }
        size_t old = kl_json__path_push(ctx, "[\"%s\"]", key);
        json_t *v = s_out_value(ctx, vf, e + vf->offset, depth);
        if (!v || json_object_set_new(obj, key, v) < 0) {
            if (v)
                kl_status_set(ctx->status, KL_INVALID_ARGUMENT,
                              "field \"%s\": map key is not valid UTF-8",
                              ctx->path);
            json_decref(obj);
            return NULL;
        }
        kl_json__path_pop(ctx, old);
    }
    return obj;
}

/* Whether a singular field holds its type's zero value. */
static bool
s_is_zero(const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_FLOAT: {
        float v;
        memcpy(&v, p, sizeof v);
        return v == 0;
    }
    case PROTOBUF_C_TYPE_DOUBLE: {
        double v;
        memcpy(&v, p, sizeof v);
        return v == 0;
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s;
        memcpy(&s, p, sizeof s);
        return !s || !*s;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        ProtobufCBinaryData bd;
        memcpy(&bd, p, sizeof bd);
        return bd.len == 0;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const void *m;
        memcpy(&m, p, sizeof m);
        return m == NULL;
    }
    default: {
        uint64_t v = 0;
        memcpy(&v, p, kl_json__type_size(f->type));
        return v == 0;
    }
    }
}

/* Whether field f of msg is output: set, or a default being emitted. */
static bool
s_is_output(const kl_json_ctx_t *ctx, const ProtobufCFieldDescriptor *f,
            const ProtobufCMessage *msg)
{
    const char *base = (const char *)msg;
    const void *p = base + f->offset;
    bool defaults = ctx->flags & KL_JSON_EMIT_DEFAULTS;
    const void *ptr = NULL;

    if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE)
        memcpy(&ptr, p, sizeof ptr);
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        uint32_t set;
        memcpy(&set, base + f->quantifier_offset, sizeof set);
        if (set != f->id)
            return false;
        return (f->type != PROTOBUF_C_TYPE_STRING &&
                f->type != PROTOBUF_C_TYPE_MESSAGE) ||
               ptr != NULL;
    }
    /* Unset sub-messages are left out even with KL_JSON_EMIT_DEFAULTS:
     * emitting them would mean inventing objects all the way down. */
    if (f->type == PROTOBUF_C_TYPE_MESSAGE)
        return ptr != NULL;
    switch (f->label) {
    case PROTOBUF_C_LABEL_REQUIRED:
        return true;
    case PROTOBUF_C_LABEL_OPTIONAL:
        if (defaults)
            return true;
        if (f->type == PROTOBUF_C_TYPE_STRING)
            return ptr != NULL && ptr != f->default_value;
        protobuf_c_boolean has;
        memcpy(&has, base + f->quantifier_offset, sizeof has);
        return has;
    default:
        return defaults || !s_is_zero(f, p);
    }
}

/* One field of msg -> obj, under its JSON or proto name. */
static int
s_out_field(kl_json_ctx_t *ctx, const ProtobufCFieldDescriptor *f,
            const ProtobufCMessage *msg, json_t *obj, int depth)
{
    const char *base = (const char *)msg;
    char small[128];
    char *name = small;
    json_t *v = NULL;

    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        size_t n;
        memcpy(&n, base + f->quantifier_offset, sizeof n);
        if (n == 0 && !(ctx->flags & KL_JSON_EMIT_DEFAULTS))
            return 0;
    } else if (!s_is_output(ctx, f, msg)) {
        return 0;
    }
    if (strlen(f->name) >= sizeof small)
        name = kl_malloc(strlen(f->name) + 1);
    if (ctx->flags & KL_JSON_ORIGINAL_NAMES)
        strcpy(name, f->name);
    else
        kl_json_camel_name(f->name, name, strlen(f->name) + 1);
    size_t old = kl_json__path_push_field(ctx, name);

    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        size_t n;
        const char *items;
        memcpy(&n, base + f->quantifier_offset, sizeof n);
        memcpy(&items, base + f->offset, sizeof items);
        if (kl_json__is_map(msg->descriptor, f)) {
            v = s_out_map(ctx, f, n, (ProtobufCMessage *const *)items,
                          depth + 1);
        } else {
            size_t size = kl_json__type_size(f->type);
            v = json_array();
            for (size_t i = 0; v && i < n; i++) {
                size_t o = kl_json__path_push(ctx, "[%zu]", i);
                json_t *item = s_out_value(ctx, f, items + i * size, depth);
                if (!item) {
                    json_decref(v);
                    v = NULL;
                } else {
                    json_array_append_new(v, item);
                }
                kl_json__path_pop(ctx, o);
            }
        }
    } else {
        v = s_out_value(ctx, f, base + f->offset, depth);
    }
    if (v)
        json_object_set_new(obj, name, v);
    kl_json__path_pop(ctx, old);
    if (name != small)
        free(name);
    return v ? 0 : -1;
}

static json_t *
s_out_message(kl_json_ctx_t *ctx, const ProtobufCMessage *msg, int depth)
{
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    if (depth > KL_JSON_MAX_DEPTH) {
        kl_status_set(ctx->status, KL_INVALID_ARGUMENT,
                      "field \"%s\": nested deeper than %d levels", ctx->path,
                      KL_JSON_MAX_DEPTH);
        return NULL;
    }
    json_t *obj = json_object();
    for (unsigned i = 0; i < desc->n_fields; i++) {
        if (s_out_field(ctx, &desc->fields[i], msg, obj, depth) < 0) {
            json_decref(obj);
            return NULL;
        }
    }
    return obj;
}

json_t *
kl_json_from_message(const ProtobufCMessage *msg, unsigned flags)
{
    kl_json_ctx_t ctx = {.flags = flags};
    if (!msg)
        return NULL;
    return s_out_message(&ctx, msg, 1);
}

/* ------------------------------------------------------------------ */
/* Packed bytes                                                        */

static bool
s_varint(const uint8_t *p, size_t len, size_t *i, uint64_t *v)
{
    uint64_t r = 0;
    for (int shift = 0; shift < 64 && *i < len; shift += 7) {
        uint8_t b = p[(*i)++];
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return true;
        }
    }
    return false;
}

/* Walks the wire format of desc in p without building anything: 0, or 1
 * when sub-messages nest deeper than KL_JSON_MAX_DEPTH, or -1 when the bytes
 * are not well formed. */
static int
s_wire_scan(const ProtobufCMessageDescriptor *desc, const uint8_t *p,
            size_t len, int depth)
{
    size_t i = 0;
    if (depth > KL_JSON_MAX_DEPTH)
        return 1;
    while (i < len) {
        uint64_t tag, n;
        if (!s_varint(p, len, &i, &tag))
            return -1;
        switch (tag & 7) {
        case 0:
            if (!s_varint(p, len, &i, &n))
                return -1;
            break;
        case 1:
        case 5: {
            size_t w = (tag & 7) == 1 ? 8 : 4;
            if (len - i < w)
                return -1;
            i += w;
            break;
        }
        case 2: {
            if (!s_varint(p, len, &i, &n) || n > len - i)
                return -1;
            const ProtobufCFieldDescriptor *f =
                tag >> 3 <= UINT32_MAX
                    ? protobuf_c_message_descriptor_get_field(
                          desc, (unsigned)(tag >> 3))
                    : NULL;
            if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
                int rc =
                    s_wire_scan(f->descriptor, p + i, (size_t)n, depth + 1);
                if (rc)
                    return rc;
            }
            i += (size_t)n;
            break;
        }
        default:
            return -1;
        }
    }
    return 0;
}

json_t *
kl_json_from_pb(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                size_t len, unsigned flags, kl_status_t *status)
{
    int rc = s_wire_scan(desc, data, len, 1);
    if (rc > 0) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "%s: messages nested deeper than %d levels", desc->name,
                      KL_JSON_MAX_DEPTH);
        return NULL;
    }
    ProtobufCMessage *msg =
        rc == 0 ? protobuf_c_message_unpack(desc, NULL, len, data) : NULL;
    if (!msg) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "%zu bytes do not unpack as %s", len, desc->name);
        return NULL;
    }
    kl_json_ctx_t ctx = {.flags = flags, .status = status};
    json_t *json = s_out_message(&ctx, msg, 1);
    protobuf_c_message_free_unpacked(msg, NULL);
    if (json)
        kl_status_clear(status);
    return json;
}
