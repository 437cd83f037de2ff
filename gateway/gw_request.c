/*
 * gw_request: body + path + query -> one JSON object.
 */
#include "gw_request.h"

#include "kl_alloc.h"
#include "kl_json.h"

#include <civetweb.h>
#include <stdlib.h>
#include <string.h>

/* Sets obj[name] = value unless present; 400 on a conflict. origin names
 * where value came from, for the message. */
static int
s_merge(json_t *obj, const char *name, const char *value, bool path,
        kl_status_t *status)
{
    json_t *have = json_object_get(obj, name);
    if (have) {
        if (path && json_is_string(have) &&
            strcmp(json_string_value(have), value) == 0)
            return 0;
        if (path)
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "field \"%s\" differs from the path (\"%s\")",
                                 name, value);
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "query parameter \"%s\" given twice or also in "
                             "the path or body",
                             name);
    }
    json_t *s = json_string(value);
    if (!s)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "%s parameter \"%s\" is not valid UTF-8",
                             path ? "path" : "query", name);
    json_object_set_new(obj, name, s);
    return 0;
}

static int
s_merge_query(json_t *obj, const char *query, kl_status_t *status)
{
    size_t qlen = strlen(query);
    char *key = kl_malloc(qlen + 1), *val = kl_malloc(qlen + 1);
    const char *p = query;
    int rc = 0;

    while (*p && rc == 0) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        size_t klen = eq ? (size_t)(eq - p) : len;
        if (klen > 0) {
            int kn = mg_url_decode(p, (int)klen, key, (int)qlen + 1, 1);
            int vn = eq ? mg_url_decode(eq + 1, (int)(len - klen - 1), val,
                                        (int)qlen + 1, 1)
                        : 0;
            if (kn < 0 || vn < 0 || memchr(key, '\0', (size_t)kn) ||
                memchr(val, '\0', (size_t)vn)) {
                rc = kl_status_set(status, KL_INVALID_ARGUMENT,
                                   "malformed query string");
                break;
            }
            key[kn] = '\0';
            val[vn] = '\0';
            rc = s_merge(obj, key, val, false, status);
        }
        p += len;
        if (*p == '&')
            p++;
    }
    free(key);
    free(val);
    return rc;
}

json_t *
gw_request_input(const char *body, size_t len, const gw_route_match_t *m,
                 const char *query, bool with_query, kl_status_t *status)
{
    json_t *obj;
    if (len == 0) {
        obj = json_object();
    } else {
        obj = kl_json_parse(body, len, status);
        if (!obj)
            return NULL;
        if (!json_is_object(obj)) {
            json_decref(obj);
            kl_status_set(status, KL_INVALID_ARGUMENT,
                          "request body must be a JSON object");
            return NULL;
        }
    }
    for (size_t i = 0; i < m->n_params; i++)
        if (s_merge(obj, m->params[i].name, m->params[i].value, true, status) <
            0)
            goto fail;
    if (with_query && query && *query && s_merge_query(obj, query, status) < 0)
        goto fail;
    return obj;
fail:
    json_decref(obj);
    return NULL;
}

bool
gw_request_force_field(json_t *input, const ProtobufCMessageDescriptor *desc,
                       const char *field, const char *value)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(desc, field);
    char camel[128];

    if (!f || f->type != PROTOBUF_C_TYPE_STRING ||
        f->label == PROTOBUF_C_LABEL_REPEATED)
        return false;
    kl_json_camel_name(field, camel, sizeof camel);
    json_object_del(input, camel);
    json_object_del(input, field);
    json_object_set_new(input, field, json_string(value ? value : ""));
    return true;
}

/* The field name of desc, of type, singular; NULL when there is none. */
static const ProtobufCFieldDescriptor *
s_singular(const ProtobufCMessageDescriptor *desc, const char *name,
           ProtobufCType type)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(desc, name);
    return f && f->type == type && f->label != PROTOBUF_C_LABEL_REPEATED ? f
                                                                         : NULL;
}

/* Marks f present in msg when its presence is tracked (proto2 optional,
 * proto3 "optional"); proto3 plain fields are present when not empty. */
static void
s_set_has(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
    if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset)
        *(protobuf_c_boolean *)((char *)msg + f->quantifier_offset) = 1;
}

int
gw_request_webhook_input(const ProtobufCMessageDescriptor *desc,
                         const char *body, size_t len, const char *signature,
                         uint8_t **out, size_t *out_len, kl_status_t *status)
{
    const ProtobufCFieldDescriptor *fp =
        s_singular(desc, "payload", PROTOBUF_C_TYPE_BYTES);
    const ProtobufCFieldDescriptor *fs =
        s_singular(desc, "signature", PROTOBUF_C_TYPE_STRING);

    *out = NULL;
    *out_len = 0;
    if (!fp || !fs)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "%s has no bytes payload and string signature",
                             desc->name);
    /* The message borrows body and signature: it is packed, then freed
     * with free(), never with protobuf_c_message_free_unpacked. */
    ProtobufCMessage *msg = kl_calloc(1, desc->sizeof_message);
    protobuf_c_message_init(desc, msg);
    ProtobufCBinaryData *payload =
        (ProtobufCBinaryData *)((char *)msg + fp->offset);
    payload->data = (uint8_t *)body;
    payload->len = len;
    s_set_has(msg, fp);
    *(const char **)((char *)msg + fs->offset) = signature ? signature : "";
    s_set_has(msg, fs);
    size_t size = protobuf_c_message_get_packed_size(msg);
    *out = kl_malloc(size ? size : 1);
    *out_len = protobuf_c_message_pack(msg, *out);
    free(msg);
    return 0;
}
