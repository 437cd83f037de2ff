/*
 * flags_service: the handlers of kowloon.flags.FlagsService. Each
 * validates its request, calls flags_store on the worker's connection,
 * then, once the write is committed, refreshes the Redis mirror (plans)
 * and publishes a change event, and answers.
 */
#include "flags_service.h"

#include "flags_rules.h"
#include "flags_store.h"
#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_pg.h"
#include "kl_redis.h"
#include "kl_service.h"
#include "kl_valid.h"
#include "kowloon/flags.pb-c.h"

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Keys of the Redis mirror: the seed's layout, and beside it the
 * (epoch, version) each plan's mirror was written at. */
#define S_FEATURES_KEY "plan:%s:features"
#define S_MIRROR_PREFIX "kowloon:flags:plan_mirror:"

/* Writes (ARGV[1] non-empty) or deletes the features key KEYS[1] unless
 * KEYS[2] says a newer version of the same database was written already,
 * so two instances finishing out of order never leave the older state.
 * A different epoch means the database was made again: write. */
static const char s_mirror_lua[] =
    "local cur = redis.call('GET', KEYS[2]) "
    "if cur then "
    "  local sep = string.find(cur, ':', 1, true) "
    "  if sep and string.sub(cur, 1, sep - 1) == ARGV[2] and "
    "     tonumber(string.sub(cur, sep + 1)) > tonumber(ARGV[3]) then "
    "    return 0 "
    "  end "
    "end "
    "if ARGV[1] == '' then redis.call('DEL', KEYS[1]) "
    "else redis.call('SET', KEYS[1], ARGV[1]) end "
    "redis.call('SET', KEYS[2], ARGV[2] .. ':' .. ARGV[3]) "
    "return 1";

struct flags_service {
    /* First member: a handler's service pointer is this object. */
    Kowloon__Flags__FlagsService_Service base;
    char *database_url;   /* owned */
    char *redis_url;      /* owned; "" disables events and the mirror */
    char *events_channel; /* owned */
    char epoch[37];       /* flags.state.epoch, read by migrate */
    kl_service_t *std;    /* owned; the workers' pg and redis */
};

/* --- answering -------------------------------------------------------- */

static void
s_free(void *msg)
{
    if (msg)
        protobuf_c_message_free_unpacked(msg, NULL);
}

/* Publishes a change after commit. Events are hints: a failure is logged
 * and the call still succeeds (caches expire by TTL). */
static void
s_publish(const flags_service_t *self, kl_service_worker_t *w, const char *kind,
          const char *id, const char *tenant_id, const char *action)
{
    if (!self->redis_url[0])
        return;
    Kowloon__Events__ChangeEvent ev = KOWLOON__EVENTS__CHANGE_EVENT__INIT;
    ev.kind = (char *)kind;
    ev.id = (char *)id;
    ev.tenant_id = (char *)(tenant_id ? tenant_id : "");
    ev.action = (char *)action;
    kl_status_t st;
    if (kl_redis_publish_event(w->redis, self->events_channel, &ev, &st) < 0)
        KL_LOG(KL_WARN, "%s %s event for %s not published: %s, ignored", kind,
               action, id, st.message);
}

/* Writes plan's features (features_json NULL: deletes them) to the mirror
 * as of version. Returns 0 or -code; callers log and carry on. */
static int
s_mirror(const flags_service_t *self, kl_redis_t *redis, const char *plan,
         const char *features_json, int64_t version, kl_status_t *status)
{
    if (!self->redis_url[0])
        return 0;
    redisContext *ctx = kl_redis_context(redis, status);
    if (!ctx)
        return -KL_UNAVAILABLE;
    char key[128], mirror_key[128], version_text[32];
    snprintf(key, sizeof key, S_FEATURES_KEY, plan);
    snprintf(mirror_key, sizeof mirror_key, S_MIRROR_PREFIX "%s", plan);
    snprintf(version_text, sizeof version_text, "%lld", (long long)version);
    redisReply *r = redisCommand(
        ctx, "EVAL %s 2 %s %s %s %s %s", s_mirror_lua, key, mirror_key,
        features_json ? features_json : "", self->epoch, version_text);
    if (!r)
        return kl_status_set(status, KL_UNAVAILABLE, "redis EVAL failed: %s",
                             ctx->errstr);
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR)
        rc = kl_status_set(status, KL_UNAVAILABLE, "redis EVAL failed: %s",
                           r->str);
    freeReplyObject(r);
    return rc;
}

/* The mirror's value for a plan: its feature names as a compact JSON
 * array, exactly what the seed's middleware reads. Caller frees. */
static char *
s_features_json(const Kowloon__Flags__Plan *plan)
{
    json_t *a = json_array();
    for (size_t i = 0; i < plan->n_features; i++)
        json_array_append_new(a, json_string(plan->features[i]));
    char *text = json_dumps(a, JSON_COMPACT);
    json_decref(a);
    if (!text)
        abort(); /* jansson fails only when out of memory */
    return text;
}

static void
s_mirror_plan(const flags_service_t *self, kl_service_worker_t *w,
              const Kowloon__Flags__Plan *plan, const char *name,
              int64_t version)
{
    char *json = plan ? s_features_json(plan) : NULL;
    kl_status_t st;
    if (s_mirror(self, w->redis, name, json, version, &st) < 0)
        KL_LOG(KL_WARN,
               "redis mirror of plan \"%s\" not written: %s, ignored (written "
               "again on its next change or at restart)",
               name, st.message);
    free(json);
}

/* --- validation ------------------------------------------------------- */

static int
s_strcmp_p(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The first string that appears twice in items, or NULL. */
static const char *
s_duplicate(char *const *items, size_t n)
{
    if (n < 2)
        return NULL;
    char **sorted = kl_malloc(n * sizeof *sorted);
    memcpy(sorted, items, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, s_strcmp_p);
    const char *dup = NULL;
    for (size_t i = 1; i < n && !dup; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0)
            dup = sorted[i];
    free(sorted);
    return dup;
}

/* The limits every plan sets, because the gateway enforces them. */
static const char *const s_required_limits[] = {"api_requests_per_minute",
                                                "max_projects", "max_api_keys",
                                                "storage_mb", NULL};

/* Checks a plan; *copy gets in with display_name defaulted to the name. */
static int
s_check_plan(const Kowloon__Flags__Plan *in, Kowloon__Flags__Plan *copy,
             kl_status_t *st)
{
    *copy = *in;
    if (kl_valid_empty(in->display_name))
        copy->display_name = in->name;
    int rc = flags_rules_check_plan_name("name", in->name, st);
    if (rc == 0)
        rc = flags_rules_check_text("display_name", copy->display_name,
                                    FLAGS_DISPLAY_NAME_MAX, st);
    if (rc == 0 && in->n_features > FLAGS_MAX_FEATURES)
        rc = kl_status_set(st, KL_INVALID_ARGUMENT,
                           "features: at most %d, got %zu", FLAGS_MAX_FEATURES,
                           in->n_features);
    for (size_t i = 0; rc == 0 && i < in->n_features; i++)
        rc = flags_rules_check_feature_name("feature", in->features[i], st);
    const char *dup =
        rc == 0 ? s_duplicate(in->features, in->n_features) : NULL;
    if (dup)
        rc = kl_status_set(st, KL_INVALID_ARGUMENT,
                           "feature \"%s\" is listed twice", dup);
    if (rc == 0 && in->n_limits > FLAGS_MAX_LIMITS)
        rc = kl_status_set(st, KL_INVALID_ARGUMENT,
                           "limits: at most %d, got %zu", FLAGS_MAX_LIMITS,
                           in->n_limits);
    char **names = kl_calloc(in->n_limits ? in->n_limits : 1, sizeof *names);
    for (size_t i = 0; rc == 0 && i < in->n_limits; i++) {
        names[i] = in->limits[i]->key;
        rc = flags_rules_check_feature_name("limit", in->limits[i]->key, st);
        if (rc == 0)
            rc = flags_rules_check_limit(in->limits[i]->key,
                                         in->limits[i]->value, st);
    }
    dup = rc == 0 ? s_duplicate(names, in->n_limits) : NULL;
    if (dup)
        rc = kl_status_set(st, KL_INVALID_ARGUMENT,
                           "limit \"%s\" is listed twice", dup);
    for (int r = 0; rc == 0 && s_required_limits[r]; r++) {
        bool found = false;
        for (size_t i = 0; i < in->n_limits && !found; i++)
            found = strcmp(names[i], s_required_limits[r]) == 0;
        if (!found)
            rc =
                kl_status_set(st, KL_INVALID_ARGUMENT,
                              "limit \"%s\" is required", s_required_limits[r]);
    }
    free(names);
    if (rc == 0 && in->n_stripe_price_ids > FLAGS_MAX_PRICES)
        rc = kl_status_set(st, KL_INVALID_ARGUMENT,
                           "stripe_price_ids: at most %d, got %zu",
                           FLAGS_MAX_PRICES, in->n_stripe_price_ids);
    for (size_t i = 0; rc == 0 && i < in->n_stripe_price_ids; i++)
        if (!flags_rules_price_id_valid(in->stripe_price_ids[i]))
            rc = kl_status_set(st, KL_INVALID_ARGUMENT,
                               "stripe price id \"%.64s\" is invalid: want 1 "
                               "to 255 of A-Z, a-z, 0-9 and _",
                               in->stripe_price_ids[i]);
    dup = rc == 0 ? s_duplicate(in->stripe_price_ids, in->n_stripe_price_ids)
                  : NULL;
    if (dup)
        rc = kl_status_set(st, KL_INVALID_ARGUMENT,
                           "stripe price id \"%s\" is listed twice", dup);
    return rc;
}

static int
s_check_flag_key(const char *key, kl_status_t *st)
{
    if (kl_valid_empty(key))
        return kl_status_set(st, KL_INVALID_ARGUMENT, "key is required");
    if (!flags_rules_flag_key_valid(key))
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "key \"%.64s\" is invalid: want 1 to 63 of a-z, "
                             "0-9, _, . and -",
                             key);
    return 0;
}

/* A tenant list of a flag: UUIDs, at most FLAGS_MAX_TENANT_LIST, none
 * twice. *out (caller frees, one block) gets the canonical ids, sorted. */
static int
s_check_tenant_list(const char *field, char *const *ids, size_t n, char ***out,
                    kl_status_t *st)
{
    *out = NULL;
    if (n > FLAGS_MAX_TENANT_LIST)
        return kl_status_set(st, KL_INVALID_ARGUMENT, "%s: at most %d, got %zu",
                             field, FLAGS_MAX_TENANT_LIST, n);
    char **list = kl_malloc((n ? n : 1) * (sizeof(char *) + 37));
    char *text = (char *)(list + (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        if (!flags_rules_uuid_valid(ids[i])) {
            free(list);
            return kl_status_set(st, KL_INVALID_ARGUMENT,
                                 "%s[%zu] \"%.64s\" is not a UUID", field, i,
                                 ids[i]);
        }
        list[i] = text + 37 * i;
        flags_rules_uuid_canonical(ids[i], list[i]);
    }
    qsort(list, n, sizeof *list, s_strcmp_p);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(list[i - 1], list[i]) == 0) {
            int rc =
                kl_status_set(st, KL_INVALID_ARGUMENT,
                              "%s: tenant %s is listed twice", field, list[i]);
            free(list);
            return rc;
        }
    }
    *out = list;
    return 0;
}

/* Checks a flag; *copy gets in with canonical, sorted tenant lists in
 * *allow_p and *deny_p (caller frees both). */
static int
s_check_flag(const Kowloon__Flags__Flag *in, Kowloon__Flags__Flag *copy,
             char ***allow_p, char ***deny_p, kl_status_t *st)
{
    *copy = *in;
    *allow_p = *deny_p = NULL;
    int rc = s_check_flag_key(in->key, st);
    if (rc == 0)
        rc = flags_rules_check_text("description", in->description,
                                    FLAGS_DESCRIPTION_MAX, st);
    if (rc == 0)
        rc = flags_rules_check_rollout(in->rollout_percent, st);
    if (rc == 0)
        rc = s_check_tenant_list("allow_tenants", in->allow_tenants,
                                 in->n_allow_tenants, allow_p, st);
    if (rc == 0)
        rc = s_check_tenant_list("deny_tenants", in->deny_tenants,
                                 in->n_deny_tenants, deny_p, st);
    /* Both lists sorted: one merge finds a tenant on both. */
    for (size_t a = 0, d = 0;
         rc == 0 && a < in->n_allow_tenants && d < in->n_deny_tenants;) {
        int c = strcmp((*allow_p)[a], (*deny_p)[d]);
        if (c == 0)
            rc = kl_status_set(st, KL_INVALID_ARGUMENT,
                               "tenant %s is on both allow_tenants and "
                               "deny_tenants",
                               (*allow_p)[a]);
        else if (c < 0)
            a++;
        else
            d++;
    }
    if (rc == 0) {
        copy->allow_tenants = *allow_p;
        copy->deny_tenants = *deny_p;
    }
    return rc;
}

/* tenant_id must be a UUID; canonical gets its lower-case form. */
static int
s_check_tenant(const char *tenant_id, char canonical[37], kl_status_t *st)
{
    int rc = flags_rules_check_uuid("tenant_id", tenant_id, st);
    if (rc == 0)
        flags_rules_uuid_canonical(tenant_id, canonical);
    return rc;
}

/* --- plans ------------------------------------------------------------ */

/* CreatePlan and UpdatePlan. */
static void
s_plan_write(Kowloon__Flags__FlagsService_Service *svc,
             const Kowloon__Flags__Plan *in,
             Kowloon__Flags__Plan_Closure closure, void *closure_data,
             bool create)
{
    flags_service_t *self = (flags_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    const char *what = create ? "CreatePlan" : "UpdatePlan";
    kl_status_t st;
    Kowloon__Flags__Plan copy;
    Kowloon__Flags__Plan *out = NULL;
    int64_t version = 0;
    int rc = s_check_plan(in, &copy, &st);
    if (rc == 0)
        rc = create
                 ? flags_store_plan_create(w->pg, &copy, &out, &version, &st)
                 : flags_store_plan_update(w->pg, &copy, &out, &version, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, what, &st);
        closure(NULL, closure_data);
        return;
    }
    KL_LOG(KL_INFO, "plan \"%s\" %s", out->name,
           create ? "created" : "updated");
    s_mirror_plan(self, w, out, out->name, version);
    s_publish(self, w, "plan", out->name, NULL, create ? "created" : "updated");
    closure(out, closure_data);
    s_free(out);
}

static void
s_create_plan(Kowloon__Flags__FlagsService_Service *svc,
              const Kowloon__Flags__Plan *in,
              Kowloon__Flags__Plan_Closure closure, void *closure_data)
{
    s_plan_write(svc, in, closure, closure_data, true);
}

static void
s_update_plan(Kowloon__Flags__FlagsService_Service *svc,
              const Kowloon__Flags__Plan *in,
              Kowloon__Flags__Plan_Closure closure, void *closure_data)
{
    s_plan_write(svc, in, closure, closure_data, false);
}

static void
s_get_plan(Kowloon__Flags__FlagsService_Service *svc,
           const Kowloon__Flags__PlanName *in,
           Kowloon__Flags__Plan_Closure closure, void *closure_data)
{
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    Kowloon__Flags__Plan *out = NULL;
    int rc = flags_rules_check_plan_name("name", in->name, &st);
    if (rc == 0)
        rc = flags_store_plan_get(w->pg, in->name, &out, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "GetPlan", &st);
        closure(NULL, closure_data);
        return;
    }
    closure(out, closure_data);
    s_free(out);
}

static void
s_list_plans(Kowloon__Flags__FlagsService_Service *svc,
             const Kowloon__Flags__ListPlansRequest *in,
             Kowloon__Flags__ListPlansResponse_Closure closure,
             void *closure_data)
{
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    Kowloon__Flags__ListPlansResponse *out = NULL;
    if (flags_store_plan_list(w->pg, &out, NULL, &st) < 0) {
        kl_service_fail(closure_data, "ListPlans", &st);
        closure(NULL, closure_data);
        return;
    }
    closure(out, closure_data);
    s_free(out);
}

static void
s_delete_plan(Kowloon__Flags__FlagsService_Service *svc,
              const Kowloon__Flags__PlanName *in,
              Kowloon__Flags__DeletePlanResponse_Closure closure,
              void *closure_data)
{
    flags_service_t *self = (flags_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    int64_t version = 0;
    int rc = flags_rules_check_plan_name("name", in->name, &st);
    if (rc == 0)
        rc = flags_store_plan_delete(w->pg, in->name, &version, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "DeletePlan", &st);
        closure(NULL, closure_data);
        return;
    }
    KL_LOG(KL_INFO, "plan \"%s\" deleted", in->name);
    s_mirror_plan(self, w, NULL, in->name, version);
    s_publish(self, w, "plan", in->name, NULL, "deleted");
    Kowloon__Flags__DeletePlanResponse out =
        KOWLOON__FLAGS__DELETE_PLAN_RESPONSE__INIT;
    closure(&out, closure_data);
}

/* --- overrides -------------------------------------------------------- */

static void
s_set_override(Kowloon__Flags__FlagsService_Service *svc,
               const Kowloon__Flags__Override *in,
               Kowloon__Flags__Override_Closure closure, void *closure_data)
{
    flags_service_t *self = (flags_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    char tenant[37];
    Kowloon__Flags__Override copy = *in;
    Kowloon__Flags__Override *out = NULL;
    int64_t version = 0;
    int rc = s_check_tenant(in->tenant_id, tenant, &st);
    if (rc == 0)
        rc = flags_rules_check_feature_name("key", in->key, &st);
    if (rc == 0 && in->value_case == KOWLOON__FLAGS__OVERRIDE__VALUE__NOT_SET)
        rc = kl_status_set(&st, KL_INVALID_ARGUMENT,
                           "value is required: set enabled or limit");
    if (rc == 0 && in->value_case == KOWLOON__FLAGS__OVERRIDE__VALUE_LIMIT)
        rc = flags_rules_check_limit(in->key, in->limit, &st);
    if (rc == 0 && !kl_valid_empty(in->expires_at))
        rc = flags_rules_check_time("expires_at", in->expires_at, &st);
    if (rc == 0) {
        copy.tenant_id = tenant;
        rc = flags_store_override_set(w->pg, &copy, &out, &version, &st);
    }
    if (rc < 0) {
        kl_service_fail(closure_data, "SetOverride", &st);
        closure(NULL, closure_data);
        return;
    }
    KL_LOG(KL_INFO, "override \"%s\" of tenant %s set", out->key, tenant);
    s_publish(self, w, "override", out->key, tenant, "set");
    closure(out, closure_data);
    s_free(out);
}

static void
s_clear_override(Kowloon__Flags__FlagsService_Service *svc,
                 const Kowloon__Flags__ClearOverrideRequest *in,
                 Kowloon__Flags__ClearOverrideResponse_Closure closure,
                 void *closure_data)
{
    flags_service_t *self = (flags_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    char tenant[37];
    int64_t version = 0;
    int rc = s_check_tenant(in->tenant_id, tenant, &st);
    if (rc == 0)
        rc = flags_rules_check_feature_name("key", in->key, &st);
    if (rc == 0)
        rc = flags_store_override_clear(w->pg, tenant, in->key, &version, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "ClearOverride", &st);
        closure(NULL, closure_data);
        return;
    }
    KL_LOG(KL_INFO, "override \"%s\" of tenant %s cleared", in->key, tenant);
    s_publish(self, w, "override", in->key, tenant, "cleared");
    Kowloon__Flags__ClearOverrideResponse out =
        KOWLOON__FLAGS__CLEAR_OVERRIDE_RESPONSE__INIT;
    closure(&out, closure_data);
}

static void
s_list_overrides(Kowloon__Flags__FlagsService_Service *svc,
                 const Kowloon__Flags__TenantRequest *in,
                 Kowloon__Flags__ListOverridesResponse_Closure closure,
                 void *closure_data)
{
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    char tenant[37];
    Kowloon__Flags__ListOverridesResponse *out = NULL;
    int rc = s_check_tenant(in->tenant_id, tenant, &st);
    if (rc == 0)
        rc = flags_store_override_list(w->pg, tenant, &out, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "ListOverrides", &st);
        closure(NULL, closure_data);
        return;
    }
    closure(out, closure_data);
    s_free(out);
}

/* --- flags ------------------------------------------------------------ */

/* CreateFlag and UpdateFlag. */
static void
s_flag_write(Kowloon__Flags__FlagsService_Service *svc,
             const Kowloon__Flags__Flag *in,
             Kowloon__Flags__Flag_Closure closure, void *closure_data,
             bool create)
{
    flags_service_t *self = (flags_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    const char *what = create ? "CreateFlag" : "UpdateFlag";
    kl_status_t st;
    Kowloon__Flags__Flag copy;
    Kowloon__Flags__Flag *out = NULL;
    char **allow = NULL, **deny = NULL;
    int64_t version = 0;
    int rc = s_check_flag(in, &copy, &allow, &deny, &st);
    if (rc == 0)
        rc = create
                 ? flags_store_flag_create(w->pg, &copy, &out, &version, &st)
                 : flags_store_flag_update(w->pg, &copy, &out, &version, &st);
    free(allow);
    free(deny);
    if (rc < 0) {
        kl_service_fail(closure_data, what, &st);
        closure(NULL, closure_data);
        return;
    }
    KL_LOG(KL_INFO, "flag \"%s\" %s (killed %s, rollout %d%%)", out->key,
           create ? "created" : "updated", out->killed ? "yes" : "no",
           (int)out->rollout_percent);
    s_publish(self, w, "flag", out->key, NULL, create ? "created" : "updated");
    closure(out, closure_data);
    s_free(out);
}

static void
s_create_flag(Kowloon__Flags__FlagsService_Service *svc,
              const Kowloon__Flags__Flag *in,
              Kowloon__Flags__Flag_Closure closure, void *closure_data)
{
    s_flag_write(svc, in, closure, closure_data, true);
}

static void
s_update_flag(Kowloon__Flags__FlagsService_Service *svc,
              const Kowloon__Flags__Flag *in,
              Kowloon__Flags__Flag_Closure closure, void *closure_data)
{
    s_flag_write(svc, in, closure, closure_data, false);
}

static void
s_get_flag(Kowloon__Flags__FlagsService_Service *svc,
           const Kowloon__Flags__FlagKey *in,
           Kowloon__Flags__Flag_Closure closure, void *closure_data)
{
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    Kowloon__Flags__Flag *out = NULL;
    int rc = s_check_flag_key(in->key, &st);
    if (rc == 0)
        rc = flags_store_flag_get(w->pg, in->key, &out, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "GetFlag", &st);
        closure(NULL, closure_data);
        return;
    }
    closure(out, closure_data);
    s_free(out);
}

static void
s_list_flags(Kowloon__Flags__FlagsService_Service *svc,
             const Kowloon__Flags__ListFlagsRequest *in,
             Kowloon__Flags__ListFlagsResponse_Closure closure,
             void *closure_data)
{
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    Kowloon__Flags__ListFlagsResponse *out = NULL;
    if (flags_store_flag_list(w->pg, &out, &st) < 0) {
        kl_service_fail(closure_data, "ListFlags", &st);
        closure(NULL, closure_data);
        return;
    }
    closure(out, closure_data);
    s_free(out);
}

static void
s_delete_flag(Kowloon__Flags__FlagsService_Service *svc,
              const Kowloon__Flags__FlagKey *in,
              Kowloon__Flags__DeleteFlagResponse_Closure closure,
              void *closure_data)
{
    flags_service_t *self = (flags_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    int64_t version = 0;
    int rc = s_check_flag_key(in->key, &st);
    if (rc == 0)
        rc = flags_store_flag_delete(w->pg, in->key, &version, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "DeleteFlag", &st);
        closure(NULL, closure_data);
        return;
    }
    KL_LOG(KL_INFO, "flag \"%s\" deleted", in->key);
    s_publish(self, w, "flag", in->key, NULL, "deleted");
    Kowloon__Flags__DeleteFlagResponse out =
        KOWLOON__FLAGS__DELETE_FLAG_RESPONSE__INIT;
    closure(&out, closure_data);
}

/* --- evaluation and usage --------------------------------------------- */

static void
s_evaluate(Kowloon__Flags__FlagsService_Service *svc,
           const Kowloon__Flags__EvaluateRequest *in,
           Kowloon__Flags__Entitlements_Closure closure, void *closure_data)
{
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    char tenant[37];
    Kowloon__Flags__Entitlements *out = NULL;
    int rc = s_check_tenant(in->tenant_id, tenant, &st);
    if (rc == 0)
        rc = flags_rules_check_plan_name("plan", in->plan, &st);
    if (rc == 0)
        rc = flags_store_evaluate(w->pg, tenant, in->plan, &out, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "Evaluate", &st);
        closure(NULL, closure_data);
        return;
    }
    closure(out, closure_data);
    s_free(out);
}

static void
s_consume(Kowloon__Flags__FlagsService_Service *svc,
          const Kowloon__Flags__ConsumeRequest *in,
          Kowloon__Flags__ConsumeResponse_Closure closure, void *closure_data)
{
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    char tenant[37];
    Kowloon__Flags__Usage *usage = NULL;
    int rc = s_check_tenant(in->tenant_id, tenant, &st);
    if (rc == 0)
        rc = flags_rules_check_plan_name("plan", in->plan, &st);
    if (rc == 0)
        rc = flags_rules_check_feature_name("limit", in->limit, &st);
    if (rc == 0 && !flags_rules_limit_countable(in->limit))
        rc = kl_status_set(&st, KL_INVALID_ARGUMENT,
                           "limit \"%s\" is a rate, not a countable limit",
                           in->limit);
    if (rc == 0 && in->n == 0)
        rc = kl_status_set(&st, KL_INVALID_ARGUMENT, "n must not be 0");
    if (rc == 0 && (in->n < -FLAGS_LIMIT_MAX || in->n > FLAGS_LIMIT_MAX))
        rc = kl_status_set(&st, KL_INVALID_ARGUMENT,
                           "n: %lld is out of range (want %lld..%lld)",
                           (long long)in->n, -FLAGS_LIMIT_MAX, FLAGS_LIMIT_MAX);
    if (rc == 0)
        rc = flags_store_consume(w->pg, tenant, in->plan, in->limit, in->n,
                                 &usage, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "Consume", &st);
        closure(NULL, closure_data);
        return;
    }
    Kowloon__Flags__ConsumeResponse out =
        KOWLOON__FLAGS__CONSUME_RESPONSE__INIT;
    out.usage = usage;
    closure(&out, closure_data);
    s_free(usage);
}

static void
s_get_usage(Kowloon__Flags__FlagsService_Service *svc,
            const Kowloon__Flags__UsageRequest *in,
            Kowloon__Flags__UsageResponse_Closure closure, void *closure_data)
{
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    char tenant[37];
    Kowloon__Flags__UsageResponse *out = NULL;
    int rc = s_check_tenant(in->tenant_id, tenant, &st);
    if (rc == 0)
        rc = flags_rules_check_plan_name("plan", in->plan, &st);
    if (rc == 0)
        rc = flags_store_usage(w->pg, tenant, in->plan, &out, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "GetUsage", &st);
        closure(NULL, closure_data);
        return;
    }
    closure(out, closure_data);
    s_free(out);
}

/* --- object ----------------------------------------------------------- */

static const Kowloon__Flags__FlagsService_Service s_base =
    KOWLOON__FLAGS__FLAGS_SERVICE__INIT(s_);

flags_service_t *
flags_service_new(const flags_service_opts_t *opts, kl_status_t *status)
{
    if (kl_valid_empty(opts->database_url)) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "flags service needs a database URL");
        return NULL;
    }
    if (kl_valid_empty(opts->events_channel)) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "flags service needs an events channel");
        return NULL;
    }
    /* A malformed Redis URL is a configuration error: refuse to start
     * rather than run without events. */
    kl_redis_t *probe = kl_redis_new(opts->redis_url, status);
    if (!probe)
        return NULL;
    kl_redis_destroy(&probe);

    flags_service_t *self = kl_calloc(1, sizeof *self);
    self->base = s_base;
    self->database_url = kl_strdup(opts->database_url);
    self->redis_url = kl_strdup(opts->redis_url ? opts->redis_url : "");
    self->events_channel = kl_strdup(opts->events_channel);
    /* The Redis URL was checked above. */
    self->std =
        kl_service_new(&(kl_service_opts_t){.name = "flags",
                                            .database_url = self->database_url,
                                            .redis_url = self->redis_url});
    return self;
}

void
flags_service_destroy(flags_service_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    flags_service_t *self = *self_p;
    kl_service_destroy(&self->std);
    free(self->database_url);
    free(self->redis_url);
    free(self->events_channel);
    free(self);
    *self_p = NULL;
}

/* Deletes the mirror of every plan we once mirrored that is gone now
 * (deleted while Redis was down). */
static int
s_mirror_prune(flags_service_t *self, kl_redis_t *redis,
               const Kowloon__Flags__ListPlansResponse *plans, int64_t version,
               kl_status_t *status)
{
    redisContext *ctx = kl_redis_context(redis, status);
    if (!ctx)
        return -KL_UNAVAILABLE;
    char cursor[32] = "0";
    size_t prefix = strlen(S_MIRROR_PREFIX);
    do {
        redisReply *r = redisCommand(ctx, "SCAN %s MATCH %s* COUNT 200", cursor,
                                     S_MIRROR_PREFIX);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            int rc = kl_status_set(
                status, KL_UNAVAILABLE, "redis SCAN failed: %s",
                r && r->type == REDIS_REPLY_ERROR ? r->str : ctx->errstr);
            if (r)
                freeReplyObject(r);
            return rc;
        }
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            const char *name = keys->element[i]->str + prefix;
            bool live = false;
            for (size_t p = 0; p < plans->n_plans && !live; p++)
                live = strcmp(plans->plans[p]->name, name) == 0;
            if (!live && flags_rules_plan_name_valid(name) &&
                s_mirror(self, redis, name, NULL, version, status) < 0) {
                freeReplyObject(r);
                return -KL_UNAVAILABLE;
            }
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return 0;
}

int
flags_service_migrate(flags_service_t *self, kl_status_t *status)
{
    kl_pg_t *pg = kl_pg_new(self->database_url);
    Kowloon__Flags__ListPlansResponse *plans = NULL;
    int64_t version = 0;
    int rc = flags_store_migrate(pg, status);
    if (rc == 0)
        rc = flags_store_epoch(pg, self->epoch, status);
    if (rc == 0)
        rc = flags_store_plan_list(pg, &plans, &version, status);
    kl_pg_destroy(&pg);
    if (rc < 0 || !self->redis_url[0]) {
        s_free(plans);
        return rc;
    }
    /* The mirror of every plan, for apps written to the seed. */
    kl_redis_t *redis = kl_redis_new(self->redis_url, NULL);
    kl_status_t st;
    int mrc = 0;
    for (size_t i = 0; mrc == 0 && i < plans->n_plans; i++) {
        char *json = s_features_json(plans->plans[i]);
        mrc = s_mirror(self, redis, plans->plans[i]->name, json, version, &st);
        free(json);
    }
    if (mrc == 0)
        mrc = s_mirror_prune(self, redis, plans, version, &st);
    if (mrc < 0)
        KL_LOG(KL_WARN,
               "redis mirror of the plans not written: %s, ignored (written "
               "again on each plan's next change or at restart)",
               st.message);
    else
        KL_LOG(KL_INFO, "redis mirror of %zu plans written at version %lld",
               plans->n_plans, (long long)version);
    kl_redis_destroy(&redis);
    s_free(plans);
    return 0;
}

ProtobufCService *
flags_service_base(flags_service_t *self)
{
    return &self->base.base;
}

void
flags_service_server_opts(flags_service_t *self, kl_rpc_server_opts_t *opts)
{
    kl_service_server_opts(self->std, opts);
}
