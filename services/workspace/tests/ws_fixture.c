/*
 * ws_fixture: databases and roles for the workspace tests.
 */
#include "ws_fixture.h"

#include "kl_alloc.h"

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

ws_fixture_t ws;

char *
ws_conninfo(const char *url, const char *dbname, const char *user)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &err);
    if (!opts) {
        fprintf(stderr, "bad KLTEST_PG_URL: %s\n", err ? err : "?");
        PQfreemem(err);
        return NULL;
    }
    size_t cap = 1024, len = 0;
    char *out = kl_calloc(1, cap);
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        const char *v = o->val;
        if (dbname && strcmp(o->keyword, "dbname") == 0)
            v = dbname;
        if (user && strcmp(o->keyword, "user") == 0)
            v = user;
        /* The superuser's password is not the roles'; trust auth on
         * loopback needs none. */
        if (user && strcmp(o->keyword, "password") == 0)
            v = NULL;
        if (!v)
            continue;
        while (len + strlen(o->keyword) + 2 * strlen(v) + 8 > cap) {
            cap *= 2;
            out = kl_realloc(out, cap);
        }
        len += (size_t)sprintf(out + len, "%s='", o->keyword);
        for (const char *p = v; *p; p++) {
            if (*p == '\'' || *p == '\\')
                out[len++] = '\\';
            out[len++] = *p;
        }
        out[len++] = '\'';
        out[len++] = ' ';
        out[len] = '\0';
    }
    PQconninfoFree(opts);
    return out;
}

void
ws_exec(const char *url, const char *sql)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("connect: %s", PQerrorMessage(c));
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK &&
        PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
}

char *
ws_value(const char *url, const char *sql)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("connect: %s", PQerrorMessage(c));
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) < 1)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    char *v = kl_strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(c);
    return v;
}

void
ws_uuid(char out[37])
{
    static unsigned long long counter;
    uint8_t b[16];
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(b, 1, sizeof b, f) != sizeof b) {
        /* Unique within the run is all the tests need. */
        unsigned long long v = (unsigned long long)time(NULL) ^
                               ((unsigned long long)getpid() << 32) ^ ++counter;
        memcpy(b, &v, sizeof v);
        memcpy(b + 8, &counter, sizeof counter);
    }
    if (f)
        fclose(f);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x"
             "%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10],
             b[11], b[12], b[13], b[14], b[15]);
}

int
ws_fixture_setup(const char *name)
{
    const char *pg = getenv("KLTEST_PG_URL");
    const char *redis = getenv("KLTEST_REDIS_URL");
    if (!pg || !*pg || !redis || !*redis) {
        fprintf(stderr,
                "%s needs PostgreSQL and Redis: set "
                "KLTEST_PG_URL=postgresql://postgres@127.0.0.1:PORT/postgres "
                "(a superuser) and KLTEST_REDIS_URL=redis://127.0.0.1:PORT/0 "
                "(see deploy/local/lib.sh kl_pg_start and kl_redis_start)\n",
                name);
        return -1;
    }
    memset(&ws, 0, sizeof ws);
    ws.admin_url = kl_strdup(pg);
    ws.redis_url = kl_strdup(redis);
    long stamp = (long)time(NULL) % 100000000;
    snprintf(ws.db, sizeof ws.db, "kltest_%s_%d_%ld", name, (int)getpid(),
             stamp);
    snprintf(ws.owner, sizeof ws.owner, "kltest_ws_owner_%d_%ld", (int)getpid(),
             stamp);
    snprintf(ws.app, sizeof ws.app, "kltest_ws_app_%d_%ld", (int)getpid(),
             stamp);
    char *sql =
        kl_asprintf("CREATE ROLE %s LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE;"
                    "CREATE ROLE %s LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE",
                    ws.owner, ws.app);
    ws_exec(ws.admin_url, sql);
    free(sql);
    sql = kl_asprintf("CREATE DATABASE %s OWNER %s", ws.db, ws.owner);
    ws_exec(ws.admin_url, sql);
    free(sql);
    ws.super_url = ws_conninfo(ws.admin_url, ws.db, NULL);
    ws.owner_url = ws_conninfo(ws.admin_url, ws.db, ws.owner);
    ws.app_url = ws_conninfo(ws.admin_url, ws.db, ws.app);
    return ws.super_url && ws.owner_url && ws.app_url ? 0 : -1;
}

void
ws_fixture_teardown(void)
{
    if (ws.db[0]) {
        char *sql =
            kl_asprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", ws.db);
        ws_exec(ws.admin_url, sql);
        free(sql);
        sql = kl_asprintf("DROP ROLE IF EXISTS %s; DROP ROLE IF EXISTS %s",
                          ws.app, ws.owner);
        ws_exec(ws.admin_url, sql);
        free(sql);
    }
    KL_FREE(&ws.admin_url);
    KL_FREE(&ws.redis_url);
    KL_FREE(&ws.super_url);
    KL_FREE(&ws.owner_url);
    KL_FREE(&ws.app_url);
    memset(&ws, 0, sizeof ws);
}
