/*
 * kl_tenant_db against a real PostgreSQL (KLTEST_PG_URL, a superuser):
 * each run makes its own main database, an owner role and an application
 * role (LOGIN NOSUPERUSER NOBYPASSRLS, owns nothing), a row-model table in
 * schema "shared", a tenant schema and tenant databases, and drops them
 * all at the end. Every table carries tenant_id and a forced RLS policy,
 * as the product's tables do in every model.
 */
#include "kl_alloc.h"
#include "kl_tenant_db.h"
#include "kl_test_db.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

static char *s_admin;    /* KLTEST_PG_URL */
static char s_db[64];    /* this run's main database */
static char s_owner[64]; /* owner role */
static char s_app[64];   /* application role */
static char *s_super_db; /* superuser on s_db */
static char *s_owner_db; /* owner on s_db */
static char *s_app_db;   /* application role on s_db */

/* Tenants: A and B in the row model, S in the schema model, D1..D3 in the
 * database model. */
static const char *s_a = "0a0a0a0a-0000-4000-8000-00000000000a";
static const char *s_b = "0b0b0b0b-0000-4000-8000-00000000000b";
static char s_s[37], s_d1[37], s_d2[37], s_d3[37];

/* A keyword=value conninfo equal to url but for dbname and user (NULL:
 * keep). Caller frees. */
static char *
s_conninfo(const char *url, const char *dbname, const char *user)
{
    char *out = kl_test_db_conninfo(url, dbname, user);
    if (!out)
        fail_msg("bad KLTEST_PG_URL");
    return out;
}

static void
s_exec(const char *url, const char *sql)
{
    assert_int_equal(kl_test_db_exec(url, sql), 0);
}

/* The product-like table, created unqualified in the search_path schema. */
#define S_TABLE                                                                \
    "CREATE TABLE items (tenant_id uuid NOT NULL DEFAULT"                      \
    " NULLIF(current_setting('app.tenant_id', true), '')::uuid,"               \
    " label text NOT NULL);"                                                   \
    "ALTER TABLE items ENABLE ROW LEVEL SECURITY;"                             \
    "ALTER TABLE items FORCE ROW LEVEL SECURITY;"                              \
    "CREATE POLICY t ON items USING (tenant_id = NULLIF(current_setting("      \
    "'app.tenant_id', true), '')::uuid) WITH CHECK (tenant_id = "              \
    "NULLIF(current_setting('app.tenant_id', true), '')::uuid);"

/* As the owner on url: schema name (already quoted) with the table, the
 * application role granted. */
static void
s_make_schema(const char *url, const char *quoted)
{
    char *sql =
        kl_asprintf("CREATE SCHEMA %s; SET search_path = %s; " S_TABLE
                    "GRANT USAGE ON SCHEMA %s TO %s;"
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON items TO %s",
                    quoted, quoted, quoted, s_app, s_app);
    s_exec(url, sql);
    free(sql);
}

/* Database kowloon_t_<hex> of tenant id, owned by the owner role, with
 * schema "shared" and the table. */
static void
s_make_tenant_db(const char *id)
{
    kl_tenant_place_t p;
    kl_status_t st;
    assert_int_equal(
        kl_tenant_place(id, KL_ISOLATION_DATABASE, "shared", "main", &p, &st),
        0);
    char *sql = kl_asprintf("CREATE DATABASE %s OWNER %s", p.db_name, s_owner);
    s_exec(s_admin, sql);
    free(sql);
    char *url = s_conninfo(s_admin, p.db_name, s_owner);
    s_make_schema(url, "shared");
    free(url);
}

static int
s_setup(void **state)
{
    (void)state;
    const char *pg = getenv("KLTEST_PG_URL");
    if (!pg || !*pg) {
        fprintf(stderr, "test_kl_tenant_db needs PostgreSQL: set "
                        "KLTEST_PG_URL=postgresql://postgres@127.0.0.1:PORT/"
                        "postgres (a superuser; see deploy/local/lib.sh "
                        "kl_pg_start)\n");
        return -1;
    }
    s_admin = kl_strdup(pg);
    long stamp = (long)time(NULL) % 100000000;
    snprintf(s_db, sizeof s_db, "kltest_tdb_%d_%ld", (int)getpid(), stamp);
    snprintf(s_owner, sizeof s_owner, "kltest_tdb_own_%d", (int)getpid());
    snprintf(s_app, sizeof s_app, "kltest_tdb_app_%d", (int)getpid());
    char *sql =
        kl_asprintf("CREATE ROLE %s LOGIN NOSUPERUSER NOBYPASSRLS CREATEDB;"
                    "CREATE ROLE %s LOGIN NOSUPERUSER NOBYPASSRLS",
                    s_owner, s_app);
    s_exec(s_admin, sql);
    free(sql);
    sql = kl_asprintf("CREATE DATABASE %s OWNER %s", s_db, s_owner);
    s_exec(s_admin, sql);
    free(sql);
    s_super_db = s_conninfo(s_admin, s_db, NULL);
    s_owner_db = s_conninfo(s_admin, s_db, s_owner);
    s_app_db = s_conninfo(s_admin, s_db, s_app);
    s_make_schema(s_owner_db, "shared");
    kl_test_db_uuid(s_s);
    kl_test_db_uuid(s_d1);
    kl_test_db_uuid(s_d2);
    kl_test_db_uuid(s_d3);
    kl_tenant_place_t p;
    kl_status_t st;
    assert_int_equal(
        kl_tenant_place(s_s, KL_ISOLATION_SCHEMA, "shared", NULL, &p, &st), 0);
    s_make_schema(s_owner_db, p.schema);
    s_make_tenant_db(s_d1);
    s_make_tenant_db(s_d2);
    s_make_tenant_db(s_d3);
    kl_pg_t *owner = kl_pg_new(s_owner_db);
    if (kl_tenant_db_prepare_main(owner, s_app, &st) < 0)
        fail_msg("prepare_main: %s", st.message);
    /* Twice: it is idempotent. */
    assert_int_equal(kl_tenant_db_prepare_main(owner, s_app, &st), 0);
    kl_pg_destroy(&owner);
    return 0;
}

static int
s_teardown(void **state)
{
    (void)state;
    if (!s_admin)
        return 0;
    const char *ids[] = {s_d1, s_d2, s_d3};
    for (size_t i = 0; i < 3; i++) {
        kl_tenant_place_t p;
        kl_status_t st;
        if (kl_tenant_place(ids[i], KL_ISOLATION_DATABASE, "shared", "main", &p,
                            &st) == 0) {
            char *sql = kl_asprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)",
                                    p.db_name);
            s_exec(s_admin, sql);
            free(sql);
        }
    }
    char *sql = kl_asprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", s_db);
    s_exec(s_admin, sql);
    free(sql);
    sql = kl_asprintf("DROP ROLE IF EXISTS %s; DROP ROLE IF EXISTS %s", s_app,
                      s_owner);
    s_exec(s_admin, sql);
    free(sql);
    KL_FREE(&s_admin);
    KL_FREE(&s_super_db);
    KL_FREE(&s_owner_db);
    KL_FREE(&s_app_db);
    return 0;
}

/* A kl_tenant_db of the application role with servers "main" (default),
 * "db2" (the same server under another name) and "down" (nobody listens). */
static kl_tenant_db_t *
s_tdb(size_t max_open)
{
    /* The application role on each server; the database is the tenant's. */
    char *app_server = s_conninfo(s_admin, "postgres", s_app);
    char *db2_app = kl_asprintf("db2=%s", app_server);
    char *main_app = kl_asprintf("main=%s", app_server);
    const char *servers[] = {main_app, db2_app,
                             "down=postgresql://nobody@127.0.0.1:1/postgres"};
    kl_status_t st;
    kl_tenant_db_t *t = kl_tenant_db_new(s_app_db, servers, 3, max_open, &st);
    if (!t)
        fail_msg("kl_tenant_db_new: %s", st.message);
    free(db2_app);
    free(main_app);
    free(app_server);
    return t;
}

static kl_tenant_place_t
s_place(const char *id, kl_isolation_t iso, const char *server)
{
    kl_tenant_place_t p;
    kl_status_t st;
    if (kl_tenant_place(id, iso, "shared", server, &p, &st) < 0)
        fail_msg("kl_tenant_place: %s", st.message);
    return p;
}

/* The single value of sql in a transaction scoped to p. */
static char *
s_scoped_value(kl_tenant_db_t *t, const kl_tenant_place_t *p, const char *sql)
{
    kl_status_t st;
    kl_pg_t *pg = kl_tenant_tx_begin(t, p, &st);
    if (!pg)
        fail_msg("begin %s: %s", p->tenant_id, st.message);
    PGresult *r = kl_pg_query(pg, NULL, sql, 0, NULL, &st);
    if (!r)
        fail_msg("%s: %s", sql, st.message);
    char *v = kl_strdup(PQgetisnull(r, 0, 0) ? "<null>" : PQgetvalue(r, 0, 0));
    PQclear(r);
    assert_int_equal(kl_tenant_tx_commit(t, pg, &st), 0);
    return v;
}

static void
s_scoped_exec(kl_tenant_db_t *t, const kl_tenant_place_t *p, const char *sql)
{
    free(s_scoped_value(t, p, sql));
}

/* --- pure functions ------------------------------------------------------ */

static void
test_names_and_places(void **state)
{
    (void)state;
    kl_isolation_t iso;
    kl_status_t st;
    assert_int_equal(kl_isolation_parse("schema", &iso, &st), 0);
    assert_int_equal(iso, KL_ISOLATION_SCHEMA);
    assert_int_equal(kl_isolation_parse("Schema", &iso, &st),
                     -KL_INVALID_ARGUMENT);
    assert_string_equal(st.message,
                        "isolation must be row, schema or database");
    assert_int_equal(kl_isolation_parse(NULL, &iso, &st), -KL_INVALID_ARGUMENT);
    assert_string_equal(kl_isolation_name(KL_ISOLATION_DATABASE), "database");

    kl_tenant_place_t p;
    const char *id = "12345678-9abc-4def-8123-456789abcdef";
    assert_int_equal(
        kl_tenant_place(id, KL_ISOLATION_ROW, "workspace", NULL, &p, &st), 0);
    assert_string_equal(p.schema, "workspace");
    assert_string_equal(p.db_name, "");
    assert_int_equal(
        kl_tenant_place(id, KL_ISOLATION_SCHEMA, "workspace", NULL, &p, &st),
        0);
    assert_string_equal(p.schema, "t_123456789abc4def8123456789abcdef");
    assert_int_equal(
        kl_tenant_place(id, KL_ISOLATION_DATABASE, "workspace", "db2", &p, &st),
        0);
    assert_string_equal(p.schema, "workspace");
    assert_string_equal(p.db_server, "db2");
    assert_string_equal(p.db_name,
                        "kowloon_t_123456789abc4def8123456789abcdef");
    assert_int_equal(kl_tenant_place_check(&p, &st), 0);

    /* Hostile ids and names never make a placement. */
    const char *bad_ids[] = {"12345678-9ABC-4DEF-8123-456789ABCDEF",
                             "x\"; DROP SCHEMA public; --",
                             "12345678-9abc-4def-8123-456789abcde", "",
                             "12345678-9abc-4def-8123-456789abcdé"};
    for (size_t i = 0; i < sizeof bad_ids / sizeof bad_ids[0]; i++)
        assert_int_equal(kl_tenant_place(bad_ids[i], KL_ISOLATION_SCHEMA,
                                         "workspace", NULL, &p, &st),
                         -KL_INVALID_ARGUMENT);
    assert_int_equal(kl_tenant_place(id, KL_ISOLATION_DATABASE, "workspace",
                                     "db2\"; --", &p, &st),
                     -KL_INVALID_ARGUMENT);
    assert_int_equal(
        kl_tenant_place(id, KL_ISOLATION_DATABASE, "workspace", NULL, &p, &st),
        -KL_INVALID_ARGUMENT);
    assert_int_equal(
        kl_tenant_place(id, KL_ISOLATION_ROW, "Work\"space", NULL, &p, &st),
        -KL_INVALID_ARGUMENT);

    /* A forged placement (a schema not derived from the id) is refused. */
    assert_int_equal(
        kl_tenant_place(id, KL_ISOLATION_SCHEMA, "workspace", NULL, &p, &st),
        0);
    snprintf(p.schema, sizeof p.schema, "t_\"; DROP TABLE x; --");
    assert_int_equal(kl_tenant_place_check(&p, &st), -KL_INVALID_ARGUMENT);
    snprintf(p.schema, sizeof p.schema, "t_0b0b0b0b000040008000000000000b");
    assert_int_equal(kl_tenant_place_check(&p, &st), -KL_INVALID_ARGUMENT);
}

static void
test_servers_and_conninfo(void **state)
{
    (void)state;
    kl_status_t st;
    const char *servers[] = {"main=postgresql://a@h1/x",
                             "db2=host=h2 user=b password='s3cr;e t'"};
    const char *url;
    size_t len;
    assert_int_equal(kl_tenant_server_find(servers, 2, "db2", &url, &len, &st),
                     0);
    assert_string_equal(url, "host=h2 user=b password='s3cr;e t'");
    assert_int_equal(kl_tenant_server_find(servers, 2, "db3", &url, &len, &st),
                     -KL_NOT_FOUND);
    assert_string_equal(st.message, "database server \"db3\" unknown");

    char *ci = kl_tenant_db_conninfo(servers[1] + 4, "kowloon_t_ab", &st);
    assert_non_null(ci);
    assert_non_null(strstr(ci, "dbname='kowloon_t_ab'"));
    assert_non_null(strstr(ci, "host='h2'"));
    free(ci);
    /* A quote in a database name stays inside its value. */
    ci = kl_tenant_db_conninfo("postgresql://a@h1/x", "x' host='evil", &st);
    assert_non_null(ci);
    assert_non_null(strstr(ci, "dbname='x\\' host=\\'evil'"));
    assert_null(strstr(ci, "dbname='x'"));
    free(ci);
    assert_null(
        kl_tenant_db_conninfo("host=a password=s3cret bogus=1", "d", &st));
    assert_string_equal(st.message, "database server URL is malformed");

    /* Malformed and duplicate entries. */
    const char *bad1[] = {"nourl"};
    assert_null(kl_tenant_db_new("dbname=x", bad1, 1, 4, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    const char *bad2[] = {"a=dbname=x", "a=dbname=y"};
    assert_null(kl_tenant_db_new("dbname=x", bad2, 2, 4, &st));
    assert_string_equal(st.message, "database server \"a\" listed twice");
    const char *bad3[] = {"A\"b=dbname=x"};
    assert_null(kl_tenant_db_new("dbname=x", bad3, 1, 4, &st));
    assert_null(kl_tenant_db_new("", NULL, 0, 4, &st));
}

/* --- the three models --------------------------------------------------- */

static void
test_row_model_scope(void **state)
{
    (void)state;
    kl_tenant_db_t *t = s_tdb(4);
    kl_tenant_place_t a = s_place(s_a, KL_ISOLATION_ROW, NULL);
    kl_tenant_place_t b = s_place(s_b, KL_ISOLATION_ROW, NULL);
    s_scoped_exec(t, &a, "INSERT INTO items (label) VALUES ('a1') RETURNING 1");
    s_scoped_exec(t, &a, "INSERT INTO items (label) VALUES ('a2') RETURNING 1");
    s_scoped_exec(t, &b, "INSERT INTO items (label) VALUES ('b1') RETURNING 1");

    char *v = s_scoped_value(t, &a,
                             "SELECT string_agg(label, ',' ORDER BY "
                             "label) FROM items");
    assert_string_equal(v, "a1,a2");
    free(v);
    v = s_scoped_value(t, &b, "SELECT string_agg(label, ',') FROM items");
    assert_string_equal(v, "b1");
    free(v);

    /* A forged tenant id in a write is refused by the policy. */
    kl_status_t st;
    kl_pg_t *pg = kl_tenant_tx_begin(t, &a, &st);
    assert_non_null(pg);
    char *sql = kl_asprintf("INSERT INTO items (tenant_id, label) VALUES "
                            "('%s', 'forged')",
                            s_b);
    assert_null(kl_pg_query(pg, NULL, sql, 0, NULL, &st));
    free(sql);
    kl_tenant_tx_rollback(t, pg);
    /* ... and a forged read or update finds nothing. */
    sql = kl_asprintf("WITH u AS (UPDATE items SET label = 'x' WHERE "
                      "tenant_id = '%s' RETURNING 1) SELECT count(*) FROM u",
                      s_b);
    v = s_scoped_value(t, &a, sql);
    assert_string_equal(v, "0");
    free(v);
    free(sql);

    /* No leak across transactions on the same connection: after commit
     * the scope and search_path are gone, so no rows are visible. */
    kl_pg_t *main = kl_tenant_db_main(t);
    PGresult *r = kl_pg_query(
        main, NULL,
        "SELECT coalesce(current_setting('app.tenant_id', true), ''),"
        " current_setting('search_path'),"
        " (SELECT count(*) FROM shared.items)",
        0, NULL, &st);
    if (!r)
        fail_msg("%s", st.message);
    assert_string_equal(PQgetvalue(r, 0, 0), "");
    assert_string_equal(PQgetvalue(r, 0, 1), "\"$user\", public");
    assert_string_equal(PQgetvalue(r, 0, 2), "0");
    PQclear(r);
    /* A rolled-back transaction leaves nothing behind either. */
    pg = kl_tenant_tx_begin(t, &a, &st);
    assert_non_null(pg);
    kl_tenant_tx_rollback(t, pg);
    r = kl_pg_query(main, NULL,
                    "SELECT coalesce(current_setting('app.tenant_id', true), "
                    "'') || '|' || (SELECT count(*) FROM shared.items)",
                    0, NULL, &st);
    assert_non_null(r);
    assert_string_equal(PQgetvalue(r, 0, 0), "|0");
    PQclear(r);
    kl_tenant_db_destroy(&t);
    assert_null(t);
    kl_tenant_db_destroy(&t);
}

static void
test_schema_model(void **state)
{
    (void)state;
    kl_tenant_db_t *t = s_tdb(4);
    kl_tenant_place_t s = s_place(s_s, KL_ISOLATION_SCHEMA, NULL);
    kl_tenant_place_t a = s_place(s_a, KL_ISOLATION_ROW, NULL);
    s_scoped_exec(t, &s, "INSERT INTO items (label) VALUES ('s1') RETURNING 1");
    char *v = s_scoped_value(t, &s,
                             "SELECT current_schema() || ':' || "
                             "string_agg(label, ',') FROM items");
    char *want = kl_asprintf("%s:s1", s.schema);
    assert_string_equal(v, want);
    free(want);
    free(v);
    /* The row tenant on the same connection sees its own schema only. */
    v = s_scoped_value(t, &a, "SELECT current_schema()");
    assert_string_equal(v, "shared");
    free(v);
    /* Another tenant's scope in the schema tenant's schema sees nothing
     * (defence in depth: the policy still holds there). */
    kl_tenant_place_t forged = s;
    snprintf(forged.tenant_id, sizeof forged.tenant_id, "%s", s_a);
    kl_status_t st;
    assert_null(kl_tenant_tx_begin(t, &forged, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    kl_tenant_db_destroy(&t);
}

static void
test_database_model_and_lru(void **state)
{
    (void)state;
    kl_tenant_db_t *t = s_tdb(2);
    kl_tenant_place_t d1 = s_place(s_d1, KL_ISOLATION_DATABASE, "main");
    kl_tenant_place_t d2 = s_place(s_d2, KL_ISOLATION_DATABASE, "db2");
    kl_tenant_place_t d3 = s_place(s_d3, KL_ISOLATION_DATABASE, "main");
    s_scoped_exec(t, &d1,
                  "INSERT INTO items (label) VALUES ('d1') RETURNING 1");
    s_scoped_exec(t, &d2,
                  "INSERT INTO items (label) VALUES ('d2') RETURNING 1");
    assert_int_equal(kl_tenant_db_open_count(t), 2);
    s_scoped_exec(t, &d3,
                  "INSERT INTO items (label) VALUES ('d3') RETURNING 1");
    assert_int_equal(kl_tenant_db_open_count(t), 2);
    /* d1 was evicted (least recently used) and reopens on demand. */
    char *v = s_scoped_value(t, &d1,
                             "SELECT current_database() || ':' || "
                             "current_schema() || ':' || "
                             "string_agg(label, ',') FROM items");
    char *want = kl_asprintf("%s:shared:d1", d1.db_name);
    assert_string_equal(v, want);
    free(want);
    free(v);
    assert_int_equal(kl_tenant_db_open_count(t), 2);
    v = s_scoped_value(t, &d3, "SELECT string_agg(label, ',') FROM items");
    assert_string_equal(v, "d3");
    free(v);

    kl_status_t st;
    kl_tenant_place_t unknown = s_place(s_d1, KL_ISOLATION_DATABASE, "db9");
    assert_null(kl_tenant_tx_begin(t, &unknown, &st));
    assert_int_equal(st.code, KL_NOT_FOUND);
    assert_string_equal(st.message, "database server \"db9\" unknown");
    kl_tenant_place_t down = s_place(s_d1, KL_ISOLATION_DATABASE, "down");
    assert_null(kl_tenant_tx_begin(t, &down, &st));
    assert_int_equal(st.code, KL_UNAVAILABLE);
    /* After a failure the others still work. */
    v = s_scoped_value(t, &d2, "SELECT string_agg(label, ',') FROM items");
    assert_string_equal(v, "d2");
    free(v);
    /* The scope is transaction-local in a tenant database too. */
    kl_pg_t *pg = kl_tenant_tx_begin(t, &d2, &st);
    assert_non_null(pg);
    assert_int_equal(kl_tenant_tx_commit(t, pg, &st), 0);
    PGresult *r = kl_pg_query(
        pg, NULL,
        "SELECT coalesce(current_setting('app.tenant_id', true), '') || '|' "
        "|| (SELECT count(*) FROM shared.items)",
        0, NULL, &st);
    assert_non_null(r);
    assert_string_equal(PQgetvalue(r, 0, 0), "|0");
    PQclear(r);
    kl_tenant_db_destroy(&t);
}

/* KL_TENANT_TX_SNAPSHOT: a row inserted and committed by another session
 * between two statements is not seen by the second, and writes are
 * refused; a KL_TENANT_TX_READ_ONLY transaction (READ COMMITTED) sees it. */
static void
test_snapshot_read(void **state)
{
    (void)state;
    kl_tenant_db_t *t = s_tdb(2), *writer = s_tdb(2);
    kl_tenant_place_t a = s_place(s_a, KL_ISOLATION_ROW, NULL);
    kl_status_t st;
    const unsigned modes[] = {KL_TENANT_TX_SNAPSHOT, KL_TENANT_TX_READ_ONLY};
    for (int m = 0; m < 2; m++) {
        kl_pg_t *pg = kl_tenant_tx_begin_ex(t, &a, modes[m], &st);
        if (!pg)
            fail_msg("begin: %s", st.message);
        PGresult *r = kl_pg_query(
            pg, NULL,
            "SELECT count(*), current_setting('transaction_isolation'),"
            " current_setting('transaction_read_only') FROM items",
            0, NULL, &st);
        assert_non_null(r);
        long before = strtol(PQgetvalue(r, 0, 0), NULL, 10);
        assert_string_equal(PQgetvalue(r, 0, 1),
                            m == 0 ? "repeatable read" : "read committed");
        /* KL_TENANT_TX_READ_ONLY alone only skips the move lock. */
        assert_string_equal(PQgetvalue(r, 0, 2), m == 0 ? "on" : "off");
        PQclear(r);
        s_scoped_exec(writer, &a,
                      "INSERT INTO items (label) VALUES ('snap') RETURNING 1");
        r = kl_pg_query(pg, NULL, "SELECT count(*) FROM items", 0, NULL, &st);
        assert_non_null(r);
        assert_int_equal(strtol(PQgetvalue(r, 0, 0), NULL, 10),
                         m == 0 ? before : before + 1);
        PQclear(r);
        if (m == 0) {
            assert_null(kl_pg_query(pg, NULL,
                                    "INSERT INTO items (label) VALUES ('no')",
                                    0, NULL, &st));
            assert_non_null(strstr(st.message, "read-only transaction"));
        }
        kl_tenant_tx_rollback(t, pg);
    }
    kl_tenant_db_destroy(&writer);
    kl_tenant_db_destroy(&t);
}

/* A mover's exclusive lock refuses writes, not reads; the fence refuses a
 * stale placement. */
static void
test_move_lock_and_fence(void **state)
{
    (void)state;
    kl_tenant_db_t *t = s_tdb(2);
    kl_tenant_place_t a = s_place(s_a, KL_ISOLATION_ROW, NULL);
    kl_status_t st;
    PGconn *mover = PQconnectdb(s_super_db);
    assert_int_equal(PQstatus(mover), CONNECTION_OK);
    const char *params[] = {s_a};
    PGresult *r = PQexecParams(
        mover, "SELECT pg_advisory_lock(" KL_TENANT_LOCK_SQL("$1::text") ")", 1,
        NULL, params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    assert_null(kl_tenant_tx_begin(t, &a, &st));
    assert_int_equal(st.code, KL_UNAVAILABLE);
    assert_string_equal(st.message, "tenant is being moved, retry");
    kl_pg_t *pg = kl_tenant_tx_begin_ex(t, &a, KL_TENANT_TX_READ_ONLY, &st);
    assert_non_null(pg);
    kl_tenant_tx_rollback(t, pg);
    /* Tenant B is not affected. */
    kl_tenant_place_t b = s_place(s_b, KL_ISOLATION_ROW, NULL);
    pg = kl_tenant_tx_begin(t, &b, &st);
    assert_non_null(pg);
    kl_tenant_tx_rollback(t, pg);
    r = PQexecParams(
        mover, "SELECT pg_advisory_unlock(" KL_TENANT_LOCK_SQL("$1::text") ")",
        1, NULL, params, NULL, NULL, 0);
    PQclear(r);
    pg = kl_tenant_tx_begin(t, &a, &st);
    assert_non_null(pg);
    kl_tenant_tx_rollback(t, pg);

    /* Moved to the schema model: the row placement is stale. */
    r = PQexecParams(mover,
                     "INSERT INTO " KL_TENANT_FENCE_TABLE
                     " (tenant_id, isolation) VALUES ($1, 'schema')",
                     1, NULL, params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    assert_null(kl_tenant_tx_begin_ex(t, &a, KL_TENANT_TX_READ_ONLY, &st));
    assert_int_equal(st.code, KL_UNAVAILABLE);
    assert_string_equal(st.message, "tenant placement changed, retry");
    r = PQexecParams(
        mover, "DELETE FROM " KL_TENANT_FENCE_TABLE " WHERE tenant_id = $1", 1,
        NULL, params, NULL, NULL, 0);
    PQclear(r);
    PQfinish(mover);
    kl_tenant_db_destroy(&t);
}

/* Hostile names never reach SQL: a forged schema with quotes and
 * semicolons is refused before any statement, and the server's own
 * quoting keeps a strange (but derived-looking) shared schema inert. */
static void
test_hostile_names(void **state)
{
    (void)state;
    kl_tenant_db_t *t = s_tdb(2);
    kl_status_t st;
    const char *hostile[] = {"shared\"; DROP TABLE shared.items; --",
                             "x'); SELECT pg_sleep(10); --",
                             "ünïcødé",
                             "\"shared\"",
                             "shared,public",
                             ""};
    for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++) {
        kl_tenant_place_t p = s_place(s_a, KL_ISOLATION_ROW, NULL);
        snprintf(p.schema, sizeof p.schema, "%s", hostile[i]);
        assert_null(kl_tenant_tx_begin(t, &p, &st));
        assert_int_equal(st.code, KL_INVALID_ARGUMENT);
        p = s_place(s_d1, KL_ISOLATION_DATABASE, "main");
        snprintf(p.db_name, sizeof p.db_name, "%s", hostile[i]);
        assert_null(kl_tenant_tx_begin(t, &p, &st));
        assert_int_equal(st.code, KL_INVALID_ARGUMENT);
        p = s_place(s_d1, KL_ISOLATION_DATABASE, "main");
        snprintf(p.db_server, sizeof p.db_server, "%s", hostile[i]);
        assert_null(kl_tenant_tx_begin(t, &p, &st));
    }
    /* The table survived. */
    kl_tenant_place_t a = s_place(s_a, KL_ISOLATION_ROW, NULL);
    char *v = s_scoped_value(t, &a, "SELECT count(*) > 0 FROM items");
    assert_string_equal(v, "t");
    free(v);
    kl_tenant_db_destroy(&t);
}

/* --- one-round-trip reads (kl_tenant_read) ------------------------------ */

/* The rows the read tests insert ("r..." labels), counted. */
#define S_READ_COUNT "SELECT count(*) FROM items WHERE label LIKE 'r%'"

/* Messages libpq traced on conn during one kl_tenant_read: "F" (sent) and
 * "B" (received) in order, one letter each, into trace. */
static PGresult *
s_traced_read(kl_tenant_db_t *t, PGconn *conn, const kl_tenant_place_t *p,
              const char *name, const char *sql, int nparams,
              const char *const *params, kl_status_t *st, char *trace,
              size_t size)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    PQtrace(conn, f);
    PQsetTraceFlags(conn, PQTRACE_SUPPRESS_TIMESTAMPS);
    PGresult *r = kl_tenant_read(t, p, name, sql, nparams, params, st);
    PQuntrace(conn);
    fclose(f);
    size_t o = 0;
    for (char *line = buf; line && *line && o + 1 < size;) {
        if ((line[0] == 'F' || line[0] == 'B') && line[1] == '\t')
            trace[o++] = line[0];
        char *nl = strchr(line, '\n');
        line = nl ? nl + 1 : NULL;
    }
    trace[o] = '\0';
    free(buf);
    return r;
}

/* The single value of a kl_tenant_read (fails the test if it fails). */
static char *
s_read_value(kl_tenant_db_t *t, const kl_tenant_place_t *p, const char *name,
             const char *sql)
{
    kl_status_t st;
    PGresult *r = kl_tenant_read(t, p, name, sql, 0, NULL, &st);
    if (!r)
        fail_msg("read %s: %s", sql, st.message);
    char *v = kl_strdup(PQgetisnull(r, 0, 0) ? "<null>" : PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

/* On pg, outside any transaction: no tenant, the default search_path, no
 * row visible, the connection idle. */
static void
s_assert_unscoped(kl_pg_t *pg, const char *table)
{
    kl_status_t st;
    char *sql = kl_asprintf(
        "SELECT coalesce(current_setting('app.tenant_id', true), '') || '|' "
        "|| current_setting('search_path') || '|' || (SELECT count(*) FROM "
        "%s)",
        table);
    PGresult *r = kl_pg_query(pg, NULL, sql, 0, NULL, &st);
    free(sql);
    if (!r)
        fail_msg("unscoped check: %s", st.message);
    assert_string_equal(PQgetvalue(r, 0, 0), "|\"$user\", public|0");
    PQclear(r);
    assert_int_equal(PQtransactionStatus(kl_pg_conn(pg, &st)), PQTRANS_IDLE);
}

static void
test_read_row_model(void **state)
{
    (void)state;
    kl_tenant_db_t *t = s_tdb(2);
    kl_tenant_place_t a = s_place(s_a, KL_ISOLATION_ROW, NULL);
    kl_tenant_place_t b = s_place(s_b, KL_ISOLATION_ROW, NULL);
    s_scoped_exec(t, &a,
                  "INSERT INTO items (label) VALUES ('ra1'), ('ra2')"
                  " RETURNING 1");
    s_scoped_exec(t, &b,
                  "INSERT INTO items (label) VALUES ('rb1') RETURNING 1");
    kl_pg_t *main = kl_tenant_db_main(t);
    kl_status_t st;
    PGconn *conn = kl_pg_conn(main, &st);
    assert_non_null(conn);

    /* One statement, one tenant's rows, one round trip: every message
     * (BEGIN READ ONLY, scope, query, COMMIT, sync) is sent before the
     * first answer comes back. */
    const char *sql = "SELECT string_agg(label, ',' ORDER BY label) FROM items"
                      " WHERE label LIKE $1";
    const char *params[] = {"r%"};
    char trace[128];
    PGresult *r = s_traced_read(t, conn, &a, "t_read_labels", sql, 1, params,
                                &st, trace, sizeof trace);
    if (!r)
        fail_msg("read: %s", st.message);
    assert_string_equal(PQgetvalue(r, 0, 0), "ra1,ra2");
    PQclear(r);
    const char *b_in_trace = strchr(trace, 'B');
    assert_true(trace[0] == 'F' && b_in_trace && !strchr(b_in_trace, 'F'));
    /* The same prepared statement for another tenant sees its rows. */
    r = kl_tenant_read(t, &b, "t_read_labels", sql, 1, params, &st);
    assert_non_null(r);
    assert_string_equal(PQgetvalue(r, 0, 0), "rb1");
    PQclear(r);
    /* Nothing of the scope is left on the pooled connection. */
    s_assert_unscoped(main, "shared.items");

    /* The transaction is read only. */
    assert_null(kl_tenant_read(t, &a, NULL,
                               "INSERT INTO items (label) VALUES ('w')"
                               " RETURNING 1",
                               0, NULL, &st));
    assert_int_equal(st.code, KL_INTERNAL);
    assert_string_equal(st.message,
                        "cannot execute INSERT in a read-only transaction");

    /* Errors map as kl_pg_query's; each leaves the connection idle,
     * unscoped and usable. */
    struct {
        const char *sql;
        const char *param;
        kl_code_t code;
        const char *message;
    } cases[] = {
        {"SELECT 1/0", NULL, KL_INVALID_ARGUMENT, "division by zero"},
        {"SELECT $1::uuid", "x", KL_INVALID_ARGUMENT,
         "invalid input syntax for type uuid: \"x\""},
        {"SELECT nope FROM items", NULL, KL_INTERNAL,
         "column \"nope\" does not exist"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *p1[] = {cases[i].param};
        assert_null(kl_tenant_read(t, &a, NULL, cases[i].sql,
                                   cases[i].param ? 1 : 0, p1, &st));
        assert_int_equal(st.code, cases[i].code);
        assert_string_equal(st.message, cases[i].message);
        s_assert_unscoped(main, "shared.items");
        char *v = s_read_value(t, &a, "t_read_count", S_READ_COUNT);
        assert_string_equal(v, "2");
        free(v);
    }
    /* 57014 query_canceled -> DEADLINE_EXCEEDED, as kl_pg maps it. */
    assert_int_equal(kl_pg_exec(main, "SET statement_timeout = 50", &st), 0);
    assert_null(kl_tenant_read(t, &a, NULL, "SELECT pg_catalog.pg_sleep(2)", 0,
                               NULL, &st));
    assert_int_equal(st.code, KL_DEADLINE_EXCEEDED);
    assert_int_equal(kl_pg_exec(main, "SET statement_timeout = 0", &st), 0);

    /* Not inside a transaction open on the same connection. */
    kl_pg_t *pg = kl_tenant_tx_begin(t, &a, &st);
    assert_non_null(pg);
    assert_null(
        kl_tenant_read(t, &b, "t_read_count", S_READ_COUNT, 0, NULL, &st));
    assert_int_equal(st.code, KL_FAILED_PRECONDITION);
    kl_tenant_tx_rollback(t, pg);
    kl_tenant_db_destroy(&t);
}

static void
test_read_schema_and_database_models(void **state)
{
    (void)state;
    kl_tenant_db_t *t = s_tdb(1);
    kl_tenant_place_t s = s_place(s_s, KL_ISOLATION_SCHEMA, NULL);
    kl_tenant_place_t d1 = s_place(s_d1, KL_ISOLATION_DATABASE, "main");
    kl_tenant_place_t d2 = s_place(s_d2, KL_ISOLATION_DATABASE, "db2");
    s_scoped_exec(t, &s,
                  "INSERT INTO items (label) VALUES ('rs1') RETURNING 1");
    s_scoped_exec(t, &d1,
                  "INSERT INTO items (label) VALUES ('rd1') RETURNING 1");
    s_scoped_exec(t, &d2,
                  "INSERT INTO items (label) VALUES ('rd2') RETURNING 1");
    const char *sql = "SELECT current_database() || ':' || current_schema() ||"
                      " ':' || string_agg(label, ',') FROM items"
                      " WHERE label LIKE 'r%'";
    char *v = s_read_value(t, &s, "t_read_where", sql);
    char *want = kl_asprintf("%s:%s:rs1", s_db, s.schema);
    assert_string_equal(v, want);
    free(want);
    free(v);
    s_assert_unscoped(kl_tenant_db_main(t), "shared.items");

    /* Database tenants: their own connection (one kept: LRU of 1). */
    v = s_read_value(t, &d1, "t_read_where", sql);
    want = kl_asprintf("%s:shared:rd1", d1.db_name);
    assert_string_equal(v, want);
    free(want);
    free(v);
    v = s_read_value(t, &d2, "t_read_where", sql);
    want = kl_asprintf("%s:shared:rd2", d2.db_name);
    assert_string_equal(v, want);
    free(want);
    free(v);
    assert_int_equal(kl_tenant_db_open_count(t), 1);
    v = s_read_value(t, &d1, "t_read_where", sql);
    assert_non_null(strstr(v, ":rd1"));
    free(v);
    /* The tenant database's connection is left unscoped too. */
    kl_status_t st;
    kl_pg_t *pg = kl_tenant_tx_begin(t, &d1, &st);
    assert_non_null(pg);
    assert_int_equal(kl_tenant_tx_commit(t, pg, &st), 0);
    v = s_read_value(t, &d1, "t_read_where", sql);
    free(v);
    s_assert_unscoped(pg, "shared.items");

    kl_tenant_place_t unknown = s_place(s_d1, KL_ISOLATION_DATABASE, "db9");
    assert_null(kl_tenant_read(t, &unknown, NULL, "SELECT 1", 0, NULL, &st));
    assert_int_equal(st.code, KL_NOT_FOUND);
    assert_string_equal(st.message, "database server \"db9\" unknown");
    kl_tenant_place_t down = s_place(s_d1, KL_ISOLATION_DATABASE, "down");
    assert_null(kl_tenant_read(t, &down, NULL, "SELECT 1", 0, NULL, &st));
    assert_int_equal(st.code, KL_UNAVAILABLE);
    kl_tenant_db_destroy(&t);
}

/* The fence refuses a stale placement's read; a mover's lock does not
 * stop reads; a forged placement is refused before any SQL. */
static void
test_read_fence(void **state)
{
    (void)state;
    kl_tenant_db_t *t = s_tdb(2);
    kl_tenant_place_t a = s_place(s_a, KL_ISOLATION_ROW, NULL);
    kl_status_t st;
    PGconn *mover = PQconnectdb(s_super_db);
    assert_int_equal(PQstatus(mover), CONNECTION_OK);
    const char *params[] = {s_a};
    PGresult *r = PQexecParams(
        mover, "SELECT pg_advisory_lock(" KL_TENANT_LOCK_SQL("$1::text") ")", 1,
        NULL, params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    char *v = s_read_value(t, &a, "t_read_count", S_READ_COUNT);
    assert_string_equal(v, "2");
    free(v);
    r = PQexecParams(
        mover, "SELECT pg_advisory_unlock(" KL_TENANT_LOCK_SQL("$1::text") ")",
        1, NULL, params, NULL, NULL, 0);
    PQclear(r);

    /* Moved to the schema model: the row placement is stale, its rows are
     * not handed out. */
    r = PQexecParams(mover,
                     "INSERT INTO " KL_TENANT_FENCE_TABLE
                     " (tenant_id, isolation) VALUES ($1, 'schema')",
                     1, NULL, params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    assert_null(
        kl_tenant_read(t, &a, "t_read_count", S_READ_COUNT, 0, NULL, &st));
    assert_int_equal(st.code, KL_UNAVAILABLE);
    assert_string_equal(st.message, "tenant placement changed, retry");
    s_assert_unscoped(kl_tenant_db_main(t), "shared.items");
    /* ... also when the query itself fails, as it may on a stale
     * placement (the old schema dropped after a move): the fence's answer
     * comes first, as when the scope runs before the query. */
    assert_null(kl_tenant_read(t, &a, NULL, "SELECT * FROM dropped_after_move",
                               0, NULL, &st));
    assert_int_equal(st.code, KL_UNAVAILABLE);
    assert_string_equal(st.message, "tenant placement changed, retry");
    s_assert_unscoped(kl_tenant_db_main(t), "shared.items");
    /* Tenant B is not affected. */
    kl_tenant_place_t b = s_place(s_b, KL_ISOLATION_ROW, NULL);
    v = s_read_value(t, &b, "t_read_count", S_READ_COUNT);
    assert_string_equal(v, "1");
    free(v);
    r = PQexecParams(
        mover, "DELETE FROM " KL_TENANT_FENCE_TABLE " WHERE tenant_id = $1", 1,
        NULL, params, NULL, NULL, 0);
    PQclear(r);
    PQfinish(mover);
    v = s_read_value(t, &a, "t_read_count", S_READ_COUNT);
    assert_string_equal(v, "2");
    free(v);

    /* A forged placement: refused, and nothing was sent. */
    PGconn *conn = kl_pg_conn(kl_tenant_db_main(t), &st);
    assert_non_null(conn);
    kl_tenant_place_t forged = s_place(s_s, KL_ISOLATION_SCHEMA, NULL);
    snprintf(forged.schema, sizeof forged.schema, "shared\"; DROP TABLE x; --");
    char trace[64];
    assert_null(s_traced_read(t, conn, &forged, NULL, "SELECT 1", 0, NULL, &st,
                              trace, sizeof trace));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_string_equal(trace, "");
    kl_tenant_db_destroy(&t);
}

/* The pooled connection's backend goes away while idle: the next read
 * runs on a new connection, every statement prepared there again. */
static void
test_read_reconnect(void **state)
{
    (void)state;
    kl_tenant_db_t *t = s_tdb(2);
    kl_tenant_place_t a = s_place(s_a, KL_ISOLATION_ROW, NULL);
    kl_tenant_place_t d1 = s_place(s_d1, KL_ISOLATION_DATABASE, "main");
    const kl_tenant_place_t *places[] = {&a, &d1};
    for (size_t i = 0; i < 2; i++) {
        char *pid =
            s_read_value(t, places[i], "t_read_pid", "SELECT pg_backend_pid()");
        char *sql = kl_asprintf("SELECT pg_terminate_backend(%s)", pid);
        s_exec(s_admin, sql);
        free(sql);
        /* Wait until the backend is gone. */
        sql = kl_asprintf(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", pid);
        for (int n = 0; n < 100; n++) {
            char *left = kl_test_db_value(s_admin, sql);
            bool gone = left && strcmp(left, "0") == 0;
            free(left);
            if (gone)
                break;
            usleep(20000);
        }
        free(sql);
        char *pid2 =
            s_read_value(t, places[i], "t_read_pid", "SELECT pg_backend_pid()");
        assert_string_not_equal(pid, pid2);
        char *names =
            s_read_value(t, places[i], "t_read_names",
                         "SELECT string_agg(name, ',' ORDER BY name) FROM "
                         "pg_prepared_statements");
        const char *want =
            i == 0 ? "kl_tenant_read_begin,kl_tenant_read_commit,"
                     "kl_tenant_tx_scope_main,t_read_names,t_read_pid"
                   : "kl_tenant_read_begin,kl_tenant_read_commit,"
                     "kl_tenant_tx_scope,t_read_names,t_read_pid";
        assert_string_equal(names, want);
        free(names);
        free(pid);
        free(pid2);
    }
    kl_tenant_db_destroy(&t);
}

/* --- grants --------------------------------------------------------------- */

/* kl_tenant_db_grant_schema: the RLS-forced tables and the sequences their
 * serial and identity columns own (USAGE only), nothing else; the role can
 * then insert into a table whose key is a serial. */
static void
test_grant_schema_sequences(void **state)
{
    (void)state;
    s_exec(s_owner_db,
           "CREATE SCHEMA seqs; SET search_path = seqs;"
           "CREATE TABLE numbered (id bigserial PRIMARY KEY, tenant_id uuid"
           " NOT NULL DEFAULT NULLIF(current_setting('app.tenant_id', true),"
           " '')::uuid, label text NOT NULL);"
           "CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY, tenant_id"
           " uuid NOT NULL DEFAULT NULLIF(current_setting('app.tenant_id',"
           " true), '')::uuid);"
           "CREATE TABLE plain (id serial, note text);"
           "CREATE SEQUENCE loose;"
           "ALTER TABLE numbered ENABLE ROW LEVEL SECURITY;"
           "ALTER TABLE numbered FORCE ROW LEVEL SECURITY;"
           "ALTER TABLE ident ENABLE ROW LEVEL SECURITY;"
           "ALTER TABLE ident FORCE ROW LEVEL SECURITY;"
           "CREATE POLICY t ON numbered USING (tenant_id = NULLIF("
           "current_setting('app.tenant_id', true), '')::uuid);"
           "CREATE POLICY t ON ident USING (tenant_id = NULLIF("
           "current_setting('app.tenant_id', true), '')::uuid)");
    kl_pg_t *owner = kl_pg_new(s_owner_db);
    kl_status_t st;
    if (kl_tenant_db_grant_schema(owner, "seqs", s_app, &st) < 0)
        fail_msg("grant: %s", st.message);
    /* Idempotent. */
    assert_int_equal(kl_tenant_db_grant_schema(owner, "seqs", s_app, &st), 0);
    kl_pg_destroy(&owner);
    char *sql = kl_asprintf(
        "SELECT string_agg(s || ':' || has_sequence_privilege('%s', s,"
        " 'USAGE')::text || ',' || has_sequence_privilege('%s', s,"
        " 'SELECT')::text || ',' || has_sequence_privilege('%s', s,"
        " 'UPDATE')::text, ' ' ORDER BY s) FROM unnest(ARRAY["
        "'seqs.numbered_id_seq', 'seqs.ident_id_seq', 'seqs.plain_id_seq',"
        " 'seqs.loose']) s",
        s_app, s_app, s_app);
    char *v = kl_test_db_value(s_super_db, sql);
    assert_string_equal(v, "seqs.ident_id_seq:true,false,false "
                           "seqs.loose:false,false,false "
                           "seqs.numbered_id_seq:true,false,false "
                           "seqs.plain_id_seq:false,false,false");
    free(v);
    free(sql);
    /* The application role inserts rows numbered by the sequences. */
    kl_tenant_db_t *t = s_tdb(2);
    kl_tenant_place_t p;
    assert_int_equal(
        kl_tenant_place(s_d1, KL_ISOLATION_ROW, "seqs", NULL, &p, &st), 0);
    char *id1 = s_scoped_value(
        t, &p, "INSERT INTO numbered (label) VALUES ('a') RETURNING id");
    char *id2 = s_scoped_value(
        t, &p, "INSERT INTO numbered (label) VALUES ('b') RETURNING id");
    assert_true(atol(id2) > atol(id1));
    char *id3 =
        s_scoped_value(t, &p, "INSERT INTO ident DEFAULT VALUES RETURNING id");
    assert_string_equal(id3, "1");
    free(id1);
    free(id2);
    free(id3);
    kl_tenant_db_destroy(&t);
    s_exec(s_owner_db, "SET client_min_messages = warning;"
                       "DROP SCHEMA seqs CASCADE");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_places),
        cmocka_unit_test(test_servers_and_conninfo),
        cmocka_unit_test(test_row_model_scope),
        cmocka_unit_test(test_schema_model),
        cmocka_unit_test(test_database_model_and_lru),
        cmocka_unit_test(test_move_lock_and_fence),
        cmocka_unit_test(test_snapshot_read),
        cmocka_unit_test(test_hostile_names),
        cmocka_unit_test(test_read_row_model),
        cmocka_unit_test(test_read_schema_and_database_models),
        cmocka_unit_test(test_read_fence),
        cmocka_unit_test(test_read_reconnect),
        cmocka_unit_test(test_grant_schema_sequences),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
