/*
 * Where tenant moves and the migration service meet (docs/migrations.md,
 * "Moves"): the real kowloon-tenant (provisioning through the real
 * MigrationService.ProvisionTenant) and two kowloon-migration instances
 * against a fresh database made in KLTEST_PG_URL.
 *
 *   - a Run with no tenant at all migrates the row model's shared schema,
 *     and the first row tenant finds it migrated;
 *   - moved tenants (row -> schema, row -> database, schema -> database)
 *     keep their migration history and ledger: a later migration is
 *     applied exactly once at the new placement, and the old placement
 *     leaves no history behind;
 *   - a tenant held by a move is not migrated until the move lets go (its
 *     target stays pending, marked "moving"), and a migration of a tenant
 *     holds the tenant's move lock, so a move waits for it.
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
#include <pthread.h>
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
static const char *s_db_url;    /* its conninfo */
static char s_tmp[128];         /* scratch directory */
static char s_dir[192];         /* the migrations the instances load */
static int s_tenant_port, s_mig_port[2];
static kl_test_proc_t *s_tenant_proc, *s_mig_proc[2];
static kl_rpc_client_t *s_tenants, *s_mig;

typedef struct {
    char id[37];
    char isolation[16];
    char hex[33];
} s_tenant_t;

/* Tenants made by the tests, dropped at the end. */
static s_tenant_t s_row1, s_row2, s_schema1, s_schema2, s_schema3, s_schema4;

/* A second database server, "second": the same PostgreSQL reached as
 * another owner role, so that the role owning a tenant's tables shows
 * which server's credentials made them. */
static char s_role[64];
static char *s_second_main; /* conninfo: that role, the main database */
static char *s_second;      /* conninfo: that role, KLTEST_PG_URL's db */

/* --- databases --------------------------------------------------------- */

static char *
s_conninfo_for(const char *url, const char *dbname)
{
    char *out = kl_test_db_conninfo(url, dbname, NULL);
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
s_start_migration(int i)
{
    char bind[64], tep[64], db[1200], owner[1200], dir[256], log[256];
    char servers[2600];
    snprintf(bind, sizeof bind, "KOWLOON_MIGRATION_BIND=tcp://127.0.0.1:%d",
             s_mig_port[i]);
    snprintf(tep, sizeof tep, "KOWLOON_TENANT_ENDPOINTS=tcp://127.0.0.1:%d",
             s_tenant_port);
    snprintf(db, sizeof db, "KOWLOON_DATABASE_URL=%s", s_db_url);
    snprintf(owner, sizeof owner, "KOWLOON_DATA_OWNER_URL=%s", s_db_url);
    snprintf(dir, sizeof dir, "KOWLOON_MIGRATIONS_DIR=%s", s_dir);
    snprintf(log, sizeof log, "%s/migration-%d.log", s_tmp, i);
    snprintf(servers, sizeof servers,
             "KOWLOON_TENANT_DB_OWNER_SERVERS=main=%s,second=%s", s_admin_url,
             s_second);
    const char *vars[] = {servers,
                          bind,
                          tep,
                          db,
                          owner,
                          dir,
                          "KOWLOON_REDIS_URL=",
                          "KOWLOON_LOG_LEVEL=warn",
                          "KOWLOON_WORKERS=2",
                          "KOWLOON_MIGRATION_WORKERS=2",
                          "KOWLOON_MIGRATION_POLL_MS=100",
                          "KOWLOON_MIGRATION_SHARED_SCHEMA=" S_SHARED,
                          NULL};
    s_mig_proc[i] =
        kl_test_proc_start(KLTEST_MIGRATION_BIN, vars, "KOWLOON_", log);
}

/* Waits until every migration instance answers Status. */
static void
s_wait_migration_up(void)
{
    for (int i = 0; i < 2; i++) {
        char ep[64];
        snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", s_mig_port[i]);
        kl_status_t st;
        if (kl_test_proc_wait_serving(s_mig_proc[i], ep, 30000, &st) < 0)
            fail_msg("kowloon-migration %d does not answer: %s (see %s)", i,
                     st.message, s_tmp);
    }
}

/* Restarts both instances (they load the files at start). */
static void
s_restart_migrations(void)
{
    for (int i = 0; i < 2; i++)
        assert_int_equal(kl_test_proc_stop(&s_mig_proc[i]), 0);
    s_start_migration(0);
    s_start_migration(1);
    s_wait_migration_up();
}

/* --- migration files
 * --------------------------------------------------- */

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

/* Product-like tables: tenant_id and a forced policy in every model (the
 * mover copies exactly those), and "effects", one row per version run. */
#define S_POLICY(t)                                                            \
    "ALTER TABLE " t " ENABLE ROW LEVEL SECURITY;\n"                           \
    "ALTER TABLE " t " FORCE ROW LEVEL SECURITY;\n"                            \
    "CREATE POLICY tenant_isolation ON " t "\n"                                \
    "  USING (tenant_id = NULLIF(current_setting('app.tenant_id', true),"      \
    " '')::uuid)\n"                                                            \
    "  WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true)," \
    " '')::uuid);\n"
static const char s_v1[] =
    "CREATE TABLE projects (tenant_id uuid NOT NULL\n"
    "  DEFAULT NULLIF(current_setting('app.tenant_id', true), "
    "'')::uuid,\n"
    "  id bigserial, name text NOT NULL, PRIMARY KEY (tenant_id, "
    "id));\n" S_POLICY(
        "projects") "CREATE TABLE effects (version integer NOT NULL);\n"
                    "INSERT INTO effects VALUES (1);\n";
static const char s_v2[] =
    "CREATE TABLE tasks (tenant_id uuid NOT NULL\n"
    "  DEFAULT NULLIF(current_setting('app.tenant_id', true), "
    "'')::uuid,\n"
    "  id bigserial, project_id bigint NOT NULL, title text NOT NULL,\n"
    "  PRIMARY KEY (tenant_id, id),\n"
    "  FOREIGN KEY (tenant_id, project_id) REFERENCES "
    "projects);\n" S_POLICY("tasks") "INSERT INTO effects VALUES (2);\n";
/* Fails with "already exists" wherever it was applied before. */
static const char s_v3[] = "CREATE TABLE labels (tenant_id uuid NOT NULL,\n"
                           "  name text NOT NULL);\n" S_POLICY(
                               "labels") "ALTER TABLE tasks ADD COLUMN notes "
                                         "text;\n"
                                         "INSERT INTO effects VALUES (3);\n";
static const char s_v4[] = "INSERT INTO effects VALUES (4);\n";
/* Slow: keeps a tenant's target busy while a move is asked for. */
static const char s_v5[] = "SELECT pg_sleep(3);\n"
                           "INSERT INTO effects VALUES (5);\n";

/* --- fixture
 * ----------------------------------------------------------- */

static int
s_group_setup(void **state)
{
    (void)state;
    kl_log_init("migration-moves-test", KL_ERROR);
    signal(SIGPIPE, SIG_IGN);
    s_db = kl_test_db_new("test_migration_moves", "kltest_migmove");
    if (!s_db)
        return -1;
    /* The environment's copy: it outlives s_db in the teardown. */
    s_admin_url = getenv("KLTEST_PG_URL");
    snprintf(s_db_name, sizeof s_db_name, "%s", kl_test_db_name(s_db));
    s_db_url = kl_test_db_url(s_db);
    char *sql = NULL;
    snprintf(s_tmp, sizeof s_tmp, "/tmp/kltest-migmove-XXXXXX");
    if (!mkdtemp(s_tmp))
        return -1;
    snprintf(s_dir, sizeof s_dir, "%s/m", s_tmp);
    mkdir(s_dir, 0755);
    s_file("V0001__projects.sql", s_v1);
    s_file("V0002__tasks.sql", s_v2);
    snprintf(s_role, sizeof s_role, "kltest_migmove_%d", (int)getpid());
    sql = kl_asprintf("CREATE ROLE %s LOGIN CREATEDB", s_role);
    s_exec(s_admin_url, sql);
    free(sql);
    s_second_main = kl_asprintf("%s user='%s'", s_db_url, s_role);
    char *admin = s_conninfo_for(s_admin_url, "postgres");
    s_second = kl_asprintf("%s user='%s'", admin, s_role);
    free(admin);

    s_tenant_port = kl_test_proc_free_port();
    s_mig_port[0] = kl_test_proc_free_port();
    s_mig_port[1] = kl_test_proc_free_port();
    char ep0[64], ep1[64];
    snprintf(ep0, sizeof ep0, "tcp://127.0.0.1:%d", s_mig_port[0]);
    snprintf(ep1, sizeof ep1, "tcp://127.0.0.1:%d", s_mig_port[1]);

    /* The tenant service, provisioning through the migration service.
     */
    char bind[64], db[1200], owners[2600], meps[160], log[256];
    snprintf(bind, sizeof bind, "KOWLOON_TENANT_BIND=tcp://127.0.0.1:%d",
             s_tenant_port);
    snprintf(db, sizeof db, "KOWLOON_DATABASE_URL=%s", s_db_url);
    snprintf(owners, sizeof owners,
             "KOWLOON_TENANT_DB_OWNER_SERVERS=main=%s,second=%s", s_db_url,
             s_second_main);
    snprintf(meps, sizeof meps, "KOWLOON_MIGRATION_ENDPOINTS=%s,%s", ep0, ep1);
    snprintf(log, sizeof log, "%s/tenant.log", s_tmp);
    const char *vars[] = {
        bind, db, owners, meps, "KOWLOON_REDIS_URL=", "KOWLOON_LOG_LEVEL=warn",
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
    const char *mig_eps[] = {ep0, ep1};
    kl_rpc_client_opts_t mo = {.endpoints = mig_eps, .n_endpoints = 2};
    s_mig = kl_rpc_client_new(
        &kowloon__migration__migration_service__descriptor, &mo, &st);
    s_start_migration(0);
    s_start_migration(1);
    s_wait_migration_up();
    return 0;
}

static void
s_drop_tenant_db(const s_tenant_t *t)
{
    if (!t->hex[0])
        return;
    char *sql = kl_asprintf("DROP DATABASE IF EXISTS kowloon_t_%s WITH (FORCE)",
                            t->hex);
    s_exec(s_admin_url, sql);
    free(sql);
}

static int
s_group_teardown(void **state)
{
    (void)state;
    int rc = 0;
    for (int i = 0; i < 2; i++)
        if (kl_test_proc_stop(&s_mig_proc[i]) != 0) {
            fprintf(stderr, "kowloon-migration %d did not exit cleanly (%s)\n",
                    i, s_tmp);
            rc = -1;
        }
    if (kl_test_proc_stop(&s_tenant_proc) != 0) {
        fprintf(stderr, "kowloon-tenant did not exit cleanly (%s)\n", s_tmp);
        rc = -1;
    }
    kl_rpc_client_destroy(&s_mig);
    kl_rpc_client_destroy(&s_tenants);
    if (s_admin_url) {
        const s_tenant_t *all[] = {&s_row1,    &s_row2,    &s_schema1,
                                   &s_schema2, &s_schema3, &s_schema4};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++)
            s_drop_tenant_db(all[i]);
        kl_test_db_destroy(&s_db);
        s_db_url = NULL;
        if (s_role[0]) {
            char *sql = kl_asprintf("DROP ROLE IF EXISTS %s", s_role);
            s_exec(s_admin_url, sql);
            free(sql);
        }
    }
    free(s_second_main);
    free(s_second);
    if (rc == 0 && s_tmp[0]) {
        char *cmd = kl_asprintf("rm -rf '%s'", s_tmp);
        if (system(cmd) != 0)
            rc = -1;
        free(cmd);
    }
    return rc;
}

/* --- helpers over the services
 * ----------------------------------------- */

static Kowloon__Migration__RunStatus *
s_status(int64_t run_id)
{
    Kowloon__Migration__StatusRequest req =
        KOWLOON__MIGRATION__STATUS_REQUEST__INIT;
    req.run_id = run_id;
    req.max_failures = 50;
    Kowloon__Migration__RunStatus *out = NULL;
    kl_status_t st;
    if (s_call(s_mig, "Status", &req, &out, &st) != 0)
        fail_msg("Status: %s", st.message);
    return out;
}

/* Waits for run_id to finish and checks it had no failure. */
static void
s_wait_clean(int64_t run_id, int total)
{
    int64_t until = kl_test_proc_now_ms() + 120000;
    for (;;) {
        Kowloon__Migration__RunStatus *s = s_status(run_id);
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

static int64_t
s_run(char **ids, size_t n_ids, int expect_targets)
{
    Kowloon__Migration__RunRequest req = KOWLOON__MIGRATION__RUN_REQUEST__INIT;
    req.tenant_ids = ids;
    req.n_tenant_ids = n_ids;
    Kowloon__Migration__RunResponse *out = NULL;
    kl_status_t st;
    if (s_call(s_mig, "Run", &req, &out, &st) != 0)
        fail_msg("Run: %s", st.message);
    assert_int_equal(out->targets, expect_targets);
    int64_t id = out->run_id;
    protobuf_c_message_free_unpacked(&out->base, NULL);
    return id;
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

static void
s_move_to(s_tenant_t *t, const char *to, const char *server)
{
    Kowloon__Tenant__MoveTenantRequest req =
        KOWLOON__TENANT__MOVE_TENANT_REQUEST__INIT;
    req.id = t->id;
    req.isolation = (char *)to;
    req.db_server = (char *)server;
    Kowloon__Tenant__MoveTenantResponse *out = NULL;
    kl_status_t st;
    if (s_call(s_tenants, "Move", &req, &out, &st) != 0)
        fail_msg("Move %s to %s: %s", t->id, to, st.message);
    protobuf_c_message_free_unpacked(&out->base, NULL);
    snprintf(t->isolation, sizeof t->isolation, "%s", to);
}

static void
s_move(s_tenant_t *t, const char *to)
{
    s_move_to(t, to, to && strcmp(to, "database") == 0 ? "main" : "");
}

/* Where t's tables live: (url, schema); url caller frees. */
static char *
s_place(const s_tenant_t *t, char *schema, size_t size)
{
    if (strcmp(t->isolation, "row") == 0) {
        snprintf(schema, size, S_SHARED);
        return kl_strdup(s_db_url);
    }
    if (strcmp(t->isolation, "schema") == 0) {
        snprintf(schema, size, "t_%s", t->hex);
        return kl_strdup(s_db_url);
    }
    char db[64];
    snprintf(db, sizeof db, "kowloon_t_%s", t->hex);
    snprintf(schema, size, S_SHARED);
    return s_conninfo_for(s_admin_url, db);
}

/* "1,2,3": the versions in the history of t's target where t lives. */
static char *
s_history(const s_tenant_t *t)
{
    char schema[64], target[80];
    char *url = s_place(t, schema, sizeof schema);
    if (strcmp(t->isolation, "row") == 0)
        snprintf(target, sizeof target, "shared:" S_SHARED);
    else
        snprintf(target, sizeof target, "tenant:%s", t->id);
    char *sql = kl_asprintf("SELECT coalesce(string_agg(version::text, ','"
                            " ORDER BY version), '') FROM"
                            " kowloon_migration.history WHERE target = '%s'",
                            target);
    char *v = s_value(url, sql);
    free(sql);
    free(url);
    return v;
}

/* "1,2,3": the effects table where t lives (each version's own insert).
 */
static char *
s_effects(const s_tenant_t *t)
{
    char schema[64];
    char *url = s_place(t, schema, sizeof schema);
    char *sql = kl_asprintf("SELECT coalesce(string_agg(version::text, ','"
                            " ORDER BY version), '') FROM %s.effects",
                            schema);
    char *v = s_value(url, sql);
    free(sql);
    free(url);
    return v;
}

/* The ledger's applied versions of target ("1,2,3"). */
static char *
s_ledger(const char *target)
{
    char *sql = kl_asprintf("SELECT coalesce(string_agg(version::text, ','"
                            " ORDER BY version), '') FROM migration.ledger"
                            " WHERE target = '%s' AND state = 'applied'",
                            target);
    char *v = s_value(s_db_url, sql);
    free(sql);
    return v;
}

static void
s_assert_versions(const s_tenant_t *t, const char *want)
{
    char *h = s_history(t);
    char *e = s_effects(t);
    assert_string_equal(h, want);
    assert_string_equal(e, want);
    free(h);
    free(e);
    if (strcmp(t->isolation, "row") != 0) {
        char target[80];
        snprintf(target, sizeof target, "tenant:%s", t->id);
        char *l = s_ledger(target);
        assert_string_equal(l, want);
        free(l);
    }
}

/* Adds rows for t in its current placement (as the owner, in scope). */
static void
s_add_rows(const s_tenant_t *t, int n)
{
    char schema[64];
    char *url = s_place(t, schema, sizeof schema);
    char *sql =
        kl_asprintf("BEGIN; SELECT set_config('app.tenant_id', '%s', true);"
                    "INSERT INTO %s.projects (name) SELECT 'p' || g"
                    " FROM generate_series(1, %d) g;"
                    "INSERT INTO %s.tasks (project_id, title) SELECT id, 't'"
                    " FROM %s.projects WHERE tenant_id = '%s'; COMMIT",
                    t->id, schema, n, schema, schema, t->id);
    s_exec(url, sql);
    free(sql);
    free(url);
}

static int64_t
s_count_rows(const s_tenant_t *t, const char *table)
{
    char schema[64];
    char *url = s_place(t, schema, sizeof schema);
    char *sql = kl_asprintf("SELECT count(*) FROM %s.%s WHERE tenant_id = '%s'",
                            schema, table, t->id);
    char *v = s_value(url, sql);
    int64_t n = strtoll(v, NULL, 10);
    free(v);
    free(sql);
    free(url);
    return n;
}

/* A session of the main database holding the tenant's move lock
 * exclusive, exactly as tenant_mover does. */
static PGconn *
s_hold_move_lock(const s_tenant_t *t)
{
    PGconn *c = PQconnectdb(s_db_url);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    const char *p[] = {t->id};
    PGresult *r =
        PQexecParams(c,
                     "SELECT pg_advisory_lock(pg_catalog.hashtextextended("
                     "'kowloon.tenant.' || $1, 0))",
                     1, NULL, p, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    return c;
}

/* Whether the tenant's move lock can be had exclusive right now (taken
 * and released at once). */
static bool
s_move_lock_free(const s_tenant_t *t)
{
    char *sql =
        kl_asprintf("SELECT CASE WHEN "
                    "pg_try_advisory_lock(pg_catalog.hashtextextended("
                    "'kowloon.tenant.%s', 0)) THEN pg_advisory_unlock("
                    "pg_catalog.hashtextextended('kowloon.tenant.%s', 0))::text"
                    " ELSE 'held' END",
                    t->id, t->id);
    char *v = s_value(s_db_url, sql);
    bool free_now = strcmp(v, "true") == 0;
    free(v);
    free(sql);
    return free_now;
}

/* --- tests
 * ------------------------------------------------------------- */

/* No tenant at all: the shared schema is still a target, and the first
 * row tenant finds it migrated. */
static void
test_run_without_tenants_migrates_shared(void **state)
{
    (void)state;
    int64_t run = s_run(NULL, 0, 1);
    s_wait_clean(run, 1);
    char *v = s_value(s_db_url, "SELECT coalesce(string_agg(version::text, ','"
                                " ORDER BY version), '') FROM"
                                " kowloon_migration.history"
                                " WHERE target = 'shared:" S_SHARED "'");
    assert_string_equal(v, "1,2");
    free(v);
    v = s_ledger("shared:" S_SHARED);
    assert_string_equal(v, "1,2");
    free(v);

    s_create(&s_row1, "moverowone", "row");
    Kowloon__Migration__ProvisionTenantRequest req =
        KOWLOON__MIGRATION__PROVISION_TENANT_REQUEST__INIT;
    req.tenant_id = s_row1.id;
    Kowloon__Migration__ProvisionTenantResponse *out = NULL;
    kl_status_t st;
    if (s_call(s_mig, "ProvisionTenant", &req, &out, &st) != 0)
        fail_msg("ProvisionTenant: %s", st.message);
    assert_string_equal(out->target, "shared:" S_SHARED);
    assert_int_equal(out->version, 2);
    assert_int_equal(out->n_applied, 0);
    protobuf_c_message_free_unpacked(&out->base, NULL);
    s_assert_versions(&s_row1, "1,2");
}

/* row -> schema, row -> database, schema -> database, then V0003 across
 * every tenant: applied exactly once at each new placement, nothing
 * left in the old one. */
static void
test_moved_tenants_keep_their_migrations(void **state)
{
    (void)state;
    s_create(&s_row2, "moverowtwo", "row");
    s_create(&s_schema1, "moveschemaone", "schema");
    s_assert_versions(&s_schema1, "1,2");
    s_add_rows(&s_row1, 5);
    s_add_rows(&s_row2, 7);
    s_add_rows(&s_schema1, 3);

    s_move(&s_row1, "schema");
    s_move(&s_row2, "database");
    s_move(&s_schema1, "database");
    assert_int_equal(s_count_rows(&s_row1, "tasks"), 5);
    assert_int_equal(s_count_rows(&s_row2, "tasks"), 7);
    assert_int_equal(s_count_rows(&s_schema1, "tasks"), 3);
    s_assert_versions(&s_row1, "1,2");
    s_assert_versions(&s_row2, "1,2");
    s_assert_versions(&s_schema1, "1,2");
    /* The dropped schema of schema1 left no history in the main
     * database. */
    char *sql = kl_asprintf("SELECT count(*) FROM kowloon_migration.history"
                            " WHERE target = 'tenant:%s'",
                            s_schema1.id);
    char *v = s_value(s_db_url, sql);
    assert_string_equal(v, "0");
    free(v);
    free(sql);

    s_file("V0003__labels.sql", s_v3);
    s_restart_migrations();
    /* shared + row1 (schema) + row2 (database) + schema1 (database). */
    int64_t run = s_run(NULL, 0, 4);
    s_wait_clean(run, 4);
    s_assert_versions(&s_row1, "1,2,3");
    s_assert_versions(&s_row2, "1,2,3");
    s_assert_versions(&s_schema1, "1,2,3");
    v = s_history(&(s_tenant_t){.isolation = "row"});
    assert_string_equal(v, "1,2,3");
    free(v);
    assert_int_equal(s_count_rows(&s_row1, "projects"), 5);
    /* Again: nothing left to do anywhere. */
    run = s_run(NULL, 0, 4);
    s_wait_clean(run, 4);
    s_assert_versions(&s_row1, "1,2,3");
    s_assert_versions(&s_schema1, "1,2,3");
}

/* A tenant held by a move is not migrated: its target waits, marked
 * "moving", and is migrated once the move lets go. */
static void
test_tenant_being_moved_is_not_migrated(void **state)
{
    (void)state;
    s_create(&s_schema2, "moveschematwo", "schema");
    s_assert_versions(&s_schema2, "1,2,3");
    s_file("V0004__four.sql", s_v4);
    s_restart_migrations();
    PGconn *lock = s_hold_move_lock(&s_schema2);
    int64_t run = s_run(NULL, 0, 5);
    /* Everything else finishes; schema2 stays pending, marked moving.
     */
    int64_t until = kl_test_proc_now_ms() + 60000;
    for (;;) {
        Kowloon__Migration__RunStatus *s = s_status(run);
        int done = s->done, remaining = s->remaining, failed = s->failed;
        protobuf_c_message_free_unpacked(&s->base, NULL);
        assert_int_equal(failed, 0);
        if (done == 4 && remaining == 1)
            break;
        if (kl_test_proc_now_ms() > until)
            fail_msg("run %ld: %d done, %d remaining", (long)run, done,
                     remaining);
        kl_test_proc_sleep_ms(100);
    }
    kl_test_proc_sleep_ms(1000); /* several polls of both instances */
    char *sql = kl_asprintf("SELECT state || ':' || coalesce(error, '')"
                            " FROM migration.run_targets WHERE run_id = %ld"
                            " AND target = 'tenant:%s'",
                            (long)run, s_schema2.id);
    char *v = s_value(s_db_url, sql);
    assert_non_null(strstr(v, "pending:"));
    assert_non_null(strstr(v, "moving"));
    free(v);
    free(sql);
    s_assert_versions(&s_schema2, "1,2,3");
    PQfinish(lock);
    s_wait_clean(run, 5);
    s_assert_versions(&s_schema2, "1,2,3,4");
}

typedef struct {
    s_tenant_t *t;
    int64_t ended_ms;
} s_mover_arg_t;

static void *
s_mover(void *arg)
{
    s_mover_arg_t *a = arg;
    s_move(a->t, "database");
    a->ended_ms = kl_test_proc_now_ms();
    return NULL;
}

/* A migration holds the tenant: a move asked for meanwhile waits for
 * it, then succeeds, the target having every version exactly once. */
static void
test_move_waits_for_migration(void **state)
{
    (void)state;
    s_create(&s_schema3, "moveschemathree", "schema");
    s_add_rows(&s_schema3, 4);
    s_file("V0005__slow.sql", s_v5);
    s_restart_migrations();
    char *ids[] = {s_schema3.id};
    int64_t run = s_run(ids, 1, 1);
    /* Wait until the slow migration is running on schema3. */
    int64_t until = kl_test_proc_now_ms() + 30000;
    for (;;) {
        char *v = s_value(s_db_url, "SELECT count(*) FROM pg_stat_activity"
                                    " WHERE query LIKE '%pg_sleep(3)%'"
                                    " AND pid <> pg_backend_pid()");
        bool running = strcmp(v, "0") != 0;
        free(v);
        if (running)
            break;
        if (kl_test_proc_now_ms() > until)
            fail_msg("the slow migration never started");
        kl_test_proc_sleep_ms(20);
    }
    /* The migration holds the tenant's move lock (shared). */
    assert_false(s_move_lock_free(&s_schema3));
    int64_t asked = kl_test_proc_now_ms();
    s_mover_arg_t arg = {.t = &s_schema3};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, s_mover, &arg), 0);
    pthread_join(th, NULL);
    assert_true(arg.ended_ms > asked);
    s_wait_clean(run, 1);
    /* The schema's migration finished before the move copied it; the
     * database was provisioned with every version, each once. */
    s_assert_versions(&s_schema3, "1,2,3,4,5");
    assert_int_equal(s_count_rows(&s_schema3, "tasks"), 4);
    assert_true(s_move_lock_free(&s_schema3));
    /* A last run over everyone: nothing fails, nothing runs twice. */
    run = s_run(NULL, 0, 6);
    s_wait_clean(run, 6);
    s_assert_versions(&s_schema3, "1,2,3,4,5");
    s_assert_versions(&s_row1, "1,2,3,4,5");
    s_assert_versions(&s_row2, "1,2,3,4,5");
    s_assert_versions(&s_schema1, "1,2,3,4,5");
    s_assert_versions(&s_schema2, "1,2,3,4,5");
}

/* A move to a database on another server: its migrations run with that
 * server's owner credentials (ProvisionTenant names the server), and later
 * runs find it there. */
static void
test_move_to_another_server(void **state)
{
    (void)state;
    s_create(&s_schema4, "moveschemafour", "schema");
    s_add_rows(&s_schema4, 2);
    s_move_to(&s_schema4, "database", "second");
    s_assert_versions(&s_schema4, "1,2,3,4,5");
    char schema[64];
    char *url = s_place(&s_schema4, schema, sizeof schema);
    char *v = s_value(url, "SELECT string_agg(DISTINCT pg_get_userbyid("
                           "relowner), ',') FROM pg_class WHERE relnamespace ="
                           " 'workspace'::regnamespace AND relkind = 'r'");
    assert_string_equal(v, s_role);
    free(v);
    free(url);
    assert_int_equal(s_count_rows(&s_schema4, "tasks"), 2);
    s_file("V0006__six.sql", "INSERT INTO effects VALUES (6);\n");
    s_restart_migrations();
    int64_t run = s_run(NULL, 0, 7);
    s_wait_clean(run, 7);
    s_assert_versions(&s_schema4, "1,2,3,4,5,6");
    s_assert_versions(&s_schema1, "1,2,3,4,5,6");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_without_tenants_migrates_shared),
        cmocka_unit_test(test_moved_tenants_keep_their_migrations),
        cmocka_unit_test(test_tenant_being_moved_is_not_migrated),
        cmocka_unit_test(test_move_waits_for_migration),
        cmocka_unit_test(test_move_to_another_server),
    };
    return cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
}
