/*
 * migration_files: names, ordering, gaps and duplicates, checksums, and
 * which files may share a transaction with others (batchable).
 */
#include "kl_alloc.h"
#include "migration_files.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

static char s_dir[256];

static void
s_write(const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", s_dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(text, 1, strlen(text), f);
    fclose(f);
}

static int
s_setup(void **state)
{
    (void)state;
    snprintf(s_dir, sizeof s_dir, "/tmp/kltest-migfiles-XXXXXX");
    return mkdtemp(s_dir) ? 0 : -1;
}

static int
s_teardown(void **state)
{
    (void)state;
    char cmd[320];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void
test_parse_name(void **state)
{
    (void)state;
    assert_int_equal(migration_files_parse_name("V0001__create_projects.sql"),
                     1);
    assert_int_equal(migration_files_parse_name("V12__a-b.sql"), 12);
    assert_int_equal(migration_files_parse_name("V1_projects.sql"), -1);
    assert_int_equal(migration_files_parse_name("v1__projects.sql"), -1);
    assert_int_equal(migration_files_parse_name("V__projects.sql"), -1);
    assert_int_equal(migration_files_parse_name("V0__projects.sql"), -1);
    assert_int_equal(migration_files_parse_name("V1__.sql"), -1);
    assert_int_equal(migration_files_parse_name("V1__pro jects.sql"), -1);
    assert_int_equal(migration_files_parse_name("V1__projects.SQL"), -1);
    assert_int_equal(migration_files_parse_name("V99999999__x.sql"), -1);
}

static void
test_sha256(void **state)
{
    (void)state;
    char out[MIGRATION_CHECKSUM_LEN + 1];
    migration_files_sha256("abc", 3, out);
    assert_string_equal(
        out,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void
test_load_sorted(void **state)
{
    (void)state;
    s_write("V0010__ten.sql", "SELECT 10;");
    s_write("V0002__tasks.sql", "CREATE TABLE tasks (id int);");
    s_write("V0001__projects.sql", "abc");
    for (int v = 3; v <= 9; v++) {
        char name[64];
        snprintf(name, sizeof name, "V%04d__step%d.sql", v, v);
        s_write(name, "SELECT 1;");
    }
    s_write("README.md", "not a migration");
    s_write(".V0011__hidden.sql", "SELECT 11;");
    kl_status_t st;
    migration_files_t *f = migration_files_load(s_dir, &st);
    assert_non_null(f);
    assert_int_equal(migration_files_count(f), 10);
    assert_int_equal(migration_files_latest(f), 10);
    const migration_file_t *one = migration_files_get(f, 1);
    assert_string_equal(one->file_name, "V0001__projects.sql");
    assert_string_equal(
        one->checksum,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_string_equal(one->sql, "abc");
    assert_string_equal(migration_files_get(f, 10)->file_name,
                        "V0010__ten.sql");
    assert_null(migration_files_get(f, 0));
    assert_null(migration_files_get(f, 11));
    migration_files_destroy(&f);
    assert_null(f);
    migration_files_destroy(&f);
}

static void
test_errors(void **state)
{
    (void)state;
    kl_status_t st;
    /* A gap: V0011 missing, V0012 present. */
    s_write("V0012__twelve.sql", "SELECT 12;");
    assert_null(migration_files_load(s_dir, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_string_equal(st.message,
                        "migration versions must be 1, 2, 3 ... without "
                        "gaps: V0012__twelve.sql follows V0010__ten.sql");
    /* A duplicate version. */
    s_write("V0011__eleven.sql", "SELECT 11;");
    s_write("V11__eleven_again.sql", "SELECT 11;");
    assert_null(migration_files_load(s_dir, &st));
    assert_string_equal(st.message, "V0011__eleven.sql and "
                                    "V11__eleven_again.sql: duplicate "
                                    "version 11");
    /* A malformed name. */
    char path[512];
    snprintf(path, sizeof path, "%s/V11__eleven_again.sql", s_dir);
    unlink(path);
    s_write("V13_bad.sql", "SELECT 13;");
    assert_null(migration_files_load(s_dir, &st));
    assert_string_equal(st.message,
                        "V13_bad.sql: not named V<digits>__<name>.sql (name: "
                        "letters, digits, _ and -)");
    snprintf(path, sizeof path, "%s/V13_bad.sql", s_dir);
    unlink(path);
    migration_files_t *f = migration_files_load(s_dir, &st);
    assert_non_null(f);
    assert_int_equal(migration_files_latest(f), 12);
    migration_files_destroy(&f);
    /* Not starting at 1. */
    snprintf(path, sizeof path, "%s/V0001__projects.sql", s_dir);
    unlink(path);
    assert_null(migration_files_load(s_dir, &st));
    assert_string_equal(st.message, "migration versions must start at 1: the "
                                    "first is V0002__tasks.sql");
    /* No directory. */
    assert_null(migration_files_load("/nonexistent/kowloon-migrations", &st));
    assert_int_equal(st.code, KL_NOT_FOUND);
}

static int
s_batchable(const char *sql)
{
    return migration_files_batchable(sql, strlen(sql));
}

static void
test_batchable(void **state)
{
    (void)state;
    /* Plain DDL and DML, however the keywords appear inside statements. */
    assert_int_equal(s_batchable("CREATE TABLE t (id int);\n"
                                 "ALTER TABLE t ALTER id SET DEFAULT 1;\n"
                                 "UPDATE t SET id = 2; SELECT 1 -- ; COMMIT\n"),
                     1);
    assert_int_equal(s_batchable(""), 1);
    assert_int_equal(s_batchable("SELECT $1, a$b$ FROM t"), 1);
    /* A DO block's BEGIN ... END (and even COMMIT) is inside its quote. */
    assert_int_equal(s_batchable("DO $$ BEGIN PERFORM 1; END $$;\n"
                                 "DO $kl$ BEGIN COMMIT; END $kl$;"),
                     1);
    /* Quotes, escapes and comments hide statements. */
    assert_int_equal(s_batchable("SELECT 'it''s; COMMIT';"), 1);
    assert_int_equal(s_batchable("SELECT E'\\'; COMMIT';"), 1);
    assert_int_equal(s_batchable("SELECT \"a;\"\"; end\";"), 1);
    assert_int_equal(s_batchable("/* a /* nested */ ; COMMIT */ SELECT 1;"), 1);
    /* Transaction control and settings, any case, anywhere a statement
     * starts. */
    assert_int_equal(s_batchable("CREATE TABLE t (id int);\nCOMMIT;"), 0);
    assert_int_equal(s_batchable("select 1; end;"), 0);
    assert_int_equal(s_batchable("  -- first\n  begin;"), 0);
    assert_int_equal(s_batchable("SELECT 1;rollback"), 0);
    assert_int_equal(s_batchable("ABORT"), 0);
    assert_int_equal(s_batchable("SET LOCAL statement_timeout = '5s';"), 0);
    assert_int_equal(s_batchable("/* x */ set search_path TO public;"), 0);
    assert_int_equal(s_batchable("RESET ALL;"), 0);
    assert_int_equal(s_batchable("SAVEPOINT a; RELEASE a;"), 0);
    assert_int_equal(s_batchable("START TRANSACTION;"), 0);
    assert_int_equal(s_batchable("PREPARE TRANSACTION 'x';"), 0);
    assert_int_equal(s_batchable("DISCARD ALL;"), 0);
    /* A standard string ends at its quote: the backslash is no escape. */
    assert_int_equal(s_batchable("SELECT '\\';\nCOMMIT;"), 0);
    /* Anything left open would reach into the next file. */
    assert_int_equal(s_batchable("SELECT 'abc"), 0);
    assert_int_equal(s_batchable("SELECT \"abc"), 0);
    assert_int_equal(s_batchable("SELECT E'abc\\'"), 0);
    assert_int_equal(s_batchable("/* a /* nested */ SELECT 1;"), 0);
    assert_int_equal(s_batchable("DO $$ BEGIN END;"), 0);
    assert_int_equal(s_batchable("DO $x$ BEGIN END $y$;"), 0);
}

static void
test_load_batchable(void **state)
{
    (void)state;
    char dir[320];
    snprintf(dir, sizeof dir, "%s/batch", s_dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    char path[400];
    snprintf(path, sizeof path, "%s/V1__a.sql", dir);
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    fputs("CREATE TABLE a (id int);", fp);
    fclose(fp);
    snprintf(path, sizeof path, "%s/V2__b.sql", dir);
    fp = fopen(path, "wb");
    assert_non_null(fp);
    fputs("SET LOCAL lock_timeout = '1s';\nCREATE TABLE b (id int);", fp);
    fclose(fp);
    kl_status_t st;
    migration_files_t *f = migration_files_load(dir, &st);
    assert_non_null(f);
    assert_int_equal(migration_files_get(f, 1)->batchable, 1);
    assert_int_equal(migration_files_get(f, 2)->batchable, 0);
    migration_files_destroy(&f);
}

/* Writes name=text into a new directory sub of s_dir and loads it. */
static migration_files_t *
s_load_one(const char *sub, const char *text, kl_status_t *st)
{
    char dir[320];
    snprintf(dir, sizeof dir, "%s/%s", s_dir, sub);
    assert_int_equal(mkdir(dir, 0700), 0);
    char path[400];
    snprintf(path, sizeof path, "%s/V1__a.sql", dir);
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
    return migration_files_load(dir, st);
}

static void
test_no_transaction(void **state)
{
    (void)state;
    const char *line = "-- kowloon:no-transaction";
    assert_int_equal(migration_files_no_transaction(line, strlen(line)), 1);
    const char *yes[] = {
        "-- kowloon:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);",
        "-- kowloon:no-transaction \t\r\nCREATE INDEX CONCURRENTLY i ON t (a)",
    };
    const char *no[] = {
        "CREATE INDEX i ON t (a); -- kowloon:no-transaction",
        "\n-- kowloon:no-transaction\nSELECT 1;",
        "-- kowloon:no-transactions\nSELECT 1;",
        "-- Kowloon:no-transaction\nSELECT 1;",
        "-- kowloon:no-transaction, please\nSELECT 1;",
    };
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
        assert_int_equal(migration_files_no_transaction(yes[i], strlen(yes[i])),
                         1);
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        assert_int_equal(migration_files_no_transaction(no[i], strlen(no[i])),
                         0);

    /* Loaded: one statement (comments and a trailing ';' are fine), never
     * batchable. */
    kl_status_t st;
    migration_files_t *f =
        s_load_one("notx-ok",
                   "-- kowloon:no-transaction\n"
                   "/* big table: no write lock */\n"
                   "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a);\n"
                   "-- done\n;\n",
                   &st);
    assert_non_null(f);
    assert_int_equal(migration_files_get(f, 1)->no_transaction, 1);
    assert_int_equal(migration_files_get(f, 1)->batchable, 0);
    migration_files_destroy(&f);
    /* An ordinary file is not one. */
    f = s_load_one("notx-plain", "CREATE INDEX i ON t (a);", &st);
    assert_non_null(f);
    assert_int_equal(migration_files_get(f, 1)->no_transaction, 0);
    migration_files_destroy(&f);

    /* Refused at load, naming the file and the rule. */
    assert_null(s_load_one("notx-two",
                           "-- kowloon:no-transaction\n"
                           "CREATE INDEX CONCURRENTLY i ON t (a);\n"
                           "CREATE INDEX CONCURRENTLY j ON t (b);\n",
                           &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_string_equal(st.message,
                        "V1__a.sql: a \"-- kowloon:no-transaction\" migration "
                        "holds exactly one statement, this one holds 2");
    assert_null(s_load_one("notx-none", "-- kowloon:no-transaction\n;\n", &st));
    assert_string_equal(st.message,
                        "V1__a.sql: a \"-- kowloon:no-transaction\" migration "
                        "holds exactly one statement, this one holds 0");
    assert_null(s_load_one("notx-set",
                           "-- kowloon:no-transaction\n"
                           "SET search_path TO public;\n",
                           &st));
    assert_string_equal(st.message,
                        "V1__a.sql: a \"-- kowloon:no-transaction\" migration "
                        "may not be a transaction-control or SET statement");
    assert_null(s_load_one("notx-open",
                           "-- kowloon:no-transaction\n"
                           "CREATE INDEX CONCURRENTLY \"i ON t (a);\n",
                           &st));
    assert_string_equal(st.message,
                        "V1__a.sql: a quote, quoted identifier, dollar quote "
                        "or comment is never closed");
    /* A DO block is one statement, whatever is inside its quote. */
    f = s_load_one("notx-do",
                   "-- kowloon:no-transaction\n"
                   "DO $$ BEGIN PERFORM 1; PERFORM 2; END $$;\n",
                   &st);
    assert_non_null(f);
    migration_files_destroy(&f);
}

static void
test_empty_dir(void **state)
{
    (void)state;
    char dir[320];
    snprintf(dir, sizeof dir, "%s/empty", s_dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    kl_status_t st;
    migration_files_t *f = migration_files_load(dir, &st);
    assert_non_null(f);
    assert_int_equal(migration_files_count(f), 0);
    assert_int_equal(migration_files_latest(f), 0);
    migration_files_destroy(&f);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_name),
        cmocka_unit_test(test_sha256),
        cmocka_unit_test(test_load_sorted),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_empty_dir),
        cmocka_unit_test(test_batchable),
        cmocka_unit_test(test_load_batchable),
        cmocka_unit_test(test_no_transaction),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
