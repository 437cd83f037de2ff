/*
 * kl_json_priv: what kl_json.c (JSON -> protobuf) and kl_json_out.c
 * (protobuf -> JSON) share. Private to those two files.
 */
#ifndef KL_JSON_PRIV_H
#define KL_JSON_PRIV_H

#include "kl_json.h"

#include <stdbool.h>
#include <stddef.h>

/* Deepest nesting accepted: JSON levels (objects and arrays) on input,
 * message levels (a map entry is one) on output and in packed bytes. The
 * top object is level 1. A message never nests deeper than the JSON that
 * describes it, so all that kl_json_to_pb produces kl_json_from_pb
 * accepts. */
#define KL_JSON_MAX_DEPTH 64

/* Field paths in messages are cut (with "...") past this length. */
#define KL_JSON_PATH_MAX 256

/* One arena allocation; data is aligned for any type. */
typedef struct kl_json_block {
    struct kl_json_block *next; /* allocated before this one */
    max_align_t data[];         /* the caller's bytes */
} kl_json_block_t;

/* State of one conversion, either direction. */
typedef struct {
    kl_json_block_t *blocks;     /* arena: what the built message uses */
    char path[KL_JSON_PATH_MAX]; /* field path of the current value */
    size_t path_len;             /* strlen(path) */
    unsigned flags;              /* KL_JSON_* (output only) */
    kl_status_t *status;         /* where errors go (may be NULL) */
} kl_json_ctx_t;

/* Appends printf-style to ctx->path; returns the length to restore with
 * kl_json__path_pop. */
size_t kl_json__path_push(kl_json_ctx_t *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends ".name" (or "name" at the top). */
size_t kl_json__path_push_field(kl_json_ctx_t *ctx, const char *name);
void kl_json__path_pop(kl_json_ctx_t *ctx, size_t old);

/* Whether field f of parent is a map<K,V> (a repeated nested XxxEntry
 * message with exactly key = 1 and value = 2). */
bool kl_json__is_map(const ProtobufCMessageDescriptor *parent,
                     const ProtobufCFieldDescriptor *f);

/* Size of one value of type in a message struct or repeated array. */
size_t kl_json__type_size(ProtobufCType type);

#endif
