/*
 * kowloonctl plans: list | show NAME (the flags service's plans).
 */
#include "kctl.h"

#include "kl_json.h"
#include "kowloon/flags.pb-c.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int
s_usage(FILE *out, int rc)
{
    fprintf(out, "usage: kowloonctl plans list\n"
                 "       kowloonctl plans show NAME\n");
    return rc;
}

/* "a, b, c" of strings. */
static void
s_join(char *buf, size_t size, char **items, size_t n)
{
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && len < size; i++)
        len += (size_t)snprintf(buf + len, size - len, "%s%s", i ? ", " : "",
                                items[i]);
}

static void
s_limits(char *buf, size_t size, const Kowloon__Flags__Plan *p)
{
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < p->n_limits && len < size; i++)
        len += (size_t)snprintf(buf + len, size - len, "%s%s=%" PRId64,
                                i ? ", " : "", p->limits[i]->key,
                                p->limits[i]->value);
}

int
kctl_cmd_plans(int argc, char **argv)
{
    if (argc < 2 || kctl_wants_help(argc, argv))
        return s_usage(argc < 2 ? stderr : stdout,
                       argc < 2 ? KCTL_EXIT_USAGE : KCTL_EXIT_OK);
    char features[2048], limits[2048];
    if (strcmp(argv[1], "list") == 0 && argc == 2) {
        Kowloon__Flags__ListPlansRequest req =
            KOWLOON__FLAGS__LIST_PLANS_REQUEST__INIT;
        ProtobufCMessage *m = NULL;
        int rc = kctl_call(KCTL_FLAGS, "ListPlans", &req.base, true, 0,
                           "plans list", &m);
        if (rc != KCTL_EXIT_OK)
            return rc;
        Kowloon__Flags__ListPlansResponse *r =
            (Kowloon__Flags__ListPlansResponse *)m;
        if (kctl_opts()->json) {
            json_t *arr = json_array();
            for (size_t i = 0; i < r->n_plans; i++)
                json_array_append_new(
                    arr, kl_json_from_message(&r->plans[i]->base,
                                              KL_JSON_EMIT_DEFAULTS));
            kctl_print_json(arr);
        } else {
            const char *h[] = {"NAME", "DISPLAY NAME", "FEATURES", "LIMITS"};
            kctl_table_t *t = kctl_table_new(h, 4);
            for (size_t i = 0; i < r->n_plans; i++) {
                const Kowloon__Flags__Plan *p = r->plans[i];
                s_join(features, sizeof features, p->features, p->n_features);
                s_limits(limits, sizeof limits, p);
                const char *row[] = {p->name, p->display_name, features,
                                     limits};
                kctl_table_row(t, row);
            }
            kctl_table_print(t);
            kctl_table_destroy(&t);
        }
        protobuf_c_message_free_unpacked(m, NULL);
        return KCTL_EXIT_OK;
    }
    if (strcmp(argv[1], "show") == 0 && argc == 3) {
        Kowloon__Flags__PlanName req = KOWLOON__FLAGS__PLAN_NAME__INIT;
        req.name = argv[2];
        ProtobufCMessage *m = NULL;
        int rc = kctl_call(KCTL_FLAGS, "GetPlan", &req.base, true, 0,
                           "plans show", &m);
        if (rc != KCTL_EXIT_OK)
            return rc;
        const Kowloon__Flags__Plan *p = (Kowloon__Flags__Plan *)m;
        if (kctl_opts()->json) {
            kctl_print_json_message(m);
        } else {
            s_join(features, sizeof features, p->features, p->n_features);
            s_limits(limits, sizeof limits, p);
            printf("name:          %s\n", p->name);
            printf("display name:  %s\n", p->display_name);
            printf("features:      %s\n", features);
            printf("limits:        %s\n", limits);
            printf("builtin:       %s\n", p->builtin ? "yes" : "no");
            printf("updated:       %s\n", p->updated_at);
        }
        protobuf_c_message_free_unpacked(m, NULL);
        return KCTL_EXIT_OK;
    }
    return s_usage(stderr, KCTL_EXIT_USAGE);
}
