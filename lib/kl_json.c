/*
 * kl_json: JSON <-> protobuf transcoding over protoc-c descriptors, on
 * jansson, after the proto3 JSON mapping (docs/json.md). This file reads
 * JSON (parsing, JSON -> protobuf) and holds what both directions share;
 * kl_json_out.c writes it (protobuf -> JSON).
 *
 * JSON -> protobuf builds a message in memory: the message, its
 * sub-messages, strings, bytes and repeated arrays all come from a small
 * arena owned by the conversion, so an error half way leaves nothing to
 * unwind field by field. The filled message is packed, the arena freed,
 * and kl_json_to_message unpacks the packed bytes so that its caller frees
 * the result the ordinary way (protobuf_c_message_free_unpacked).
 */
#include "kl_json.h"

#include "kl_alloc.h"
#include "kl_json_priv.h"

#include <ctype.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest integer a double holds exactly: 2^53. */
#define S_EXACT_DOUBLE 9007199254740992.0

/* ------------------------------------------------------------------ */
/* Arena, paths, errors                                                */

static void *
s_alloc(kl_json_ctx_t *ctx, size_t size)
{
    kl_json_block_t *b = kl_calloc(1, sizeof *b + size);
    b->next = ctx->blocks;
    ctx->blocks = b;
    return b->data;
}

static void
s_arena_free(kl_json_ctx_t *ctx)
{
    while (ctx->blocks) {
        kl_json_block_t *next = ctx->blocks->next;
        free(ctx->blocks);
        ctx->blocks = next;
    }
}

/* See kl_json_priv.h. */
size_t
kl_json__path_push(kl_json_ctx_t *ctx, const char *fmt, ...)
{
    size_t old = ctx->path_len;
    size_t room = sizeof ctx->path - old;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(ctx->path + old, room, fmt, ap);
    va_end(ap);
    if (n < 0) {
        ctx->path[old] = '\0';
    } else if ((size_t)n >= room) {
        /* Cut: end with "..." so the reader sees the path is longer. */
        memcpy(ctx->path + sizeof ctx->path - 4, "...", 4);
        ctx->path_len = sizeof ctx->path - 1;
    } else {
        ctx->path_len = old + (size_t)n;
    }
    return old;
}

size_t
kl_json__path_push_field(kl_json_ctx_t *ctx, const char *name)
{
    return ctx->path_len ? kl_json__path_push(ctx, ".%s", name)
                         : kl_json__path_push(ctx, "%s", name);
}

void
kl_json__path_pop(kl_json_ctx_t *ctx, size_t old)
{
    ctx->path_len = old;
    ctx->path[old] = '\0';
}

/* INVALID_ARGUMENT "field \"<path>\": <message>". */
static int __attribute__((format(printf, 2, 3)))
s_fail(kl_json_ctx_t *ctx, const char *fmt, ...)
{
    char msg[KL_STATUS_MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return kl_status_set(ctx->status, KL_INVALID_ARGUMENT, "field \"%s\": %s",
                         ctx->path, msg);
}

static const char *
s_json_type(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "an unknown value";
}

/* Shortest "%g" text that reads back as d. */
static void
s_fmt_double(double d, char *buf, size_t size)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, size, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            return;
    }
}

/* The value as the user wrote it, for messages: numbers bare, strings
 * quoted and cut at 64 characters. */
static void
s_show(const json_t *v, char *buf, size_t size)
{
    if (json_is_integer(v))
        snprintf(buf, size, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_real(v))
        s_fmt_double(json_real_value(v), buf, size);
    else if (json_is_string(v))
        snprintf(buf, size, "\"%.64s%s\"", json_string_value(v),
                 json_string_length(v) > 64 ? "..." : "");
    else
        snprintf(buf, size, "%s", s_json_type(v));
}

static const char *
s_type_name(ProtobufCType type)
{
    static const char *const names[] = {
        [PROTOBUF_C_TYPE_INT32] = "int32",
        [PROTOBUF_C_TYPE_SINT32] = "sint32",
        [PROTOBUF_C_TYPE_SFIXED32] = "sfixed32",
        [PROTOBUF_C_TYPE_INT64] = "int64",
        [PROTOBUF_C_TYPE_SINT64] = "sint64",
        [PROTOBUF_C_TYPE_SFIXED64] = "sfixed64",
        [PROTOBUF_C_TYPE_UINT32] = "uint32",
        [PROTOBUF_C_TYPE_FIXED32] = "fixed32",
        [PROTOBUF_C_TYPE_UINT64] = "uint64",
        [PROTOBUF_C_TYPE_FIXED64] = "fixed64",
        [PROTOBUF_C_TYPE_FLOAT] = "float",
        [PROTOBUF_C_TYPE_DOUBLE] = "double",
        [PROTOBUF_C_TYPE_BOOL] = "bool",
        [PROTOBUF_C_TYPE_ENUM] = "enum",
        [PROTOBUF_C_TYPE_STRING] = "string",
        [PROTOBUF_C_TYPE_BYTES] = "bytes",
        [PROTOBUF_C_TYPE_MESSAGE] = "message",
    };
    return (unsigned)type < sizeof names / sizeof names[0] ? names[type] : "?";
}

/* Size of one value of type in a message struct or repeated array. */
size_t
kl_json__type_size(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_ENUM:
        return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return 8;
    case PROTOBUF_C_TYPE_FLOAT:
        return sizeof(float);
    case PROTOBUF_C_TYPE_DOUBLE:
        return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Names                                                               */

void
kl_json_camel_name(const char *proto_name, char *buf, size_t size)
{
    /* protoc's ToJsonName: drop each '_' and upper-case the character
     * after it; nothing else changes (a leading capital stays). */
    size_t n = 0;
    bool upper = false;
    if (!size)
        return;
    for (const char *p = proto_name; *p && n + 1 < size; p++) {
        if (*p == '_')
            upper = true;
        else {
            buf[n++] = upper ? (char)toupper((unsigned char)*p) : *p;
            upper = false;
        }
    }
    buf[n] = '\0';
}

/* Whether key is the JSON name of proto_name, without a buffer. */
static bool
s_camel_equal(const char *proto_name, const char *key)
{
    bool upper = false;
    for (const char *p = proto_name; *p; p++) {
        if (*p == '_') {
            upper = true;
            continue;
        }
        char c = upper ? (char)toupper((unsigned char)*p) : *p;
        upper = false;
        if (*key++ != c)
            return false;
    }
    return *key == '\0';
}

static const ProtobufCFieldDescriptor *
s_find_field(const ProtobufCMessageDescriptor *desc, const char *key)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(desc, key);
    if (f)
        return f;
    for (unsigned i = 0; i < desc->n_fields; i++)
        if (s_camel_equal(desc->fields[i].name, key))
            return &desc->fields[i];
    return NULL;
}

/* A map field is a repeated nested "XxxEntry" message holding exactly
 * key = 1 and value = 2 (protobuf-c 1.4 keeps no map_entry option). */
bool
kl_json__is_map(const ProtobufCMessageDescriptor *parent,
                const ProtobufCFieldDescriptor *f)
{
    if (f->label != PROTOBUF_C_LABEL_REPEATED ||
        f->type != PROTOBUF_C_TYPE_MESSAGE || !f->descriptor)
        return false;
    const ProtobufCMessageDescriptor *e = f->descriptor;
    size_t nlen = strlen(e->name);
    size_t plen = strlen(parent->name);
    if (nlen < 5 || strcmp(e->name + nlen - 5, "Entry") != 0)
        return false;
    if (strncmp(e->name, parent->name, plen) != 0 || e->name[plen] != '.' ||
        strchr(e->name + plen + 1, '.'))
        return false;
    return e->n_fields == 2 && e->fields[0].id == 1 &&
           strcmp(e->fields[0].name, "key") == 0 && e->fields[1].id == 2 &&
           strcmp(e->fields[1].name, "value") == 0;
}

/* ------------------------------------------------------------------ */
/* Base64 decoding                                                     */

static int
s_b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

/* Standard or URL-safe alphabet, padded or not. out has room for
 * len / 4 * 3 + 3 bytes. Returns the decoded length, or -1. */
static long
s_b64_decode(const char *in, size_t len, uint8_t *out)
{
    size_t n = len;
    if (n && in[n - 1] == '=') {
        if (len % 4)
            return -1;
        n--;
        if (n && in[n - 1] == '=')
            n--;
    }
    if (n % 4 == 1)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = s_b64_value(in[i]);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    return (long)o;
}

/* ------------------------------------------------------------------ */
/* JSON -> message                                                     */

static int s_fill_message(kl_json_ctx_t *ctx,
                          const ProtobufCMessageDescriptor *desc,
                          const json_t *obj, ProtobufCMessage *msg, int depth);

/* Decimal string -> sign and magnitude: 0, -1 not an integer, -2 too
 * large for 64 bits. */
static int
s_decimal(const char *s, bool *neg, uint64_t *mag)
{
    *neg = *s == '-';
    if (*neg)
        s++;
    if (!isdigit((unsigned char)*s))
        return -1;
    uint64_t m = 0;
    for (; *s; s++) {
        if (!isdigit((unsigned char)*s))
            return -1;
        unsigned d = (unsigned)(*s - '0');
        if (m > (UINT64_MAX - d) / 10)
            return -2;
        m = m * 10 + d;
    }
    *mag = m;
    return 0;
}

/* An integer field's value: a JSON number without a fraction, or a
 * decimal string; range-checked for type and stored at dst. */
static int
s_parse_int(kl_json_ctx_t *ctx, ProtobufCType type, const json_t *v, void *dst)
{
    char shown[96];
    bool neg = false;
    uint64_t mag = 0;

    if (json_is_integer(v)) {
        json_int_t n = json_integer_value(v);
        neg = n < 0;
        mag = neg ? (uint64_t)0 - (uint64_t)n : (uint64_t)n;
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        double a = d < 0 ? -d : d;
        s_show(v, shown, sizeof shown);
        /* Beyond 2^53 a JSON number with a fraction or exponent has
         * already lost digits; integers that big must come as digits or
         * as strings. (Below it, the uint64_t cast is exact.) */
        if (!(a <= S_EXACT_DOUBLE))
            return s_fail(ctx,
                          "%s is too large to be exact as a JSON number; "
                          "send it as a string",
                          shown);
        if ((double)(uint64_t)a != a)
            return s_fail(ctx, "%s is not an integer", shown);
        neg = d < 0;
        mag = (uint64_t)a;
    } else if (json_is_string(v)) {
        int rc = s_decimal(json_string_value(v), &neg, &mag);
        s_show(v, shown, sizeof shown);
        if (rc == -1)
            return s_fail(ctx, "%s is not an integer", shown);
        if (rc == -2)
            return s_fail(ctx, "%s is out of range for %s", shown,
                          s_type_name(type));
    } else {
        return s_fail(ctx, "expected an integer, got %s", s_json_type(v));
    }

    uint64_t max_pos, max_neg;
    switch (type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_ENUM:
        max_pos = INT32_MAX;
        max_neg = (uint64_t)INT32_MAX + 1;
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        max_pos = UINT32_MAX;
        max_neg = 0;
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        max_pos = UINT64_MAX;
        max_neg = 0;
        break;
    default:
        max_pos = INT64_MAX;
        max_neg = (uint64_t)INT64_MAX + 1;
        break;
    }
    if (neg ? mag > max_neg : mag > max_pos) {
        s_show(v, shown, sizeof shown);
        return s_fail(ctx, "%s is out of range for %s", shown,
                      s_type_name(type));
    }
    switch (kl_json__type_size(type)) {
    case 4: {
        uint32_t u = neg ? (uint32_t)0 - (uint32_t)mag : (uint32_t)mag;
        memcpy(dst, &u, 4);
        break;
    }
    default: {
        uint64_t u = neg ? (uint64_t)0 - mag : mag;
        memcpy(dst, &u, 8);
        break;
    }
    }
    return 0;
}

/* A float or double: a JSON number, "NaN", "Infinity", "-Infinity", or a
 * number in a string. */
static int
s_parse_float(kl_json_ctx_t *ctx, ProtobufCType type, const json_t *v,
              void *dst)
{
    char shown[96];
    double d;

    if (json_is_number(v)) {
        d = json_number_value(v);
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end = NULL;
        if (strcmp(s, "NaN") == 0)
            d = NAN;
        else if (strcmp(s, "Infinity") == 0)
            d = INFINITY;
        else if (strcmp(s, "-Infinity") == 0)
            d = -INFINITY;
        else if (*s && strspn(s, "0123456789+-.eE") == strlen(s) &&
                 (d = strtod(s, &end), *end == '\0')) {
            if (!isfinite(d)) {
                s_show(v, shown, sizeof shown);
                return s_fail(ctx, "%s is out of range for %s", shown,
                              s_type_name(type));
            }
        } else {
            s_show(v, shown, sizeof shown);
            return s_fail(ctx, "%s is not a number", shown);
        }
    } else {
        return s_fail(ctx, "expected a number, got %s", s_json_type(v));
    }
    if (type == PROTOBUF_C_TYPE_FLOAT) {
        if (isfinite(d) && (d > FLT_MAX || d < -FLT_MAX)) {
            s_show(v, shown, sizeof shown);
            return s_fail(ctx, "%s is out of range for float", shown);
        }
        float f = (float)d;
        memcpy(dst, &f, sizeof f);
    } else {
        memcpy(dst, &d, sizeof d);
    }
    return 0;
}

/* An enum: the value's name, or its number. */
static int
s_parse_enum(kl_json_ctx_t *ctx, const ProtobufCEnumDescriptor *ed,
             const json_t *v, void *dst)
{
    if (json_is_string(v)) {
        const ProtobufCEnumValue *ev =
            protobuf_c_enum_descriptor_get_value_by_name(ed,
                                                         json_string_value(v));
        if (!ev) {
            char shown[96];
            s_show(v, shown, sizeof shown);
            return s_fail(ctx, "%s is not a value of %s", shown, ed->name);
        }
        int32_t n = ev->value;
        memcpy(dst, &n, 4);
        return 0;
    }
    if (json_is_number(v))
        /* proto3 enums are open: any int32 number is kept. */
        return s_parse_int(ctx, PROTOBUF_C_TYPE_ENUM, v, dst);
    return s_fail(ctx, "expected an enum name or number, got %s",
                  s_json_type(v));
}

/* One value of field f's type from v, stored at dst. */
static int
s_parse_value(kl_json_ctx_t *ctx, const ProtobufCFieldDescriptor *f,
              const json_t *v, void *dst, int depth)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return s_parse_int(ctx, f->type, v, dst);
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
        return s_parse_float(ctx, f->type, v, dst);
    case PROTOBUF_C_TYPE_BOOL: {
        if (!json_is_boolean(v))
            return s_fail(ctx, "expected a boolean, got %s", s_json_type(v));
        protobuf_c_boolean b = json_is_true(v);
        memcpy(dst, &b, sizeof b);
        return 0;
    }
    case PROTOBUF_C_TYPE_ENUM:
        return s_parse_enum(ctx, f->descriptor, v, dst);
    case PROTOBUF_C_TYPE_STRING: {
        if (!json_is_string(v))
            return s_fail(ctx, "expected a string, got %s", s_json_type(v));
        size_t len = json_string_length(v);
        if (memchr(json_string_value(v), '\0', len))
            return s_fail(ctx, "string contains a NUL character");
        char *s = s_alloc(ctx, len + 1);
        memcpy(s, json_string_value(v), len);
        memcpy(dst, &s, sizeof s);
        return 0;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        if (!json_is_string(v))
            return s_fail(ctx, "expected a base64 string, got %s",
                          s_json_type(v));
        size_t len = json_string_length(v);
        ProtobufCBinaryData bd;
        bd.data = s_alloc(ctx, len / 4 * 3 + 3);
        long n = s_b64_decode(json_string_value(v), len, bd.data);
        if (n < 0)
            return s_fail(ctx, "invalid base64");
        bd.len = (size_t)n;
        memcpy(dst, &bd, sizeof bd);
        return 0;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessageDescriptor *md = f->descriptor;
        if (!json_is_object(v))
            return s_fail(ctx, "expected an object, got %s", s_json_type(v));
        ProtobufCMessage *sub = s_alloc(ctx, md->sizeof_message);
        protobuf_c_message_init(md, sub);
        memcpy(dst, &sub, sizeof sub);
        return s_fill_message(ctx, md, v, sub, depth + 1);
    }
    }
    return s_fail(ctx, "unsupported field type %d", (int)f->type);
}

/* Records that f is set in msg: its has_ flag or its oneof case. */
static void
s_mark_present(const ProtobufCFieldDescriptor *f, ProtobufCMessage *msg)
{
    char *base = (char *)msg;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        uint32_t id = f->id;
        memcpy(base + f->quantifier_offset, &id, sizeof id);
    } else if (f->label == PROTOBUF_C_LABEL_OPTIONAL &&
               f->type != PROTOBUF_C_TYPE_STRING &&
               f->type != PROTOBUF_C_TYPE_MESSAGE) {
        protobuf_c_boolean has = 1;
        memcpy(base + f->quantifier_offset, &has, sizeof has);
    }
}

/* A map's JSON object -> array of entry messages. */
static int
s_fill_map(kl_json_ctx_t *ctx, const ProtobufCFieldDescriptor *f,
           const json_t *obj, ProtobufCMessage *msg, int depth)
{
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    const ProtobufCFieldDescriptor *kf = &ed->fields[0];
    const ProtobufCFieldDescriptor *vf = &ed->fields[1];
    size_t n = json_object_size(obj);
    ProtobufCMessage **entries = s_alloc(ctx, n * sizeof *entries);
    size_t i = 0;
    const char *key;
    json_t *val;

    if (depth > KL_JSON_MAX_DEPTH)
        return s_fail(ctx, "nested deeper than %d levels", KL_JSON_MAX_DEPTH);
    json_object_foreach((json_t *)obj, key, val)
    {
        size_t old = kl_json__path_push(ctx, "[\"%s\"]", key);
        ProtobufCMessage *e = s_alloc(ctx, ed->sizeof_message);
        char *ebase = (char *)e;
        int rc = 0;
        protobuf_c_message_init(ed, e);
        entries[i++] = e;
        /* Keys are always JSON strings; integer and bool keys are read
         * from their text. */
        if (kf->type == PROTOBUF_C_TYPE_STRING) {
            char *k = s_alloc(ctx, strlen(key) + 1);
            memcpy(k, key, strlen(key));
            memcpy(ebase + kf->offset, &k, sizeof k);
        } else if (kf->type == PROTOBUF_C_TYPE_BOOL) {
            protobuf_c_boolean b = strcmp(key, "true") == 0;
            if (!b && strcmp(key, "false") != 0)
                rc = s_fail(ctx, "map key \"%s\" is not true or false", key);
            memcpy(ebase + kf->offset, &b, sizeof b);
        } else {
            json_t *k = json_string(key);
            rc = k ? s_parse_int(ctx, kf->type, k, ebase + kf->offset)
                   : s_fail(ctx, "map key is not valid UTF-8");
            json_decref(k);
        }
        if (rc == 0 && json_is_null(val))
            rc = s_fail(ctx, "map values may not be null");
        if (rc == 0)
            rc = s_parse_value(ctx, vf, val, ebase + vf->offset, depth + 1);
        if (rc < 0)
            return rc;
        s_mark_present(kf, e);
        s_mark_present(vf, e);
        kl_json__path_pop(ctx, old);
    }
    memcpy((char *)msg + f->quantifier_offset, &n, sizeof n);
    memcpy((char *)msg + f->offset, &entries, sizeof entries);
    return 0;
}

/* A repeated field's JSON array -> the field's array. */
static int
s_fill_repeated(kl_json_ctx_t *ctx, const ProtobufCFieldDescriptor *f,
                const json_t *arr, ProtobufCMessage *msg, int depth)
{
    size_t n = json_array_size(arr);
    size_t size = kl_json__type_size(f->type);
    char *items = s_alloc(ctx, n * size);

    if (depth > KL_JSON_MAX_DEPTH)
        return s_fail(ctx, "nested deeper than %d levels", KL_JSON_MAX_DEPTH);
    for (size_t i = 0; i < n; i++) {
        size_t old = kl_json__path_push(ctx, "[%zu]", i);
        int rc = s_parse_value(ctx, f, json_array_get(arr, i), items + i * size,
                               depth);
        if (rc < 0)
            return rc;
        kl_json__path_pop(ctx, old);
    }
    memcpy((char *)msg + f->quantifier_offset, &n, sizeof n);
    memcpy((char *)msg + f->offset, &items, sizeof items);
    return 0;
}

/* obj (a JSON object, at nesting level depth) -> msg, initialised. */
static int
s_fill_message(kl_json_ctx_t *ctx, const ProtobufCMessageDescriptor *desc,
               const json_t *obj, ProtobufCMessage *msg, int depth)
{
    const char *key;
    json_t *val;
    /* Fields already given, so "fooBar" and "foo_bar" are not both. */
    const char **given = s_alloc(ctx, desc->n_fields * sizeof *given + 1);

    if (depth > KL_JSON_MAX_DEPTH)
        return s_fail(ctx, "nested deeper than %d levels", KL_JSON_MAX_DEPTH);
    json_object_foreach((json_t *)obj, key, val)
    {
        const ProtobufCFieldDescriptor *f = s_find_field(desc, key);
        size_t old = kl_json__path_push_field(ctx, key);
        int rc;

        if (!f)
            return kl_status_set(ctx->status, KL_INVALID_ARGUMENT,
                                 "unknown field \"%s\"", ctx->path);
        size_t idx = (size_t)(f - desc->fields);
        if (given[idx])
            return s_fail(ctx, "same field as \"%s\"", given[idx]);
        given[idx] = key;
        /* null is the field's default: the same as leaving it out. */
        if (json_is_null(val)) {
            kl_json__path_pop(ctx, old);
            continue;
        }
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t set;
            memcpy(&set, (char *)msg + f->quantifier_offset, sizeof set);
            if (set != 0) {
                const ProtobufCFieldDescriptor *other =
                    protobuf_c_message_descriptor_get_field(desc, set);
                char name[KL_JSON_PATH_MAX];
                kl_json_camel_name(other ? other->name : "?", name,
                                   sizeof name);
                return s_fail(ctx, "\"%s\" of the same oneof is already set",
                              name);
            }
        }
        if (kl_json__is_map(desc, f)) {
            if (!json_is_object(val))
                return s_fail(ctx, "expected an object, got %s",
                              s_json_type(val));
            rc = s_fill_map(ctx, f, val, msg, depth + 1);
        } else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            if (!json_is_array(val))
                return s_fail(ctx, "expected an array, got %s",
                              s_json_type(val));
            rc = s_fill_repeated(ctx, f, val, msg, depth + 1);
        } else {
            rc = s_parse_value(ctx, f, val, (char *)msg + f->offset, depth);
            s_mark_present(f, msg);
        }
        if (rc < 0)
            return rc;
        kl_json__path_pop(ctx, old);
    }
    return 0;
}

/* Builds the message in ctx's arena. *msg_p points into the arena. */
static int
s_build(kl_json_ctx_t *ctx, const ProtobufCMessageDescriptor *desc,
        const json_t *json, ProtobufCMessage **msg_p)
{
    if (!json)
        return kl_status_set(ctx->status, KL_INVALID_ARGUMENT,
                             "expected a JSON object, got nothing");
    if (!json_is_object(json))
        return kl_status_set(ctx->status, KL_INVALID_ARGUMENT,
                             "expected a JSON object, got %s",
                             s_json_type(json));
    ProtobufCMessage *msg = s_alloc(ctx, desc->sizeof_message);
    protobuf_c_message_init(desc, msg);
    *msg_p = msg;
    return s_fill_message(ctx, desc, json, msg, 1);
}

int
kl_json_to_pb(const ProtobufCMessageDescriptor *desc, const json_t *json,
              uint8_t **out, size_t *out_len, kl_status_t *status)
{
    kl_json_ctx_t ctx = {.status = status};
    ProtobufCMessage *msg = NULL;
    int rc = s_build(&ctx, desc, json, &msg);

    *out = NULL;
    *out_len = 0;
    if (rc == 0) {
        size_t len = protobuf_c_message_get_packed_size(msg);
        *out = kl_malloc(len);
        *out_len = protobuf_c_message_pack(msg, *out);
        kl_status_clear(status);
    }
    s_arena_free(&ctx);
    return rc;
}

ProtobufCMessage *
kl_json_to_message(const ProtobufCMessageDescriptor *desc, const json_t *json,
                   kl_status_t *status)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (kl_json_to_pb(desc, json, &buf, &len, status) < 0)
        return NULL;
    ProtobufCMessage *msg = protobuf_c_message_unpack(desc, NULL, len, buf);
    free(buf);
    if (!msg)
        kl_status_set(status, KL_INTERNAL,
                      "protobuf_c_message_unpack() failed on %s built from "
                      "JSON",
                      desc->name);
    return msg;
}

/* ------------------------------------------------------------------ */
/* Parsing                                                             */

static bool
s_depth_ok(const json_t *v, int depth)
{
    if (!json_is_object(v) && !json_is_array(v))
        return true;
    if (depth > KL_JSON_MAX_DEPTH)
        return false;
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            if (!s_depth_ok(json_array_get(v, i), depth + 1))
                return false;
    } else {
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)v, key, val)
        {
            if (!s_depth_ok(val, depth + 1))
                return false;
        }
    }
    return true;
}

json_t *
kl_json_parse(const char *text, size_t len, kl_status_t *status)
{
    json_error_t err;
    /* One value of any type (the caller says what it wants), duplicate
     * keys rejected, nothing after it; \u0000 stays refused because the
     * C strings of protobuf-c cannot hold it. */
    json_t *json =
        json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);
    if (!json) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "malformed JSON at line %d, column %d: %s", err.line,
                      err.column, err.text);
        return NULL;
    }
    if (!s_depth_ok(json, 1)) {
        json_decref(json);
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "malformed JSON: nested deeper than %d levels",
                      KL_JSON_MAX_DEPTH);
        return NULL;
    }
    kl_status_clear(status);
    return json;
}
