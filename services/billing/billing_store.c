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

/* Fills row's subscription fields from S_SUB_COLS at column col0 of res's
 * row i; has_subscription false when its first column is NULL (no row). */
static void
s_sub_from(const PGresult *res, int i, int col0, billing_row_t *row)
{
    row->has_subscription = !PQgetisnull(res, i, col0);
    if (!row->has_subscription)
        return;
    s_copy(row->subscription_id, sizeof row->subscription_id, res, i, col0);
    s_copy(row->customer_id, sizeof row->customer_id, res, i, col0 + 1);
    s_copy(row->item_id, sizeof row->item_id, res, i, col0 + 2);
    s_copy(row->price_id, sizeof row->price_id, res, i, col0 + 3);
    s_copy(row->plan, sizeof row->plan, res, i, col0 + 4);
    s_copy(row->status, sizeof row->status, res, i, col0 + 5);
    s_copy(row->tenant_status, sizeof row->tenant_status, res, i, col0 + 6);
    s_copy(row->collection_method, sizeof row->collection_method, res, i,
           col0 + 7);
    row->cancel_at_period_end = s_bool(res, i, col0 + 8);
    row->current_period_end = s_i64(res, i, col0 + 9);
    row->trial_end = s_i64(res, i, col0 + 10);
    row->past_due_since = s_i64(res, i, col0 + 11);
    row->grace_expired = s_bool(res, i, col0 + 12);
    row->status_event_created = s_i64(res, i, col0 + 13);
    s_copy(row->status_event_id, sizeof row->status_event_id, res, i,
           col0 + 14);
    row->updated_at = s_i64(res, i, col0 + 15);
}

/* The tenant's customer mapping (overriding the subscription's customer)
 * and prepaid period from columns col (customer_id) and col + 1. */
static void
s_customer_from(const PGresult *res, int i, int col, billing_row_t *row)
{
    if (!PQgetisnull(res, i, col)) {
        row->has_customer = true;
        s_copy(row->customer_id, sizeof row->customer_id, res, i, col);
    }
    row->paid_until = s_i64(res, i, col + 1);
}

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
    if (PQntuples(res) == 1)
        s_sub_from(res, 0, 0, row);
    PQclear(res);
    res = kl_pg_query(
        pg, "billing_cus_get",
        "SELECT c.customer_id, (SELECT p.paid_until FROM billing.prepaid p"
        " WHERE p.tenant_id = $1) FROM (SELECT 1) one LEFT JOIN"
        " billing.customers c ON c.tenant_id = $1",
        1, params, status);
    if (!res)
        return s_code(status);
    s_customer_from(res, 0, 0, row);
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

/*
 * The effect statement. The subscription is updated in place when its row
 * exists (the caller holds its lock), else inserted (a concurrent insert
 * of the same tenant's row becomes an update, as it always has). The
 * sub-statements touch different tables, so seeing one snapshot changes
 * nothing. $1 tenant, $2..$16 the subscription's fields, $17 save, $18
 * exists, $19 customer, $20 outbox, $21..$24 its status, plan, reason and
 * source, $25 event id, $26 event tenant, $27 outcome.
 */
#define S_SUB_SET                                                              \
    "subscription_id = $2, customer_id = $3, item_id = $4, price_id = $5,"     \
    " plan = $6, status = $7, tenant_status = $8, collection_method = $9,"     \
    " cancel_at_period_end = $10, current_period_end = $11, trial_end = $12,"  \
    " past_due_since = $13, grace_expired = $14, status_event_created = $15,"  \
    " status_event_id = $16, updated_at = now()"

static const char s_effect_sql[] =
    "WITH upd AS (UPDATE billing.subscriptions SET " S_SUB_SET
    " WHERE $17::boolean AND $18::boolean AND tenant_id = $1::uuid"
    " RETURNING 1),"
    " ins AS (INSERT INTO billing.subscriptions (tenant_id, subscription_id,"
    " customer_id, item_id, price_id, plan, status, tenant_status,"
    " collection_method, cancel_at_period_end, current_period_end,"
    " trial_end, past_due_since, grace_expired, status_event_created,"
    " status_event_id) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,"
    " $12, $13, $14, $15, $16 WHERE $17 AND NOT $18"
    " ON CONFLICT (tenant_id) DO UPDATE SET " S_SUB_SET " RETURNING 1),"
    " cus AS (INSERT INTO billing.customers (tenant_id, customer_id)"
    " SELECT $1, $19::text WHERE $19 <> '' ON CONFLICT DO NOTHING"
    " RETURNING 1),"
    " ob AS (INSERT INTO billing.outbox (tenant_id, status, plan, reason,"
    " event_id) SELECT $1, $21::text, $22::text, $23::text, $24::text"
    " WHERE $20::boolean RETURNING 1)"
    " UPDATE billing.events SET tenant_id = $26::uuid, outcome = $27::text"
    " WHERE id = $25::text";

void
billing_store_effect_stmt(const billing_effect_t *e, const char *event_id,
                          const char *event_tenant, const char *outcome,
                          billing_effect_params_t *p, kl_pg_stmt_t *stmt)
{
    const billing_row_t *r = &e->sub;
    bool tenant = e->tenant_id[0] != '\0';
    memset(p, 0, sizeof *p);
    snprintf(p->num[0], sizeof p->num[0], "%lld",
             (long long)r->current_period_end);
    snprintf(p->num[1], sizeof p->num[1], "%lld", (long long)r->trial_end);
    snprintf(p->num[2], sizeof p->num[2], "%lld", (long long)r->past_due_since);
    snprintf(p->num[3], sizeof p->num[3], "%lld",
             (long long)r->status_event_created);
    const char *v[BILLING_EFFECT_NPARAMS] = {
        tenant ? e->tenant_id : NULL,
        r->subscription_id,
        r->customer_id,
        r->item_id,
        r->price_id,
        r->plan,
        r->status,
        r->tenant_status,
        r->collection_method[0] ? r->collection_method : "charge_automatically",
        r->cancel_at_period_end ? "true" : "false",
        p->num[0],
        p->num[1],
        p->num[2],
        r->grace_expired ? "true" : "false",
        p->num[3],
        r->status_event_id,
        tenant && e->save ? "true" : "false",
        e->exists ? "true" : "false",
        tenant ? e->customer_id : "",
        tenant && e->outbox ? "true" : "false",
        e->outbox_status[0] ? e->outbox_status : NULL,
        e->outbox_plan[0] ? e->outbox_plan : NULL,
        e->outbox_reason,
        e->outbox_source[0] ? e->outbox_source : NULL,
        event_id,
        event_tenant && *event_tenant ? event_tenant : NULL,
        outcome ? outcome : "",
    };
    memcpy(p->v, v, sizeof v);
    *stmt = (kl_pg_stmt_t){"billing_effect", s_effect_sql,
                           BILLING_EFFECT_NPARAMS, p->v};
}

int
billing_store_effect(kl_pg_t *pg, const billing_effect_t *e,
                     const char *event_id, const char *event_tenant,
                     const char *outcome, kl_status_t *status)
{
    billing_effect_params_t p;
    kl_pg_stmt_t stmt;
    billing_store_effect_stmt(e, event_id, event_tenant, outcome, &p, &stmt);
    return s_run(pg, stmt.name, stmt.sql, stmt.nparams, stmt.params, status);
}

/*
 * The intake statement. ins yields a row only when the event is new; t
 * (materialized: computed once) reads ins, so the tenant is looked up, and
 * its subscription row locked in the LATERAL join on t, only after the
 * inbox insert and only for a new event. The row lock returns the row's
 * latest committed version even when it changed after this statement's
 * snapshot (READ COMMITTED re-reads a row it had to wait for).
 */
static const char s_intake_sql[] =
    "WITH ins AS (INSERT INTO billing.events (id, type, created)"
    " VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING RETURNING id),"
    " t AS MATERIALIZED (SELECT coalesce($4::uuid,"
    " (SELECT s.tenant_id FROM billing.subscriptions s"
    " WHERE $5 <> '' AND s.subscription_id = $5),"
    " (SELECT c.tenant_id FROM billing.customers c"
    " WHERE $6 <> '' AND c.customer_id = $6)) AS tenant_id FROM ins)"
    " SELECT t.tenant_id::text, l.*, c.customer_id, p.paid_until FROM t"
    " LEFT JOIN LATERAL (SELECT " S_SUB_COLS " FROM billing.subscriptions s"
    " WHERE s.tenant_id = t.tenant_id FOR UPDATE) l ON true"
    " LEFT JOIN billing.customers c ON c.tenant_id = t.tenant_id"
    " LEFT JOIN billing.prepaid p ON p.tenant_id = t.tenant_id";

void
billing_store_intake_stmt(const char *id, const char *type, int64_t created,
                          const billing_keys_t *keys,
                          billing_intake_params_t *p, kl_pg_stmt_t *stmt)
{
    snprintf(p->created, sizeof p->created, "%lld", (long long)created);
    p->v[0] = id;
    p->v[1] = type;
    p->v[2] = p->created;
    p->v[3] = keys->candidate[0] ? keys->candidate : NULL;
    p->v[4] = keys->subscription_id;
    p->v[5] = keys->customer_id;
    *stmt = (kl_pg_stmt_t){"billing_intake", s_intake_sql,
                           BILLING_INTAKE_NPARAMS, p->v};
}

bool
billing_store_intake_read(const PGresult *res, const billing_keys_t *keys,
                          billing_preload_t *out)
{
    memset(out, 0, sizeof *out);
    out->keys = *keys;
    if (PQntuples(res) == 0)
        return false;
    out->found = !PQgetisnull(res, 0, 0);
    if (out->found) {
        s_copy(out->row.tenant_id, sizeof out->row.tenant_id, res, 0, 0);
        s_sub_from(res, 0, 1, &out->row);
        s_customer_from(res, 0, 17, &out->row);
    }
    return true;
}

int
billing_store_prune(kl_pg_t *pg, int days, int max, int *n, kl_status_t *status)
{
    char d[16], m[16];
    snprintf(d, sizeof d, "%d", days);
    snprintf(m, sizeof m, "%d", max);
    const char *params[] = {d, m};
    PGresult *res = kl_pg_query(
        pg, "billing_prune",
        "WITH e AS (DELETE FROM billing.events WHERE id IN (SELECT id FROM"
        " billing.events WHERE received_at < now() - $1::int *"
        " interval '1 day' LIMIT $2::int) RETURNING 1),"
        " o AS (DELETE FROM billing.outbox WHERE id IN (SELECT id FROM"
        " billing.outbox WHERE done_at < now() - $1::int * interval '1 day'"
        " LIMIT $2::int) RETURNING 1)"
        " SELECT greatest((SELECT count(*) FROM e), (SELECT count(*) FROM o))",
        2, params, status);
    if (!res)
        return s_code(status);
    *n = (int)s_i64(res, 0, 0);
    PQclear(res);
    return 0;
}

/* --- batch forms (billing_intake's group commit) ------------------------ */

void
billing_store_batch_init(billing_store_batch_t *b, int ncols)
{
    memset(b, 0, sizeof *b);
    b->ncols = ncols;
}

/* Appends v to an array literal: NULL unquoted, any other value quoted
 * with its quotes and backslashes escaped. */
static void
s_arr_elem(kl_buf_t *a, const char *v)
{
    kl_buf_str(a, a->len ? "," : "{");
    if (!v) {
        kl_buf_str(a, "NULL");
        return;
    }
    kl_buf_add(a, "\"", 1);
    for (const char *c = v; *c; c++) {
        if (*c == '"' || *c == '\\')
            kl_buf_add(a, "\\", 1);
        kl_buf_add(a, c, 1);
    }
    kl_buf_add(a, "\"", 1);
}

void
billing_store_batch_row(billing_store_batch_t *b, const char *const *v)
{
    for (int i = 0; i < b->ncols; i++)
        s_arr_elem(&b->cols[i], v[i]);
    b->nrows++;
}

void
billing_store_batch_free(billing_store_batch_t *b)
{
    for (int i = 0; i < b->ncols; i++)
        free(b->cols[i].p);
    memset(b, 0, sizeof *b);
}

/* Closes the arrays; v[i] is column i's literal ("{}" with no row). */
static void
s_batch_finish(billing_store_batch_t *b)
{
    for (int i = 0; i < b->ncols; i++) {
        kl_buf_str(&b->cols[i], b->cols[i].len ? "}" : "{}");
        b->v[i] = b->cols[i].p;
    }
}

/*
 * The intake statement over arrays, a row of them per event (the single
 * statement's parameters): the same inbox insert, tenant lookup and row
 * locks, one output row per event recorded now, its position (from 1)
 * first. Events are inserted in position order.
 */
static const char s_intake_batch_sql[] =
    "WITH input AS (SELECT * FROM unnest($1::text[], $2::text[],"
    " $3::bigint[], $4::uuid[], $5::text[], $6::text[]) WITH ORDINALITY"
    " AS u(id, type, created, candidate, sub_id, cus_id, ord)),"
    " ins AS (INSERT INTO billing.events (id, type, created)"
    " SELECT id, type, created FROM input ORDER BY ord"
    " ON CONFLICT (id) DO NOTHING RETURNING id),"
    " t AS MATERIALIZED (SELECT i.ord, coalesce(i.candidate,"
    " (SELECT s.tenant_id FROM billing.subscriptions s"
    " WHERE i.sub_id <> '' AND s.subscription_id = i.sub_id),"
    " (SELECT c.tenant_id FROM billing.customers c"
    " WHERE i.cus_id <> '' AND c.customer_id = i.cus_id)) AS tenant_id"
    " FROM input i JOIN ins ON ins.id = i.id)"
    " SELECT t.ord, t.tenant_id::text, l.*, c.customer_id, p.paid_until"
    " FROM t LEFT JOIN LATERAL (SELECT " S_SUB_COLS
    " FROM billing.subscriptions s WHERE s.tenant_id = t.tenant_id"
    " FOR UPDATE) l ON true"
    " LEFT JOIN billing.customers c ON c.tenant_id = t.tenant_id"
    " LEFT JOIN billing.prepaid p ON p.tenant_id = t.tenant_id"
    " ORDER BY t.ord";

void
billing_store_intake_batch_add(billing_store_batch_t *b, const char *id,
                               const char *type, int64_t created,
                               const billing_keys_t *keys)
{
    billing_intake_params_t p;
    kl_pg_stmt_t one;
    billing_store_intake_stmt(id, type, created, keys, &p, &one);
    billing_store_batch_row(b, p.v);
}

void
billing_store_intake_batch_stmt(billing_store_batch_t *b, kl_pg_stmt_t *stmt)
{
    s_batch_finish(b);
    *stmt = (kl_pg_stmt_t){"billing_intake_batch", s_intake_batch_sql,
                           BILLING_INTAKE_NPARAMS, b->v};
}

int
billing_store_intake_batch_read(const PGresult *res, int row,
                                const billing_keys_t *keys,
                                billing_preload_t *out)
{
    int ord = (int)s_i64(res, row, 0);
    if (!out)
        return ord;
    memset(out, 0, sizeof *out);
    out->keys = *keys;
    out->found = !PQgetisnull(res, row, 1);
    if (out->found) {
        s_copy(out->row.tenant_id, sizeof out->row.tenant_id, res, row, 1);
        s_sub_from(res, row, 2, &out->row);
        s_customer_from(res, row, 18, &out->row);
    }
    return ord;
}

/* The effect statement over arrays, a row per event (the single
 * statement's 27 parameters): the same writes; the events' tenants must
 * be distinct (each subscription row is written once). */
#define S_SUB_SET_E                                                            \
    "subscription_id = e.subscription_id, customer_id = e.customer_id,"        \
    " item_id = e.item_id, price_id = e.price_id, plan = e.plan,"              \
    " status = e.status, tenant_status = e.tenant_status,"                     \
    " collection_method = e.collection_method,"                                \
    " cancel_at_period_end = e.cancel_at_period_end,"                          \
    " current_period_end = e.current_period_end, trial_end = e.trial_end,"     \
    " past_due_since = e.past_due_since, grace_expired = e.grace_expired,"     \
    " status_event_created = e.status_event_created,"                          \
    " status_event_id = e.status_event_id, updated_at = now()"

#define S_SUB_INS_COLS                                                         \
    "tenant_id, subscription_id, customer_id, item_id, price_id, plan,"        \
    " status, tenant_status, collection_method, cancel_at_period_end,"         \
    " current_period_end, trial_end, past_due_since, grace_expired,"           \
    " status_event_created, status_event_id"

static const char s_effect_batch_sql[] =
    "WITH e AS MATERIALIZED (SELECT * FROM unnest($1::uuid[], $2::text[],"
    " $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],"
    " $9::text[], $10::boolean[], $11::bigint[], $12::bigint[],"
    " $13::bigint[], $14::boolean[], $15::bigint[], $16::text[],"
    " $17::boolean[], $18::boolean[], $19::text[], $20::boolean[],"
    " $21::text[], $22::text[], $23::text[], $24::text[], $25::text[],"
    " $26::uuid[], $27::text[]) WITH ORDINALITY AS u(tenant_id,"
    " subscription_id, customer_id, item_id, price_id, plan, status,"
    " tenant_status, collection_method, cancel_at_period_end,"
    " current_period_end, trial_end, past_due_since, grace_expired,"
    " status_event_created, status_event_id, save, locked, customer,"
    " outbox, ob_status, ob_plan, ob_reason, ob_source, event_id,"
    " event_tenant, outcome, ord)),"
    " upd AS (UPDATE billing.subscriptions s SET " S_SUB_SET_E
    " FROM e WHERE e.save AND e.locked AND s.tenant_id = e.tenant_id"
    " RETURNING 1),"
    " ins AS (INSERT INTO billing.subscriptions (" S_SUB_INS_COLS ")"
    " SELECT " S_SUB_INS_COLS " FROM e WHERE e.save AND NOT e.locked"
    " ORDER BY ord ON CONFLICT (tenant_id) DO UPDATE SET"
    " subscription_id = excluded.subscription_id,"
    " customer_id = excluded.customer_id, item_id = excluded.item_id,"
    " price_id = excluded.price_id, plan = excluded.plan,"
    " status = excluded.status, tenant_status = excluded.tenant_status,"
    " collection_method = excluded.collection_method,"
    " cancel_at_period_end = excluded.cancel_at_period_end,"
    " current_period_end = excluded.current_period_end,"
    " trial_end = excluded.trial_end,"
    " past_due_since = excluded.past_due_since,"
    " grace_expired = excluded.grace_expired,"
    " status_event_created = excluded.status_event_created,"
    " status_event_id = excluded.status_event_id, updated_at = now()"
    " RETURNING 1),"
    " cus AS (INSERT INTO billing.customers (tenant_id, customer_id)"
    " SELECT tenant_id, customer FROM e WHERE customer <> '' ORDER BY ord"
    " ON CONFLICT DO NOTHING RETURNING 1),"
    " ob AS (INSERT INTO billing.outbox (tenant_id, status, plan, reason,"
    " event_id) SELECT tenant_id, ob_status, ob_plan, ob_reason, ob_source"
    " FROM e WHERE e.outbox ORDER BY ord RETURNING 1)"
    " UPDATE billing.events v SET tenant_id = e.event_tenant,"
    " outcome = e.outcome FROM e WHERE v.id = e.event_id";

void
billing_store_effect_batch_add(billing_store_batch_t *b,
                               const billing_effect_t *e, const char *event_id,
                               const char *event_tenant, const char *outcome)
{
    billing_effect_params_t p;
    kl_pg_stmt_t one;
    billing_store_effect_stmt(e, event_id, event_tenant, outcome, &p, &one);
    billing_store_batch_row(b, p.v);
}

void
billing_store_effect_batch_stmt(billing_store_batch_t *b, kl_pg_stmt_t *stmt)
{
    s_batch_finish(b);
    *stmt = (kl_pg_stmt_t){"billing_effect_batch", s_effect_batch_sql,
                           BILLING_EFFECT_NPARAMS, b->v};
}

/* Outbox rows from a result of the take's columns. */
static void
s_outbox_rows(const PGresult *res, billing_outbox_row_t *rows)
{
    for (int i = 0; i < PQntuples(res); i++) {
        rows[i].id = s_i64(res, i, 0);
        s_copy(rows[i].tenant_id, sizeof rows[i].tenant_id, res, i, 1);
        s_copy(rows[i].status, sizeof rows[i].status, res, i, 2);
        s_copy(rows[i].plan, sizeof rows[i].plan, res, i, 3);
        s_copy(rows[i].reason, sizeof rows[i].reason, res, i, 4);
        rows[i].attempts = (int)s_i64(res, i, 5);
    }
}

/* An array literal of ids: {1,2,3}. Caller frees. */
static char *
s_id_array(const int64_t *ids, int n)
{
    char *list = kl_malloc((size_t)n * 21 + 3);
    size_t o = 0;
    list[o++] = '{';
    for (int i = 0; i < n; i++)
        o += (size_t)sprintf(list + o, "%s%lld", i ? "," : "",
                             (long long)ids[i]);
    list[o++] = '}';
    list[o] = '\0';
    return list;
}

int
billing_store_outbox_take(kl_pg_t *pg, billing_outbox_row_t *rows, int max,
                          int *n, kl_status_t *status)
{
    *n = 0;
    char m[16], spare[16];
    snprintf(m, sizeof m, "%d", max);
    snprintf(spare, sizeof spare, "%d", 4 * max);
    /*
     * Two statements, each linear in the pending rows whatever its plan:
     * a single pass finds each tenant's oldest pending row (the heads),
     * and the oldest due heads are then locked by primary key, at most max
     * of them, skipping those another instance holds (up to 4 * max heads
     * are looked up, so that this instance can go past them). A tenant whose
     * oldest row is not due waits whole, so its changes apply in order. Both
     * are planned on each call, with the actual ids. The queries before these
     * did this in one statement (a correlated NOT EXISTS, then IN (SELECT
     * min(id) ... GROUP BY tenant_id)); both went quadratic under some
     * plans, such as the generic plan a prepared statement keeps from an
     * empty table, or estimates of a table never analyzed (a nested loop,
     * or a full index scan per head), taking seconds per batch behind a
     * backlog of thousands of rows.
     */
    const char *hp[] = {spare};
    PGresult *res = kl_pg_query(
        pg, NULL,
        "SELECT h.id FROM (SELECT DISTINCT ON (p.tenant_id) p.id,"
        " p.next_attempt_at FROM billing.outbox p WHERE p.done_at IS NULL"
        " ORDER BY p.tenant_id, p.id) h WHERE h.next_attempt_at <= now()"
        " ORDER BY h.id LIMIT $1::int",
        1, hp, status);
    if (!res)
        return s_code(status);
    int n_heads = PQntuples(res);
    int64_t *heads = kl_malloc(((size_t)n_heads + 1) * sizeof *heads);
    for (int i = 0; i < n_heads; i++)
        heads[i] = s_i64(res, i, 0);
    PQclear(res);
    if (n_heads == 0) {
        free(heads);
        return 0;
    }
    char *list = s_id_array(heads, n_heads);
    free(heads);
    /* No done_at condition in the statement: it would let the planner
     * look the ids up in the partial index outbox_pending, where id is the
     * second column (a scan of the whole index per id). A head done by
     * another instance since the first statement comes back done, and is
     * left out here. */
    const char *lp[] = {list, m};
    res = kl_pg_query(pg, NULL,
                      "SELECT o.id, o.tenant_id::text, coalesce(o.status, ''),"
                      " coalesce(o.plan, ''), o.reason, o.attempts,"
                      " o.done_at IS NULL FROM billing.outbox o"
                      " WHERE o.id = ANY ($1::bigint[]) ORDER BY o.id"
                      " LIMIT $2::int FOR UPDATE OF o SKIP LOCKED",
                      2, lp, status);
    free(list);
    if (!res)
        return s_code(status);
    s_outbox_rows(res, rows);
    for (int i = 0; i < PQntuples(res); i++)
        if (s_bool(res, i, 6))
            rows[(*n)++] = rows[i];
    PQclear(res);
    return 0;
}

int
billing_store_outbox_followers(kl_pg_t *pg, const billing_outbox_row_t *heads,
                               int n_heads, int max, billing_outbox_row_t *rows,
                               int *n, kl_status_t *status)
{
    *n = 0;
    if (n_heads == 0)
        return 0;
    /* The heads' tenants and ids as array literals. A head is its
     * tenant's oldest pending row, so the tenant's other pending rows are
     * the ones after it. */
    char *tenants = kl_malloc((size_t)n_heads * 38 + 3);
    int64_t *head_ids = kl_malloc((size_t)n_heads * sizeof *head_ids);
    size_t t = 0;
    tenants[t++] = '{';
    for (int i = 0; i < n_heads; i++) {
        t += (size_t)sprintf(tenants + t, "%s%s", i ? "," : "",
                             heads[i].tenant_id);
        head_ids[i] = heads[i].id;
    }
    tenants[t++] = '}';
    tenants[t] = '\0';
    char *ids = s_id_array(head_ids, n_heads);
    free(head_ids);
    char m[16];
    snprintf(m, sizeof m, "%d", max);
    const char *params[] = {tenants, ids, m};
    /* Unprepared, as the take. No other instance holds these rows: it
     * would have to hold their tenant's oldest pending row, which this
     * transaction has locked. */
    PGresult *res = kl_pg_query(
        pg, NULL,
        "SELECT o.id, o.tenant_id::text, coalesce(o.status, ''),"
        " coalesce(o.plan, ''), o.reason, o.attempts FROM billing.outbox o"
        " WHERE o.tenant_id = ANY ($1::uuid[]) AND o.done_at IS NULL"
        " AND o.id <> ALL ($2::bigint[]) ORDER BY o.tenant_id, o.id"
        " LIMIT $3::int FOR UPDATE OF o",
        3, params, status);
    free(tenants);
    free(ids);
    if (!res)
        return s_code(status);
    *n = PQntuples(res);
    s_outbox_rows(res, rows);
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
billing_store_outbox_done_all(kl_pg_t *pg, const int64_t *ids, int n,
                              kl_status_t *status)
{
    if (n == 0)
        return 0;
    char *list = s_id_array(ids, n);
    const char *params[] = {list};
    int rc = s_run(pg, "billing_outbox_done_all",
                   "UPDATE billing.outbox SET done_at = now(), attempts ="
                   " attempts + 1, last_error = NULL"
                   " WHERE id = ANY ($1::bigint[])",
                   1, params, status);
    free(list);
    return rc;
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
