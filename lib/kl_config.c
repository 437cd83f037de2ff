/*
 * kl_config: reads the settings of KL_CONFIG_TABLE from the environment,
 * validates each against its type and bounds, and keeps the parsed values.
 */
#include "kl_config.h"

#include "kl_alloc.h"
#include "kl_log.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef enum { S_STR, S_INT, S_BOOL, S_LIST, S_ENUM } s_type_t;

typedef struct {
    const char *name;    /* "KOWLOON_WORKERS" */
    s_type_t type;       /* how the value is parsed */
    const char *def;     /* default text; NULL: required */
    int64_t min, max;    /* INT bounds, or STR/LIST length bounds */
    const char *choices; /* ENUM: "a|b|c" */
    unsigned flags;      /* KL_CFG_SECRET */
    unsigned procs;      /* KL_PROC_* bits of the processes that read it */
    const char *help;    /* one sentence for the docs */
} s_entry_t;

static const s_entry_t s_table[KL_CFG_COUNT] = {
#define KL_CFG_ENTRY(id, type, def, min, max, choices, flags, procs, help)     \
    [KL_CFG_##id] = {"KOWLOON_" #id, S_##type, def,   min, max,                \
                     choices,        flags,    procs, help},
    KL_CONFIG_TABLE(KL_CFG_ENTRY)
#undef KL_CFG_ENTRY
};

typedef struct {
    bool loaded;    /* read for this process */
    char *text;     /* the value as given (or the default) */
    int64_t number; /* INT and BOOL */
    char **items;   /* LIST items */
    size_t n_items; /* LIST length */
} s_value_t;

struct kl_config {
    s_value_t values[KL_CFG_COUNT]; /* indexed by kl_config_id_t */
};

static const char *
s_getenv(const char *name, void *user)
{
    (void)user;
    return getenv(name);
}

static const char *
s_type_name(s_type_t type)
{
    static const char *const names[] = {"string", "integer", "boolean", "list",
                                        "one of"};
    return names[type];
}

static bool
s_choice_ok(const char *choices, const char *value)
{
    size_t len = strlen(value);
    const char *p = choices;
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == len && strncmp(p, value, n) == 0)
            return true;
        if (!bar)
            break;
        p = bar + 1;
    }
    return false;
}

static void
s_split_list(s_value_t *v)
{
    const char *p = v->text;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        const char *start = p;
        while (n && isspace((unsigned char)*start)) {
            start++;
            n--;
        }
        while (n && isspace((unsigned char)start[n - 1]))
            n--;
        if (n) {
            v->items =
                kl_realloc(v->items, (v->n_items + 1) * sizeof *v->items);
            v->items[v->n_items++] = kl_strndup(start, n);
        }
        if (!comma)
            break;
        p = comma + 1;
    }
}

/* Parses text into v per entry e; on failure fills status naming it. */
static int
s_parse(const s_entry_t *e, const char *text, s_value_t *v, kl_status_t *status)
{
    const char *shown = (e->flags & KL_CFG_SECRET) ? "<redacted>" : text;
    size_t len = strlen(text);

    v->text = kl_strdup(text);
    switch (e->type) {
    case S_STR:
    case S_LIST:
        if ((int64_t)len < e->min || (int64_t)len > e->max)
            return kl_status_set(
                status, KL_INVALID_ARGUMENT,
                "%s: \"%s\" is %zu characters long (want %lld..%lld)", e->name,
                shown, len, (long long)e->min, (long long)e->max);
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)text[i] < 0x20)
                return kl_status_set(status, KL_INVALID_ARGUMENT,
                                     "%s: control character at offset %zu",
                                     e->name, i);
        if (e->type == S_LIST)
            s_split_list(v);
        return 0;
    case S_INT: {
        char *end = NULL;
        errno = 0;
        long long n = strtoll(text, &end, 10);
        if (len == 0 || *end != '\0' || isspace((unsigned char)text[0]))
            return kl_status_set(
                status, KL_INVALID_ARGUMENT,
                "%s: \"%s\" is not an integer (want %lld..%lld)", e->name,
                shown, (long long)e->min, (long long)e->max);
        /* Digits beyond long long are out of range, not "not an integer".
         * The value is shown as written, so a secret stays redacted. */
        if (errno == ERANGE || n < e->min || n > e->max)
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "%s: %s is out of range (want %lld..%lld)",
                                 e->name, shown, (long long)e->min,
                                 (long long)e->max);
        v->number = n;
        return 0;
    }
    case S_BOOL:
        if (!strcmp(text, "true") || !strcmp(text, "1") ||
            !strcmp(text, "yes") || !strcmp(text, "on"))
            v->number = 1;
        else if (!strcmp(text, "false") || !strcmp(text, "0") ||
                 !strcmp(text, "no") || !strcmp(text, "off"))
            v->number = 0;
        else
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "%s: \"%s\" is not a boolean (want true or "
                                 "false)",
                                 e->name, shown);
        return 0;
    case S_ENUM:
        if (!s_choice_ok(e->choices, text))
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "%s: \"%s\" is not one of %s", e->name, shown,
                                 e->choices);
        return 0;
    }
    return kl_status_set(status, KL_INTERNAL, "%s: bad table entry", e->name);
}

kl_config_t *
kl_config_load(unsigned procs, kl_config_getenv_fn getenv_fn, void *user,
               kl_status_t *status)
{
    kl_config_t *self = kl_calloc(1, sizeof *self);
    if (!getenv_fn)
        getenv_fn = s_getenv;
    for (int id = 0; id < KL_CFG_COUNT; id++) {
        const s_entry_t *e = &s_table[id];
        if (!(e->procs & procs))
            continue;
        const char *text = getenv_fn(e->name, user);
        if (!text) {
            if (!e->def) {
                kl_status_set(status, KL_INVALID_ARGUMENT,
                              "%s: required but not set (%s)", e->name,
                              e->help);
                kl_config_destroy(&self);
                return NULL;
            }
            text = e->def;
        }
        if (s_parse(e, text, &self->values[id], status) < 0) {
            kl_config_destroy(&self);
            return NULL;
        }
        self->values[id].loaded = true;
    }
    kl_status_clear(status);
    return self;
}

void
kl_config_destroy(kl_config_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kl_config_t *self = *self_p;
    for (int id = 0; id < KL_CFG_COUNT; id++) {
        s_value_t *v = &self->values[id];
        free(v->text);
        for (size_t i = 0; i < v->n_items; i++)
            free(v->items[i]);
        free(v->items);
    }
    free(self);
    *self_p = NULL;
}

static const s_value_t *
s_value(const kl_config_t *self, kl_config_id_t id)
{
    assert(id >= 0 && id < KL_CFG_COUNT);
    assert(self->values[id].loaded && "setting not loaded for this process");
    return &self->values[id];
}

const char *
kl_config_str(const kl_config_t *self, kl_config_id_t id)
{
    return s_value(self, id)->text;
}

int64_t
kl_config_int(const kl_config_t *self, kl_config_id_t id)
{
    assert(s_table[id].type == S_INT);
    return s_value(self, id)->number;
}

bool
kl_config_bool(const kl_config_t *self, kl_config_id_t id)
{
    assert(s_table[id].type == S_BOOL);
    return s_value(self, id)->number != 0;
}

size_t
kl_config_list_len(const kl_config_t *self, kl_config_id_t id)
{
    assert(s_table[id].type == S_LIST);
    return s_value(self, id)->n_items;
}

const char *
kl_config_list_at(const kl_config_t *self, kl_config_id_t id, size_t index)
{
    const s_value_t *v = s_value(self, id);
    assert(index < v->n_items);
    return v->items[index];
}

const char *
kl_config_name(kl_config_id_t id)
{
    assert(id >= 0 && id < KL_CFG_COUNT);
    return s_table[id].name;
}

extern char **environ;

void
kl_config_log(const kl_config_t *self)
{
    for (int id = 0; id < KL_CFG_COUNT; id++) {
        const s_value_t *v = &self->values[id];
        if (!v->loaded)
            continue;
        const bool secret = s_table[id].flags & KL_CFG_SECRET;
        KL_LOG(KL_INFO, "config %s=%s", s_table[id].name,
               secret ? (v->text[0] ? "<redacted>" : "") : v->text);
    }
    for (char **e = environ; e && *e; e++) {
        if (strncmp(*e, "KOWLOON_", 8) != 0)
            continue;
        size_t n = strcspn(*e, "=");
        bool known = false;
        for (int id = 0; id < KL_CFG_COUNT && !known; id++)
            known = strlen(s_table[id].name) == n &&
                    strncmp(s_table[id].name, *e, n) == 0;
        if (!known)
            KL_LOG(KL_WARN, "unknown setting %.*s in the environment, ignored",
                   (int)n, *e);
    }
}

/* Names of the processes, for the "read by" column. */
static const struct {
    unsigned bit;
    const char *name;
} s_procs[] = {
    {KL_PROC_GATEWAY, "gateway"}, {KL_PROC_TENANT, "tenant"},
    {KL_PROC_FLAGS, "flags"},     {KL_PROC_WORKSPACE, "workspace"},
    {KL_PROC_BILLING, "billing"}, {KL_PROC_MIGRATION, "migration"},
};

/* "all", "services", or the readers' names separated by ", ". */
static void
s_readers(unsigned procs, char *buf, size_t size)
{
    size_t len = 0;
    if ((procs & KL_PROC_ALL) == KL_PROC_ALL) {
        snprintf(buf, size, "all");
        return;
    }
    if (procs == KL_PROC_SERVICES) {
        snprintf(buf, size, "services");
        return;
    }
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof s_procs / sizeof s_procs[0]; i++)
        if ((procs & s_procs[i].bit) && len < size)
            len += (size_t)snprintf(buf + len, size - len, "%s%s",
                                    len ? ", " : "", s_procs[i].name);
}

void
kl_config_write_markdown(FILE *out)
{
    fprintf(out, "| variable | type | default | allowed | read by | "
                 "meaning |\n|---|---|---|---|---|---|\n");
    for (int id = 0; id < KL_CFG_COUNT; id++) {
        const s_entry_t *e = &s_table[id];
        char allowed[128] = "";
        char readers[128];
        if (e->type == S_INT)
            snprintf(allowed, sizeof allowed, "%lld..%lld", (long long)e->min,
                     (long long)e->max);
        else if (e->type == S_ENUM)
            snprintf(allowed, sizeof allowed, "`%s`", e->choices);
        else if (e->min > 0)
            snprintf(allowed, sizeof allowed, "%lld..%lld characters",
                     (long long)e->min, (long long)e->max);
        s_readers(e->procs, readers, sizeof readers);
        fprintf(out, "| `%s` | %s%s | %s%s%s | %s | %s | %s |\n", e->name,
                s_type_name(e->type),
                (e->flags & KL_CFG_SECRET) ? ", secret" : "",
                e->def ? "`" : "**required**", e->def ? e->def : "",
                e->def ? "`" : "", allowed, readers, e->help);
    }
}
