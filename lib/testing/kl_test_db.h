/*
 * kl_test_db: a throwaway PostgreSQL database for a test run (test
 * support only: library kowloon_testing, never linked into a service).
 *
 * KLTEST_PG_URL names a superuser connection (postgresql://postgres@
 * 127.0.0.1:PORT/postgres); kl_test_db_new creates a database whose name
 * is unique to this run and kl_test_db_destroy drops it again. The
 * helpers print what went wrong on stderr and return an error, so that a
 * test fails with a message rather than passing silently.
 */
#ifndef KL_TEST_DB_H
#define KL_TEST_DB_H

#include <stdarg.h>

typedef struct kl_test_db kl_test_db_t;

/* Creates database "<prefix>_<pid>_<unix time>" in KLTEST_PG_URL. NULL
 * when KLTEST_PG_URL is unset (printing "<test> needs a PostgreSQL
 * superuser URL: set KLTEST_PG_URL=...") or the database cannot be made.
 * prefix: [a-z0-9_]; test: the test's name, for the message. */
kl_test_db_t *kl_test_db_new(const char *test, const char *prefix);

/* Drops the database (WITH (FORCE)) and frees. Accepts NULL. */
void kl_test_db_destroy(kl_test_db_t **self_p);

/* KLTEST_PG_URL, the database's name, and a keyword=value conninfo of
 * the superuser on the database. Valid until destroy. */
const char *kl_test_db_admin_url(const kl_test_db_t *self);
const char *kl_test_db_name(const kl_test_db_t *self);
const char *kl_test_db_url(const kl_test_db_t *self);

/* A keyword=value conninfo equal to url but for database dbname and
 * role user (each NULL: keep url's; a user drops url's password). NULL +
 * message on a bad url. Caller frees. */
char *kl_test_db_conninfo(const char *url, const char *dbname,
                          const char *user);

/* Runs sql (no parameters, may be several statements) on url. Returns 0,
 * or -1 after printing the connection or statement error. */
int kl_test_db_exec(const char *url, const char *sql);

/* The first value of the first row of sql on url ("" for SQL NULL).
 * NULL after printing the error, or "no rows" when there is none.
 * Caller frees. */
char *kl_test_db_value(const char *url, const char *sql);

/* As kl_test_db_value, with sql formatted printf-style from fmt and ap. */
char *kl_test_db_vvalue(const char *url, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

/* KLTEST_REDIS_URL (redis://127.0.0.1:PORT/0), or NULL after printing
 * "<test> needs Redis: set KLTEST_REDIS_URL=...". */
const char *kl_test_db_redis_url(const char *test);

/* A random (version 4) UUID, lower case, into out. */
void kl_test_db_uuid(char out[37]);

#endif
