/*
 * billing_store against a throwaway database (KLTEST_PG_URL): the outbox
 * take (each tenant's oldest pending row only, due rows only, rows locked
 * elsewhere skipped, a backlog of 10,000 rows taken in order batch after
 * batch) and the rows that follow each taken one, the effect statement, and the
 * intake statement (records once, reads and locks only a new event's tenant).
 */
#include "billing_store.h"
#include "kl_alloc.h"
#include "kl_pg.h"
#include "kl_rpc.h"
#include "kl_test_db.h"

#include <libpq-fe.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static kl_test_db_t *s_db; /* this run's database */
static const char *s_url;  /* its conninfo */

/* One value of sql (printf-style) on the test database; caller frees. */
static char *
s_value(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *v = kl_test_db_vvalue(s_url, fmt, ap);
    va_end(ap);
    if (!v)
        fail_msg("query failed (its error is printed above)");
    return v;
}

static long
s_long(const char *fmt, const char *arg)
{
    char *v = s_value(fmt, arg);
    long n = strtol(v, NULL, 10);
    free(v);
    return n;
}

/* Queues an outbox row for tenant; returns its id. */
static int64_t
s_outbox(const char *tenant)
{
    char *v = s_value("INSERT INTO billing.outbox (tenant_id, status, reason)"
                      " VALUES ('%s', 'active', 'test') RETURNING id",
                      tenant);
    int64_t id = strtoll(v, NULL, 10);
    free(v);
    return id;
}

/* Takes up to max rows in a transaction of pg's (left open). */
static int
s_take(kl_pg_t *pg, billing_outbox_row_t *rows, int max)
{
    kl_status_t st;
    int n = -1;
    if (!kl_pg_in_transaction(pg))
        assert_int_equal(kl_pg_begin(pg, &st), 0);
    if (billing_store_outbox_take(pg, rows, max, &n, &st) < 0)
        fail_msg("take: %s", st.message);
    return n;
}

static int
s_setup(void **state)
{
    (void)state;
    s_db = kl_test_db_new("test_billing_store", "klbstore");
    if (!s_db)
        return -1;
    s_url = kl_test_db_url(s_db);
    kl_pg_t *pg = kl_pg_new(s_url);
    kl_status_t st;
    int rc = billing_store_migrate(pg, &st);
    kl_pg_destroy(&pg);
    if (rc < 0)
        fprintf(stderr, "migrate: %s\n", st.message);
    return rc;
}

static int
s_teardown(void **state)
{
    (void)state;
    kl_test_db_destroy(&s_db);
    return 0;
}

/* Each tenant's oldest pending row only; a tenant whose oldest row waits
 * for its next attempt waits whole; a row locked elsewhere is skipped, and
 * its tenant's later rows with it. */
static void
test_outbox_take_heads(void **state)
{
    (void)state;
    char a[37], b[37], c[37];
    kl_test_db_uuid(a);
    kl_test_db_uuid(b);
    kl_test_db_uuid(c);
    int64_t a1 = s_outbox(a), b1 = s_outbox(b), a2 = s_outbox(a);
    int64_t c1 = s_outbox(c), b2 = s_outbox(b);
    char *ok = s_value("UPDATE billing.outbox SET next_attempt_at = now() +"
                       " interval '1 hour' WHERE id = %lld RETURNING 1",
                       (long long)a1);
    free(ok);
    kl_pg_t *pg = kl_pg_new(s_url);
    billing_outbox_row_t rows[10];
    kl_status_t st;
    int n = s_take(pg, rows, 10);
    assert_int_equal(n, 2);
    assert_int_equal(rows[0].id, b1);
    assert_string_equal(rows[0].tenant_id, b);
    assert_string_equal(rows[0].status, "active");
    assert_string_equal(rows[0].plan, "");
    assert_string_equal(rows[0].reason, "test");
    assert_int_equal(rows[1].id, c1);
    kl_pg_rollback(pg);

    /* Another instance holds b's head: b is skipped whole. */
    kl_pg_t *other = kl_pg_new(s_url);
    billing_outbox_row_t held[10];
    assert_int_equal(kl_pg_begin(other, &st), 0);
    char id[24];
    snprintf(id, sizeof id, "%lld", (long long)b1);
    const char *params[] = {id};
    PGresult *res = kl_pg_query(other, "test_lock",
                                "SELECT 1 FROM billing.outbox WHERE id ="
                                " $1::bigint FOR UPDATE",
                                1, params, &st);
    assert_non_null(res);
    PQclear(res);
    n = s_take(pg, held, 10);
    assert_int_equal(n, 1);
    assert_int_equal(held[0].id, c1);
    kl_pg_rollback(pg);
    kl_pg_rollback(other);

    /* b's and c's heads done: b's second row is next; a still waits. */
    int64_t done[] = {b1, c1};
    s_take(pg, rows, 10);
    assert_int_equal(billing_store_outbox_done_all(pg, done, 2, &st), 0);
    assert_int_equal(kl_pg_commit(pg, &st), 0);
    n = s_take(pg, rows, 10);
    assert_int_equal(n, 1);
    assert_int_equal(rows[0].id, b2);
    kl_pg_rollback(pg);
    ok = s_value("UPDATE billing.outbox SET next_attempt_at = now() WHERE"
                 " id = %lld RETURNING 1",
                 (long long)a1);
    free(ok);
    n = s_take(pg, rows, 10);
    assert_int_equal(n, 2);
    assert_int_equal(rows[0].id, a1);
    assert_int_equal(rows[1].id, b2);
    int64_t rest[] = {a1, b2};
    assert_int_equal(billing_store_outbox_done_all(pg, rest, 2, &st), 0);
    assert_int_equal(kl_pg_commit(pg, &st), 0);
    n = s_take(pg, rows, 10);
    assert_int_equal(n, 1);
    assert_int_equal(rows[0].id, a2);
    assert_int_equal(billing_store_outbox_done(pg, a2, "gone", &st), 0);
    assert_int_equal(kl_pg_commit(pg, &st), 0);
    assert_int_equal(s_long("SELECT count(*) FROM billing.outbox WHERE"
                            " done_at IS NULL%s",
                            ""),
                     0);
    assert_int_equal(s_long("SELECT count(*) FROM billing.outbox WHERE"
                            " last_error = 'gone' AND attempts = 1%s",
                            ""),
                     1);
    kl_pg_destroy(&other);
    kl_pg_destroy(&pg);
}

/* 10,000 pending rows of 1,000 tenants, taken 100 at a time: each batch
 * is the next 100 ids (every tenant's head comes before its next row), and
 * the whole backlog goes in well under a minute, with generic plans and
 * the first take made while the outbox was empty. (The take queries before
 * this one, prepared once, kept a plan made on the empty table that took
 * about 9 s per batch at this size.) */
static void
test_outbox_take_backlog(void **state)
{
    (void)state;
    /* No ANALYZE behind the test's back: it would replace such a plan. */
    assert_int_equal(kl_test_db_exec(s_url, "ALTER TABLE billing.outbox SET"
                                            " (autovacuum_enabled = false)"),
                     0);
    kl_pg_t *pg = kl_pg_new(s_url);
    kl_status_t st;
    billing_outbox_row_t rows[100];
    assert_int_equal(
        kl_pg_exec(pg, "SET plan_cache_mode = force_generic_plan", &st), 0);
    assert_int_equal(s_take(pg, rows, 100), 0);
    kl_pg_rollback(pg);
    assert_int_equal(kl_test_db_exec(s_url,
                                     "INSERT INTO billing.outbox (tenant_id,"
                                     " status, reason) SELECT md5((g % 1000)"
                                     "::text)::uuid, 'active', 'backlog' FROM"
                                     " generate_series(0, 9999) g"),
                     0);
    int64_t ids[100];
    int64_t start = kl_now_mono_ms();
    for (int batch = 0; batch < 100; batch++) {
        int n = s_take(pg, rows, 100);
        assert_int_equal(n, 100);
        for (int i = 0; i < n; i++) {
            if (rows[i].id != batch * 100 + i + 1)
                fail_msg("batch %d row %d: id %lld", batch, i,
                         (long long)rows[i].id);
            ids[i] = rows[i].id;
        }
        assert_int_equal(billing_store_outbox_done_all(pg, ids, n, &st), 0);
        assert_int_equal(kl_pg_commit(pg, &st), 0);
        int64_t took = kl_now_mono_ms() - start;
        if (took > 60000)
            fail_msg("%d batches of 100 took %lld ms", batch + 1,
                     (long long)took);
    }
    assert_int_equal(s_take(pg, rows, 100), 0);
    kl_pg_rollback(pg);
    kl_pg_destroy(&pg);
}

/* The rows after each head: same tenant, greater id, pending, ordered by
 * tenant then id, at most max. */
static void
test_outbox_followers(void **state)
{
    (void)state;
    char a[37], b[37], c[37];
    kl_test_db_uuid(a);
    kl_test_db_uuid(b);
    kl_test_db_uuid(c);
    int64_t a1 = s_outbox(a), b1 = s_outbox(b), a2 = s_outbox(a);
    int64_t a3 = s_outbox(a), b2 = s_outbox(b), c1 = s_outbox(c);
    char *ok = s_value("UPDATE billing.outbox SET done_at = now() WHERE id ="
                       " %lld RETURNING 1",
                       (long long)a2);
    free(ok);
    kl_pg_t *pg = kl_pg_new(s_url);
    kl_status_t st;
    billing_outbox_row_t heads[3], later[10];
    int n = s_take(pg, heads, 3);
    assert_int_equal(n, 3);
    assert_int_equal(heads[0].id, a1);
    assert_int_equal(heads[1].id, b1);
    assert_int_equal(heads[2].id, c1);
    int m = -1;
    assert_int_equal(
        billing_store_outbox_followers(pg, heads, n, 10, later, &m, &st), 0);
    assert_int_equal(m, 2);
    bool a_first = strcmp(a, b) < 0;
    assert_int_equal(later[0].id, a_first ? a3 : b2);
    assert_int_equal(later[1].id, a_first ? b2 : a3);
    assert_string_equal(later[a_first ? 0 : 1].tenant_id, a);
    assert_int_equal(
        billing_store_outbox_followers(pg, heads, n, 1, later, &m, &st), 0);
    assert_int_equal(m, 1);
    assert_int_equal(
        billing_store_outbox_followers(pg, heads, 0, 10, later, &m, &st), 0);
    assert_int_equal(m, 0);
    int64_t all[] = {a1, a3, b1, b2, c1};
    assert_int_equal(billing_store_outbox_done_all(pg, all, 5, &st), 0);
    assert_int_equal(kl_pg_commit(pg, &st), 0);
    kl_pg_destroy(&pg);
}

/* The effect statement: insert, then update, a subscription with the
 * customer mapping, an outbox row and the event's outcome; then an effect
 * that writes nothing but the outcome. */
static void
test_effect(void **state)
{
    (void)state;
    char t[37];
    kl_test_db_uuid(t);
    kl_pg_t *pg = kl_pg_new(s_url);
    kl_status_t st;
    bool inserted = false;
    assert_int_equal(kl_pg_begin(pg, &st), 0);
    assert_int_equal(
        billing_store_event_insert(pg, "evt_fx1", "x", 10, &inserted, &st), 0);
    assert_true(inserted);
    billing_effect_t e;
    memset(&e, 0, sizeof e);
    snprintf(e.tenant_id, sizeof e.tenant_id, "%s", t);
    e.save = true;
    snprintf(e.sub.tenant_id, sizeof e.sub.tenant_id, "%s", t);
    snprintf(e.sub.subscription_id, sizeof e.sub.subscription_id, "sub_fx");
    snprintf(e.sub.customer_id, sizeof e.sub.customer_id, "cus_fx");
    snprintf(e.sub.plan, sizeof e.sub.plan, "pro");
    snprintf(e.sub.status, sizeof e.sub.status, "past_due");
    snprintf(e.sub.tenant_status, sizeof e.sub.tenant_status, "past_due");
    e.sub.past_due_since = 10;
    e.sub.status_event_created = 10;
    snprintf(e.sub.status_event_id, sizeof e.sub.status_event_id, "evt_fx1");
    snprintf(e.customer_id, sizeof e.customer_id, "cus_fx");
    e.outbox = true;
    snprintf(e.outbox_status, sizeof e.outbox_status, "past_due");
    snprintf(e.outbox_reason, sizeof e.outbox_reason, "invoice payment failed");
    snprintf(e.outbox_source, sizeof e.outbox_source, "evt_fx1");
    if (billing_store_effect(pg, &e, "evt_fx1", t, "first", &st) < 0)
        fail_msg("effect: %s", st.message);
    assert_int_equal(kl_pg_commit(pg, &st), 0);
    char *v = s_value("SELECT subscription_id || ' ' || status || ' ' ||"
                      " tenant_status || ' ' || past_due_since || ' ' ||"
                      " status_event_id FROM billing.subscriptions WHERE"
                      " tenant_id = '%s'",
                      t);
    assert_string_equal(v, "sub_fx past_due past_due 10 evt_fx1");
    free(v);
    v = s_value("SELECT customer_id FROM billing.customers WHERE tenant_id ="
                " '%s'",
                t);
    assert_string_equal(v, "cus_fx");
    free(v);
    v = s_value("SELECT status || ' ' || coalesce(plan, 'NULL') || ' ' ||"
                " reason || ' ' || event_id FROM billing.outbox WHERE"
                " tenant_id = '%s'",
                t);
    assert_string_equal(v, "past_due NULL invoice payment failed evt_fx1");
    free(v);
    v = s_value("SELECT tenant_id || ' ' || outcome FROM billing.events"
                " WHERE id = '%s'",
                "evt_fx1");
    char want[128];
    snprintf(want, sizeof want, "%s first", t);
    assert_string_equal(v, want);
    free(v);

    /* An update of the existing row; another customer id keeps the
     * mapping; no outbox row; no event. */
    e.exists = true;
    snprintf(e.sub.status, sizeof e.sub.status, "active");
    e.sub.past_due_since = 0;
    snprintf(e.customer_id, sizeof e.customer_id, "cus_other");
    e.outbox = false;
    assert_int_equal(kl_pg_begin(pg, &st), 0);
    assert_int_equal(billing_store_effect(pg, &e, NULL, NULL, NULL, &st), 0);
    assert_int_equal(kl_pg_commit(pg, &st), 0);
    assert_int_equal(s_long("SELECT count(*) FROM billing.subscriptions WHERE"
                            " tenant_id = '%s' AND status = 'active' AND"
                            " past_due_since = 0",
                            t),
                     1);
    assert_int_equal(s_long("SELECT count(*) FROM billing.customers WHERE"
                            " tenant_id = '%s' AND customer_id = 'cus_fx'",
                            t),
                     1);
    assert_int_equal(s_long("SELECT count(*) FROM billing.outbox WHERE"
                            " tenant_id = '%s'",
                            t),
                     1);

    /* No tenant: the outcome only. */
    billing_effect_t none;
    memset(&none, 0, sizeof none);
    assert_int_equal(kl_pg_begin(pg, &st), 0);
    assert_int_equal(
        billing_store_event_insert(pg, "evt_fx2", "x", 11, &inserted, &st), 0);
    assert_int_equal(
        billing_store_effect(pg, &none, "evt_fx2", "", "ignored", &st), 0);
    assert_int_equal(kl_pg_commit(pg, &st), 0);
    v = s_value("SELECT coalesce(tenant_id::text, 'NULL') || ' ' || outcome"
                " FROM billing.events WHERE id = '%s'",
                "evt_fx2");
    assert_string_equal(v, "NULL ignored");
    free(v);
    kl_pg_destroy(&pg);
}

/* Runs the intake statement for id with keys in a new transaction, left
 * open. */
static bool
s_intake(kl_pg_t *pg, const char *id, const billing_keys_t *keys,
         billing_preload_t *pre)
{
    billing_intake_params_t p;
    kl_pg_stmt_t stmt;
    billing_store_intake_stmt(id, "invoice.paid", 20, keys, &p, &stmt);
    PGresult *out = NULL;
    kl_status_t st;
    if (kl_pg_pipeline_ex(pg, &stmt, 1, KL_PG_PIPE_BEGIN, &out, &st) < 0)
        fail_msg("intake: %s", st.message);
    bool fresh = billing_store_intake_read(out, keys, pre);
    PQclear(out);
    return fresh;
}

/* Whether the tenant's subscription row can be locked at once from
 * another connection. */
static bool
s_lockable(kl_pg_t *other, const char *tenant)
{
    kl_status_t st;
    const char *params[] = {tenant};
    assert_int_equal(kl_pg_begin(other, &st), 0);
    PGresult *res = kl_pg_query(other, "test_nowait",
                                "SELECT 1 FROM billing.subscriptions WHERE"
                                " tenant_id = $1 FOR UPDATE NOWAIT",
                                1, params, &st);
    bool ok = res != NULL;
    if (!ok)
        assert_non_null(strstr(st.message, "could not obtain lock"));
    PQclear(res);
    kl_pg_rollback(other);
    return ok;
}

/* The intake statement records a new event and reads and locks its
 * tenant's state; a recorded one gets no row and locks nothing; the
 * tenant is found by subscription, customer or a tenant id of its own. */
static void
test_intake(void **state)
{
    (void)state;
    char t[37], u[37];
    kl_test_db_uuid(t);
    kl_test_db_uuid(u);
    char *ok = s_value(
        "WITH c AS (INSERT INTO billing.customers VALUES ('%s', 'cus_in'))"
        " INSERT INTO billing.subscriptions (tenant_id, subscription_id,"
        " customer_id, plan, status, tenant_status, status_event_created)"
        " VALUES ('%s', 'sub_in', 'cus_sub', 'pro', 'active', 'active', 7)"
        " RETURNING 1",
        t, t);
    free(ok);
    kl_pg_t *pg = kl_pg_new(s_url), *other = kl_pg_new(s_url);
    billing_preload_t *pre = kl_malloc(sizeof *pre);
    billing_keys_t keys = {
        .candidate = "", .subscription_id = "sub_in", .customer_id = "cus_in"};
    assert_true(s_intake(pg, "evt_in1", &keys, pre));
    assert_true(pre->found);
    assert_string_equal(pre->row.tenant_id, t);
    assert_true(pre->row.has_subscription);
    assert_string_equal(pre->row.subscription_id, "sub_in");
    assert_string_equal(pre->row.status, "active");
    assert_int_equal(pre->row.status_event_created, 7);
    /* As billing_store_get: the customer mapping wins. */
    assert_true(pre->row.has_customer);
    assert_string_equal(pre->row.customer_id, "cus_in");
    assert_string_equal(pre->keys.subscription_id, "sub_in");
    assert_false(s_lockable(other, t));
    kl_status_t st;
    billing_effect_t none;
    memset(&none, 0, sizeof none);
    billing_effect_params_t ep;
    kl_pg_stmt_t stmt;
    billing_store_effect_stmt(&none, "evt_in1", t, "done", &ep, &stmt);
    PGresult *out = NULL;
    assert_int_equal(
        kl_pg_pipeline_ex(pg, &stmt, 1, KL_PG_PIPE_COMMIT, &out, &st), 0);
    PQclear(out);
    assert_true(s_lockable(other, t));

    /* Recorded already: no row, nothing locked. */
    assert_false(s_intake(pg, "evt_in1", &keys, pre));
    assert_true(s_lockable(other, t));
    kl_pg_rollback(pg);

    /* By customer alone; by the event's own tenant id (no subscription
     * there); by nothing. */
    billing_keys_t by_customer = {.customer_id = "cus_in"};
    assert_true(s_intake(pg, "evt_in2", &by_customer, pre));
    assert_true(pre->found);
    assert_string_equal(pre->row.tenant_id, t);
    kl_pg_rollback(pg);
    billing_keys_t by_id = {.subscription_id = "sub_in"};
    snprintf(by_id.candidate, sizeof by_id.candidate, "%s", u);
    assert_true(s_intake(pg, "evt_in3", &by_id, pre));
    assert_true(pre->found);
    assert_string_equal(pre->row.tenant_id, u);
    assert_false(pre->row.has_subscription);
    kl_pg_rollback(pg);
    billing_keys_t nothing;
    memset(&nothing, 0, sizeof nothing);
    assert_true(s_intake(pg, "evt_in4", &nothing, pre));
    assert_false(pre->found);
    kl_pg_rollback(pg);
    assert_int_equal(s_long("SELECT count(*) FROM billing.events WHERE id"
                            " LIKE 'evt_in%s'",
                            "%"),
                     1);
    free(pre);
    kl_pg_destroy(&other);
    kl_pg_destroy(&pg);
}

/* The batch forms: three events in one intake statement (one found by
 * its subscription and locked, one recorded already, one with an id full
 * of array-literal syntax and no keys), then their effects in one
 * statement; each event gets what the single statements would give it. */
static void
test_batch_forms(void **state)
{
    (void)state;
    char t[37];
    kl_test_db_uuid(t);
    char *ok = s_value(
        "WITH e AS (INSERT INTO billing.events (id, type, created) VALUES"
        " ('evt_bt_old', 'x', 1))"
        " INSERT INTO billing.subscriptions (tenant_id, subscription_id,"
        " customer_id, plan, status, tenant_status, status_event_created)"
        " VALUES ('%s', 'sub_bt', 'cus_bt', 'pro', 'active', 'active', 7)"
        " RETURNING 1",
        t);
    free(ok);
    const char *hostile = "evt_bt_\"q\\\\{a,b}NULL";
    kl_pg_t *pg = kl_pg_new(s_url), *other = kl_pg_new(s_url);
    billing_keys_t by_sub = {.subscription_id = "sub_bt",
                             .customer_id = "cus_bt"};
    billing_keys_t nothing;
    memset(&nothing, 0, sizeof nothing);
    billing_store_batch_t b;
    billing_store_batch_init(&b, BILLING_INTAKE_NPARAMS);
    billing_store_intake_batch_add(&b, "evt_bt_1", "invoice.paid", 20, &by_sub);
    billing_store_intake_batch_add(&b, "evt_bt_old", "invoice.paid", 20,
                                   &nothing);
    billing_store_intake_batch_add(&b, hostile, "invoice.paid", 21, &nothing);
    kl_pg_stmt_t stmt;
    billing_store_intake_batch_stmt(&b, &stmt);
    PGresult *out = NULL;
    kl_status_t st;
    if (kl_pg_pipeline_ex(pg, &stmt, 1, KL_PG_PIPE_BEGIN, &out, &st) < 0)
        fail_msg("intake batch: %s", st.message);
    billing_store_batch_free(&b);
    assert_int_equal(PQntuples(out), 2);
    billing_preload_t *pre = kl_malloc(2 * sizeof *pre);
    assert_int_equal(billing_store_intake_batch_read(out, 0, &by_sub, &pre[0]),
                     1);
    assert_true(pre[0].found);
    assert_string_equal(pre[0].row.tenant_id, t);
    assert_true(pre[0].row.has_subscription);
    assert_string_equal(pre[0].row.status, "active");
    assert_int_equal(pre[0].row.status_event_created, 7);
    assert_string_equal(pre[0].keys.subscription_id, "sub_bt");
    assert_int_equal(billing_store_intake_batch_read(out, 1, &nothing, &pre[1]),
                     3);
    assert_false(pre[1].found);
    PQclear(out);
    assert_false(s_lockable(other, t));

    billing_effect_t e;
    memset(&e, 0, sizeof e);
    snprintf(e.tenant_id, sizeof e.tenant_id, "%s", t);
    e.save = true;
    e.exists = true;
    e.sub = pre[0].row;
    snprintf(e.sub.status, sizeof e.sub.status, "past_due");
    snprintf(e.sub.tenant_status, sizeof e.sub.tenant_status, "past_due");
    e.sub.past_due_since = 20;
    e.sub.status_event_created = 20;
    snprintf(e.sub.status_event_id, sizeof e.sub.status_event_id, "evt_bt_1");
    e.outbox = true;
    snprintf(e.outbox_status, sizeof e.outbox_status, "past_due");
    snprintf(e.outbox_reason, sizeof e.outbox_reason, "it's \"failed\"");
    snprintf(e.outbox_source, sizeof e.outbox_source, "evt_bt_1");
    billing_effect_t none;
    memset(&none, 0, sizeof none);
    billing_store_batch_init(&b, BILLING_EFFECT_NPARAMS);
    billing_store_effect_batch_add(&b, &e, "evt_bt_1", t, "first");
    billing_store_effect_batch_add(&b, &none, hostile, "", "ignored {x}");
    assert_int_equal(b.nrows, 2);
    billing_store_effect_batch_stmt(&b, &stmt);
    out = NULL;
    if (kl_pg_pipeline_ex(pg, &stmt, 1, KL_PG_PIPE_COMMIT, &out, &st) < 0)
        fail_msg("effect batch: %s", st.message);
    PQclear(out);
    billing_store_batch_free(&b);
    assert_true(s_lockable(other, t));
    char *v = s_value("SELECT status || ' ' || tenant_status || ' ' ||"
                      " past_due_since || ' ' || status_event_id || ' ' ||"
                      " plan FROM billing.subscriptions WHERE tenant_id ="
                      " '%s'",
                      t);
    assert_string_equal(v, "past_due past_due 20 evt_bt_1 pro");
    free(v);
    v = s_value("SELECT status || '|' || coalesce(plan, 'NULL') || '|' ||"
                " reason || '|' || event_id FROM billing.outbox WHERE"
                " tenant_id = '%s'",
                t);
    assert_string_equal(v, "past_due|NULL|it's \"failed\"|evt_bt_1");
    free(v);
    v = s_value("SELECT string_agg(id || '|' || coalesce(tenant_id::text,"
                " 'NULL') || '|' || outcome, ';' ORDER BY id) FROM"
                " billing.events WHERE id LIKE 'evt\\_bt\\_%s'",
                "%");
    char want[512];
    snprintf(want, sizeof want,
             "%s|NULL|ignored {x};evt_bt_1|%s|first;"
             "evt_bt_old|NULL|",
             hostile, t);
    assert_string_equal(v, want);
    free(v);
    free(pre);
    kl_pg_destroy(&other);
    kl_pg_destroy(&pg);
}

/* Retention: inbox events received, and outbox rows applied, more than
 * the days ago go, in batches of max; recent ones and pending outbox rows
 * (however old) stay. */
static void
test_prune(void **state)
{
    (void)state;
    char t[37];
    kl_test_db_uuid(t);
    char *ok = s_value(
        "WITH e AS (INSERT INTO billing.events (id, type, created,"
        " received_at) SELECT 'evt_pr_old' || g, 'x', 1, now() - interval"
        " '91 days' FROM generate_series(1, 5) g UNION ALL SELECT"
        " 'evt_pr_new', 'x', 1, now() - interval '89 days' RETURNING 1),"
        " o AS (INSERT INTO billing.outbox (tenant_id, status, reason,"
        " created_at, done_at) SELECT '%s'::uuid, 'active', 'pr_done_old',"
        " now() -"
        " interval '200 days', now() - interval '91 days' FROM"
        " generate_series(1, 3) UNION ALL SELECT '%s'::uuid, 'active',"
        " 'pr_done_new', now() - interval '200 days', now() - interval"
        " '1 day' UNION ALL SELECT '%s'::uuid, 'active', 'pr_pending', now() -"
        " interval '200 days', NULL RETURNING 1)"
        " SELECT (SELECT count(*) FROM e) + (SELECT count(*) FROM o)",
        t, t, t);
    assert_string_equal(ok, "11");
    free(ok);
    kl_pg_t *pg = kl_pg_new(s_url);
    kl_status_t st;
    int n = 0, calls = 0, rc;
    do {
        rc = billing_store_prune(pg, 90, 2, &n, &st);
        if (rc < 0)
            fail_msg("prune: %s", st.message);
        calls++;
    } while (n == 2 && calls < 10);
    /* 5 old events in batches of 2: 2, 2, 1. */
    assert_int_equal(calls, 3);
    assert_int_equal(s_long("SELECT count(*) FROM billing.events WHERE id"
                            " LIKE 'evt\\_pr\\_%s'",
                            "%"),
                     1);
    assert_int_equal(s_long("SELECT count(*) FROM billing.events WHERE id ="
                            " '%s'",
                            "evt_pr_new"),
                     1);
    char *v = s_value("SELECT string_agg(reason, ',' ORDER BY reason) FROM"
                      " billing.outbox WHERE tenant_id = '%s'",
                      t);
    assert_string_equal(v, "pr_done_new,pr_pending");
    free(v);
    assert_int_equal(billing_store_prune(pg, 90, 2, &n, &st), 0);
    assert_int_equal(n, 0);
    kl_pg_destroy(&pg);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        /* First: its first take meets the outbox as migrated, empty. */
        cmocka_unit_test(test_outbox_take_backlog),
        cmocka_unit_test(test_outbox_take_heads),
        cmocka_unit_test(test_outbox_followers),
        cmocka_unit_test(test_effect),
        cmocka_unit_test(test_intake),
        cmocka_unit_test(test_batch_forms),
        cmocka_unit_test(test_prune),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
