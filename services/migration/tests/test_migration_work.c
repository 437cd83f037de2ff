/*
 * migration_work: one target's pending migrations, in as few transactions
 * as they allow, against a fresh database made in KLTEST_PG_URL (the
 * library's objects directly, no processes).
 *
 *   - three pending migrations go in one round trip, each in its own
 *     transaction (their history rows have three xmins), recorded in the
 *     ledger, and no lock is left behind;
 *   - when the 2nd of 3 fails, the 1st is committed, the 2nd reported with
 *     PostgreSQL's text, the 3rd not applied (also for a syntax error,
 *     which PostgreSQL reports before running any of the string: the files
 *     are then applied one by one);
 *   - a file with SET or COMMIT is sent on its own, the others still in
 *     one round trip; COMMIT is reported as before;
 *   - a target whose history has V1 gets V2 and V3, a transaction each;
 *   - a new run's targets get fresh statistics, so a worker's claim,
 *     prepared while nothing was pending, is planned again as an index
 *     scan instead of a sort of every pending target;
 *   - the run workers' path: claim (with the target's lock), the tenant's
 *     move lock and the placement fence, ledger and target row in one
 *     statement, every lock given back;
 *   - a transaction of the target still running on the server for a dead
 *     client (an orphaned batch) is waited for, and what it committed is
 *     not applied again;
 *   - a "-- kowloon:no-transaction" file runs outside any transaction
 *     (CREATE INDEX CONCURRENTLY, which refuses a transaction block, on a
 *     schema tenant and on the shared schema), is recorded, and leaves the
 *     connection's session as it was; one that fails is reported with
 *     PostgreSQL's text and nothing after it runs; run again (a crash
 *     before its history row), an IF NOT EXISTS statement is harmless;
 *     the invalid index a failed one leaves is refused by name, not
 *     recorded over.
 */
#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_pg.h"
#include "kl_tenant_db.h"
#include "kl_test_db.h"
#include "migration_apply.h"
#include "migration_files.h"
#include "migration_store.h"
#include "migration_target.h"
#include "migration_work.h"

#include <libpq-fe.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

static kl_test_db_t *s_db; /* this run's database */
static const char *s_url;  /* its conninfo (superuser: the owner role) */
static char s_tmp[128];    /* scratch directory */
static kl_pg_t *s_ctrl;    /* the control connection */
static migration_apply_t *s_ap;

static void
s_exec(const char *sql)
{
    if (kl_test_db_exec(s_url, sql) < 0)
        fail_msg("s_exec failed (see above)");
}

/* The first value of sql's result; caller frees. */
static char *
s_value(const char *sql)
{
    char *v = kl_test_db_value(s_url, sql);
    if (!v)
        fail_msg("s_value failed (see above)");
    return v;
}

static void s_expect(const char *want, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Asserts that the first value of the formatted query is want. */
static void
s_expect(const char *want, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = NULL;
    if (vasprintf(&sql, fmt, ap) < 0)
        fail_msg("vasprintf");
    va_end(ap);
    char *got = s_value(sql);
    if (strcmp(got, want) != 0)
        fail_msg("%s\n  got  \"%s\"\n  want \"%s\"", sql, got, want);
    free(got);
    free(sql);
}

/* --- migration files ---------------------------------------------------- */

static const char s_v1[] =
    "CREATE TABLE projects (id bigserial PRIMARY KEY, name text NOT NULL);\n"
    "CREATE TABLE effects (version integer NOT NULL);\n"
    "INSERT INTO effects VALUES (1);\n";
static const char s_v2[] =
    "CREATE TABLE tasks (id bigserial PRIMARY KEY,\n"
    "  project_id bigint REFERENCES projects (id), title text NOT NULL);\n"
    "INSERT INTO effects VALUES (2);\n";
static const char s_v3[] = "ALTER TABLE tasks ADD COLUMN notes text;\n"
                           "INSERT INTO effects VALUES (3);\n";

/* A migrations directory sub of the scratch dir with the files given as
 * name, text pairs (NULL-terminated); loaded. */
static migration_files_t *
s_files(const char *sub, ...)
{
    char dir[256];
    snprintf(dir, sizeof dir, "%s/%s", s_tmp, sub);
    assert_int_equal(mkdir(dir, 0700), 0);
    va_list ap;
    va_start(ap, sub);
    const char *name;
    while ((name = va_arg(ap, const char *)) != NULL) {
        const char *text = va_arg(ap, const char *);
        char path[400];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
    }
    va_end(ap);
    kl_status_t st;
    migration_files_t *files = migration_files_load(dir, &st);
    if (!files)
        fail_msg("%s: %s", dir, st.message);
    return files;
}

/* --- targets ------------------------------------------------------------ */

/* A schema tenant with its schema made. */
static void
s_tenant(migration_target_t *t)
{
    char id[37];
    kl_test_db_uuid(id);
    kl_status_t st;
    assert_int_equal(
        migration_target_for_tenant(id, "schema", NULL, "workspace", t, &st),
        0);
    char *sql = kl_asprintf("CREATE SCHEMA %s", t->schema);
    s_exec(sql);
    free(sql);
}

/* Migrates t as ProvisionTenant does (no run, no move lock). */
static void
s_migrate(const migration_files_t *files, const migration_target_t *t,
          migration_work_result_t *res)
{
    kl_status_t st;
    assert_int_equal(kl_pg_begin(s_ctrl, &st), 0);
    migration_work_opts_t o = {0};
    if (migration_work_target(s_ctrl, s_ap, files, t, &o, res, &st) < 0)
        fail_msg("migration_work_target: %s", st.message);
    assert_int_equal(kl_pg_commit(s_ctrl, &st), 0);
}

/* "1,2,3": the versions in t's history. */
static void
s_expect_history(const migration_target_t *t, const char *want)
{
    s_expect(want,
             "SELECT coalesce(string_agg(version::text, ',' ORDER BY"
             " version), '') FROM kowloon_migration.history"
             " WHERE target = '%s'",
             t->target);
}

/* "1,2,3": what the migrations did in t's schema. */
static void
s_expect_effects(const migration_target_t *t, const char *want)
{
    s_expect(want,
             "SELECT coalesce(string_agg(version::text, ',' ORDER BY"
             " version), '') FROM %s.effects",
             t->schema);
}

/* How many transactions wrote t's history rows. */
static void
s_expect_transactions(const migration_target_t *t, const char *want)
{
    s_expect(want,
             "SELECT count(DISTINCT xmin::text) FROM"
             " kowloon_migration.history WHERE target = '%s'",
             t->target);
}

/* Nobody holds t's apply lock nor (tenant) its move lock any more: this
 * session can take both exclusively. */
static void
s_expect_unlocked(const migration_target_t *t)
{
    s_expect("true true",
             "SELECT pg_try_advisory_lock(hashtextextended("
             "'kowloon.migration.apply:' || '%s', 0))::text || ' ' ||"
             " pg_try_advisory_lock(" KL_TENANT_LOCK_SQL("'%s'") ")::text",
             t->target, t->tenant_id);
}

/* --- fixture ------------------------------------------------------------ */

static int
s_setup(void **state)
{
    (void)state;
    kl_log_init("migration-work-test", KL_ERROR);
    s_db = kl_test_db_new("test_migration_work", "kltest_migwork");
    if (!s_db)
        return -1;
    s_url = kl_test_db_url(s_db);
    snprintf(s_tmp, sizeof s_tmp, "/tmp/kltest-migwork-XXXXXX");
    if (!mkdtemp(s_tmp))
        return -1;
    s_ctrl = kl_pg_new(s_url);
    kl_status_t st;
    if (migration_store_migrate(s_ctrl, &st) < 0) {
        fprintf(stderr, "migration_store_migrate: %s\n", st.message);
        return -1;
    }
    s_ap = migration_apply_new(s_url, NULL, 0, &st);
    return s_ap ? 0 : -1;
}

static int
s_teardown(void **state)
{
    (void)state;
    migration_apply_destroy(&s_ap);
    kl_pg_destroy(&s_ctrl);
    kl_test_db_destroy(&s_db);
    int rc = 0;
    if (s_tmp[0]) {
        char *cmd = kl_asprintf("rm -rf '%s'", s_tmp);
        rc = system(cmd) == 0 ? 0 : -1;
        free(cmd);
    }
    return rc;
}

/* --- tests -------------------------------------------------------------- */

static void
test_batch_one_round_trip(void **state)
{
    (void)state;
    migration_files_t *files =
        s_files("good", "V0001__projects.sql", s_v1, "V0002__tasks.sql", s_v2,
                "V0003__notes.sql", s_v3, NULL);
    migration_target_t t;
    s_tenant(&t);
    migration_work_result_t res;
    s_migrate(files, &t, &res);
    assert_int_equal(res.failed, 0);
    assert_int_equal(res.current, 3);
    assert_int_equal(res.n_applied, 3);
    assert_int_equal(res.applied[0], 1);
    assert_int_equal(res.applied[2], 3);
    migration_work_result_free(&res);
    s_expect_history(&t, "1,2,3");
    s_expect_effects(&t, "1,2,3");
    /* One transaction for each of the three. */
    s_expect_transactions(&t, "3");
    /* The history's checksums are the files', the ledger says applied. */
    s_expect("3",
             "SELECT count(*) FROM kowloon_migration.history WHERE"
             " target = '%s' AND checksum = CASE version WHEN 1 THEN '%s'"
             " WHEN 2 THEN '%s' ELSE '%s' END AND duration_ms >= 0",
             t.target, migration_files_get(files, 1)->checksum,
             migration_files_get(files, 2)->checksum,
             migration_files_get(files, 3)->checksum);
    s_expect("applied,applied,applied",
             "SELECT string_agg(state, ',' ORDER BY version) FROM"
             " migration.ledger WHERE target = '%s' AND error IS NULL"
             " AND started_at IS NOT NULL",
             t.target);
    s_expect_unlocked(&t);
    /* Again: nothing to do. */
    s_migrate(files, &t, &res);
    assert_int_equal(res.failed, 0);
    assert_int_equal(res.n_applied, 0);
    assert_int_equal(res.current, 3);
    migration_work_result_free(&res);
    s_expect_effects(&t, "1,2,3");
    migration_files_destroy(&files);
}

static void
test_second_of_three_fails(void **state)
{
    (void)state;
    migration_files_t *files =
        s_files("conflict", "V0001__projects.sql", s_v1, "V0002__tasks.sql",
                s_v2, "V0003__notes.sql", s_v3, NULL);
    migration_target_t t;
    s_tenant(&t);
    /* A table in the way of V0002. */
    char *sql = kl_asprintf("CREATE TABLE %s.tasks (x integer)", t.schema);
    s_exec(sql);
    free(sql);
    migration_work_result_t res;
    s_migrate(files, &t, &res);
    assert_int_equal(res.failed, 1);
    assert_int_equal(res.failed_version, 2);
    assert_string_equal(res.error, "V0002__tasks.sql: relation \"tasks\" "
                                   "already exists (SQLSTATE 42P07)");
    assert_int_equal(res.n_applied, 1);
    assert_int_equal(res.applied[0], 1);
    assert_int_equal(res.current, 1);
    migration_work_result_free(&res);
    /* The 1st applied and recorded, the 3rd not applied. */
    s_expect_history(&t, "1");
    s_expect_effects(&t, "1");
    s_expect("0",
             "SELECT count(*) FROM pg_catalog.pg_attribute a JOIN"
             " pg_catalog.pg_class c ON c.oid = a.attrelid JOIN"
             " pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
             " WHERE n.nspname = '%s' AND a.attname = 'notes'",
             t.schema);
    s_expect("1 applied|2 failed V0002__tasks.sql: relation \"tasks\" already "
             "exists (SQLSTATE 42P07)",
             "SELECT string_agg(version || ' ' || state ||"
             " coalesce(' ' || error, ''), '|' ORDER BY version)"
             " FROM migration.ledger WHERE target = '%s'",
             t.target);
    s_expect_unlocked(&t);
    migration_files_destroy(&files);
}

static void
test_syntax_error_in_batch(void **state)
{
    (void)state;
    migration_files_t *files =
        s_files("syntax", "V0001__projects.sql", s_v1, "V0002__bad.sql",
                "CREAT TABLE oops (id integer);\n", "V0003__notes.sql",
                "CREATE TABLE notes (id integer);\n", NULL);
    migration_target_t t;
    s_tenant(&t);
    migration_work_result_t res;
    s_migrate(files, &t, &res);
    assert_int_equal(res.failed, 1);
    assert_int_equal(res.failed_version, 2);
    assert_string_equal(res.error, "V0002__bad.sql: syntax error at or near "
                                   "\"CREAT\" (SQLSTATE 42601)");
    assert_int_equal(res.n_applied, 1);
    migration_work_result_free(&res);
    s_expect_history(&t, "1");
    s_expect_effects(&t, "1");
    s_expect("", "SELECT coalesce(to_regclass('%s.notes')::text, '')",
             t.schema);
    migration_files_destroy(&files);
}

static void
test_set_and_commit_alone(void **state)
{
    (void)state;
    /* V3 changes a setting: V1 and V2 go in one round trip, V3 on its own
     * (and its setting does not outlive it). */
    migration_files_t *files =
        s_files("setting", "V0001__projects.sql", s_v1, "V0002__tasks.sql",
                s_v2, "V0003__notes.sql",
                "SET LOCAL lock_timeout = '7s';\n"
                "ALTER TABLE tasks ADD COLUMN notes text;\n"
                "INSERT INTO effects VALUES (3);\n",
                NULL);
    assert_int_equal(migration_files_get(files, 3)->batchable, 0);
    migration_target_t t;
    s_tenant(&t);
    migration_work_result_t res;
    s_migrate(files, &t, &res);
    assert_int_equal(res.failed, 0);
    assert_int_equal(res.n_applied, 3);
    migration_work_result_free(&res);
    s_expect_effects(&t, "1,2,3");
    s_expect_transactions(&t, "3");
    migration_files_destroy(&files);

    /* A file that commits itself is reported as always. */
    files = s_files("commit", "V0001__projects.sql", s_v1, "V0002__commit.sql",
                    "CREATE TABLE early (id integer);\nCOMMIT;\n",
                    "V0003__notes.sql", s_v3, NULL);
    s_tenant(&t);
    s_migrate(files, &t, &res);
    assert_int_equal(res.failed, 1);
    assert_int_equal(res.failed_version, 2);
    assert_string_equal(res.error,
                        "V0002__commit.sql: V0002__commit.sql ends the "
                        "transaction itself: COMMIT and ROLLBACK are not "
                        "allowed in a migration");
    assert_int_equal(res.n_applied, 1);
    migration_work_result_free(&res);
    s_expect_history(&t, "1");
    migration_files_destroy(&files);
}

static const char s_concurrently[] = "-- kowloon:no-transaction\n"
                                     "CREATE INDEX CONCURRENTLY IF NOT EXISTS "
                                     "projects_name ON projects (name);\n";

/* "true" when schema.projects_name is a valid index. */
static void
s_expect_valid_index(const char *schema)
{
    s_expect("true",
             "SELECT i.indisvalid::text FROM pg_index i JOIN pg_class c ON"
             " c.oid = i.indexrelid JOIN pg_namespace n ON n.oid ="
             " c.relnamespace WHERE n.nspname = '%s' AND c.relname ="
             " 'projects_name'",
             schema);
}

/* Migrates t with the no-transaction set (V1, the index, V3): n versions
 * applied now, all three in the history, V1's and V3's effects, the index
 * valid in t's schema. */
static void
s_expect_no_tx_applied(const migration_files_t *files,
                       const migration_target_t *t, size_t n)
{
    migration_work_result_t res;
    s_migrate(files, t, &res);
    assert_int_equal(res.failed, 0);
    assert_int_equal(res.n_applied, n);
    migration_work_result_free(&res);
    s_expect_history(t, "1,2,3");
    s_expect_effects(t, "1,3");
    s_expect_valid_index(t->schema);
}

static void
test_no_transaction(void **state)
{
    (void)state;
    const char *v3 = "INSERT INTO effects VALUES (3);\n";
    /* Without the line, PostgreSQL refuses the statement in the
     * migration's transaction: the line is what makes it work. */
    migration_files_t *files =
        s_files("in-tx", "V0001__projects.sql", s_v1, "V0002__index.sql",
                s_concurrently + strlen("-- kowloon:no-transaction\n"), NULL);
    migration_target_t t;
    s_tenant(&t);
    migration_work_result_t res;
    s_migrate(files, &t, &res);
    assert_int_equal(res.failed, 1);
    assert_int_equal(res.failed_version, 2);
    assert_non_null(strstr(res.error, "cannot run inside a transaction block"));
    migration_work_result_free(&res);
    migration_files_destroy(&files);

    files = s_files("no-tx", "V0001__projects.sql", s_v1, "V0002__index.sql",
                    s_concurrently, "V0003__three.sql", v3, NULL);
    assert_int_equal(migration_files_get(files, 2)->no_transaction, 1);
    assert_int_equal(migration_files_get(files, 2)->batchable, 0);
    s_tenant(&t);
    s_expect_no_tx_applied(files, &t, 3);
    s_expect_unlocked(&t);

    /* The shared schema (row model) too; the session's search_path was
     * reset after the tenant's file, so nothing lands in the tenant's
     * schema by accident. */
    migration_target_t shared;
    kl_status_t st;
    assert_int_equal(migration_target_shared("nt_shared", &shared, &st), 0);
    s_expect_no_tx_applied(files, &shared, 3);
    s_expect_effects(&t, "1,3");

    /* A crash between the statement and its history row: the next run
     * runs the statement again, which IF NOT EXISTS makes harmless. */
    char *sql = kl_asprintf("DELETE FROM kowloon_migration.history WHERE"
                            " target = '%s' AND version >= 2",
                            t.target);
    s_exec(sql);
    free(sql);
    sql = kl_asprintf("DELETE FROM %s.effects WHERE version = 3", t.schema);
    s_exec(sql);
    free(sql);
    s_expect_no_tx_applied(files, &t, 2);
    migration_files_destroy(&files);

    /* A no-transaction file that fails: reported with PostgreSQL's text,
     * not recorded, and the file after it does not run. */
    files =
        s_files("no-tx-fails", "V0001__projects.sql", s_v1, "V0002__index.sql",
                "-- kowloon:no-transaction\n"
                "CREATE INDEX CONCURRENTLY nope ON projects (nope);\n",
                "V0003__three.sql", v3, NULL);
    s_tenant(&t);
    s_migrate(files, &t, &res);
    assert_int_equal(res.failed, 1);
    assert_int_equal(res.failed_version, 2);
    assert_non_null(strstr(res.error, "V0002__index.sql: column \"nope\" does "
                                      "not exist"));
    assert_int_equal(res.n_applied, 1);
    migration_work_result_free(&res);
    s_expect_history(&t, "1");
    s_expect_effects(&t, "1");
    s_expect_unlocked(&t);
    migration_files_destroy(&files);

    /* A unique index that fails on duplicates leaves an invalid index;
     * run again, IF NOT EXISTS would skip it: the file is not recorded
     * over it, with the way out named. Dropped, the retry builds it. */
    files = s_files("no-tx-invalid", "V0001__projects.sql", s_v1,
                    "V0002__dupes.sql",
                    "INSERT INTO projects (name) VALUES ('a'), ('a');\n",
                    "V0003__unique.sql",
                    "-- kowloon:no-transaction\n"
                    "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS"
                    " projects_name ON projects (name);\n",
                    NULL);
    s_tenant(&t);
    s_migrate(files, &t, &res);
    assert_int_equal(res.failed_version, 3);
    assert_non_null(strstr(res.error, "could not create unique index"));
    migration_work_result_free(&res);
    sql = kl_asprintf("DELETE FROM %s.projects WHERE id ="
                      " (SELECT max(id) FROM %s.projects)",
                      t.schema, t.schema);
    s_exec(sql);
    free(sql);
    s_migrate(files, &t, &res);
    assert_int_equal(res.failed_version, 3);
    char want[256];
    snprintf(want, sizeof want,
             "V0003__unique.sql: V0003__unique.sql ran, but schema %s has an"
             " invalid index: projects_name (left by a CREATE INDEX"
             " CONCURRENTLY that failed; drop it with DROP INDEX"
             " CONCURRENTLY and retry)",
             t.schema);
    assert_string_equal(res.error, want);
    migration_work_result_free(&res);
    s_expect_history(&t, "1,2");
    sql = kl_asprintf("DROP INDEX %s.projects_name", t.schema);
    s_exec(sql);
    free(sql);
    s_migrate(files, &t, &res);
    assert_int_equal(res.failed, 0);
    assert_int_equal(res.n_applied, 1);
    migration_work_result_free(&res);
    s_expect_history(&t, "1,2,3");
    s_expect_valid_index(t.schema);
    migration_files_destroy(&files);
}

static void
test_resume_from_history(void **state)
{
    (void)state;
    migration_files_t *one = s_files("one", "V0001__projects.sql", s_v1, NULL);
    migration_files_t *three =
        s_files("three", "V0001__projects.sql", s_v1, "V0002__tasks.sql", s_v2,
                "V0003__notes.sql", s_v3, NULL);
    migration_target_t t;
    s_tenant(&t);
    migration_work_result_t res;
    s_migrate(one, &t, &res);
    assert_int_equal(res.n_applied, 1);
    migration_work_result_free(&res);
    /* The ledger lost its copy (a crash): the history is the truth. */
    char *sql = kl_asprintf("DELETE FROM migration.ledger WHERE target = '%s'",
                            t.target);
    s_exec(sql);
    free(sql);
    s_migrate(three, &t, &res);
    assert_int_equal(res.failed, 0);
    assert_int_equal(res.n_applied, 2);
    assert_int_equal(res.applied[0], 2);
    assert_int_equal(res.applied[1], 3);
    migration_work_result_free(&res);
    s_expect_effects(&t, "1,2,3");
    s_expect_transactions(&t, "3");
    s_expect("1 applied false|2 applied true|3 applied true",
             "SELECT string_agg(version || ' ' || state || ' ' ||"
             " (started_at IS NOT NULL)::text, '|' ORDER BY version)"
             " FROM migration.ledger WHERE target = '%s'",
             t.target);
    migration_files_destroy(&one);
    migration_files_destroy(&three);
}

/* Claims the next target and migrates it as a run worker does. */
static void
s_work_claimed(const migration_files_t *files, const migration_target_t *want,
               migration_work_result_t *res)
{
    kl_status_t st;
    migration_target_t t;
    int64_t run_id = 0;
    assert_int_equal(migration_store_claim(s_ctrl, &t, &run_id, &st), 1);
    assert_string_equal(t.target, want->target);
    /* The claim holds the target's lock: another session cannot take it. */
    s_expect("f",
             "SELECT pg_try_advisory_xact_lock(hashtextextended("
             "'kowloon.migration:' || '%s', 0))",
             t.target);
    migration_work_opts_t o = {.run_id = run_id,
                               .hold_tenant = true,
                               .target_locked = true,
                               .finish = true,
                               .instance = "test-instance",
                               .started_ms = 1700000000000};
    if (migration_work_target(s_ctrl, s_ap, files, &t, &o, res, &st) < 0)
        fail_msg("migration_work_target: %s", st.message);
    assert_int_equal(kl_pg_commit(s_ctrl, &st), 0);
}

static void
test_claim_plan_on_a_new_run(void **state)
{
    (void)state;
    kl_status_t st;
    /* The worker's connection plans its claim while nothing is pending. */
    migration_target_t t;
    int64_t run_id = 0;
    assert_int_equal(migration_store_claim(s_ctrl, &t, &run_id, &st), 0);
    /* A run of 2,000 targets (placeholders: none is migrated). */
    size_t n = 2000;
    migration_target_t *ts = kl_calloc(n, sizeof *ts);
    for (size_t i = 0; i < n; i++) {
        char id[37];
        kl_test_db_uuid(id);
        assert_int_equal(migration_target_for_tenant(id, "schema", NULL,
                                                     "workspace", &ts[i], &st),
                         0);
    }
    assert_int_equal(migration_store_create_run(s_ctrl, 3, ts, n, &run_id, &st),
                     0);
    free(ts);
    /* Whenever the claim is planned again (here: at once; in a run, after
     * the server invalidates the connection's caches, which busy DDL
     * does), it is planned for the run's size: the first pending target
     * in index order, not a sort of every pending target. */
    PGconn *c = kl_pg_conn(s_ctrl, &st);
    assert_non_null(c);
    PQclear(PQexec(c, "DISCARD PLANS"));
    PGresult *r = PQexec(c, "EXPLAIN EXECUTE migration_claim_lock");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    char plan[8192] = "";
    for (int i = 0; i < PQntuples(r); i++) {
        strncat(plan, PQgetvalue(r, i, 0), sizeof plan - strlen(plan) - 2);
        strcat(plan, "\n");
    }
    PQclear(r);
    if (!strstr(plan, "Index Scan using run_targets_pending") ||
        strstr(plan, "Sort"))
        fail_msg("claim plan:\n%s", plan);
    /* Out of the way of the next test. */
    char *sql = kl_asprintf("UPDATE migration.run_targets SET state = 'done'"
                            " WHERE run_id = %ld;"
                            "UPDATE migration.runs SET state = 'finished'"
                            " WHERE id = %ld",
                            (long)run_id, (long)run_id);
    s_exec(sql);
    free(sql);
}

static void
test_run_worker_path(void **state)
{
    (void)state;
    migration_files_t *files =
        s_files("run", "V0001__projects.sql", s_v1, "V0002__tasks.sql", s_v2,
                "V0003__notes.sql", s_v3, NULL);
    /* The placement fence: two tenants recorded where they are, one moved
     * away from the schema model since the run was made. */
    s_exec("CREATE SCHEMA IF NOT EXISTS " KL_TENANT_FENCE_SCHEMA ";"
           "CREATE TABLE IF NOT EXISTS " KL_TENANT_FENCE_TABLE
           " (tenant_id uuid PRIMARY KEY, isolation text NOT NULL,"
           " moved_at timestamptz NOT NULL DEFAULT now())");
    migration_target_t ts[3];
    for (int i = 0; i < 3; i++)
        s_tenant(&ts[i]);
    char *sql = kl_asprintf("INSERT INTO " KL_TENANT_FENCE_TABLE
                            " (tenant_id, isolation) VALUES ('%s', 'schema'),"
                            " ('%s', 'schema'), ('%s', 'database')",
                            ts[0].tenant_id, ts[1].tenant_id, ts[2].tenant_id);
    s_exec(sql);
    free(sql);
    kl_status_t st;
    int64_t run_id = 0;
    assert_int_equal(migration_store_create_run(s_ctrl, 3, ts, 3, &run_id, &st),
                     0);
    migration_work_result_t res;
    /* The first target on a fresh connection (fence not known yet), the
     * second with everything in the hold's round trip. */
    for (int i = 0; i < 2; i++) {
        s_work_claimed(files, &ts[i], &res);
        if (res.failed)
            fail_msg("%s: %s", ts[i].target, res.error);
        assert_int_equal(res.moving, 0);
        assert_int_equal(res.n_applied, 3);
        migration_work_result_free(&res);
        s_expect_effects(&ts[i], "1,2,3");
        s_expect_transactions(&ts[i], "3");
        s_expect_unlocked(&ts[i]);
    }
    /* The third moved: nothing applied, the note recorded. */
    s_work_claimed(files, &ts[2], &res);
    assert_int_equal(res.moved, 1);
    assert_int_equal(res.n_applied, 0);
    migration_work_result_free(&res);
    s_expect_history(&ts[2], "");
    s_expect_unlocked(&ts[2]);
    /* Ledger and target rows, written in one statement each. */
    char *want =
        kl_asprintf("done 3  test-instance|done 3  test-instance|done 0 tenant "
                    "moved from schema to database during the run: its new "
                    "placement was migrated by the move test-instance");
    s_expect(want,
             "SELECT string_agg(state || ' ' || applied || ' ' ||"
             " coalesce(error, '') || ' ' || instance, '|' ORDER BY seq)"
             " FROM migration.run_targets WHERE run_id = %ld"
             " AND started_at = to_timestamp(1700000000)",
             (long)run_id);
    free(want);
    s_expect("6",
             "SELECT count(*) FROM migration.ledger WHERE run_id = %ld"
             " AND state = 'applied'",
             (long)run_id);
    migration_files_destroy(&files);
}

static void
test_waits_for_orphaned_batch(void **state)
{
    (void)state;
    migration_files_t *files =
        s_files("orphan", "V0001__projects.sql", s_v1, "V0002__tasks.sql", s_v2,
                "V0003__notes.sql", s_v3, NULL);
    migration_target_t t;
    s_tenant(&t);
    /* What a killed instance leaves on the server: its batch, sent whole,
     * still running (here: V0001 and its history row, then a pause) under
     * the target's apply lock, committed after the client is gone. */
    PGconn *orphan = PQconnectdb(s_url);
    assert_int_equal(PQstatus(orphan), CONNECTION_OK);
    char *sql = kl_asprintf(
        "SELECT pg_advisory_lock(hashtextextended('kowloon.migration.apply:'"
        " || '%s', 0));"
        "BEGIN; SET LOCAL search_path TO %s;\n%s\n;"
        "INSERT INTO kowloon_migration.history (target, version, name,"
        " checksum) VALUES ('%s', 1, 'V0001__projects.sql', '%s');"
        "SELECT pg_sleep(0.5); COMMIT;"
        "SELECT pg_advisory_unlock(hashtextextended("
        "'kowloon.migration.apply:' || '%s', 0));",
        t.target, t.schema, s_v1, t.target,
        migration_files_get(files, 1)->checksum, t.target);
    assert_int_equal(PQsendQuery(orphan, sql), 1);
    free(sql);
    /* Once it holds the lock, the next instance takes the target over. */
    for (int i = 0;; i++) {
        char *q = kl_asprintf("SELECT count(*) FROM pg_locks WHERE"
                              " locktype = 'advisory' AND granted AND"
                              " pid = %d",
                              PQbackendPID(orphan));
        char *n = s_value(q);
        free(q);
        int held = strcmp(n, "1") == 0;
        free(n);
        if (held)
            break;
        if (i > 200)
            fail_msg("the orphaned batch never took the lock");
        usleep(10000);
    }
    migration_work_result_t res;
    s_migrate(files, &t, &res);
    assert_int_equal(res.failed, 0);
    assert_int_equal(res.n_applied, 2);
    assert_int_equal(res.applied[0], 2);
    migration_work_result_free(&res);
    s_expect_history(&t, "1,2,3");
    s_expect_effects(&t, "1,2,3");
    PGresult *r;
    while ((r = PQgetResult(orphan)) != NULL) {
        assert_true(PQresultStatus(r) == PGRES_COMMAND_OK ||
                    PQresultStatus(r) == PGRES_TUPLES_OK);
        PQclear(r);
    }
    PQfinish(orphan);
    migration_files_destroy(&files);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_one_round_trip),
        cmocka_unit_test(test_second_of_three_fails),
        cmocka_unit_test(test_syntax_error_in_batch),
        cmocka_unit_test(test_set_and_commit_alone),
        cmocka_unit_test(test_resume_from_history),
        cmocka_unit_test(test_claim_plan_on_a_new_run),
        cmocka_unit_test(test_run_worker_path),
        cmocka_unit_test(test_waits_for_orphaned_batch),
        cmocka_unit_test(test_no_transaction),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
