/*
 * kctl: global options, service clients, calls and JSON output.
 *
 * kowloonctl is a short-lived, single-threaded process: the options and
 * clients below are its process state, set once by main.
 */
#include "kctl.h"

#include "kl_alloc.h"
#include "kl_config.h"
#include "kl_curve.h"
#include "kl_json.h"
#include "kl_rpc_env.h"
#include "kowloon/billing.pb-c.h"
#include "kowloon/flags.pb-c.h"
#include "kowloon/migration.pb-c.h"
#include "kowloon/tenant.pb-c.h"
#include "kowloon/workspace.pb-c.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Defaults of the settings table, so kowloonctl agrees with the services
 * without copying their defaults. */
static const char *const s_defaults[] = {
#define S_DEFAULT(id, type, def, min, max, choices, flags, procs, help) def,
    KL_CONFIG_TABLE(S_DEFAULT)
#undef S_DEFAULT
};

static const struct {
    const char *flag;       /* --<name>-endpoint */
    kl_config_id_t setting; /* KOWLOON_<NAME>_ENDPOINTS */
    const ProtobufCServiceDescriptor *desc;
} s_services[KCTL_SERVICE_COUNT] = {
    [KCTL_TENANT] = {"--tenant-endpoint", KL_CFG_TENANT_ENDPOINTS,
                     &kowloon__tenant__tenant_service__descriptor},
    [KCTL_FLAGS] = {"--flags-endpoint", KL_CFG_FLAGS_ENDPOINTS,
                    &kowloon__flags__flags_service__descriptor},
    [KCTL_MIGRATION] = {"--migration-endpoint", KL_CFG_MIGRATION_ENDPOINTS,
                        &kowloon__migration__migration_service__descriptor},
    [KCTL_BILLING] = {"--billing-endpoint", KL_CFG_BILLING_ENDPOINTS,
                      &kowloon__billing__billing_service__descriptor},
    [KCTL_WORKSPACE] = {"--workspace-endpoint", KL_CFG_WORKSPACE_ENDPOINTS,
                        &kowloon__workspace__workspace_service__descriptor},
};

static kctl_opts_t s_opts = {.timeout_ms = 10000};
static char *s_endpoint_flags[KCTL_SERVICE_COUNT]; /* comma-joined flags */
static kl_rpc_client_t *s_clients[KCTL_SERVICE_COUNT];
static kl_curve_t *s_curve; /* KOWLOON_CURVE_SECRET_KEY_FILE, when set */

const kctl_opts_t *
kctl_opts(void)
{
    return &s_opts;
}

void
kctl_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("kowloonctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int
kctl_parse_global(int argc, char **argv)
{
    int out = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            /* Everything after belongs to the command. */
            while (i < argc)
                argv[out++] = argv[i++];
            break;
        }
        if (strcmp(a, "--json") == 0) {
            s_opts.json = true;
            continue;
        }
        if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0) {
            s_opts.quiet = true;
            continue;
        }
        if (strcmp(a, "--timeout") == 0) {
            char *end = NULL;
            long long v = i + 1 < argc ? strtoll(argv[i + 1], &end, 10) : 0;
            if (i + 1 >= argc || !end || *end || v < 1 || v > 86400000) {
                kctl_error("--timeout wants milliseconds (1..86400000)");
                return -1;
            }
            s_opts.timeout_ms = v;
            i++;
            continue;
        }
        int matched = 0;
        for (int s = 0; s < KCTL_SERVICE_COUNT; s++) {
            if (strcmp(a, s_services[s].flag) != 0)
                continue;
            if (i + 1 >= argc || !*argv[i + 1]) {
                kctl_error("%s wants an endpoint (tcp://host:port)", a);
                return -1;
            }
            char *prev = s_endpoint_flags[s];
            s_endpoint_flags[s] = prev ? kl_asprintf("%s,%s", prev, argv[i + 1])
                                       : kl_strdup(argv[i + 1]);
            free(prev);
            i++;
            matched = 1;
            break;
        }
        if (!matched)
            argv[out++] = argv[i];
    }
    argv[out] = NULL;
    return out;
}

kl_rpc_client_t *
kctl_client(kctl_service_t service)
{
    if (s_clients[service])
        return s_clients[service];
    kl_config_id_t id = s_services[service].setting;
    const char *list = s_endpoint_flags[service];
    if (!list)
        list = getenv(kl_config_name(id));
    if (!list || !*list)
        list = s_defaults[id];
    /* Split the comma-separated list, trimming blanks; "@PATH" items name
     * endpoint files, as in the services' settings. */
    char *copy = kl_strdup(list);
    const char *items[64];
    size_t n_items = 0;
    for (char *tok = strtok(copy, ","); tok && n_items < 64;
         tok = strtok(NULL, ",")) {
        while (*tok == ' ' || *tok == '\t')
            tok++;
        char *end = tok + strlen(tok);
        while (end > tok && (end[-1] == ' ' || end[-1] == '\t'))
            *--end = '\0';
        if (*tok)
            items[n_items++] = tok;
    }
    kl_status_t st;
    char **eps = NULL;
    size_t n = 0;
    if (kl_rpc_env_expand(items, n_items, &eps, &n, &st) < 0) {
        kctl_error("%s \"%s\": %s", kl_config_name(id), list, st.message);
        free(copy);
        return NULL;
    }
    /* Curve, as the services of the scaling stages require: this
     * operator's key pair (kowloonctl keygen) and the servers' key, from
     * the same settings the services read. */
    const char *key_file = getenv("KOWLOON_CURVE_SECRET_KEY_FILE");
    if (key_file && *key_file && !s_curve) {
        s_curve = kl_curve_new(key_file, NULL, &st);
        if (!s_curve) {
            kctl_error("KOWLOON_CURVE_SECRET_KEY_FILE: %s", st.message);
            kl_rpc_env_free_list(&eps, n);
            free(copy);
            return NULL;
        }
    }
    const char *server_key = getenv("KOWLOON_CURVE_SERVER_PUBLIC_KEY");
    kl_rpc_client_opts_t copts = {
        .endpoints = (const char *const *)eps,
        .n_endpoints = n,
        .max_message_bytes = 64u << 20,
        .curve = s_curve,
        .server_public_key = server_key && *server_key ? server_key : NULL};
    s_clients[service] =
        n ? kl_rpc_client_new(s_services[service].desc, &copts, &st) : NULL;
    if (!s_clients[service])
        kctl_error("%s \"%s\": %s", kl_config_name(id), list,
                   n ? st.message : "no endpoint");
    kl_rpc_env_free_list(&eps, n);
    free(copy);
    return s_clients[service];
}

void
kctl_shutdown(void)
{
    for (int s = 0; s < KCTL_SERVICE_COUNT; s++) {
        kl_rpc_client_destroy(&s_clients[s]);
        KL_FREE(&s_endpoint_flags[s]);
    }
    kl_curve_destroy(&s_curve);
}

int
kctl_exit_for(kl_code_t code)
{
    switch (code) {
    case KL_OK:
        return KCTL_EXIT_OK;
    case KL_INVALID_ARGUMENT:
    case KL_OUT_OF_RANGE:
        return KCTL_EXIT_USAGE;
    case KL_UNAVAILABLE:
    case KL_DEADLINE_EXCEEDED:
        return KCTL_EXIT_UNAVAILABLE;
    case KL_NOT_FOUND:
        return KCTL_EXIT_NOT_FOUND;
    case KL_ALREADY_EXISTS:
    case KL_FAILED_PRECONDITION:
    case KL_PERMISSION_DENIED:
    case KL_UNAUTHENTICATED:
    case KL_ABORTED:
    case KL_RESOURCE_EXHAUSTED:
        return KCTL_EXIT_REFUSED;
    default:
        return KCTL_EXIT_FAILED;
    }
}

int
kctl_call(kctl_service_t service, const char *method,
          const ProtobufCMessage *in, bool idempotent, int64_t timeout_ms,
          const char *what, ProtobufCMessage **out)
{
    *out = NULL;
    kl_rpc_client_t *c = kctl_client(service);
    if (!c)
        return KCTL_EXIT_USAGE;
    kl_status_t st;
    kl_call_opts_t copts = {
        .timeout_ms = timeout_ms > 0 ? timeout_ms : s_opts.timeout_ms,
        .idempotent = idempotent,
    };
    if (kl_rpc_client_call(c, method, in, &copts, out, &st) == 0)
        return KCTL_EXIT_OK;
    kctl_error("%s: %s (%s)", what, st.message, kl_code_name(st.code));
    return kctl_exit_for(st.code);
}

void
kctl_print_json(json_t *value)
{
    json_dumpf(value, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    fputc('\n', stdout);
    json_decref(value);
}

void
kctl_print_json_message(const ProtobufCMessage *msg)
{
    kctl_print_json(kl_json_from_message(msg, KL_JSON_EMIT_DEFAULTS));
}

bool
kctl_wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
            return true;
    return false;
}
