/*
 * flags_rules: the pure rules of the flags service — what a valid name,
 * limit, tenant id or time is, the stable rollout bucket of a tenant, and
 * whether a flag is on for a tenant. No I/O; see docs/flags-service.md.
 *
 * Every check returns 0, or -KL_INVALID_ARGUMENT with status set to the
 * exact message the caller gets.
 */
#ifndef FLAGS_RULES_H
#define FLAGS_RULES_H

#include "kl_code.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Limits are -1 (unlimited) .. 10^12. */
#define FLAGS_LIMIT_MIN (-1LL)
#define FLAGS_LIMIT_MAX 1000000000000LL

/* Bounds of what one plan or flag may hold. */
#define FLAGS_NAME_MAX 63
#define FLAGS_DISPLAY_NAME_MAX 200
#define FLAGS_DESCRIPTION_MAX 1000
#define FLAGS_PRICE_ID_MAX 255
#define FLAGS_MAX_FEATURES 256
#define FLAGS_MAX_LIMITS 256
#define FLAGS_MAX_PRICES 64
#define FLAGS_MAX_TENANT_LIST 10000

/* Plan names: [a-z0-9_-]{1,63}. */
bool flags_rules_plan_name_valid(const char *s);
/* Feature and limit names (and override keys): [a-z0-9_]{1,63}. */
bool flags_rules_feature_name_valid(const char *s);
/* Flag keys: [a-z0-9_.-]{1,63}. */
bool flags_rules_flag_key_valid(const char *s);
/* Stripe price ids: [A-Za-z0-9_]{1,255}. */
bool flags_rules_price_id_valid(const char *s);
/* 8-4-4-4-12 hex digits, either case. */
bool flags_rules_uuid_valid(const char *s);

/* Lower-cases a valid UUID into out (the form PostgreSQL prints, and the
 * one hashed for rollouts). */
void flags_rules_uuid_canonical(const char *s, char out[37]);

/* field ("plan", "name") must be a plan name:
 *   "plan is required"
 *   "plan \"Pro!\" is invalid: want 1 to 63 of a-z, 0-9, _ and -" */
int flags_rules_check_plan_name(const char *field, const char *s,
                                kl_status_t *status);

/* tenant_id must be a UUID:
 *   "tenant_id is required", "tenant_id \"x\" is not a UUID" */
int flags_rules_check_uuid(const char *field, const char *s,
                           kl_status_t *status);

/* what ("feature", "limit", "key") names a feature or a limit:
 *   "feature \"Data-Export\" is invalid: want 1 to 63 of a-z, 0-9 and _" */
int flags_rules_check_feature_name(const char *what, const char *s,
                                   kl_status_t *status);

/* A limit's value:
 *   "limit \"max_projects\": -5 is out of range (want -1..1000000000000)" */
int flags_rules_check_limit(const char *name, int64_t value,
                            kl_status_t *status);

/* A flag's rollout:
 *   "rollout_percent: 150 is out of range (want 0..100)" */
int flags_rules_check_rollout(int32_t percent, kl_status_t *status);

/* Free text of at most max characters of valid UTF-8:
 *   "display_name must be valid UTF-8"
 *   "display_name must be at most 200 characters, got 201" */
int flags_rules_check_text(const char *field, const char *s, long max,
                           kl_status_t *status);

/* An RFC 3339 time: YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM), 'T'
 * and 'Z' in either case. Only the syntax and field ranges are checked
 * here; the database reads the value.
 *   "expires_at \"tomorrow\" is not an RFC 3339 time" */
int flags_rules_check_time(const char *field, const char *s,
                           kl_status_t *status);

/* Whether a limit counts something (Consume applies) rather than bounding
 * a rate: names ending in _per_second, _per_minute, _per_hour or _per_day
 * are rates, enforced by the gateway's own counters. */
bool flags_rules_limit_countable(const char *name);

/* The tenant's bucket for a flag, 0..99: the first 4 bytes of
 * SHA-256(tenant_id ":" key), big-endian, mod 100. tenant_id must be
 * canonical (lower case). The same tenant keeps its bucket as a rollout
 * grows, so a tenant that was on at 10% is still on at 20%. */
int flags_rules_bucket(const char *tenant_id, const char *key);

/* A flag as evaluation sees it for one tenant. */
typedef struct {
    const char *key;
    bool killed;
    int32_t rollout_percent;
    bool allowed; /* the tenant is on allow_tenants */
    bool denied;  /* the tenant is on deny_tenants */
} flags_rules_flag_t;

/* Whether the flag is on for tenant_id (canonical). Precedence: the kill
 * switch beats everything; then the allow list; then the deny list; then
 * the rollout bucket < rollout_percent. */
bool flags_rules_flag_on(const flags_rules_flag_t *flag, const char *tenant_id);

#endif
