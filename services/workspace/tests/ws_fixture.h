/*
 * ws_fixture: the databases and roles the workspace tests run against.
 *
 * In the PostgreSQL of KLTEST_PG_URL (a superuser URL), makes a database
 * and two roles with names unique to this run: an owner role (owns the
 * database, runs the DDL) and an application role (LOGIN NOSUPERUSER
 * NOBYPASSRLS, owns nothing), and drops them all at the end.
 */
#ifndef WS_FIXTURE_H
#define WS_FIXTURE_H

#include <libpq-fe.h>
#include <stdbool.h>

typedef struct {
    char *admin_url; /* KLTEST_PG_URL: superuser, its own database */
    char *redis_url; /* KLTEST_REDIS_URL */
    char db[96];     /* this run's database */
    char owner[96];  /* owner role */
    char app[96];    /* application role */
    char *super_url; /* superuser on db */
    char *owner_url; /* owner role on db */
    char *app_url;   /* application role on db */
} ws_fixture_t;

extern ws_fixture_t ws;

/* Creates the database and roles; on missing settings prints what to set
 * and returns -1. name: the test's name (in messages and the db name). */
int ws_fixture_setup(const char *name);
void ws_fixture_teardown(void);

/* A keyword=value conninfo equal to url but for dbname and user (NULL:
 * keep). Caller frees. */
char *ws_conninfo(const char *url, const char *dbname, const char *user);

/* Runs sql on url; fails the test on error. */
void ws_exec(const char *url, const char *sql);

/* The first value of sql on url (caller frees); fails the test on error. */
char *ws_value(const char *url, const char *sql);

/* A fresh random tenant id into out[37]. */
void ws_uuid(char out[37]);

#endif
