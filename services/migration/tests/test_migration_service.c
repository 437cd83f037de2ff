/*
 * The migration service end to end: the real kowloon-tenant and two
 * kowloon-migration processes against a fresh database made in
 * KLTEST_PG_URL, driven over ZeroMQ.
 *
 * 200 tenants across the three isolation models (60 row, 130 schema, 10
 * database: 141 targets), one broken tenant (a conflicting table in its
 * schema), two instances at once with one SIGKILLed mid-run and started
 * again; then retry, drift, a syntax error in a migration fixed as a
 * "-- kowloon:no-transaction" one (CREATE INDEX CONCURRENTLY on every
 * target, both instances at once), and provisioning new tenants.
 */
#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_rpc_client.h"
#include "kl_test_db.h"
#include "kl_test_proc.h"
#include "kowloon/migration.pb-c.h"
#include "kowloon/tenant.pb-c.h"

#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define S_TIMEOUT_MS 30000
#define S_N_ROW 60
#define S_N_SCHEMA 130
#define S_N_DATABASE 10
#define S_N_TENANTS (S_N_ROW + S_N_SCHEMA + S_N_DATABASE)
#define S_N_TARGETS (1 + S_N_SCHEMA + S_N_DATABASE)
#define S_SHARED "product"

static kl_test_db_t *s_db;      /* this run's database */
static const char *s_admin_url; /* KLTEST_PG_URL */
static char s_db_name[96];      /* this run's control database */
static const char *s_db_url;    /* its conninfo */
static char s_tmp[128];         /* scratch directory */
static char s_dir1[192];        /* migrations V1..V3 */
static char s_dir2[192];        /* V1..V4 (V4 broken, later fixed) */
static const char *s_dir;       /* what the instances load now */
static int s_tenant_port, s_mig_port[2];
static kl_test_proc_t *s_tenant_proc, *s_mig_proc[2];
static kl_rpc_client_t *s_tenants, *s_mig;

typedef struct {
    char id[37];
    char isolation[16];
    char hex[33];
} s_tenant_t;

static s_tenant_t s_all[S_N_TENANTS];
static int s_broken = -1;   /* index of the broken schema tenant */
static int s_drifted = -1;  /* index of the drifted schema tenant */
static int64_t s_first_run; /* run of the kill test */

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

/* Where tenant i's tables live: (url, schema); url caller frees. */
static char *
s_place(int i, char *schema, size_t size)
{
    const s_tenant_t *t = &s_all[i];
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

/* "1,2,3": the versions in tenant i's history ("history"), or in its
 * effects table. */
static char *
s_versions(int i, const char *table)
{
    char schema[64];
    char *url = s_place(i, schema, sizeof schema);
    char target[64];
    if (strcmp(s_all[i].isolation, "row") == 0)
        snprintf(target, sizeof target, "shared:" S_SHARED);
    else
        snprintf(target, sizeof target, "tenant:%s", s_all[i].id);
    char *sql =
        strcmp(table, "history") == 0
            ? kl_asprintf("SELECT coalesce(string_agg(version::text, ','"
                          " ORDER BY version), '') FROM"
                          " kowloon_migration.history WHERE target = '%s'",
                          target)
            : kl_asprintf("SELECT coalesce(string_agg(version::text, ','"
                          " ORDER BY version), '') FROM %s.%s",
                          schema, table);
    char *v = s_value(url, sql);
    free(sql);
    free(url);
    return v;
}

/* "true" when tenant i's place has index name, valid (built). */
static char *
s_index_valid(int i, const char *name)
{
    char schema[64];
    char *url = s_place(i, schema, sizeof schema);
    char *sql = kl_asprintf("SELECT coalesce((SELECT x.indisvalid::text FROM"
                            " pg_index x JOIN pg_class c ON c.oid ="
                            " x.indexrelid JOIN pg_namespace n ON n.oid ="
                            " c.relnamespace WHERE n.nspname = '%s' AND"
                            " c.relname = '%s'), 'missing')",
                            schema, name);
    char *v = s_value(url, sql);
    free(sql);
    free(url);
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
    snprintf(bind, sizeof bind, "KOWLOON_MIGRATION_BIND=tcp://127.0.0.1:%d",
             s_mig_port[i]);
    snprintf(tep, sizeof tep, "KOWLOON_TENANT_ENDPOINTS=tcp://127.0.0.1:%d",
             s_tenant_port);
    snprintf(db, sizeof db, "KOWLOON_DATABASE_URL=%s", s_db_url);
    snprintf(owner, sizeof owner, "KOWLOON_DATA_OWNER_URL=%s", s_db_url);
    snprintf(dir, sizeof dir, "KOWLOON_MIGRATIONS_DIR=%s", s_dir);
    snprintf(log, sizeof log, "%s/migration-%d.log", s_tmp, i);
    /* Database tenants are reached through the owner-server list. */
    char servers[1200];
    snprintf(servers, sizeof servers, "KOWLOON_TENANT_DB_OWNER_SERVERS=main=%s",
             s_admin_url);
    const char *vars[] = {servers,
                          bind,
                          tep,
                          db,
                          owner,
                          dir,
                          "KOWLOON_REDIS_URL=",
                          "KOWLOON_LOG_LEVEL=warn",
                          "KOWLOON_WORKERS=2",
                          "KOWLOON_MIGRATION_WORKERS=3",
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

static void
s_restart_migrations(const char *dir)
{
    for (int i = 0; i < 2; i++)
        assert_int_equal(kl_test_proc_stop(&s_mig_proc[i]), 0);
    s_dir = dir;
    s_start_migration(0);
    s_start_migration(1);
    s_wait_migration_up();
}

/* Runs kowloonctl with the test's endpoints and args (NULL-terminated);
 * returns its exit code, *out its stdout (caller frees). */
static int
s_ctl(char **out, ...)
{
    char tep[64], m0[64], m1[64], path[256];
    snprintf(tep, sizeof tep, "tcp://127.0.0.1:%d", s_tenant_port);
    snprintf(m0, sizeof m0, "tcp://127.0.0.1:%d", s_mig_port[0]);
    snprintf(m1, sizeof m1, "tcp://127.0.0.1:%d", s_mig_port[1]);
    snprintf(path, sizeof path, "%s/ctl.out", s_tmp);
    const char *argv[32] = {KLTEST_KOWLOONCTL_BIN,
                            "--tenant-endpoint",
                            tep,
                            "--migration-endpoint",
                            m0,
                            "--migration-endpoint",
                            m1};
    int argc = 7;
    va_list ap;
    va_start(ap, out);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && argc < 31)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int null = open("/dev/null", O_WRONLY);
        if (fd < 0 || null < 0)
            _exit(126);
        dup2(fd, 1);
        dup2(null, 2);
        execv(argv[0], (char **)argv);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = kl_calloc(1, 1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = '\0';
    fclose(f);
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* --- migration files --------------------------------------------------- */

static void
s_file(const char *dir, const char *name, const char *text)
{
    char path[320];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static const char s_v1[] =
    "CREATE TABLE projects (id bigserial PRIMARY KEY,\n"
    "  tenant_id text NOT NULL DEFAULT current_setting('app.tenant_id', "
    "true),\n"
    "  name text NOT NULL);\n"
    "CREATE TABLE effects (version integer NOT NULL);\n"
    "INSERT INTO effects VALUES (1);\n";
static const char s_v2[] =
    "CREATE TABLE tasks (id bigserial PRIMARY KEY,\n"
    "  project_id bigint REFERENCES projects (id), title text NOT NULL,\n"
    "  done boolean DEFAULT false);\n"
    "INSERT INTO effects VALUES (2);\n";
/* The sleep keeps each target busy long enough to be killed mid-way. */
static const char s_v3[] =
    "CREATE INDEX tasks_project_done ON tasks (project_id, done);\n"
    "ALTER TABLE tasks ADD COLUMN notes text;\n"
    "SELECT pg_sleep(0.03);\n"
    "INSERT INTO effects VALUES (3);\n";

/* Plan of every tenant; caller frees. */
static Kowloon__Migration__PlanResponse *
s_plan(void)
{
    Kowloon__Migration__PlanRequest req =
        KOWLOON__MIGRATION__PLAN_REQUEST__INIT;
    Kowloon__Migration__PlanResponse *p = NULL;
    kl_status_t st;
    if (s_call(s_mig, "Plan", &req, &p, &st) != 0)
        fail_msg("Plan: %s", st.message);
    return p;
}

/* --- fixture ----------------------------------------------------------- */

static int
s_group_setup(void **state)
{
    (void)state;
    kl_log_init("migration-test", KL_ERROR);
    signal(SIGPIPE, SIG_IGN);
    s_db = kl_test_db_new("test_migration_service", "kltest_migration");
    if (!s_db)
        return -1;
    /* The environment's copy: it outlives s_db in the teardown. */
    s_admin_url = getenv("KLTEST_PG_URL");
    snprintf(s_db_name, sizeof s_db_name, "%s", kl_test_db_name(s_db));
    s_db_url = kl_test_db_url(s_db);
    snprintf(s_tmp, sizeof s_tmp, "/tmp/kltest-migration-XXXXXX");
    if (!mkdtemp(s_tmp))
        return -1;
    snprintf(s_dir1, sizeof s_dir1, "%s/m1", s_tmp);
    snprintf(s_dir2, sizeof s_dir2, "%s/m2", s_tmp);
    mkdir(s_dir1, 0755);
    mkdir(s_dir2, 0755);
    s_file(s_dir1, "V0001__projects.sql", s_v1);
    s_file(s_dir1, "V0002__tasks.sql", s_v2);
    s_file(s_dir1, "V0003__index_and_column.sql", s_v3);
    s_file(s_dir2, "V0001__projects.sql", s_v1);
    s_file(s_dir2, "V0002__tasks.sql", s_v2);
    s_file(s_dir2, "V0003__index_and_column.sql", s_v3);
    s_file(s_dir2, "V0004__broken.sql", "CREAT TABLE oops (id integer);\n");
    s_dir = s_dir1;

    /* The tenant service. */
    s_tenant_port = kl_test_proc_free_port();
    char bind[64], db[1200], log[256];
    snprintf(bind, sizeof bind, "KOWLOON_TENANT_BIND=tcp://127.0.0.1:%d",
             s_tenant_port);
    snprintf(db, sizeof db, "KOWLOON_DATABASE_URL=%s", s_db_url);
    snprintf(log, sizeof log, "%s/tenant.log", s_tmp);
    const char *vars[] = {bind, db,
                          "KOWLOON_REDIS_URL=", "KOWLOON_LOG_LEVEL=warn", NULL};
    const char *tenant_bin = getenv("KLTEST_TENANT_BIN");
    s_tenant_proc = kl_test_proc_start(
        tenant_bin && *tenant_bin ? tenant_bin : KLTEST_TENANT_BIN, vars,
        "KOWLOON_", log);
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

    /* The migration service: two instances, one client over both. */
    s_mig_port[0] = kl_test_proc_free_port();
    s_mig_port[1] = kl_test_proc_free_port();
    char ep0[64], ep1[64];
    snprintf(ep0, sizeof ep0, "tcp://127.0.0.1:%d", s_mig_port[0]);
    snprintf(ep1, sizeof ep1, "tcp://127.0.0.1:%d", s_mig_port[1]);
    const char *meps[] = {ep0, ep1};
    kl_rpc_client_opts_t mo = {.endpoints = meps, .n_endpoints = 2};
    s_mig = kl_rpc_client_new(
        &kowloon__migration__migration_service__descriptor, &mo, &st);
    s_start_migration(0);
    s_start_migration(1);
    s_wait_migration_up();
    return 0;
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
    kl_test_proc_stop(&s_tenant_proc);
    kl_rpc_client_destroy(&s_mig);
    kl_rpc_client_destroy(&s_tenants);
    if (s_admin_url) {
        for (int i = 0; i < S_N_TENANTS; i++) {
            if (strcmp(s_all[i].isolation, "database") != 0)
                continue;
            char *sql =
                kl_asprintf("DROP DATABASE IF EXISTS kowloon_t_%s WITH (FORCE)",
                            s_all[i].hex);
            s_exec(s_admin_url, sql);
            free(sql);
        }
        kl_test_db_destroy(&s_db);
        s_db_url = NULL;
    }
    if (rc == 0 && s_tmp[0]) {
        char *cmd = kl_asprintf("rm -rf '%s'", s_tmp);
        if (system(cmd) != 0)
            rc = -1;
        free(cmd);
    }
    return rc;
}

/* --- helpers over the service ------------------------------------------ */

/* Status is a read, sent as kowloonctl sends it (idempotent): right after
 * an instance is killed, a call the client handed to the dead instance's
 * pipe fails ("connection ... lost") or is never answered; it is tried
 * again on the other instance, each try with a short deadline. */
static Kowloon__Migration__RunStatus *
s_status(int64_t run_id)
{
    Kowloon__Migration__StatusRequest req =
        KOWLOON__MIGRATION__STATUS_REQUEST__INIT;
    req.run_id = run_id;
    req.max_failures = 500;
    kl_call_opts_t o = {.timeout_ms = 5000, .idempotent = true};
    int64_t until = kl_test_proc_now_ms() + 60000;
    for (;;) {
        Kowloon__Migration__RunStatus *out = NULL;
        kl_status_t st;
        int rc = kl_rpc_client_call(s_mig, "Status", &req.base, &o,
                                    (ProtobufCMessage **)&out, &st);
        if (rc == 0)
            return out;
        if ((rc != -KL_UNAVAILABLE && rc != -KL_DEADLINE_EXCEEDED) ||
            kl_test_proc_now_ms() > until)
            fail_msg("Status: %s", st.message);
        kl_test_proc_sleep_ms(50);
    }
}

static Kowloon__Migration__RunStatus *
s_wait_finished(int64_t run_id)
{
    int64_t until = kl_test_proc_now_ms() + 180000;
    for (;;) {
        Kowloon__Migration__RunStatus *s = s_status(run_id);
        if (strcmp(s->state, "finished") == 0)
            return s;
        protobuf_c_message_free_unpacked(&s->base, NULL);
        if (kl_test_proc_now_ms() > until)
            fail_msg("run %ld did not finish", (long)run_id);
        kl_test_proc_sleep_ms(100);
    }
}

static int64_t
s_run(char **ids, size_t n_ids)
{
    Kowloon__Migration__RunRequest req = KOWLOON__MIGRATION__RUN_REQUEST__INIT;
    req.tenant_ids = ids;
    req.n_tenant_ids = n_ids;
    Kowloon__Migration__RunResponse *out = NULL;
    kl_status_t st;
    if (s_call(s_mig, "Run", &req, &out, &st) != 0)
        fail_msg("Run: %s", st.message);
    int64_t id = out->run_id;
    protobuf_c_message_free_unpacked(&out->base, NULL);
    return id;
}

static int64_t
s_retry(int64_t run_id, int expect_targets)
{
    Kowloon__Migration__RetryRequest req =
        KOWLOON__MIGRATION__RETRY_REQUEST__INIT;
    req.run_id = run_id;
    Kowloon__Migration__RunResponse *out = NULL;
    kl_status_t st;
    if (s_call(s_mig, "Retry", &req, &out, &st) != 0)
        fail_msg("Retry: %s", st.message);
    assert_int_equal(out->targets, expect_targets);
    int64_t id = out->run_id;
    protobuf_c_message_free_unpacked(&out->base, NULL);
    return id;
}

static Kowloon__Tenant__Tenant *
s_create_tenant(const char *sub, const char *isolation)
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
    return t;
}

/* Makes the schema or database of a tenant (if the tenant service has not
 * provisioned it already). */
static void
s_provision_place(s_tenant_t *t)
{
    if (strcmp(t->isolation, "schema") == 0) {
        char *sql = kl_asprintf("CREATE SCHEMA IF NOT EXISTS t_%s", t->hex);
        s_exec(s_db_url, sql);
        free(sql);
    } else if (strcmp(t->isolation, "database") == 0) {
        char *sql = kl_asprintf("SELECT count(*) FROM pg_database"
                                " WHERE datname = 'kowloon_t_%s'",
                                t->hex);
        char *n = s_value(s_admin_url, sql);
        free(sql);
        if (strcmp(n, "0") == 0) {
            sql = kl_asprintf("CREATE DATABASE kowloon_t_%s", t->hex);
            s_exec(s_admin_url, sql);
            free(sql);
        }
        free(n);
        char db[64];
        snprintf(db, sizeof db, "kowloon_t_%s", t->hex);
        char *url = s_conninfo_for(s_admin_url, db);
        s_exec(url, "CREATE SCHEMA IF NOT EXISTS " S_SHARED);
        free(url);
    }
}

static void
s_remember(s_tenant_t *dst, const Kowloon__Tenant__Tenant *t)
{
    snprintf(dst->id, sizeof dst->id, "%s", t->id);
    snprintf(dst->isolation, sizeof dst->isolation, "%s", t->isolation);
    int h = 0;
    for (const char *p = t->id; *p; p++)
        if (*p != '-')
            dst->hex[h++] = *p;
    dst->hex[h] = '\0';
}

/* --- tests ------------------------------------------------------------- */

static void
test_tenants_and_plan(void **state)
{
    (void)state;
    for (int i = 0; i < S_N_TENANTS; i++) {
        const char *iso = i < S_N_ROW                ? "row"
                          : i < S_N_ROW + S_N_SCHEMA ? "schema"
                                                     : "database";
        char sub[32];
        snprintf(sub, sizeof sub, "mig%03d", i);
        Kowloon__Tenant__Tenant *t = s_create_tenant(sub, iso);
        s_remember(&s_all[i], t);
        assert_string_equal(s_all[i].isolation, iso);
        protobuf_c_message_free_unpacked(&t->base, NULL);
        s_provision_place(&s_all[i]);
    }
    /* The broken tenant: a conflicting "tasks" table already there. */
    s_broken = S_N_ROW + 7;
    char *sql =
        kl_asprintf("CREATE TABLE t_%s.tasks (x integer)", s_all[s_broken].hex);
    s_exec(s_db_url, sql);
    free(sql);

    /* The dry run lists every target with V1..V3 and changes nothing. */
    Kowloon__Migration__PlanResponse *p = s_plan();
    assert_int_equal(p->latest_version, 3);
    assert_int_equal(p->n_migrations, 3);
    assert_string_equal(p->migrations[1]->name, "V0002__tasks.sql");
    assert_int_equal(strlen(p->migrations[1]->checksum), 64);
    assert_int_equal(p->n_targets, S_N_TARGETS);
    assert_int_equal(p->targets_pending, S_N_TARGETS);
    assert_int_equal(p->targets_failing, 0);
    int shared = 0, databases = 0;
    for (size_t i = 0; i < p->n_targets; i++) {
        const Kowloon__Migration__TargetPlan *tp = p->targets[i];
        assert_int_equal(tp->n_pending, 3);
        assert_int_equal(tp->pending[0], 1);
        assert_int_equal(tp->pending[2], 3);
        assert_int_equal(tp->current_version, 0);
        assert_string_equal(tp->error, "");
        if (strcmp(tp->target, "shared:" S_SHARED) == 0) {
            shared++;
            assert_string_equal(tp->isolation, "row");
            assert_string_equal(tp->tenant_id, "");
        }
        if (strcmp(tp->isolation, "database") == 0) {
            databases++;
            char loc[128];
            snprintf(loc, sizeof loc, "kowloon_t_%.32s/" S_SHARED,
                     tp->target + strlen("tenant:"));
            /* The location names the tenant's database (hex of its id). */
            assert_int_equal(strncmp(tp->location, "kowloon_t_", 10), 0);
            assert_non_null(strstr(tp->location, "/" S_SHARED));
        }
    }
    assert_int_equal(shared, 1);
    assert_int_equal(databases, S_N_DATABASE);
    protobuf_c_message_free_unpacked(&p->base, NULL);
    char *n = s_value(s_db_url, "SELECT count(*) FROM migration.ledger");
    assert_string_equal(n, "0");
    free(n);
    n = s_value(s_db_url, "SELECT count(*) FROM pg_catalog.pg_class"
                          " WHERE relname = 'projects'");
    assert_string_equal(n, "0");
    free(n);
    n = s_value(s_db_url, "SELECT count(*) FROM pg_catalog.pg_namespace"
                          " WHERE nspname = 'kowloon_migration'");
    assert_string_equal(n, "0");
    free(n);
}

static void
test_two_instances_one_killed(void **state)
{
    (void)state;
    s_first_run = s_run(NULL, 0);
    /* Kill instance 0 part-way through. */
    int64_t until = kl_test_proc_now_ms() + 120000;
    for (;;) {
        Kowloon__Migration__RunStatus *s = s_status(s_first_run);
        int finished = s->done + s->failed, remaining = s->remaining;
        protobuf_c_message_free_unpacked(&s->base, NULL);
        if (finished >= 20) {
            assert_true(remaining > 0);
            break;
        }
        if (kl_test_proc_now_ms() > until)
            fail_msg("run %ld makes no progress", (long)s_first_run);
        kl_test_proc_sleep_ms(20);
    }
    kl_test_proc_kill(&s_mig_proc[0]);
    Kowloon__Migration__RunStatus *mid = s_status(s_first_run);
    assert_true(mid->remaining > 0);
    assert_string_equal(mid->state, "running");
    protobuf_c_message_free_unpacked(&mid->base, NULL);
    /* Started again, it resumes with the other. */
    s_start_migration(0);
    s_wait_migration_up();
    Kowloon__Migration__RunStatus *s = s_wait_finished(s_first_run);
    assert_int_equal(s->total, S_N_TARGETS);
    assert_int_equal(s->done, S_N_TARGETS - 1);
    assert_int_equal(s->failed, 1);
    assert_int_equal(s->remaining, 0);
    assert_int_equal(s->latest_version, 3);
    assert_int_equal(s->n_failures, 1);
    char target[64];
    snprintf(target, sizeof target, "tenant:%s", s_all[s_broken].id);
    assert_string_equal(s->failures[0]->target, target);
    assert_string_equal(s->failures[0]->tenant_id, s_all[s_broken].id);
    assert_int_equal(s->failures[0]->version, 2);
    assert_string_equal(s->failures[0]->error,
                        "V0002__tasks.sql: relation \"tasks\" already exists "
                        "(SQLSTATE 42P07)");
    protobuf_c_message_free_unpacked(&s->base, NULL);

    /* Nothing applied twice: every target's history and effects say
     * 1,2,3 exactly once (the broken one: 1). */
    for (int i = 0; i < S_N_TENANTS; i++) {
        const char *want = i == s_broken ? "1" : "1,2,3";
        char *h = s_versions(i, "history");
        char *e = s_versions(i, "effects");
        if (strcmp(h, want) != 0 || strcmp(e, want) != 0)
            fail_msg("tenant %d (%s): history %s, effects %s, want %s", i,
                     s_all[i].isolation, h, e, want);
        free(h);
        free(e);
    }
    /* The ledger: 3 applied rows per good target, the broken one's V1
     * applied and V2 failed with the error. */
    char *n = s_value(s_db_url, "SELECT count(*) FROM migration.ledger"
                                " WHERE state = 'applied'");
    char want[32];
    snprintf(want, sizeof want, "%d", (S_N_TARGETS - 1) * 3 + 1);
    assert_string_equal(n, want);
    free(n);
    char *sql = kl_asprintf("SELECT state || ' ' || error FROM"
                            " migration.ledger WHERE target = 'tenant:%s'"
                            " AND version = 2",
                            s_all[s_broken].id);
    n = s_value(s_db_url, sql);
    free(sql);
    assert_string_equal(n, "failed V0002__tasks.sql: relation \"tasks\" "
                           "already exists (SQLSTATE 42P07)");
    free(n);
    /* Both instances did part of the work (the killed one, and whichever
     * took over). */
    sql = kl_asprintf("SELECT count(DISTINCT instance) FROM"
                      " migration.run_targets WHERE run_id = %ld",
                      (long)s_first_run);
    n = s_value(s_db_url, sql);
    free(sql);
    assert_true(atoi(n) >= 2);
    free(n);
}

static void
test_kowloonctl(void **state)
{
    (void)state;
    char *out = NULL, run[32];
    snprintf(run, sizeof run, "%ld", (long)s_first_run);
    /* A run with a failed target: exit 1, the failure in the JSON. */
    assert_int_equal(s_ctl(&out, "--json", "migrate", "status", run, NULL), 1);
    assert_non_null(strstr(out, "\"failed\": 1"));
    assert_non_null(strstr(out, "relation \\\"tasks\\\" already exists"));
    free(out);
    /* The human table names the failed target. */
    assert_int_equal(s_ctl(&out, "migrate", "status", run, NULL), 1);
    assert_non_null(strstr(out, "failed targets:"));
    assert_non_null(strstr(out, s_all[s_broken].id));
    free(out);
    assert_int_equal(s_ctl(&out, "migrate", "status", "999999", NULL), 4);
    free(out);
    /* Tenants by subdomain; unknown is exit 4. */
    assert_int_equal(s_ctl(&out, "tenants", "show", "mig000", NULL), 0);
    assert_non_null(strstr(out, s_all[0].id));
    free(out);
    assert_int_equal(s_ctl(&out, "tenants", "show", "nosuchtenant", NULL), 4);
    free(out);
    assert_int_equal(
        s_ctl(&out, "--json", "tenants", "list", "--limit", "3", NULL), 0);
    assert_non_null(strstr(out, "\"isolation\": \"row\""));
    free(out);
    /* Usage errors: exit 2. */
    assert_int_equal(s_ctl(&out, "migrate", "frobnicate", NULL), 2);
    free(out);
    assert_int_equal(s_ctl(&out, "migrate", "run", "--help", NULL), 0);
    assert_non_null(strstr(out, "usage: kowloonctl migrate plan"));
    free(out);
}

static void
test_retry_failed_only(void **state)
{
    (void)state;
    /* The operator fixes the broken tenant and retries just it. */
    char *sql = kl_asprintf("DROP TABLE t_%s.tasks", s_all[s_broken].hex);
    s_exec(s_db_url, sql);
    free(sql);
    int64_t retry = s_retry(s_first_run, 1);
    Kowloon__Migration__RunStatus *s = s_wait_finished(retry);
    assert_int_equal(s->retry_of, s_first_run);
    assert_int_equal(s->total, 1);
    assert_int_equal(s->done, 1);
    assert_int_equal(s->failed, 0);
    assert_int_equal(s->applied, 2);
    protobuf_c_message_free_unpacked(&s->base, NULL);
    char *h = s_versions(s_broken, "effects");
    assert_string_equal(h, "1,2,3");
    free(h);
    sql = kl_asprintf("SELECT state || coalesce(error, '') FROM"
                      " migration.ledger WHERE target = 'tenant:%s'"
                      " AND version = 2",
                      s_all[s_broken].id);
    h = s_value(s_db_url, sql);
    free(sql);
    assert_string_equal(h, "applied");
    free(h);
    /* A run without failures has nothing to retry. */
    Kowloon__Migration__RetryRequest req =
        KOWLOON__MIGRATION__RETRY_REQUEST__INIT;
    req.run_id = retry;
    ProtobufCMessage *out = NULL;
    kl_status_t st;
    assert_int_equal(s_call(s_mig, "Retry", &req, &out, &st),
                     -KL_FAILED_PRECONDITION);
    char msg[64];
    snprintf(msg, sizeof msg, "run %ld has no failed target", (long)retry);
    assert_string_equal(st.message, msg);
}

static void
test_drift_refused(void **state)
{
    (void)state;
    s_drifted = S_N_ROW + 11;
    char *sql = kl_asprintf("UPDATE kowloon_migration.history SET checksum ="
                            " 'deadbeefdeadbeef' WHERE version = 2"
                            " AND target = 'tenant:%s'",
                            s_all[s_drifted].id);
    s_exec(s_db_url, sql);
    free(sql);
    Kowloon__Migration__PlanRequest req =
        KOWLOON__MIGRATION__PLAN_REQUEST__INIT;
    Kowloon__Migration__PlanResponse *p = NULL;
    kl_status_t st;
    assert_int_equal(s_call(s_mig, "Plan", &req, &p, &st), 0);
    assert_int_equal(p->targets_failing, 1);
    assert_int_equal(p->targets_pending, 0);
    const char *err = NULL;
    for (size_t i = 0; i < p->n_targets; i++)
        if (*p->targets[i]->error)
            err = p->targets[i]->error;
    assert_non_null(err);
    assert_int_equal(strncmp(err,
                             "checksum mismatch for V0002 (applied "
                             "deadbeefdead..., file ",
                             58),
                     0);
    protobuf_c_message_free_unpacked(&p->base, NULL);
    char *out = NULL;
    assert_int_equal(s_ctl(&out, "migrate", "plan", NULL), 1);
    assert_non_null(strstr(out, "checksum mismatch for V0002"));
    free(out);
    char *ids[] = {s_all[s_drifted].id};
    int64_t run = s_run(ids, 1);
    Kowloon__Migration__RunStatus *s = s_wait_finished(run);
    assert_int_equal(s->failed, 1);
    assert_int_equal(
        strncmp(s->failures[0]->error, "checksum mismatch for V0002", 27), 0);
    protobuf_c_message_free_unpacked(&s->base, NULL);
    /* Put it back. */
    sql = kl_asprintf("UPDATE kowloon_migration.history h SET checksum ="
                      " (SELECT checksum FROM migration.ledger l WHERE"
                      " l.target = h.target AND l.version = 2)"
                      " WHERE version = 2 AND target = 'tenant:%s'",
                      s_all[s_drifted].id);
    s_exec(s_db_url, sql);
    free(sql);
}

static void
test_syntax_error_fails_each_target_not_the_run(void **state)
{
    (void)state;
    s_restart_migrations(s_dir2);
    int64_t run = s_run(NULL, 0);
    Kowloon__Migration__RunStatus *s = s_wait_finished(run);
    assert_int_equal(s->total, S_N_TARGETS);
    assert_int_equal(s->failed, S_N_TARGETS);
    assert_int_equal(s->done, 0);
    for (size_t i = 0; i < s->n_failures; i++) {
        assert_int_equal(s->failures[i]->version, 4);
        assert_string_equal(s->failures[i]->error,
                            "V0004__broken.sql: syntax error at or near "
                            "\"CREAT\" (SQLSTATE 42601)");
    }
    protobuf_c_message_free_unpacked(&s->base, NULL);
    char *h = s_versions(S_N_ROW + 1, "history");
    assert_string_equal(h, "1,2,3");
    free(h);
    /* Fixed (V0004 was applied nowhere, so this is no drift), retried.
     * The fix is a no-transaction migration: CREATE INDEX CONCURRENTLY on
     * every target, by both instances' workers at once, each holding the
     * claim of its own target in an open transaction of the control
     * database (which is also the main database of the row and schema
     * targets). */
    s_file(s_dir2, "V0004__broken.sql",
           "-- kowloon:no-transaction\n"
           "CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_notes"
           " ON tasks (notes);\n");
    s_restart_migrations(s_dir2);
    /* The plan says which migration runs outside a transaction, on the
     * wire and in kowloonctl's table. */
    Kowloon__Migration__PlanResponse *p = s_plan();
    assert_int_equal(p->n_migrations, 4);
    assert_false(p->migrations[2]->no_transaction);
    assert_true(p->migrations[3]->no_transaction);
    protobuf_c_message_free_unpacked(&p->base, NULL);
    char *out = NULL;
    assert_int_equal(s_ctl(&out, "migrate", "plan", NULL), 0);
    assert_non_null(strstr(out, "V0004__broken.sql runs outside a transaction "
                                "(-- kowloon:no-transaction)"));
    assert_null(strstr(out, "V0003__index_and_column.sql runs outside"));
    free(out);
    int64_t retry = s_retry(run, S_N_TARGETS);
    s = s_wait_finished(retry);
    assert_int_equal(s->done, S_N_TARGETS);
    assert_int_equal(s->failed, 0);
    assert_int_equal(s->applied, S_N_TARGETS);
    protobuf_c_message_free_unpacked(&s->base, NULL);
    for (int i = 0; i < S_N_TENANTS; i += 13) {
        h = s_versions(i, "history");
        assert_string_equal(h, "1,2,3,4");
        free(h);
        h = s_index_valid(i, "tasks_notes");
        assert_string_equal(h, "true");
        free(h);
    }
}

static void
test_provision_new_tenant(void **state)
{
    (void)state;
    Kowloon__Tenant__Tenant *t = s_create_tenant("brandnew", "schema");
    s_tenant_t nt;
    s_remember(&nt, t);
    protobuf_c_message_free_unpacked(&t->base, NULL);
    s_provision_place(&nt);
    Kowloon__Migration__ProvisionTenantRequest req =
        KOWLOON__MIGRATION__PROVISION_TENANT_REQUEST__INIT;
    req.tenant_id = nt.id;
    Kowloon__Migration__ProvisionTenantResponse *out = NULL;
    kl_status_t st;
    if (s_call(s_mig, "ProvisionTenant", &req, &out, &st) != 0)
        fail_msg("ProvisionTenant: %s", st.message);
    assert_int_equal(out->version, 4);
    assert_int_equal(out->n_applied, 4);
    assert_int_equal(out->applied[0], 1);
    assert_int_equal(out->applied[3], 4);
    protobuf_c_message_free_unpacked(&out->base, NULL);
    /* Again: nothing to do. */
    assert_int_equal(s_call(s_mig, "ProvisionTenant", &req, &out, &st), 0);
    assert_int_equal(out->version, 4);
    assert_int_equal(out->n_applied, 0);
    protobuf_c_message_free_unpacked(&out->base, NULL);
    /* A row tenant lives in the shared schema, already at the latest. */
    t = s_create_tenant("brandnewrow", "row");
    req.tenant_id = t->id;
    assert_int_equal(s_call(s_mig, "ProvisionTenant", &req, &out, &st), 0);
    assert_string_equal(out->target, "shared:" S_SHARED);
    assert_int_equal(out->version, 4);
    assert_int_equal(out->n_applied, 0);
    protobuf_c_message_free_unpacked(&out->base, NULL);
    protobuf_c_message_free_unpacked(&t->base, NULL);
    /* Unknown tenant. */
    req.tenant_id = "00000000-0000-4000-8000-000000000000";
    assert_int_equal(s_call(s_mig, "ProvisionTenant", &req, &out, &st),
                     -KL_NOT_FOUND);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tenants_and_plan),
        cmocka_unit_test(test_two_instances_one_killed),
        cmocka_unit_test(test_kowloonctl),
        cmocka_unit_test(test_retry_failed_only),
        cmocka_unit_test(test_drift_refused),
        cmocka_unit_test(test_syntax_error_fails_each_target_not_the_run),
        cmocka_unit_test(test_provision_new_tenant),
    };
    return cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
}
