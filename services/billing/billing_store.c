/*
 * billing_store: SQL of the billing service.
 */
#include "billing_store.h"

#include "kl_alloc.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const kl_pg_migration_t s_migrations[] = {
    {1, "CREATE TABLE billing.customers ("
        " tenant_id uuid PRIMARY KEY,"
        " customer_id text NOT NULL UNIQUE,"
        " created_at timestamptz NOT NULL DEFAULT now());"
        "CREATE TABLE billing.subscriptions ("
        " tenant_id uuid PRIMARY KEY,"
        " subscription_id text NOT NULL UNIQUE,"
        " customer_id text NOT NULL,"
        " item_id text NOT NULL DEFAULT '',"
        " price_id text NOT NULL DEFAULT '',"
        " plan text NOT NULL DEFAULT '',"
        " status text NOT NULL,"
        " tenant_status text NOT NULL DEFAULT '',"
        " collection_method text NOT NULL DEFAULT 'charge_automatically',"
        " cancel_at_period_end boolean NOT NULL DEFAULT false,"
        " current_period_end bigint NOT NULL DEFAULT 0,"
        " trial_end bigint NOT NULL DEFAULT 0,"
        " past_due_since bigint NOT NULL DEFAULT 0,"
        " grace_expired boolean NOT NULL DEFAULT false,"
        " status_event_created bigint NOT NULL DEFAULT 0,"
        " status_event_id text NOT NULL DEFAULT '',"
        " updated_at timestamptz NOT NULL DEFAULT now());"
        "CREATE INDEX subscriptions_past_due ON billing.subscriptions"
        " (past_due_since) WHERE status = 'past_due' AND NOT grace_expired;"
        "CREATE INDEX subscriptions_customer ON billing.subscriptions"
        " (customer_id);"
        "CREATE TABLE billing.prepaid ("
        " tenant_id uuid PRIMARY KEY,"
        " paid_until bigint NOT NULL,"
        " updated_at timestamptz NOT NULL DEFAULT now());"
        "CREATE TABLE billing.events ("
        " id text PRIMARY KEY,"
        " type text NOT NULL,"
        " created bigint NOT NULL,"
        " tenant_id uuid,"
        " outcome text NOT NULL DEFAULT '',"
        " received_at timestamptz NOT NULL DEFAULT now());"
        "CREATE TABLE billing.outbox ("
        " id bigserial PRIMARY KEY,"
        " tenant_id uuid NOT NULL,"
        " status text,"
        " plan text,"
        " reason text NOT NULL,"
        " event_id text,"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        " attempts integer NOT NULL DEFAULT 0,"
        " next_attempt_at timestamptz NOT NULL DEFAULT now(),"
        " done_at timestamptz,"
        " last_error text);"
        "CREATE INDEX outbox_pending ON billing.outbox (tenant_id, id)"
        " WHERE done_at IS NULL;"
        "CREATE TABLE billing.idempotency_keys ("
        " key text PRIMARY KEY,"
        " tenant_id uuid NOT NULL,"
        " op text NOT NULL,"
        " body text NOT NULL,"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        " done_at timestamptz);"
        "CREATE UNIQUE INDEX idempotency_keys_pending ON"
        " billing.idempotency_keys (tenant_id, op) WHERE done_at IS NULL"},
};

int
billing_store_migrate(kl_pg_t *pg, kl_status_t *status)
{
    return kl_pg_migrate(pg, "billing", s_migrations,
                         sizeof s_migrations / sizeof s_migrations[0], status);
}

static int
s_code(const kl_status_t *status)
{
    return -(int)status->code;
}

static void
s_copy(char *dst, size_t size, const PGresult *res, int row, int col)
{
    snprintf(dst, size, "%s", PQgetvalue(res, row, col));
}

static int64_t
s_i64(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col)
               ? 0
               : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static bool
s_bool(const PGresult *res, int row, int col)
{
    return PQgetvalue(res, row, col)[0] == 't';
}

/* One simple statement; the result is cleared. */
static int
s_run(kl_pg_t *pg, const char *name, const char *sql, int n,
      const char *const *params, kl_status_t *status)
{
    PGresult *res = kl_pg_query(pg, name, sql, n, params, status);
    if (!res)
        return s_code(status);
    PQclear(res);
    return 0;
}

#define S_SUB_COLS                                                             \
    "subscription_id, customer_id, item_id, price_id, plan, status, "          \
    "tenant_status, collection_method, cancel_at_period_end, "                 \
    "current_period_end, trial_end, past_due_since, grace_expired, "           \
    "status_event_created, status_event_id, "                                  \
    "extract(epoch FROM updated_at)::bigint"

int
billing_store_get(kl_pg_t *pg, const char *tenant_id, bool for_update,
                  billing_row_t *row, kl_status_t *status)
{
    memset(row, 0, sizeof *row);
    snprintf(row->tenant_id, sizeof row->tenant_id, "%s", tenant_id);
    const char *params[] = {tenant_id};
    PGresult *res = kl_pg_query(
        pg, for_update ? "billing_sub_lock" : "billing_sub_get",
        for_update ? "SELECT " S_SUB_COLS " FROM billing.subscriptions"
                     " WHERE tenant_id = $1 FOR UPDATE"
                   : "SELECT " S_SUB_COLS " FROM billing.subscriptions"
                     " WHERE tenant_id = $1",
        1, params, status);
    if (!res)
        return s_code(status);
    if (PQntuples(res) == 1) {
        row->has_subscription = true;
        s_copy(row->subscription_id, sizeof row->subscription_id, res, 0, 0);
        s_copy(row->customer_id, sizeof row->customer_id, res, 0, 1);
        s_copy(row->item_id, sizeof row->item_id, res, 0, 2);
        s_copy(row->price_id, sizeof row->price_id, res, 0, 3);
        s_copy(row->plan, sizeof row->plan, res, 0, 4);
        s_copy(row->status, sizeof row->status, res, 0, 5);
        s_copy(row->tenant_status, sizeof row->tenant_status, res, 0, 6);
        s_copy(row->collection_method, sizeof row->collection_method, res, 0,
               7);
        row->cancel_at_period_end = s_bool(res, 0, 8);
        row->current_period_end = s_i64(res, 0, 9);
        row->trial_end = s_i64(res, 0, 10);
        row->past_due_since = s_i64(res, 0, 11);
        row->grace_expired = s_bool(res, 0, 12);
        row->status_event_created = s_i64(res, 0, 13);
        s_copy(row->status_event_id, sizeof row->status_event_id, res, 0, 14);
        row->updated_at = s_i64(res, 0, 15);
    }
    PQclear(res);
    res = kl_pg_query(
        pg, "billing_cus_get",
        "SELECT c.customer_id, (SELECT p.paid_until FROM billing.prepaid p"
        " WHERE p.tenant_id = $1) FROM (SELECT 1) one LEFT JOIN"
        " billing.customers c ON c.tenant_id = $1",
        1, params, status);
    if (!res)
        return s_code(status);
    if (!PQgetisnull(res, 0, 0)) {
        row->has_customer = true;
        s_copy(row->customer_id, sizeof row->customer_id, res, 0, 0);
    }
    row->paid_until = s_i64(res, 0, 1);
    PQclear(res);
    return 0;
}

int
billing_store_tenant_of(kl_pg_t *pg, const char *subscription_id,
                        const char *customer_id, char tenant_id[37],
                        kl_status_t *status)
{
    const char *params[] = {subscription_id ? subscription_id : "",
                            customer_id ? customer_id : ""};
    PGresult *res =
        kl_pg_query(pg, "billing_tenant_of",
                    "SELECT tenant_id::text FROM billing.subscriptions"
                    " WHERE $1 <> '' AND subscription_id = $1"
                    " UNION ALL SELECT tenant_id::text FROM billing.customers"
                    " WHERE $2 <> '' AND customer_id = $2 LIMIT 1",
                    2, params, status);
    if (!res)
        return s_code(status);
    int rc = 0;
    if (PQntuples(res) == 0)
        rc = kl_status_set(status, KL_NOT_FOUND, "no tenant for %.64s/%.64s",
                           params[0], params[1]);
    else
        s_copy(tenant_id, 37, res, 0, 0);
    PQclear(res);
    return rc;
}

int
billing_store_lock_tenant(kl_pg_t *pg, const char *tenant_id,
                          kl_status_t *status)
{
    const char *params[] = {tenant_id};
    return s_run(pg, "billing_lock_tenant",
                 "SELECT pg_advisory_xact_lock(hashtextextended("
                 "'billing:' || $1, 0))",
                 1, params, status);
}

int
billing_store_customer_put(kl_pg_t *pg, const char *tenant_id,
                           const char *customer_id, kl_status_t *status)
{
    const char *params[] = {tenant_id, customer_id};
    return s_run(pg, "billing_cus_put",
                 "INSERT INTO billing.customers (tenant_id, customer_id)"
                 " VALUES ($1, $2) ON CONFLICT DO NOTHING",
                 2, params, status);
}

int
billing_store_sub_save(kl_pg_t *pg, const billing_row_t *r, kl_status_t *status)
{
    char cpe[24], te[24], pds[24], sec[24];
    snprintf(cpe, sizeof cpe, "%lld", (long long)r->current_period_end);
    snprintf(te, sizeof te, "%lld", (long long)r->trial_end);
    snprintf(pds, sizeof pds, "%lld", (long long)r->past_due_since);
    snprintf(sec, sizeof sec, "%lld", (long long)r->status_event_created);
    const char *params[] = {
        r->tenant_id,
        r->subscription_id,
        r->customer_id,
        r->item_id,
        r->price_id,
        r->plan,
        r->status,
        r->tenant_status,
        r->collection_method[0] ? r->collection_method : "charge_automatically",
        r->cancel_at_period_end ? "true" : "false",
        cpe,
        te,
        pds,
        r->grace_expired ? "true" : "false",
        sec,
        r->status_event_id,
    };
    return s_run(
        pg, "billing_sub_save",
        "INSERT INTO billing.subscriptions (tenant_id, subscription_id,"
        " customer_id, item_id, price_id, plan, status, tenant_status,"
        " collection_method, cancel_at_period_end, current_period_end,"
        " trial_end, past_due_since, grace_expired, status_event_created,"
        " status_event_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,"
        " $11, $12, $13, $14, $15, $16) ON CONFLICT (tenant_id) DO UPDATE SET"
        " subscription_id = $2, customer_id = $3, item_id = $4,"
        " price_id = $5, plan = $6, status = $7, tenant_status = $8,"
        " collection_method = $9, cancel_at_period_end = $10,"
        " current_period_end = $11, trial_end = $12, past_due_since = $13,"
        " grace_expired = $14, status_event_created = $15,"
        " status_event_id = $16, updated_at = now()",
        16, params, status);
}

int
billing_store_prepaid_extend(kl_pg_t *pg, const char *tenant_id, int days,
                             int64_t *paid_until, kl_status_t *status)
{
    char d[16];
    snprintf(d, sizeof d, "%d", days);
    const char *params[] = {tenant_id, d};
    PGresult *res = kl_pg_query(
        pg, "billing_prepaid_extend",
        "INSERT INTO billing.prepaid AS p (tenant_id, paid_until)"
        " VALUES ($1, extract(epoch FROM now())::bigint + $2::int * 86400)"
        " ON CONFLICT (tenant_id) DO UPDATE SET paid_until ="
        " greatest(p.paid_until, extract(epoch FROM now())::bigint)"
        " + $2::int * 86400, updated_at = now() RETURNING paid_until",
        2, params, status);
    if (!res)
        return s_code(status);
    *paid_until = s_i64(res, 0, 0);
    PQclear(res);
    return 0;
}

int
billing_store_event_insert(kl_pg_t *pg, const char *id, const char *type,
                           int64_t created, bool *inserted, kl_status_t *status)
{
    char c[24];
    snprintf(c, sizeof c, "%lld", (long long)created);
    const char *params[] = {id, type, c};
    PGresult *res = kl_pg_query(
        pg, "billing_event_insert",
        "INSERT INTO billing.events (id, type, created) VALUES ($1, $2, $3)"
        " ON CONFLICT (id) DO NOTHING RETURNING id",
        3, params, status);
    if (!res)
        return s_code(status);
    *inserted = PQntuples(res) == 1;
    PQclear(res);
    return 0;
}

int
billing_store_event_outcome(kl_pg_t *pg, const char *id, const char *tenant_id,
                            const char *outcome, kl_status_t *status)
{
    const char *params[] = {id, tenant_id && *tenant_id ? tenant_id : NULL,
                            outcome};
    return s_run(pg, "billing_event_outcome",
                 "UPDATE billing.events SET tenant_id = $2, outcome = $3"
                 " WHERE id = $1",
                 3, params, status);
}

int
billing_store_outbox_add(kl_pg_t *pg, const char *tenant_id,
                         const char *tenant_status, const char *plan,
                         const char *reason, const char *event_id,
                         kl_status_t *status)
{
    const char *params[] = {tenant_id, tenant_status, plan, reason,
                            event_id && *event_id ? event_id : NULL};
    return s_run(pg, "billing_outbox_add",
                 "INSERT INTO billing.outbox (tenant_id, status, plan, reason,"
                 " event_id) VALUES ($1, $2, $3, $4, $5)",
                 5, params, status);
}

int
billing_store_outbox_take(kl_pg_t *pg, billing_outbox_row_t *rows, int max,
                          int *n, kl_status_t *status)
{
    char m[16];
    snprintf(m, sizeof m, "%d", max);
    const char *params[] = {m};
    PGresult *res = kl_pg_query(
        pg, "billing_outbox_take",
        /* Each tenant's oldest pending row only (effects apply in order),
         * found through the partial index outbox_pending (tenant_id, id):
         * linear in the pending rows whatever plan the prepared statement
         * keeps. A correlated NOT EXISTS here went quadratic once the
         * cached generic plan, made while the table was empty, met a
         * backlog of thousands of rows. */
        "SELECT o.id, o.tenant_id::text, coalesce(o.status, ''),"
        " coalesce(o.plan, ''), o.reason, o.attempts FROM billing.outbox o"
        " WHERE o.id IN (SELECT min(h.id) FROM billing.outbox h"
        " WHERE h.done_at IS NULL GROUP BY h.tenant_id)"
        " AND o.done_at IS NULL AND o.next_attempt_at <= now()"
        " ORDER BY o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
        1, params, status);
    if (!res)
        return s_code(status);
    *n = PQntuples(res);
    for (int i = 0; i < *n; i++) {
        rows[i].id = s_i64(res, i, 0);
        s_copy(rows[i].tenant_id, sizeof rows[i].tenant_id, res, i, 1);
        s_copy(rows[i].status, sizeof rows[i].status, res, i, 2);
        s_copy(rows[i].plan, sizeof rows[i].plan, res, i, 3);
        s_copy(rows[i].reason, sizeof rows[i].reason, res, i, 4);
        rows[i].attempts = (int)s_i64(res, i, 5);
    }
    PQclear(res);
    return 0;
}

int
billing_store_outbox_done(kl_pg_t *pg, int64_t id, const char *error,
                          kl_status_t *status)
{
    char i[24];
    snprintf(i, sizeof i, "%lld", (long long)id);
    const char *params[] = {i, error};
    return s_run(pg, "billing_outbox_done",
                 "UPDATE billing.outbox SET done_at = now(), attempts ="
                 " attempts + 1, last_error = $2 WHERE id = $1",
                 2, params, status);
}

int
billing_store_outbox_retry(kl_pg_t *pg, int64_t id, int64_t delay_ms,
                           const char *error, kl_status_t *status)
{
    char i[24], d[24];
    snprintf(i, sizeof i, "%lld", (long long)id);
    snprintf(d, sizeof d, "%lld", (long long)delay_ms);
    const char *params[] = {i, d, error};
    return s_run(pg, "billing_outbox_retry",
                 "UPDATE billing.outbox SET attempts = attempts + 1,"
                 " next_attempt_at = now() + $2::bigint * interval '1 ms',"
                 " last_error = $3 WHERE id = $1",
                 3, params, status);
}

int
billing_store_sweep_grace(kl_pg_t *pg, int64_t grace_s, int *n,
                          kl_status_t *status)
{
    char g[24];
    snprintf(g, sizeof g, "%lld", (long long)grace_s);
    const char *params[] = {g};
    /* One statement: mark, then queue the suspension of each marked
     * tenant in the same transaction. */
    PGresult *res = kl_pg_query(
        pg, "billing_sweep_grace",
        "WITH due AS (UPDATE billing.subscriptions s SET grace_expired ="
        " true, tenant_status = 'suspended', updated_at = now() WHERE"
        " s.tenant_id IN (SELECT tenant_id FROM billing.subscriptions WHERE"
        " status = 'past_due' AND NOT grace_expired AND past_due_since > 0"
        " AND past_due_since <= floor(extract(epoch FROM now()))::bigint - $1"
        " ORDER BY past_due_since LIMIT 100 FOR UPDATE SKIP LOCKED)"
        " RETURNING s.tenant_id)"
        " INSERT INTO billing.outbox (tenant_id, status, reason)"
        " SELECT tenant_id, 'suspended', 'past_due grace expired' FROM due"
        " RETURNING tenant_id",
        1, params, status);
    if (!res)
        return s_code(status);
    *n = PQntuples(res);
    PQclear(res);
    return 0;
}

/* --- idempotency keys -------------------------------------------------- */

static void
s_new_key(char key[64])
{
    uint8_t raw[16];
    if (RAND_bytes(raw, sizeof raw) != 1)
        abort(); /* no randomness: nothing safe to do */
    int o = snprintf(key, 64, "kl-");
    for (int i = 0; i < 16; i++)
        o += snprintf(key + o, (size_t)(64 - o), "%02x", raw[i]);
}

int
billing_store_key_claim(kl_pg_t *pg, const char *tenant_id, const char *op,
                        const char *body, bool sticky, char key[64],
                        char **body_out, kl_status_t *status)
{
    *body_out = NULL;
    for (int round = 0; round < 3; round++) {
        char fresh[64];
        s_new_key(fresh);
        const char *ins[] = {fresh, tenant_id, op, body};
        int rc = s_run(pg, "billing_key_insert",
                       "INSERT INTO billing.idempotency_keys (key, tenant_id,"
                       " op, body) VALUES ($1, $2, $3, $4) ON CONFLICT"
                       " (tenant_id, op) WHERE done_at IS NULL DO NOTHING",
                       4, ins, status);
        if (rc < 0)
            return rc;
        const char *sel[] = {tenant_id, op};
        PGresult *res = kl_pg_query(
            pg, "billing_key_pending",
            "SELECT key, body, created_at > now() - interval '23 hours'"
            " FROM billing.idempotency_keys WHERE tenant_id = $1 AND op = $2"
            " AND done_at IS NULL",
            2, sel, status);
        if (!res)
            return s_code(status);
        if (PQntuples(res) == 0) {
            /* Finished by a concurrent call between the two statements. */
            PQclear(res);
            continue;
        }
        bool young = s_bool(res, 0, 2);
        bool same = strcmp(PQgetvalue(res, 0, 1), body) == 0;
        if (young && (sticky || same)) {
            s_copy(key, 64, res, 0, 0);
            *body_out = kl_strdup(PQgetvalue(res, 0, 1));
            PQclear(res);
            return 0;
        }
        /* Stripe forgets keys after 24 h, and a different request needs a
         * key of its own: retire this one and store a new one. */
        char old[64];
        s_copy(old, sizeof old, res, 0, 0);
        PQclear(res);
        rc = billing_store_key_done(pg, old, status);
        if (rc < 0)
            return rc;
    }
    return kl_status_set(status, KL_ABORTED,
                         "idempotency key for %s kept changing", op);
}

int
billing_store_key_done(kl_pg_t *pg, const char *key, kl_status_t *status)
{
    const char *params[] = {key};
    return s_run(pg, "billing_key_done",
                 "UPDATE billing.idempotency_keys SET done_at = now()"
                 " WHERE key = $1 AND done_at IS NULL",
                 1, params, status);
}
