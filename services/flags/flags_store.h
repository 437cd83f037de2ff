/*
 * flags_store: the flags service's tables in schema "flags" — plans with
 * their limits and Stripe prices, per-tenant overrides, feature flags,
 * usage counters and the global change counter — through one kl_pg
 * connection with prepared statements.
 *
 * Inputs are validated by the caller (flags_service, with flags_rules);
 * tenant ids are canonical (lower case). The store enforces existence,
 * uniqueness and atomicity. Results are heap messages of
 * proto/kowloon/flags.proto: the caller frees each with
 * protobuf_c_message_free_unpacked(msg, NULL).
 *
 * Every write runs in one transaction that also bumps the change counter
 * (flags.state.version) and commits before the function returns 0; the
 * new counter goes to *version. Errors: a negative kl code with status:
 *   NOT_FOUND            "plan \"x\" not found", "flag \"x\" not found", ...
 *   ALREADY_EXISTS       "plan \"x\" already exists", ...
 *   FAILED_PRECONDITION  "plan \"starter\" is built in and cannot be deleted"
 *   RESOURCE_EXHAUSTED   "limit \"max_projects\" reached: 3 of 3 used"
 *   UNAVAILABLE          the database cannot be reached
 */
#ifndef FLAGS_STORE_H
#define FLAGS_STORE_H

#include "kl_code.h"
#include "kl_pg.h"
#include "kowloon/flags.pb-c.h"

#include <stddef.h>
#include <stdint.h>

/* Creates or upgrades schema "flags" (kl_pg_migrate), seeding the plans
 * starter, pro and enterprise once. */
int flags_store_migrate(kl_pg_t *pg, kl_status_t *status);

/* The identity of this schema's data (a UUID made at its creation): the
 * Redis mirror tells a reset database from an older write with it. */
int flags_store_epoch(kl_pg_t *pg, char epoch[37], kl_status_t *status);

/* The change counter now. */
int flags_store_version(kl_pg_t *pg, int64_t *version, kl_status_t *status);

/* --- plans ------------------------------------------------------------- */

/* in: a validated plan (display_name already defaulted). *out: the plan as
 * stored. */
int flags_store_plan_create(kl_pg_t *pg, const Kowloon__Flags__Plan *in,
                            Kowloon__Flags__Plan **out, int64_t *version,
                            kl_status_t *status);
int flags_store_plan_get(kl_pg_t *pg, const char *name,
                         Kowloon__Flags__Plan **out, kl_status_t *status);
/* Every plan, by name; *version is the counter they were read at. */
int flags_store_plan_list(kl_pg_t *pg, Kowloon__Flags__ListPlansResponse **out,
                          int64_t *version, kl_status_t *status);
/* Replaces display name, features, limits and prices of an existing plan. */
int flags_store_plan_update(kl_pg_t *pg, const Kowloon__Flags__Plan *in,
                            Kowloon__Flags__Plan **out, int64_t *version,
                            kl_status_t *status);
/* Refuses the built-in plans (FAILED_PRECONDITION). */
int flags_store_plan_delete(kl_pg_t *pg, const char *name, int64_t *version,
                            kl_status_t *status);

/* --- overrides --------------------------------------------------------- */

/* Upserts (tenant_id, key). INVALID_ARGUMENT when expires_at is in the
 * past. Prunes the tenant's expired overrides first. */
int flags_store_override_set(kl_pg_t *pg, const Kowloon__Flags__Override *in,
                             Kowloon__Flags__Override **out, int64_t *version,
                             kl_status_t *status);
/* NOT_FOUND when the tenant has no live override with this key. */
int flags_store_override_clear(kl_pg_t *pg, const char *tenant_id,
                               const char *key, int64_t *version,
                               kl_status_t *status);
/* The tenant's live overrides by key (expired ones are pruned). */
int flags_store_override_list(kl_pg_t *pg, const char *tenant_id,
                              Kowloon__Flags__ListOverridesResponse **out,
                              kl_status_t *status);

/* --- flags ------------------------------------------------------------- */

int flags_store_flag_create(kl_pg_t *pg, const Kowloon__Flags__Flag *in,
                            Kowloon__Flags__Flag **out, int64_t *version,
                            kl_status_t *status);
int flags_store_flag_get(kl_pg_t *pg, const char *key,
                         Kowloon__Flags__Flag **out, kl_status_t *status);
int flags_store_flag_list(kl_pg_t *pg, Kowloon__Flags__ListFlagsResponse **out,
                          kl_status_t *status);
int flags_store_flag_update(kl_pg_t *pg, const Kowloon__Flags__Flag *in,
                            Kowloon__Flags__Flag **out, int64_t *version,
                            kl_status_t *status);
int flags_store_flag_delete(kl_pg_t *pg, const char *key, int64_t *version,
                            kl_status_t *status);

/* --- evaluation and usage ---------------------------------------------- */

/* The tenant's entitlements on plan, read in one snapshot with the
 * counter. NOT_FOUND "plan \"x\" not found". */
int flags_store_evaluate(kl_pg_t *pg, const char *tenant_id, const char *plan,
                         Kowloon__Flags__Entitlements **out,
                         kl_status_t *status);

/* Adds n (n < 0 releases, never below 0) to the tenant's counter of a
 * countable limit when the result stays within the effective maximum (the
 * live override, else the plan's; -1 unlimited); else RESOURCE_EXHAUSTED
 * and nothing counted. NOT_FOUND when the plan is unknown or neither it
 * nor an override has the limit. Atomic under concurrent calls. */
int flags_store_consume(kl_pg_t *pg, const char *tenant_id, const char *plan,
                        const char *limit, int64_t n,
                        Kowloon__Flags__Usage **out, kl_status_t *status);

/* used/max of every countable limit of the plan and of the tenant's live
 * limit overrides, by name. */
int flags_store_usage(kl_pg_t *pg, const char *tenant_id, const char *plan,
                      Kowloon__Flags__UsageResponse **out, kl_status_t *status);

#endif
