/*
 * kowloonctl tenants: list | create | show | suspend | resume | delete.
 */
#include "kctl.h"

#include "kl_json.h"
#include "kowloon/tenant.pb-c.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int
s_usage(FILE *out, int rc)
{
    fprintf(out,
            "usage: kowloonctl tenants list [--status S] [--limit N]\n"
            "       kowloonctl tenants create SUBDOMAIN [--name N] [--plan P]\n"
            "                  [--isolation row|schema|database] "
            "[--status trialing|active]\n"
            "       kowloonctl tenants show|suspend|resume|delete "
            "ID|SUBDOMAIN\n"
            "\n"
            "list pages through every tenant (not deleted, unless --status\n"
            "deleted); --limit stops after N. A tenant is named by its id or\n"
            "its subdomain.\n");
    return rc;
}

static bool
s_is_uuid(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!isxdigit((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}

static void
s_print_tenant(const Kowloon__Tenant__Tenant *t)
{
    if (kctl_opts()->json) {
        kctl_print_json_message(&t->base);
        return;
    }
    printf("id:         %s\n", t->id);
    printf("subdomain:  %s\n", t->subdomain);
    printf("name:       %s\n", t->name);
    printf("plan:       %s\n", t->plan);
    printf("status:     %s\n", t->status);
    printf("isolation:  %s\n", t->isolation);
    printf("created:    %s\n", t->created_at);
    printf("updated:    %s\n", t->updated_at);
}

/* Gets a tenant by id or subdomain. */
static int
s_find(const char *ref, Kowloon__Tenant__Tenant **out)
{
    ProtobufCMessage *m = NULL;
    int rc;
    if (s_is_uuid(ref)) {
        Kowloon__Tenant__GetTenantRequest req =
            KOWLOON__TENANT__GET_TENANT_REQUEST__INIT;
        req.id = (char *)ref;
        rc = kctl_call(KCTL_TENANT, "Get", &req.base, true, 0, "tenants", &m);
    } else {
        Kowloon__Tenant__GetBySubdomainRequest req =
            KOWLOON__TENANT__GET_BY_SUBDOMAIN_REQUEST__INIT;
        req.subdomain = (char *)ref;
        rc = kctl_call(KCTL_TENANT, "GetBySubdomain", &req.base, true, 0,
                       "tenants", &m);
    }
    *out = (Kowloon__Tenant__Tenant *)m;
    return rc;
}

static int
s_list(int argc, char **argv)
{
    const char *status = "";
    long limit = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--status") == 0 && i + 1 < argc) {
            status = argv[++i];
        } else if (strcmp(argv[i], "--limit") == 0 && i + 1 < argc) {
            char *end;
            limit = strtol(argv[++i], &end, 10);
            if (*end || limit < 0)
                return s_usage(stderr, KCTL_EXIT_USAGE);
        } else {
            kctl_error("tenants list: unexpected \"%s\"", argv[i]);
            return s_usage(stderr, KCTL_EXIT_USAGE);
        }
    }
    const char *headers[] = {"ID",     "SUBDOMAIN", "NAME",   "PLAN",
                             "STATUS", "ISOLATION", "CREATED"};
    kctl_table_t *table = kctl_table_new(headers, 7);
    json_t *arr = json_array();
    char *token = strdup("");
    long n = 0;
    int rc = KCTL_EXIT_OK;
    while (token && (limit < 0 || n < limit)) {
        Kowloon__Tenant__ListTenantsRequest req =
            KOWLOON__TENANT__LIST_TENANTS_REQUEST__INIT;
        req.page_size = 500;
        req.page_token = token;
        req.status = (char *)status;
        ProtobufCMessage *m = NULL;
        rc = kctl_call(KCTL_TENANT, "List", &req.base, true, 0, "tenants list",
                       &m);
        if (rc != KCTL_EXIT_OK)
            break;
        Kowloon__Tenant__ListTenantsResponse *page =
            (Kowloon__Tenant__ListTenantsResponse *)m;
        for (size_t i = 0; i < page->n_tenants && (limit < 0 || n < limit);
             i++, n++) {
            const Kowloon__Tenant__Tenant *t = page->tenants[i];
            if (kctl_opts()->json) {
                json_array_append_new(
                    arr, kl_json_from_message(&t->base, KL_JSON_EMIT_DEFAULTS));
            } else {
                const char *row[] = {t->id,        t->subdomain, t->name,
                                     t->plan,      t->status,    t->isolation,
                                     t->created_at};
                kctl_table_row(table, row);
            }
        }
        free(token);
        token = page->next_page_token && *page->next_page_token
                    ? strdup(page->next_page_token)
                    : NULL;
        protobuf_c_message_free_unpacked(m, NULL);
    }
    free(token);
    if (rc == KCTL_EXIT_OK) {
        if (kctl_opts()->json) {
            kctl_print_json(arr);
            arr = NULL;
        } else {
            kctl_table_print(table);
        }
    }
    if (arr)
        json_decref(arr);
    kctl_table_destroy(&table);
    return rc;
}

static int
s_create(int argc, char **argv)
{
    Kowloon__Tenant__CreateTenantRequest req =
        KOWLOON__TENANT__CREATE_TENANT_REQUEST__INIT;
    for (int i = 1; i < argc; i++) {
        char **field = strcmp(argv[i], "--name") == 0        ? &req.name
                       : strcmp(argv[i], "--plan") == 0      ? &req.plan
                       : strcmp(argv[i], "--isolation") == 0 ? &req.isolation
                       : strcmp(argv[i], "--status") == 0    ? &req.status
                       : strcmp(argv[i], "--subdomain") == 0 ? &req.subdomain
                                                             : NULL;
        if (field && i + 1 < argc) {
            *field = argv[++i];
        } else if (!field && argv[i][0] != '-' && !*req.subdomain) {
            req.subdomain = argv[i];
        } else {
            kctl_error("tenants create: unexpected \"%s\"", argv[i]);
            return s_usage(stderr, KCTL_EXIT_USAGE);
        }
    }
    if (!*req.subdomain) {
        kctl_error("tenants create: a subdomain is required");
        return s_usage(stderr, KCTL_EXIT_USAGE);
    }
    if (!*req.name)
        req.name = req.subdomain;
    ProtobufCMessage *m = NULL;
    int rc = kctl_call(KCTL_TENANT, "Create", &req.base, false, 0,
                       "tenants create", &m);
    if (rc != KCTL_EXIT_OK)
        return rc;
    s_print_tenant((Kowloon__Tenant__Tenant *)m);
    protobuf_c_message_free_unpacked(m, NULL);
    return KCTL_EXIT_OK;
}

static int
s_one(int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        kctl_error("tenants %s: name one tenant (id or subdomain)", argv[0]);
        return s_usage(stderr, KCTL_EXIT_USAGE);
    }
    Kowloon__Tenant__Tenant *t = NULL;
    int rc = s_find(argv[1], &t);
    if (rc != KCTL_EXIT_OK || strcmp(argv[0], "show") == 0) {
        if (t) {
            s_print_tenant(t);
            protobuf_c_message_free_unpacked(&t->base, NULL);
        }
        return rc;
    }
    const char *method = strcmp(argv[0], "suspend") == 0  ? "Suspend"
                         : strcmp(argv[0], "resume") == 0 ? "Resume"
                                                          : "Delete";
    Kowloon__Tenant__TenantIdRequest req =
        KOWLOON__TENANT__TENANT_ID_REQUEST__INIT;
    req.id = t->id;
    char what[64];
    snprintf(what, sizeof what, "tenants %s", argv[0]);
    ProtobufCMessage *m = NULL;
    rc = kctl_call(KCTL_TENANT, method, &req.base, true, 0, what, &m);
    protobuf_c_message_free_unpacked(&t->base, NULL);
    if (rc != KCTL_EXIT_OK)
        return rc;
    s_print_tenant((Kowloon__Tenant__Tenant *)m);
    protobuf_c_message_free_unpacked(m, NULL);
    return KCTL_EXIT_OK;
}

int
kctl_cmd_tenants(int argc, char **argv)
{
    if (argc < 2 || kctl_wants_help(argc, argv))
        return s_usage(argc < 2 ? stderr : stdout,
                       argc < 2 ? KCTL_EXIT_USAGE : KCTL_EXIT_OK);
    const char *sub = argv[1];
    if (strcmp(sub, "list") == 0)
        return s_list(argc - 1, argv + 1);
    if (strcmp(sub, "create") == 0)
        return s_create(argc - 1, argv + 1);
    if (strcmp(sub, "show") == 0 || strcmp(sub, "suspend") == 0 ||
        strcmp(sub, "resume") == 0 || strcmp(sub, "delete") == 0)
        return s_one(argc - 1, argv + 1);
    kctl_error("tenants: unknown subcommand \"%s\"", sub);
    return s_usage(stderr, KCTL_EXIT_USAGE);
}
