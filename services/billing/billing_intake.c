/*
 * billing_intake: verify, parse, record a Stripe webhook with its effect.
 */
#include "billing_intake.h"

#include "billing_events.h"
#include "billing_store.h"
#include "billing_webhook.h"
#include "kl_log.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static int
s_fault(const billing_intake_opts_t *opts, const char *point,
        kl_status_t *status)
{
    if (opts->fault && opts->fault(point, opts->fault_user))
        return kl_status_set(status, KL_UNAVAILABLE, "fault injected at %s",
                             point);
    return 0;
}

/*
 * The general path: BEGIN; the inbox row (a concurrent delivery of the
 * same id waits on its key and then finds it recorded); the tenant, its
 * advisory lock and its state, read as the event's type needs; the effect
 * with the outcome in one statement; COMMIT.
 */
static int
s_general(const billing_intake_opts_t *opts, kl_pg_t *pg, const char *id,
          const char *type, int64_t created, json_t *object,
          billing_events_result_t *res, bool *duplicate, kl_status_t *st)
{
    bool inserted = false;
    billing_events_ctx_t ctx = {.pg = pg, .plans = opts->plans};
    int rc = kl_pg_begin(pg, st);
    if (rc == 0)
        rc = billing_store_event_insert(pg, id, type, created, &inserted, st);
    if (rc == 0 && !inserted) {
        kl_pg_rollback(pg);
        *duplicate = true;
        return 0;
    }
    if (rc == 0)
        rc = billing_events_apply(&ctx, id, type, created, object, res, st);
    if (rc == 0)
        rc = billing_store_effect(pg, &res->effect, id, res->tenant_id,
                                  res->outcome, st);
    if (rc < 0) {
        kl_pg_rollback(pg);
        return rc;
    }
    return kl_pg_commit(pg, st);
}

/*
 * Two round trips (billing_events_preloadable types), two pipelines: BEGIN
 * and the inbox statement, which records the event and, only if it is
 * new, reads and locks the tenant's state; the decision from that state;
 * the effect with the outcome, and COMMIT. kl_pg runs the second only on
 * the first one's connection, still inside its transaction, and answers
 * 0 only once COMMIT succeeded.
 */
static int
s_preloaded(const billing_intake_opts_t *opts, kl_pg_t *pg, const char *id,
            const char *type, int64_t created, json_t *object,
            const billing_keys_t *keys, billing_events_result_t *res,
            bool *duplicate, kl_status_t *st)
{
    billing_intake_params_t ip;
    kl_pg_stmt_t stmt;
    PGresult *out = NULL;
    billing_store_intake_stmt(id, type, created, keys, &ip, &stmt);
    int rc = kl_pg_pipeline_ex(pg, &stmt, 1, KL_PG_PIPE_BEGIN, &out, st);
    if (rc < 0)
        return rc;
    billing_preload_t pre;
    bool fresh = billing_store_intake_read(out, keys, &pre);
    PQclear(out);
    if (!fresh) {
        kl_pg_rollback(pg);
        *duplicate = true;
        return 0;
    }
    billing_events_ctx_t ctx = {.plans = opts->plans, .preload = &pre};
    rc = billing_events_apply(&ctx, id, type, created, object, res, st);
    if (rc == 0)
        rc = s_fault(opts, "webhook.decided", st);
    if (rc < 0) {
        kl_pg_rollback(pg);
        return rc;
    }
    billing_effect_params_t ep;
    billing_store_effect_stmt(&res->effect, id, res->tenant_id, res->outcome,
                              &ep, &stmt);
    rc = kl_pg_pipeline_ex(pg, &stmt, 1, KL_PG_PIPE_COMMIT, &out, st);
    PQclear(out);
    return rc;
}

int
billing_intake_handle(const billing_intake_opts_t *opts, kl_pg_t *pg,
                      const uint8_t *payload, size_t payload_len,
                      const char *signature, char event_id[256],
                      bool *duplicate, bool *queued, kl_status_t *st)
{
    *duplicate = false;
    *queued = false;
    /* 1. The signature, over the bytes as received. */
    int rc = billing_webhook_verify(signature, payload, payload_len,
                                    opts->secrets, opts->n_secrets,
                                    (int64_t)time(NULL), opts->tolerance_s, st);
    if (rc < 0)
        return rc;
    /* 2. Only then the JSON. */
    json_error_t jerr;
    json_t *ev = json_loadb((const char *)payload, payload_len,
                            JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(ev)) {
        json_decref(ev);
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "webhook payload is not a JSON object");
    }
    const char *id = json_string_value(json_object_get(ev, "id"));
    const char *type = json_string_value(json_object_get(ev, "type"));
    json_t *created = json_object_get(ev, "created");
    json_t *object = json_object_get(json_object_get(ev, "data"), "object");
    if (!id || !*id || strlen(id) > 255 || !type || !*type ||
        strlen(type) > 128 || !json_is_integer(created) ||
        !json_is_object(object)) {
        json_decref(ev);
        return kl_status_set(st, KL_INVALID_ARGUMENT,
                             "webhook payload is not a Stripe event: want "
                             "id, type, created and data.object");
    }
    /* Copies: ev is freed before the last log line. */
    char type_copy[129];
    snprintf(event_id, 256, "%s", id);
    snprintf(type_copy, sizeof type_copy, "%s", type);
    id = event_id;
    type = type_copy;

    /* 3. Inbox, effect and outbox in one transaction. */
    billing_events_result_t res;
    memset(&res, 0, sizeof res);
    billing_keys_t keys;
    int64_t at = (int64_t)json_integer_value(created);
    if (billing_events_preloadable(type) &&
        billing_events_keys(type, object, &keys))
        rc = s_preloaded(opts, pg, id, type, at, object, &keys, &res, duplicate,
                         st);
    else
        rc = s_general(opts, pg, id, type, at, object, &res, duplicate, st);
    json_decref(ev);
    if (rc < 0) {
        /* Not recorded: Stripe delivers it again. */
        if (rc == -KL_ALREADY_EXISTS || rc == -KL_ABORTED)
            kl_status_set(st, KL_UNAVAILABLE, "event %s not recorded: %s", id,
                          st->message);
        return rc == -KL_ALREADY_EXISTS || rc == -KL_ABORTED ? -KL_UNAVAILABLE
                                                             : rc;
    }
    if (*duplicate) {
        KL_LOG(KL_INFO, "event %s (%s) already recorded, ignored", id, type);
        return 0;
    }
    KL_LOG(KL_INFO, "event %s (%s)%s%s: %s", id, type,
           res.tenant_id[0] ? " for tenant " : "", res.tenant_id, res.outcome);
    *queued = res.effect.outbox;
    return 0;
}
