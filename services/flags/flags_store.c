/*
 * flags_store: SQL of the flags service. Every statement is prepared once
 * per connection (kl_pg_query) under a "flags_" name.
 *
 * Rows come back from PostgreSQL as one JSON object each (json_build_object
 * in the SQL) and become messages through kl_json_to_message, so that the
 * lists and maps of a plan or flag need no per-field C; lists going in are
 * passed the same way, as JSON parameters.
 */
#include "flags_store.h"

#include "flags_rules.h"
#include "kl_alloc.h"
#include "kl_json.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Schema "flags". state holds the one change counter; every write bumps it
 * in its own transaction, so a reader that sees version v sees every
 * change up to v. */
static const kl_pg_migration_t s_migrations[] = {
    {1, "CREATE TABLE flags.state ("
        " id int PRIMARY KEY CHECK (id = 1),"
        " version bigint NOT NULL,"
        " epoch uuid NOT NULL DEFAULT gen_random_uuid());"
        "INSERT INTO flags.state (id, version) VALUES (1, 0);"
        "CREATE TABLE flags.plans ("
        " name text PRIMARY KEY,"
        " display_name text NOT NULL,"
        " features text[] NOT NULL DEFAULT '{}',"
        " builtin boolean NOT NULL DEFAULT false,"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        " updated_at timestamptz NOT NULL DEFAULT now());"
        "CREATE TABLE flags.plan_limits ("
        " plan text NOT NULL REFERENCES flags.plans (name) ON DELETE CASCADE,"
        " name text NOT NULL,"
        " value bigint NOT NULL CHECK (value BETWEEN -1 AND 1000000000000),"
        " PRIMARY KEY (plan, name));"
        "CREATE TABLE flags.plan_prices ("
        " price_id text PRIMARY KEY,"
        " plan text NOT NULL REFERENCES flags.plans (name) ON DELETE CASCADE,"
        " position int NOT NULL);"
        "CREATE INDEX plan_prices_plan ON flags.plan_prices (plan);"
        "CREATE TABLE flags.overrides ("
        " tenant_id uuid NOT NULL,"
        " key text NOT NULL,"
        " enabled boolean,"
        " limit_value bigint CHECK (limit_value BETWEEN -1 AND 1000000000000),"
        " expires_at timestamptz,"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY (tenant_id, key),"
        " CHECK ((enabled IS NULL) <> (limit_value IS NULL)));"
        "CREATE TABLE flags.flags ("
        " key text PRIMARY KEY,"
        " description text NOT NULL DEFAULT '',"
        " killed boolean NOT NULL DEFAULT false,"
        " rollout_percent int NOT NULL DEFAULT 0"
        "  CHECK (rollout_percent BETWEEN 0 AND 100),"
        " allow_tenants uuid[] NOT NULL DEFAULT '{}',"
        " deny_tenants uuid[] NOT NULL DEFAULT '{}',"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        " updated_at timestamptz NOT NULL DEFAULT now());"
        "CREATE TABLE flags.usage ("
        " tenant_id uuid NOT NULL,"
        " limit_name text NOT NULL,"
        " used bigint NOT NULL DEFAULT 0 CHECK (used >= 0),"
        " PRIMARY KEY (tenant_id, limit_name))"},
    /* The default plans; editable afterwards, but never deletable. */
    {2, "INSERT INTO flags.plans (name, display_name, features, builtin)"
        " VALUES ('starter', 'Starter', '{basic}', true),"
        "  ('pro', 'Pro', '{basic,data_export,advanced_reports}', true),"
        "  ('enterprise', 'Enterprise',"
        "   '{basic,data_export,advanced_reports,sso,audit_log}', true);"
        "INSERT INTO flags.plan_limits (plan, name, value) VALUES"
        " ('starter', 'api_requests_per_minute', 600),"
        " ('starter', 'max_projects', 3),"
        " ('starter', 'max_api_keys', 2),"
        " ('starter', 'storage_mb', 1024),"
        " ('pro', 'api_requests_per_minute', 3000),"
        " ('pro', 'max_projects', 50),"
        " ('pro', 'max_api_keys', 10),"
        " ('pro', 'storage_mb', 10240),"
        " ('enterprise', 'api_requests_per_minute', 30000),"
        " ('enterprise', 'max_projects', -1),"
        " ('enterprise', 'max_api_keys', 100),"
        " ('enterprise', 'storage_mb', 102400);"
        "UPDATE flags.state SET version = version + 1"},
};

int
flags_store_migrate(kl_pg_t *pg, kl_status_t *status)
{
    return kl_pg_migrate(pg, "flags", s_migrations,
                         sizeof s_migrations / sizeof s_migrations[0], status);
}

/* The SQL fragments below are laid out by hand: clang-format would break
 * the concatenated strings mid-expression. */
/* clang-format off */

/* RFC 3339 UTC with milliseconds. */
#define S_TS(col)                                                              \
    "to_char(" col " AT TIME ZONE 'UTC', "                                     \
    "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

/* A plan p as the JSON of a kowloon.flags.Plan. */
#define S_PLAN_JSON                                                            \
    "json_build_object('name', p.name, 'display_name', p.display_name,"        \
    " 'features', to_json(p.features),"                                        \
    " 'limits', (SELECT coalesce(json_object_agg(l.name, l.value"              \
    "   ORDER BY l.name), '{}'::json)"                                         \
    "   FROM flags.plan_limits l WHERE l.plan = p.name),"                      \
    " 'stripe_price_ids', (SELECT coalesce(json_agg(r.price_id"                \
    "   ORDER BY r.position), '[]'::json)"                                     \
    "   FROM flags.plan_prices r WHERE r.plan = p.name),"                      \
    " 'created_at', " S_TS("p.created_at") ","                                 \
    " 'updated_at', " S_TS("p.updated_at") ","                                 \
    " 'builtin', p.builtin)::text"

/* A flag f as the JSON of a kowloon.flags.Flag. */
#define S_FLAG_JSON                                                            \
    "json_build_object('key', f.key, 'description', f.description,"            \
    " 'killed', f.killed, 'rollout_percent', f.rollout_percent,"               \
    " 'allow_tenants', to_json(f.allow_tenants),"                              \
    " 'deny_tenants', to_json(f.deny_tenants),"                                \
    " 'created_at', " S_TS("f.created_at") ","                                 \
    " 'updated_at', " S_TS("f.updated_at") ")::text"

/* An override o as the JSON of a kowloon.flags.Override (null members are
 * left out: the oneof gets the one that is set). */
#define S_OVERRIDE_JSON                                                        \
    "json_build_object('tenant_id', o.tenant_id, 'key', o.key,"                \
    " 'enabled', o.enabled, 'limit', o.limit_value,"                           \
    " 'expires_at', " S_TS("o.expires_at") ","                                 \
    " 'created_at', " S_TS("o.created_at") ")::text"

/* An override o's expiry, RFC 3339. */
#define S_OVERRIDE_EXPIRES S_TS("o.expires_at")

/* clang-format on */

/* Only overrides that have not expired count. */
#define S_LIVE "(o.expires_at IS NULL OR o.expires_at > now())"

static int
s_code(const kl_status_t *status)
{
    return -(int)status->code;
}

/* Ends a transaction: commit when rc is 0, else roll back. */
static int
s_finish(kl_pg_t *pg, int rc, kl_status_t *status)
{
    if (rc < 0) {
        kl_pg_rollback(pg);
        return rc;
    }
    return kl_pg_commit(pg, status);
}

/* JSON text from the database -> a heap message of desc. */
static int
s_msg(const ProtobufCMessageDescriptor *desc, const char *text, void *out_p,
      kl_status_t *status)
{
    kl_status_t st;
    json_t *json = kl_json_parse(text, strlen(text), &st);
    ProtobufCMessage *msg = json ? kl_json_to_message(desc, json, &st) : NULL;
    json_decref(json);
    if (!msg)
        return kl_status_set(status, KL_INTERNAL,
                             "stored %s does not read back: %s", desc->name,
                             st.message);
    *(ProtobufCMessage **)out_p = msg;
    return 0;
}

/* Same for a json_t built here; takes the reference. */
static int
s_msg_json(const ProtobufCMessageDescriptor *desc, json_t *json, void *out_p,
           kl_status_t *status)
{
    kl_status_t st;
    ProtobufCMessage *msg = kl_json_to_message(desc, json, &st);
    json_decref(json);
    if (!msg)
        return kl_status_set(status, KL_INTERNAL, "%s does not build: %s",
                             desc->name, st.message);
    *(ProtobufCMessage **)out_p = msg;
    return 0;
}

/* Compact JSON text of json (caller frees); takes the reference. */
static char *
s_dump(json_t *json)
{
    char *text = json_dumps(json, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(json);
    if (!text)
        abort(); /* jansson fails only when out of memory */
    return text;
}

static char *
s_strings_json(char *const *items, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(items[i]));
    return s_dump(a);
}

/* Inside a transaction: the counter after one more change. */
static int
s_bump(kl_pg_t *pg, int64_t *version, kl_status_t *status)
{
    PGresult *res = kl_pg_query(
        pg, "flags_bump",
        "UPDATE flags.state SET version = version + 1 RETURNING version", 0,
        NULL, status);
    if (!res)
        return s_code(status);
    if (version)
        *version = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return 0;
}

int
flags_store_version(kl_pg_t *pg, int64_t *version, kl_status_t *status)
{
    PGresult *res =
        kl_pg_query(pg, "flags_version", "SELECT version FROM flags.state", 0,
                    NULL, status);
    if (!res)
        return s_code(status);
    *version = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return 0;
}

int
flags_store_epoch(kl_pg_t *pg, char epoch[37], kl_status_t *status)
{
    PGresult *res =
        kl_pg_query(pg, "flags_epoch", "SELECT epoch::text FROM flags.state", 0,
                    NULL, status);
    if (!res)
        return s_code(status);
    snprintf(epoch, 37, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return 0;
}

/* --- plans ------------------------------------------------------------- */

static int
s_plan_read(kl_pg_t *pg, const char *name, Kowloon__Flags__Plan **out,
            kl_status_t *status)
{
    const char *params[] = {name};
    PGresult *res = kl_pg_query(pg, "flags_plan_get",
                                "SELECT " S_PLAN_JSON
                                " FROM flags.plans p WHERE p.name = $1",
                                1, params, status);
    if (!res)
        return s_code(status);
    int rc;
    if (PQntuples(res) == 0)
        rc = kl_status_set(status, KL_NOT_FOUND, "plan \"%s\" not found", name);
    else
        rc = s_msg(&kowloon__flags__plan__descriptor, PQgetvalue(res, 0, 0),
                   out, status);
    PQclear(res);
    return rc;
}

/* Inside a transaction: the plan's limits and prices as in (replacing
 * what it had). Refuses a price another plan uses. */
static int
s_plan_children(kl_pg_t *pg, const Kowloon__Flags__Plan *in,
                kl_status_t *status)
{
    json_t *limits = json_object();
    for (size_t i = 0; i < in->n_limits; i++)
        json_object_set_new(limits, in->limits[i]->key,
                            json_integer(in->limits[i]->value));
    char *limits_json = s_dump(limits);
    char *prices_json =
        s_strings_json(in->stripe_price_ids, in->n_stripe_price_ids);
    const char *p_name[] = {in->name};
    const char *p_limits[] = {in->name, limits_json};
    const char *p_prices[] = {in->name, prices_json};
    int rc = 0;
    PGresult *res = NULL;

    res = kl_pg_query(pg, "flags_limits_clear",
                      "DELETE FROM flags.plan_limits WHERE plan = $1", 1,
                      p_name, status);
    if (!res)
        goto fail;
    PQclear(res);
    res = kl_pg_query(pg, "flags_limits_set",
                      "INSERT INTO flags.plan_limits (plan, name, value)"
                      " SELECT $1, key, value::bigint"
                      " FROM jsonb_each_text($2::jsonb)",
                      2, p_limits, status);
    if (!res)
        goto fail;
    PQclear(res);
    /* Name the price and its plan; the primary key still guards a race. */
    res = kl_pg_query(pg, "flags_prices_taken",
                      "SELECT r.price_id, r.plan FROM flags.plan_prices r"
                      " JOIN jsonb_array_elements_text($2::jsonb)"
                      "  WITH ORDINALITY AS t(e, i) ON t.e = r.price_id"
                      " WHERE r.plan <> $1 ORDER BY t.i LIMIT 1",
                      2, p_prices, status);
    if (!res)
        goto fail;
    if (PQntuples(res) > 0) {
        rc = kl_status_set(status, KL_ALREADY_EXISTS,
                           "stripe price id \"%s\" is already used by plan "
                           "\"%s\"",
                           PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1));
        goto done;
    }
    PQclear(res);
    res = kl_pg_query(pg, "flags_prices_clear",
                      "DELETE FROM flags.plan_prices WHERE plan = $1", 1,
                      p_name, status);
    if (!res)
        goto fail;
    PQclear(res);
    res =
        kl_pg_query(pg, "flags_prices_set",
                    "INSERT INTO flags.plan_prices (price_id, plan, position)"
                    " SELECT e, $1, i FROM jsonb_array_elements_text($2::jsonb)"
                    "  WITH ORDINALITY AS t(e, i)",
                    2, p_prices, status);
    if (!res) {
        if (status->code == KL_ALREADY_EXISTS)
            kl_status_set(status, KL_ALREADY_EXISTS,
                          "a stripe price id of plan \"%s\" is already used "
                          "by another plan",
                          in->name);
        goto fail;
    }
    goto done;
fail:
    rc = s_code(status);
done:
    PQclear(res);
    free(limits_json);
    free(prices_json);
    return rc;
}

int
flags_store_plan_create(kl_pg_t *pg, const Kowloon__Flags__Plan *in,
                        Kowloon__Flags__Plan **out, int64_t *version,
                        kl_status_t *status)
{
    *out = NULL;
    int rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    char *features = s_strings_json(in->features, in->n_features);
    const char *params[] = {in->name, in->display_name, features};
    PGresult *res = kl_pg_query(
        pg, "flags_plan_insert",
        "INSERT INTO flags.plans (name, display_name, features)"
        " VALUES ($1, $2, ARRAY(SELECT e FROM jsonb_array_elements_text($3::"
        "jsonb) WITH ORDINALITY AS t(e, i) ORDER BY i))",
        3, params, status);
    free(features);
    if (!res) {
        rc = status->code == KL_ALREADY_EXISTS
                 ? kl_status_set(status, KL_ALREADY_EXISTS,
                                 "plan \"%s\" already exists", in->name)
                 : s_code(status);
    } else {
        PQclear(res);
        rc = s_plan_children(pg, in, status);
    }
    if (rc == 0)
        rc = s_bump(pg, version, status);
    if (rc == 0)
        rc = s_plan_read(pg, in->name, out, status);
    rc = s_finish(pg, rc, status);
    if (rc < 0 && *out) {
        protobuf_c_message_free_unpacked(&(*out)->base, NULL);
        *out = NULL;
    }
    return rc;
}

int
flags_store_plan_get(kl_pg_t *pg, const char *name, Kowloon__Flags__Plan **out,
                     kl_status_t *status)
{
    return s_plan_read(pg, name, out, status);
}

int
flags_store_plan_list(kl_pg_t *pg, Kowloon__Flags__ListPlansResponse **out,
                      int64_t *version, kl_status_t *status)
{
    /* The counter and the plans in one statement: one snapshot. */
    PGresult *res = kl_pg_query(
        pg, "flags_plan_list",
        "SELECT json_build_object('plans', coalesce((SELECT "
        "json_agg(" S_PLAN_JSON
        "::json ORDER BY p.name) FROM flags.plans p), '[]'::json))::text,"
        " (SELECT version FROM flags.state)",
        0, NULL, status);
    if (!res)
        return s_code(status);
    if (version)
        *version = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    int rc = s_msg(&kowloon__flags__list_plans_response__descriptor,
                   PQgetvalue(res, 0, 0), out, status);
    PQclear(res);
    return rc;
}

int
flags_store_plan_update(kl_pg_t *pg, const Kowloon__Flags__Plan *in,
                        Kowloon__Flags__Plan **out, int64_t *version,
                        kl_status_t *status)
{
    *out = NULL;
    int rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    char *features = s_strings_json(in->features, in->n_features);
    const char *params[] = {in->name, in->display_name, features};
    PGresult *res = kl_pg_query(
        pg, "flags_plan_update",
        "UPDATE flags.plans SET display_name = $2,"
        " features = ARRAY(SELECT e FROM jsonb_array_elements_text($3::jsonb)"
        "  WITH ORDINALITY AS t(e, i) ORDER BY i),"
        " updated_at = now() WHERE name = $1",
        3, params, status);
    free(features);
    if (!res) {
        rc = s_code(status);
    } else {
        if (strcmp(PQcmdTuples(res), "0") == 0)
            rc = kl_status_set(status, KL_NOT_FOUND, "plan \"%s\" not found",
                               in->name);
        PQclear(res);
    }
    if (rc == 0)
        rc = s_plan_children(pg, in, status);
    if (rc == 0)
        rc = s_bump(pg, version, status);
    if (rc == 0)
        rc = s_plan_read(pg, in->name, out, status);
    rc = s_finish(pg, rc, status);
    if (rc < 0 && *out) {
        protobuf_c_message_free_unpacked(&(*out)->base, NULL);
        *out = NULL;
    }
    return rc;
}

int
flags_store_plan_delete(kl_pg_t *pg, const char *name, int64_t *version,
                        kl_status_t *status)
{
    int rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    const char *params[] = {name};
    PGresult *res = kl_pg_query(
        pg, "flags_plan_lock",
        "SELECT builtin FROM flags.plans WHERE name = $1 FOR UPDATE", 1, params,
        status);
    if (!res) {
        rc = s_code(status);
    } else {
        if (PQntuples(res) == 0)
            rc = kl_status_set(status, KL_NOT_FOUND, "plan \"%s\" not found",
                               name);
        else if (strcmp(PQgetvalue(res, 0, 0), "t") == 0)
            rc = kl_status_set(status, KL_FAILED_PRECONDITION,
                               "plan \"%s\" is built in and cannot be deleted",
                               name);
        PQclear(res);
    }
    if (rc == 0) {
        res = kl_pg_query(pg, "flags_plan_delete",
                          "DELETE FROM flags.plans WHERE name = $1", 1, params,
                          status);
        if (!res)
            rc = s_code(status);
        PQclear(res);
    }
    if (rc == 0)
        rc = s_bump(pg, version, status);
    return s_finish(pg, rc, status);
}

/* --- overrides --------------------------------------------------------- */

/* Deletes the tenant's expired overrides: they no longer count, so this
 * changes no answer and needs no new version. */
static int
s_prune(kl_pg_t *pg, const char *tenant_id, kl_status_t *status)
{
    const char *params[] = {tenant_id};
    PGresult *res = kl_pg_query(pg, "flags_override_prune",
                                "DELETE FROM flags.overrides WHERE tenant_id = "
                                "$1 AND expires_at <= now()",
                                1, params, status);
    if (!res)
        return s_code(status);
    PQclear(res);
    return 0;
}

int
flags_store_override_set(kl_pg_t *pg, const Kowloon__Flags__Override *in,
                         Kowloon__Flags__Override **out, int64_t *version,
                         kl_status_t *status)
{
    *out = NULL;
    int rc = s_prune(pg, in->tenant_id, status);
    if (rc < 0)
        return rc;
    const char *expires =
        in->expires_at && *in->expires_at ? in->expires_at : NULL;
    if (expires) {
        const char *p[] = {expires};
        PGresult *res =
            kl_pg_query(pg, "flags_in_past", "SELECT $1::timestamptz <= now()",
                        1, p, status);
        if (!res)
            return status->code == KL_INVALID_ARGUMENT
                       ? kl_status_set(status, KL_INVALID_ARGUMENT,
                                       "expires_at \"%.64s\" is not an RFC "
                                       "3339 time",
                                       expires)
                       : s_code(status);
        bool past = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        PQclear(res);
        if (past)
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "expires_at \"%.64s\" is in the past",
                                 expires);
    }
    char limit[32];
    bool is_limit = in->value_case == KOWLOON__FLAGS__OVERRIDE__VALUE_LIMIT;
    snprintf(limit, sizeof limit, "%lld", (long long)in->limit);
    const char *params[] = {in->tenant_id, in->key,
                            is_limit ? NULL : (in->enabled ? "true" : "false"),
                            is_limit ? limit : NULL, expires};
    rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    PGresult *res = kl_pg_query(
        pg, "flags_override_set",
        "INSERT INTO flags.overrides AS o"
        " (tenant_id, key, enabled, limit_value, expires_at)"
        " VALUES ($1, $2, $3::boolean, $4::bigint, $5::timestamptz)"
        " ON CONFLICT (tenant_id, key) DO UPDATE SET enabled = "
        "EXCLUDED.enabled,"
        " limit_value = EXCLUDED.limit_value, expires_at = EXCLUDED.expires_at,"
        " created_at = now()"
        " RETURNING " S_OVERRIDE_JSON,
        5, params, status);
    if (!res) {
        rc = s_code(status);
    } else {
        rc = s_msg(&kowloon__flags__override__descriptor, PQgetvalue(res, 0, 0),
                   out, status);
        PQclear(res);
    }
    if (rc == 0)
        rc = s_bump(pg, version, status);
    rc = s_finish(pg, rc, status);
    if (rc < 0 && *out) {
        protobuf_c_message_free_unpacked(&(*out)->base, NULL);
        *out = NULL;
    }
    return rc;
}

int
flags_store_override_clear(kl_pg_t *pg, const char *tenant_id, const char *key,
                           int64_t *version, kl_status_t *status)
{
    int rc = s_prune(pg, tenant_id, status);
    if (rc < 0)
        return rc;
    rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    const char *params[] = {tenant_id, key};
    PGresult *res = kl_pg_query(pg, "flags_override_clear",
                                "DELETE FROM flags.overrides WHERE tenant_id = "
                                "$1 AND key = $2",
                                2, params, status);
    if (!res) {
        rc = s_code(status);
    } else {
        if (strcmp(PQcmdTuples(res), "0") == 0)
            rc = kl_status_set(status, KL_NOT_FOUND,
                               "override \"%s\" of tenant %s not found", key,
                               tenant_id);
        PQclear(res);
    }
    if (rc == 0)
        rc = s_bump(pg, version, status);
    return s_finish(pg, rc, status);
}

int
flags_store_override_list(kl_pg_t *pg, const char *tenant_id,
                          Kowloon__Flags__ListOverridesResponse **out,
                          kl_status_t *status)
{
    int rc = s_prune(pg, tenant_id, status);
    if (rc < 0)
        return rc;
    const char *params[] = {tenant_id};
    PGresult *res = kl_pg_query(pg, "flags_override_list",
                                "SELECT json_build_object('overrides', "
                                "coalesce((SELECT json_agg(" S_OVERRIDE_JSON
                                "::json ORDER BY o.key) FROM flags.overrides o"
                                " WHERE o.tenant_id = $1 AND " S_LIVE
                                "), '[]'::json))::text",
                                1, params, status);
    if (!res)
        return s_code(status);
    rc = s_msg(&kowloon__flags__list_overrides_response__descriptor,
               PQgetvalue(res, 0, 0), out, status);
    PQclear(res);
    return rc;
}

/* --- flags ------------------------------------------------------------- */

static int
s_flag_read(kl_pg_t *pg, const char *key, Kowloon__Flags__Flag **out,
            kl_status_t *status)
{
    const char *params[] = {key};
    PGresult *res = kl_pg_query(pg, "flags_flag_get",
                                "SELECT " S_FLAG_JSON
                                " FROM flags.flags f WHERE f.key = $1",
                                1, params, status);
    if (!res)
        return s_code(status);
    int rc;
    if (PQntuples(res) == 0)
        rc = kl_status_set(status, KL_NOT_FOUND, "flag \"%s\" not found", key);
    else
        rc = s_msg(&kowloon__flags__flag__descriptor, PQgetvalue(res, 0, 0),
                   out, status);
    PQclear(res);
    return rc;
}

/* Creates (create) or replaces a flag, in one transaction with the bump. */
static int
s_flag_write(kl_pg_t *pg, bool create, const Kowloon__Flags__Flag *in,
             Kowloon__Flags__Flag **out, int64_t *version, kl_status_t *status)
{
    *out = NULL;
    int rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    char percent[16];
    snprintf(percent, sizeof percent, "%d", (int)in->rollout_percent);
    char *allow = s_strings_json(in->allow_tenants, in->n_allow_tenants);
    char *deny = s_strings_json(in->deny_tenants, in->n_deny_tenants);
    const char *params[] = {in->key,
                            in->description ? in->description : "",
                            in->killed ? "true" : "false",
                            percent,
                            allow,
                            deny};
    PGresult *res =
        create ? kl_pg_query(
                     pg, "flags_flag_insert",
                     "INSERT INTO flags.flags (key, description, killed,"
                     " rollout_percent, allow_tenants, deny_tenants)"
                     " VALUES ($1, $2, $3::boolean, $4::int,"
                     " ARRAY(SELECT e::uuid FROM jsonb_array_elements_text($5::"
                     "jsonb) WITH ORDINALITY AS t(e, i) ORDER BY i),"
                     " ARRAY(SELECT e::uuid FROM jsonb_array_elements_text($6::"
                     "jsonb) WITH ORDINALITY AS t(e, i) ORDER BY i))",
                     6, params, status)
               : kl_pg_query(
                     pg, "flags_flag_update",
                     "UPDATE flags.flags SET description = $2,"
                     " killed = $3::boolean, rollout_percent = $4::int,"
                     " allow_tenants = ARRAY(SELECT e::uuid FROM"
                     "  jsonb_array_elements_text($5::jsonb) WITH ORDINALITY"
                     "  AS t(e, i) ORDER BY i),"
                     " deny_tenants = ARRAY(SELECT e::uuid FROM"
                     "  jsonb_array_elements_text($6::jsonb) WITH ORDINALITY"
                     "  AS t(e, i) ORDER BY i),"
                     " updated_at = now() WHERE key = $1",
                     6, params, status);
    free(allow);
    free(deny);
    if (!res) {
        rc = create && status->code == KL_ALREADY_EXISTS
                 ? kl_status_set(status, KL_ALREADY_EXISTS,
                                 "flag \"%s\" already exists", in->key)
                 : s_code(status);
    } else {
        if (!create && strcmp(PQcmdTuples(res), "0") == 0)
            rc = kl_status_set(status, KL_NOT_FOUND, "flag \"%s\" not found",
                               in->key);
        PQclear(res);
    }
    if (rc == 0)
        rc = s_bump(pg, version, status);
    if (rc == 0)
        rc = s_flag_read(pg, in->key, out, status);
    rc = s_finish(pg, rc, status);
    if (rc < 0 && *out) {
        protobuf_c_message_free_unpacked(&(*out)->base, NULL);
        *out = NULL;
    }
    return rc;
}

int
flags_store_flag_create(kl_pg_t *pg, const Kowloon__Flags__Flag *in,
                        Kowloon__Flags__Flag **out, int64_t *version,
                        kl_status_t *status)
{
    return s_flag_write(pg, true, in, out, version, status);
}

int
flags_store_flag_get(kl_pg_t *pg, const char *key, Kowloon__Flags__Flag **out,
                     kl_status_t *status)
{
    return s_flag_read(pg, key, out, status);
}

int
flags_store_flag_list(kl_pg_t *pg, Kowloon__Flags__ListFlagsResponse **out,
                      kl_status_t *status)
{
    PGresult *res = kl_pg_query(
        pg, "flags_flag_list",
        "SELECT json_build_object('flags', coalesce((SELECT "
        "json_agg(" S_FLAG_JSON
        "::json ORDER BY f.key) FROM flags.flags f), '[]'::json))::text",
        0, NULL, status);
    if (!res)
        return s_code(status);
    int rc = s_msg(&kowloon__flags__list_flags_response__descriptor,
                   PQgetvalue(res, 0, 0), out, status);
    PQclear(res);
    return rc;
}

int
flags_store_flag_update(kl_pg_t *pg, const Kowloon__Flags__Flag *in,
                        Kowloon__Flags__Flag **out, int64_t *version,
                        kl_status_t *status)
{
    return s_flag_write(pg, false, in, out, version, status);
}

int
flags_store_flag_delete(kl_pg_t *pg, const char *key, int64_t *version,
                        kl_status_t *status)
{
    int rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    const char *params[] = {key};
    PGresult *res = kl_pg_query(pg, "flags_flag_delete",
                                "DELETE FROM flags.flags WHERE key = $1", 1,
                                params, status);
    if (!res) {
        rc = s_code(status);
    } else {
        if (strcmp(PQcmdTuples(res), "0") == 0)
            rc = kl_status_set(status, KL_NOT_FOUND, "flag \"%s\" not found",
                               key);
        PQclear(res);
    }
    if (rc == 0)
        rc = s_bump(pg, version, status);
    return s_finish(pg, rc, status);
}

/* --- evaluation -------------------------------------------------------- */

/* Whether a (JSON) array of strings holds s. */
static bool
s_has(const json_t *array, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(array, i, v)
    {
        if (strcmp(json_string_value(v), s) == 0)
            return true;
    }
    return false;
}

/* Inside the snapshot: plan features and limits with the tenant's live
 * overrides applied, into ent ("features", "limits", "expires_at"). */
static int
s_apply_plan(kl_pg_t *pg, const char *tenant_id, const char *plan, json_t *ent,
             kl_status_t *status)
{
    const char *pp[] = {plan};
    PGresult *res = kl_pg_query(
        pg, "flags_eval_plan",
        "SELECT to_json(p.features)::text, (SELECT coalesce(json_object_agg("
        "l.name, l.value ORDER BY l.name), '{}'::json) FROM flags.plan_limits l"
        " WHERE l.plan = p.name)::text FROM flags.plans p WHERE p.name = $1",
        1, pp, status);
    if (!res)
        return s_code(status);
    if (PQntuples(res) == 0) {
        PQclear(res);
        return kl_status_set(status, KL_NOT_FOUND, "plan \"%s\" not found",
                             plan);
    }
    json_t *features = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    json_t *limits = json_loads(PQgetvalue(res, 0, 1), 0, NULL);
    PQclear(res);
    if (!json_is_array(features) || !json_is_object(limits)) {
        json_decref(features);
        json_decref(limits);
        return kl_status_set(status, KL_INTERNAL,
                             "plan \"%s\" does not read back", plan);
    }

    const char *tp[] = {tenant_id};
    res = kl_pg_query(
        pg, "flags_eval_overrides",
        "SELECT o.key, o.enabled, o.limit_value, " S_OVERRIDE_EXPIRES
        " FROM flags.overrides o WHERE o.tenant_id = $1"
        " AND " S_LIVE " ORDER BY o.key",
        1, tp, status);
    if (!res) {
        json_decref(features);
        json_decref(limits);
        return s_code(status);
    }
    /* Features turned on by an override come after the plan's own, by
     * key; those turned off are removed. */
    const char *earliest = NULL;
    for (int i = 0; i < PQntuples(res); i++) {
        const char *key = PQgetvalue(res, i, 0);
        if (!PQgetisnull(res, i, 1)) {
            bool on = strcmp(PQgetvalue(res, i, 1), "t") == 0;
            size_t idx;
            json_t *v;
            if (on && !s_has(features, key)) {
                json_array_append_new(features, json_string(key));
            } else if (!on) {
                json_array_foreach(features, idx, v)
                {
                    if (strcmp(json_string_value(v), key) == 0) {
                        json_array_remove(features, idx);
                        break;
                    }
                }
            }
        } else {
            json_object_set_new(
                limits, key,
                json_integer(strtoll(PQgetvalue(res, i, 2), NULL, 10)));
        }
        /* Same format, all UTC: the string order is the time order. */
        const char *exp = PQgetvalue(res, i, 3);
        if (!PQgetisnull(res, i, 3) && (!earliest || strcmp(exp, earliest) < 0))
            earliest = exp;
    }
    json_object_set_new(ent, "features", features);
    json_object_set_new(ent, "limits", limits);
    if (earliest)
        json_object_set_new(ent, "expires_at", json_string(earliest));
    PQclear(res);
    return 0;
}

/* Inside the snapshot: the keys of the flags on for the tenant. */
static int
s_apply_flags(kl_pg_t *pg, const char *tenant_id, json_t *ent,
              kl_status_t *status)
{
    const char *tp[] = {tenant_id};
    PGresult *res = kl_pg_query(
        pg, "flags_eval_flags",
        "SELECT key, killed, rollout_percent, $1::uuid = ANY(allow_tenants),"
        " $1::uuid = ANY(deny_tenants) FROM flags.flags ORDER BY key",
        1, tp, status);
    if (!res)
        return s_code(status);
    json_t *on = json_array();
    for (int i = 0; i < PQntuples(res); i++) {
        flags_rules_flag_t f = {
            .key = PQgetvalue(res, i, 0),
            .killed = strcmp(PQgetvalue(res, i, 1), "t") == 0,
            .rollout_percent = (int32_t)atoi(PQgetvalue(res, i, 2)),
            .allowed = strcmp(PQgetvalue(res, i, 3), "t") == 0,
            .denied = strcmp(PQgetvalue(res, i, 4), "t") == 0,
        };
        if (flags_rules_flag_on(&f, tenant_id))
            json_array_append_new(on, json_string(f.key));
    }
    PQclear(res);
    json_object_set_new(ent, "flags", on);
    return 0;
}

int
flags_store_evaluate(kl_pg_t *pg, const char *tenant_id, const char *plan,
                     Kowloon__Flags__Entitlements **out, kl_status_t *status)
{
    /* One snapshot for the counter, the plan, the overrides and the flags,
     * so that the version names exactly the state the answer comes from. */
    int rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    rc = kl_pg_exec(
        pg, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        status);
    int64_t version = 0;
    if (rc == 0)
        rc = flags_store_version(pg, &version, status);
    json_t *ent = json_object();
    if (rc == 0)
        rc = s_apply_plan(pg, tenant_id, plan, ent, status);
    if (rc == 0)
        rc = s_apply_flags(pg, tenant_id, ent, status);
    rc = s_finish(pg, rc, status);
    if (rc < 0) {
        json_decref(ent);
        return rc;
    }
    json_object_set_new(ent, "tenant_id", json_string(tenant_id));
    json_object_set_new(ent, "plan", json_string(plan));
    json_object_set_new(ent, "version", json_integer(version));
    return s_msg_json(&kowloon__flags__entitlements__descriptor, ent, out,
                      status);
}

/* --- usage ------------------------------------------------------------- */

/* The effective maximum of limit for the tenant on plan: its live
 * override, else the plan's. */
static int
s_limit_max(kl_pg_t *pg, const char *tenant_id, const char *plan,
            const char *limit, int64_t *max, kl_status_t *status)
{
    const char *params[] = {tenant_id, plan, limit};
    PGresult *res = kl_pg_query(
        pg, "flags_limit_max",
        "SELECT EXISTS (SELECT 1 FROM flags.plans WHERE name = $2),"
        " (SELECT value FROM flags.plan_limits WHERE plan = $2 AND name = $3),"
        " (SELECT o.limit_value FROM flags.overrides o WHERE o.tenant_id = $1"
        "  AND o.key = $3 AND o.limit_value IS NOT NULL AND " S_LIVE ")",
        3, params, status);
    if (!res)
        return s_code(status);
    int rc = 0;
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0)
        rc = kl_status_set(status, KL_NOT_FOUND, "plan \"%s\" not found", plan);
    else if (!PQgetisnull(res, 0, 2))
        *max = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
    else if (!PQgetisnull(res, 0, 1))
        *max = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    else
        rc =
            kl_status_set(status, KL_NOT_FOUND,
                          "limit \"%s\" not found in plan \"%s\"", limit, plan);
    PQclear(res);
    return rc;
}

static int64_t
s_used(kl_pg_t *pg, const char *tenant_id, const char *limit)
{
    const char *params[] = {tenant_id, limit};
    PGresult *res = kl_pg_query(pg, "flags_used",
                                "SELECT used FROM flags.usage WHERE tenant_id "
                                "= $1 AND limit_name = $2",
                                2, params, NULL);
    int64_t used = 0;
    if (res && PQntuples(res) > 0)
        used = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return used;
}

static int
s_exhausted(kl_pg_t *pg, const char *tenant_id, const char *limit, int64_t max,
            kl_status_t *status)
{
    return kl_status_set(status, KL_RESOURCE_EXHAUSTED,
                         "limit \"%s\" reached: %lld of %lld used", limit,
                         (long long)s_used(pg, tenant_id, limit),
                         (long long)max);
}

int
flags_store_consume(kl_pg_t *pg, const char *tenant_id, const char *plan,
                    const char *limit, int64_t n, Kowloon__Flags__Usage **out,
                    kl_status_t *status)
{
    int64_t max = 0;
    int rc = s_limit_max(pg, tenant_id, plan, limit, &max, status);
    if (rc < 0)
        return rc;
    /* used >= 0, so n alone past the maximum can never fit. */
    if (n > 0 && max >= 0 && n > max)
        return s_exhausted(pg, tenant_id, limit, max, status);
    char n_text[32], max_text[32];
    snprintf(n_text, sizeof n_text, "%lld", (long long)n);
    snprintf(max_text, sizeof max_text, "%lld", (long long)max);
    const char *params[] = {tenant_id, limit, n_text, max_text};
    /* One statement: ON CONFLICT DO UPDATE locks the counter's row and
     * checks the WHERE against its latest value, so concurrent calls
     * serialise on the row and the count never passes the maximum. */
    PGresult *res =
        kl_pg_query(pg, "flags_consume",
                    "INSERT INTO flags.usage AS u (tenant_id, limit_name, used)"
                    " VALUES ($1, $2, greatest($3::bigint, 0))"
                    " ON CONFLICT (tenant_id, limit_name) DO UPDATE"
                    " SET used = greatest(u.used + $3::bigint, 0)"
                    " WHERE $3::bigint < 0 OR $4::bigint = -1"
                    "  OR u.used + $3::bigint <= $4::bigint"
                    " RETURNING used",
                    4, params, status);
    if (!res)
        return s_code(status);
    if (PQntuples(res) == 0) {
        PQclear(res);
        return s_exhausted(pg, tenant_id, limit, max, status);
    }
    json_t *u = json_object();
    json_object_set_new(u, "limit", json_string(limit));
    json_object_set_new(u, "used",
                        json_integer(strtoll(PQgetvalue(res, 0, 0), NULL, 10)));
    json_object_set_new(u, "max", json_integer(max));
    PQclear(res);
    return s_msg_json(&kowloon__flags__usage__descriptor, u, out, status);
}

int
flags_store_usage(kl_pg_t *pg, const char *tenant_id, const char *plan,
                  Kowloon__Flags__UsageResponse **out, kl_status_t *status)
{
    const char *params[] = {tenant_id, plan};
    PGresult *res =
        kl_pg_query(pg, "flags_usage",
                    "WITH lim AS (SELECT name, value FROM flags.plan_limits"
                    "  WHERE plan = $2),"
                    " ov AS (SELECT o.key AS name, o.limit_value AS value"
                    "  FROM flags.overrides o WHERE o.tenant_id = $1"
                    "  AND o.limit_value IS NOT NULL AND " S_LIVE "),"
                    " eff AS (SELECT coalesce(ov.name, lim.name) AS name,"
                    "  coalesce(ov.value, lim.value) AS max"
                    "  FROM lim FULL JOIN ov ON lim.name = ov.name)"
                    " SELECT eff.name, coalesce(u.used, 0), eff.max,"
                    "  EXISTS (SELECT 1 FROM flags.plans WHERE name = $2)"
                    " FROM (SELECT 1) one LEFT JOIN eff ON true"
                    " LEFT JOIN flags.usage u ON u.tenant_id = $1"
                    "  AND u.limit_name = eff.name ORDER BY eff.name",
                    2, params, status);
    if (!res)
        return s_code(status);
    if (PQntuples(res) == 0 || strcmp(PQgetvalue(res, 0, 3), "t") != 0) {
        PQclear(res);
        return kl_status_set(status, KL_NOT_FOUND, "plan \"%s\" not found",
                             plan);
    }
    json_t *list = json_array();
    for (int i = 0; i < PQntuples(res); i++) {
        const char *name = PQgetvalue(res, i, 0);
        if (PQgetisnull(res, i, 0) || !flags_rules_limit_countable(name))
            continue;
        json_t *u = json_object();
        json_object_set_new(u, "limit", json_string(name));
        json_object_set_new(
            u, "used", json_integer(strtoll(PQgetvalue(res, i, 1), NULL, 10)));
        json_object_set_new(
            u, "max", json_integer(strtoll(PQgetvalue(res, i, 2), NULL, 10)));
        json_array_append_new(list, u);
    }
    PQclear(res);
    json_t *resp = json_object();
    json_object_set_new(resp, "usage", list);
    return s_msg_json(&kowloon__flags__usage_response__descriptor, resp, out,
                      status);
}
