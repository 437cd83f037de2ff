/*
 * Tables a migration adds to existing tenants reach the application role
 * (KOWLOON_DATA_APP_ROLE) at once, without a new provisioning: the real
 * kowloon-tenant and kowloon-migration against a fresh database made in
 * KLTEST_PG_URL.
 *
 *   - a schema, a database and a row tenant are provisioned at V0002;
 *     V0003 adds "notes" (tenant_id, row-level security forced) and two
 *     tables without forced row-level security; after a Run, the
 *     application role, in the tenant's scope, inserts into and reads
 *     "notes" in every model (and sees only its own tenant's rows);
 *   - the tables without forced row-level security are not granted.
 *
 * Ids are uuids, as in the product: sequences are not granted (neither by
 * kl_tenant_db_grant_schema at provisioning).
 */
#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_rpc_client.h"
#include "kl_test_db.h"
#include "kl_test_proc.h"
#include "kowloon/migration.pb-c.h"
#include "kowloon/tenant.pb-c.h"

#include <errno.h>
#include <libpq-fe.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define S_TIMEOUT_MS 60000
#define S_SHARED "workspace"

static kl_test_db_t *s_db;      /* this run's database */
static const char *s_admin_url; /* KLTEST_PG_URL */
static char s_db_name[96];      /* this run's main (and control) database */
static const char *s_db_url;    /* its conninfo (superuser: the owner role) */
static char s_app[64];          /* the application role */
static char s_tmp[128];         /* scratch directory */
static char s_dir[192];         /* the migrations the instance loads */
static int s_tenant_port, s_mig_port;
static kl_test_proc_t *s_tenant_proc, *s_mig_proc;
static kl_rpc_client_t *s_tenants, *s_mig;

typedef struct {
    char id[37];
    char isolation[16];
    char hex[33];
} s_tenant_t;

static s_tenant_t s_row, s_schema, s_database;

/* --- databases --------------------------------------------------------- */

/* url with its dbname replaced (and user, when not NULL); caller frees. */
static char *
s_conninfo_for(const char *url, const char *dbname, const char *user)
{
    char *out = kl_test_db_conninfo(url, dbname, user);
    if (!out)
        fail_msg("bad KLTEST_PG_URL");
    return out;
}

static void
s_exec(const char *url, const char *sql)
{
    if (kl_test_db_exec(url, sql) < 0)
        fail_msg("s_exec failed (see above)");
}

/* The first value of sql's result; caller frees. */
static char *
s_value(const char *url, const char *sql)
{
    char *v = kl_test_db_value(url, sql);
    if (!v)
        fail_msg("s_value failed (see above)");
    return v;
}

/* --- processes --------------------------------------------------------- */

static int
s_call(kl_rpc_client_t *c, const char *method, const void *in, void *out,
       kl_status_t *st)
{
    kl_call_opts_t o = {.timeout_ms = S_TIMEOUT_MS};
    /* Right after a restart the client may not have reconnected yet; a
     * call no peer took was never sent, so trying again is safe. */
    int64_t until = kl_test_proc_now_ms() + 10000;
    for (;;) {
        int rc = kl_rpc_client_call(c, method, (const ProtobufCMessage *)in, &o,
                                    (ProtobufCMessage **)out, st);
        if (rc != -KL_UNAVAILABLE || kl_test_proc_now_ms() > until ||
            !strstr(st->message, "no connected instance"))
            return rc;
        kl_test_proc_sleep_ms(50);
    }
}

static void
s_start_migration(void)
{
    char bind[64], tep[64], db[1200], owner[1200], dir[256], log[256];
    char servers[1300], app[96];
    snprintf(bind, sizeof bind, "KOWLOON_MIGRATION_BIND=tcp://127.0.0.1:%d",
             s_mig_port);
    snprintf(tep, sizeof tep, "KOWLOON_TENANT_ENDPOINTS=tcp://127.0.0.1:%d",
             s_tenant_port);
    snprintf(db, sizeof db, "KOWLOON_DATABASE_URL=%s", s_db_url);
    snprintf(owner, sizeof owner, "KOWLOON_DATA_OWNER_URL=%s", s_db_url);
    snprintf(dir, sizeof dir, "KOWLOON_MIGRATIONS_DIR=%s", s_dir);
    snprintf(log, sizeof log, "%s/migration.log", s_tmp);
    snprintf(servers, sizeof servers, "KOWLOON_TENANT_DB_OWNER_SERVERS=main=%s",
             s_admin_url);
    snprintf(app, sizeof app, "KOWLOON_DATA_APP_ROLE=%s", s_app);
    const char *vars[] = {servers,
                          bind,
                          tep,
                          db,
                          owner,
                          dir,
                          app,
                          "KOWLOON_REDIS_URL=",
                          "KOWLOON_LOG_LEVEL=warn",
                          "KOWLOON_WORKERS=2",
                          "KOWLOON_MIGRATION_WORKERS=2",
                          "KOWLOON_MIGRATION_POLL_MS=100",
                          "KOWLOON_MIGRATION_SHARED_SCHEMA=" S_SHARED,
                          NULL};
    s_mig_proc =
        kl_test_proc_start(KLTEST_MIGRATION_BIN, vars, "KOWLOON_", log);
}

/* Waits until the migration instance answers Status. */
static void
s_wait_migration_up(void)
{
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", s_mig_port);
    kl_status_t st;
    if (kl_test_proc_wait_serving(s_mig_proc, ep, 30000, &st) < 0)
        fail_msg("kowloon-migration does not answer: %s (see %s)", st.message,
                 s_tmp);
}

/* --- migration files --------------------------------------------------- */

static void
s_file(const char *name, const char *text)
{
    char path[320];
    snprintf(path, sizeof path, "%s/%s", s_dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

#define S_TENANT_COL                                                           \
    "tenant_id uuid NOT NULL DEFAULT NULLIF(current_setting("                  \
    "'app.tenant_id', true), '')::uuid"
#define S_POLICY(t)                                                            \
    "CREATE POLICY tenant_isolation ON " t "\n"                                \
    "  USING (tenant_id = NULLIF(current_setting('app.tenant_id', true),"      \
    " '')::uuid)\n"                                                            \
    "  WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true)," \
    " '')::uuid);\n"
#define S_FORCED(t)                                                            \
    "ALTER TABLE " t " ENABLE ROW LEVEL SECURITY;\n"                           \
    "ALTER TABLE " t " FORCE ROW LEVEL SECURITY;\n" S_POLICY(t)

static const char s_v1[] = "CREATE TABLE projects (" S_TENANT_COL ",\n"
                           "  id uuid NOT NULL DEFAULT gen_random_uuid(), name "
                           "text NOT NULL, PRIMARY KEY "
                           "(tenant_id, id));\n" S_FORCED("projects");
static const char s_v2[] = "CREATE TABLE tasks (" S_TENANT_COL ",\n"
                           "  id uuid NOT NULL DEFAULT gen_random_uuid(), "
                           "title text NOT NULL, PRIMARY KEY "
                           "(tenant_id, id));\n" S_FORCED("tasks");
/* notes: forced, granted; plain: no row-level security; unforced: enabled
 * but not forced (the owner would bypass it): neither is granted. */
static const char s_v3[] =
    "CREATE TABLE notes (" S_TENANT_COL ",\n"
    "  id uuid NOT NULL DEFAULT gen_random_uuid(), body text NOT NULL, PRIMARY "
    "KEY (tenant_id, "
    "id));\n" S_FORCED(
        "notes") "CREATE TABLE plain (" S_TENANT_COL ", body text);\n"
                 "CREATE TABLE unforced (" S_TENANT_COL ", body text);\n"
                 "ALTER TABLE unforced ENABLE ROW LEVEL SECURITY;\n" S_POLICY(
                     "unforced");

/* --- fixture ----------------------------------------------------------- */

static int
s_group_setup(void **state)
{
    (void)state;
    kl_log_init("migration-grants-test", KL_ERROR);
    signal(SIGPIPE, SIG_IGN);
    s_db = kl_test_db_new("test_migration_grants", "kltest_miggrant");
    if (!s_db)
        return -1;
    /* The environment's copy: it outlives s_db in the teardown. */
    s_admin_url = getenv("KLTEST_PG_URL");
    snprintf(s_db_name, sizeof s_db_name, "%s", kl_test_db_name(s_db));
    s_db_url = kl_test_db_url(s_db);
    char *sql = NULL;
    snprintf(s_app, sizeof s_app, "kltest_miggrant_app_%d", (int)getpid());
    sql = kl_asprintf("CREATE ROLE %s LOGIN NOSUPERUSER NOBYPASSRLS "
                      "NOCREATEROLE NOCREATEDB",
                      s_app);
    s_exec(s_admin_url, sql);
    free(sql);
    snprintf(s_tmp, sizeof s_tmp, "/tmp/kltest-miggrant-XXXXXX");
    if (!mkdtemp(s_tmp))
        return -1;
    snprintf(s_dir, sizeof s_dir, "%s/m", s_tmp);
    mkdir(s_dir, 0755);
    s_file("V0001__projects.sql", s_v1);
    s_file("V0002__tasks.sql", s_v2);

    s_tenant_port = kl_test_proc_free_port();
    s_mig_port = kl_test_proc_free_port();
    char mep[64];
    snprintf(mep, sizeof mep, "tcp://127.0.0.1:%d", s_mig_port);

    /* The tenant service, provisioning through the migration service
     * and granting the same application role. */
    char bind[64], db[1200], owners[1300], meps[96], app[96], log[256];
    snprintf(bind, sizeof bind, "KOWLOON_TENANT_BIND=tcp://127.0.0.1:%d",
             s_tenant_port);
    snprintf(db, sizeof db, "KOWLOON_DATABASE_URL=%s", s_db_url);
    snprintf(owners, sizeof owners, "KOWLOON_TENANT_DB_OWNER_SERVERS=main=%s",
             s_db_url);
    snprintf(meps, sizeof meps, "KOWLOON_MIGRATION_ENDPOINTS=%s", mep);
    snprintf(app, sizeof app, "KOWLOON_DATA_APP_ROLE=%s", s_app);
    snprintf(log, sizeof log, "%s/tenant.log", s_tmp);
    const char *vars[] = {bind,
                          db,
                          owners,
                          meps,
                          app,
                          "KOWLOON_REDIS_URL=",
                          "KOWLOON_LOG_LEVEL=warn",
                          NULL};
    s_tenant_proc =
        kl_test_proc_start(KLTEST_TENANT_BIN, vars, "KOWLOON_", log);
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", s_tenant_port);
    const char *eps[] = {ep};
    kl_status_t st;
    kl_rpc_client_opts_t o = {.endpoints = eps, .n_endpoints = 1};
    s_tenants = kl_rpc_client_new(&kowloon__tenant__tenant_service__descriptor,
                                  &o, &st);
    if (kl_test_proc_wait_serving(s_tenant_proc, ep, 30000, &st) < 0) {
        fprintf(stderr, "kowloon-tenant does not answer: %s (log %s)\n",
                st.message, log);
        return -1;
    }
    const char *mig_eps[] = {mep};
    kl_rpc_client_opts_t mo = {.endpoints = mig_eps, .n_endpoints = 1};
    s_mig = kl_rpc_client_new(
        &kowloon__migration__migration_service__descriptor, &mo, &st);
    s_start_migration();
    s_wait_migration_up();
    return 0;
}

static int
s_group_teardown(void **state)
{
    (void)state;
    int rc = 0;
    if (kl_test_proc_stop(&s_mig_proc) != 0) {
        fprintf(stderr, "kowloon-migration did not exit cleanly (%s)\n", s_tmp);
        rc = -1;
    }
    if (kl_test_proc_stop(&s_tenant_proc) != 0) {
        fprintf(stderr, "kowloon-tenant did not exit cleanly (%s)\n", s_tmp);
        rc = -1;
    }
    kl_rpc_client_destroy(&s_mig);
    kl_rpc_client_destroy(&s_tenants);
    if (s_admin_url) {
        char *sql = NULL;
        if (s_database.hex[0]) {
            sql =
                kl_asprintf("DROP DATABASE IF EXISTS kowloon_t_%s WITH (FORCE)",
                            s_database.hex);
            s_exec(s_admin_url, sql);
            free(sql);
        }
        kl_test_db_destroy(&s_db);
        s_db_url = NULL;
        if (s_app[0]) {
            sql = kl_asprintf("DROP ROLE IF EXISTS %s", s_app);
            s_exec(s_admin_url, sql);
            free(sql);
        }
    }
    if (rc == 0 && s_tmp[0]) {
        char *cmd = kl_asprintf("rm -rf '%s'", s_tmp);
        if (system(cmd) != 0)
            rc = -1;
        free(cmd);
    }
    return rc;
}

/* --- helpers over the services ----------------------------------------- */

/* Waits for run_id to finish and checks it had no failure. */
static void
s_wait_clean(int64_t run_id, int total)
{
    int64_t until = kl_test_proc_now_ms() + 120000;
    for (;;) {
        Kowloon__Migration__StatusRequest req =
            KOWLOON__MIGRATION__STATUS_REQUEST__INIT;
        req.run_id = run_id;
        req.max_failures = 50;
        Kowloon__Migration__RunStatus *s = NULL;
        kl_status_t st;
        if (s_call(s_mig, "Status", &req, &s, &st) != 0)
            fail_msg("Status: %s", st.message);
        if (strcmp(s->state, "finished") == 0) {
            for (size_t i = 0; i < s->n_failures; i++)
                fprintf(stderr, "failed: %s V%d: %s\n", s->failures[i]->target,
                        s->failures[i]->version, s->failures[i]->error);
            assert_int_equal(s->failed, 0);
            assert_int_equal(s->total, total);
            assert_int_equal(s->done, total);
            protobuf_c_message_free_unpacked(&s->base, NULL);
            return;
        }
        protobuf_c_message_free_unpacked(&s->base, NULL);
        if (kl_test_proc_now_ms() > until)
            fail_msg("run %ld did not finish", (long)run_id);
        kl_test_proc_sleep_ms(100);
    }
}

/* Runs every target and waits for it. */
static void
s_run_all(int expect_targets)
{
    Kowloon__Migration__RunRequest req = KOWLOON__MIGRATION__RUN_REQUEST__INIT;
    Kowloon__Migration__RunResponse *out = NULL;
    kl_status_t st;
    if (s_call(s_mig, "Run", &req, &out, &st) != 0)
        fail_msg("Run: %s", st.message);
    assert_int_equal(out->targets, expect_targets);
    int64_t id = out->run_id;
    protobuf_c_message_free_unpacked(&out->base, NULL);
    s_wait_clean(id, expect_targets);
}

static void
s_create(s_tenant_t *dst, const char *sub, const char *isolation)
{
    Kowloon__Tenant__CreateTenantRequest req =
        KOWLOON__TENANT__CREATE_TENANT_REQUEST__INIT;
    req.subdomain = (char *)sub;
    req.name = (char *)sub;
    req.isolation = (char *)isolation;
    Kowloon__Tenant__Tenant *t = NULL;
    kl_status_t st;
    if (s_call(s_tenants, "Create", &req, &t, &st) != 0)
        fail_msg("Create %s: %s", sub, st.message);
    snprintf(dst->id, sizeof dst->id, "%s", t->id);
    snprintf(dst->isolation, sizeof dst->isolation, "%s", t->isolation);
    int h = 0;
    for (const char *p = t->id; *p; p++)
        if (*p != '-')
            dst->hex[h++] = *p;
    dst->hex[h] = '\0';
    protobuf_c_message_free_unpacked(&t->base, NULL);
    assert_string_equal(dst->isolation, isolation);
}

/* Where t's tables live: (conninfo as user, schema); caller frees. */
static char *
s_place(const s_tenant_t *t, const char *user, char *schema, size_t size)
{
    if (strcmp(t->isolation, "database") == 0) {
        char db[64];
        snprintf(db, sizeof db, "kowloon_t_%s", t->hex);
        snprintf(schema, size, S_SHARED);
        return s_conninfo_for(s_admin_url, db, user);
    }
    if (strcmp(t->isolation, "schema") == 0)
        snprintf(schema, size, "t_%s", t->hex);
    else
        snprintf(schema, size, S_SHARED);
    return s_conninfo_for(s_db_url, s_db_name, user);
}

/* As the application role, in t's scope (search_path and app.tenant_id
 * set transaction-locally, as kl_tenant_tx_begin does): runs sql, then
 * "SELECT count(*) FROM <table>". Returns the count, or -1 with the error
 * in err (SQLSTATE first). */
static long
s_as_app(const s_tenant_t *t, const char *sql, const char *table, char *err,
         size_t err_size)
{
    char schema[64];
    char *url = s_place(t, s_app, schema, sizeof schema);
    PGconn *c = PQconnectdb(url);
    free(url);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("connect as %s: %s", s_app, PQerrorMessage(c));
    char *text = kl_asprintf("BEGIN;"
                             "SELECT set_config('search_path', '\"%s\"', true),"
                             " set_config('app.tenant_id', '%s', true);"
                             "%s;"
                             "SELECT count(*) FROM %s",
                             schema, t->id, sql, table);
    PGresult *r = PQexec(c, text);
    free(text);
    long n = -1;
    err[0] = '\0';
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    } else {
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        snprintf(err, err_size, "%s %s", state ? state : "?",
                 PQresultErrorMessage(r));
    }
    PQclear(r);
    PQclear(PQexec(c, n >= 0 ? "COMMIT" : "ROLLBACK"));
    PQfinish(c);
    return n;
}

/* Whether the application role holds privilege on schema.table where t
 * lives (asked as the owner). */
static bool
s_has(const s_tenant_t *t, const char *table, const char *privilege)
{
    char schema[64];
    char *url = s_place(t, NULL, schema, sizeof schema);
    char *sql = kl_asprintf("SELECT has_table_privilege('%s', '%s.%s', '%s')",
                            s_app, schema, table, privilege);
    char *v = s_value(url, sql);
    bool has = strcmp(v, "t") == 0;
    free(v);
    free(sql);
    free(url);
    return has;
}

/* --- tests ------------------------------------------------------------- */

/* Three tenants at V0002, then V0003 adds notes (forced), plain and
 * unforced: after the Run, the application role works in notes in each
 * model, and has nothing on plain or unforced. */
static void
test_new_table_is_granted_to_app_role(void **state)
{
    (void)state;
    /* The shared schema first (no tenant is needed for it). */
    s_run_all(1);
    s_create(&s_row, "grantrow", "row");
    s_create(&s_schema, "grantschema", "schema");
    s_create(&s_database, "grantdatabase", "database");
    char err[512];
    const s_tenant_t *all[] = {&s_row, &s_schema, &s_database};
    /* What existed at provisioning is reachable (control for below). */
    for (size_t i = 0; i < 3; i++) {
        long n = s_as_app(all[i], "INSERT INTO tasks (title) VALUES ('t')",
                          "tasks", err, sizeof err);
        if (strcmp(all[i]->isolation, "row") != 0 && n != 1)
            fail_msg("%s tenant, tasks: %s", all[i]->isolation, err);
    }

    s_file("V0003__notes.sql", s_v3);
    assert_int_equal(kl_test_proc_stop(&s_mig_proc), 0);
    s_start_migration();
    s_wait_migration_up();
    /* shared + schema + database. */
    s_run_all(3);

    for (size_t i = 0; i < 3; i++) {
        const s_tenant_t *t = all[i];
        long n = s_as_app(t, "INSERT INTO notes (body) VALUES ('hello')",
                          "notes", err, sizeof err);
        if (n != 1)
            fail_msg("%s tenant: the application role cannot use the new "
                     "table: %s",
                     t->isolation, err);
        n = s_as_app(t, "SELECT 1", "notes", err, sizeof err);
        assert_int_equal(n, 1);
        assert_true(s_has(t, "notes", "UPDATE"));
        assert_true(s_has(t, "notes", "DELETE"));
        assert_false(s_has(t, "notes", "TRUNCATE"));
        /* Without forced row-level security: nothing granted. */
        assert_false(s_has(t, "plain", "SELECT"));
        assert_false(s_has(t, "plain", "INSERT"));
        assert_false(s_has(t, "unforced", "SELECT"));
        assert_false(s_has(t, "unforced", "INSERT"));
        n = s_as_app(t, "SELECT 1", "plain", err, sizeof err);
        assert_int_equal(n, -1);
        assert_non_null(strstr(err, "42501"));
        n = s_as_app(t, "SELECT 1", "unforced", err, sizeof err);
        assert_int_equal(n, -1);
        assert_non_null(strstr(err, "42501"));
    }
    /* The row tenant's note is its own: another tenant id in the shared
     * schema sees none of it. */
    s_tenant_t other = s_row;
    snprintf(other.id, sizeof other.id, "00000000-0000-4000-8000-000000000001");
    assert_int_equal(s_as_app(&other, "SELECT 1", "notes", err, sizeof err), 0);
    /* A second run has nothing to apply and changes nothing. */
    s_run_all(3);
    assert_int_equal(s_as_app(&s_schema, "SELECT 1", "notes", err, sizeof err),
                     1);
    assert_false(s_has(&s_schema, "plain", "SELECT"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_table_is_granted_to_app_role),
    };
    return cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
}
