/*
 * kl_test_db: throwaway databases for tests (kl_test_db.h).
 */
#include "kl_test_db.h"

#include "kl_alloc.h"

#include <libpq-fe.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct kl_test_db {
    char *admin_url; /* owned; KLTEST_PG_URL */
    char *name;      /* owned; this run's database */
    char *url;       /* owned; superuser conninfo on it */
};

char *
kl_test_db_conninfo(const char *url, const char *dbname, const char *user)
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
        /* Another role: its own password, if any, is not url's. */
        if (user && strcmp(o->keyword, "user") == 0)
            v = user;
        if (user && strcmp(o->keyword, "password") == 0)
            v = NULL;
        if (!v)
            continue;
        /* Worst case every byte of v is escaped, plus quotes and "= ". */
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

/* A result of sql on url, or NULL after printing why. */
static PGresult *
s_run(const char *url, const char *sql, PGconn **conn_p)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "cannot connect to the test database: %s",
                PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK &&
        PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "%s: %s", sql, PQresultErrorMessage(r));
        PQclear(r);
        PQfinish(c);
        return NULL;
    }
    *conn_p = c;
    return r;
}

int
kl_test_db_exec(const char *url, const char *sql)
{
    PGconn *c = NULL;
    PGresult *r = s_run(url, sql, &c);
    if (!r)
        return -1;
    PQclear(r);
    PQfinish(c);
    return 0;
}

char *
kl_test_db_value(const char *url, const char *sql)
{
    PGconn *c = NULL;
    PGresult *r = s_run(url, sql, &c);
    if (!r)
        return NULL;
    char *v = NULL;
    if (PQntuples(r) > 0 && PQnfields(r) > 0)
        v = kl_strdup(PQgetvalue(r, 0, 0));
    else
        fprintf(stderr, "%s: no rows\n", sql);
    PQclear(r);
    PQfinish(c);
    return v;
}

char *
kl_test_db_vvalue(const char *url, const char *fmt, va_list ap)
{
    char *sql = NULL;
    if (vasprintf(&sql, fmt, ap) < 0) {
        fprintf(stderr, "vasprintf() failed\n");
        return NULL;
    }
    char *v = kl_test_db_value(url, sql);
    free(sql);
    return v;
}

const char *
kl_test_db_redis_url(const char *test)
{
    const char *url = getenv("KLTEST_REDIS_URL");
    if (!url || !*url) {
        fprintf(stderr,
                "%s needs Redis: set KLTEST_REDIS_URL=redis://"
                "127.0.0.1:PORT/0 (see deploy/local/lib.sh "
                "kl_redis_start)\n",
                test);
        return NULL;
    }
    return url;
}

void
kl_test_db_uuid(char out[37])
{
    uint8_t b[16];
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(b, 1, sizeof b, f) != sizeof b) {
        /* Tests only: no entropy is not a state to carry on in. */
        fprintf(stderr, "kl_test_db_uuid: cannot read /dev/urandom\n");
        abort();
    }
    fclose(f);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x"
             "%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10],
             b[11], b[12], b[13], b[14], b[15]);
}

kl_test_db_t *
kl_test_db_new(const char *test, const char *prefix)
{
    const char *url = getenv("KLTEST_PG_URL");
    if (!url || !*url) {
        fprintf(stderr,
                "%s needs a PostgreSQL superuser URL: set "
                "KLTEST_PG_URL=postgresql://postgres@127.0.0.1:PORT/"
                "postgres (see deploy/local/lib.sh kl_pg_start)\n",
                test);
        return NULL;
    }
    kl_test_db_t *self = kl_calloc(1, sizeof *self);
    self->admin_url = kl_strdup(url);
    self->name =
        kl_asprintf("%s_%d_%ld", prefix, (int)getpid(), (long)time(NULL));
    char *sql = kl_asprintf("CREATE DATABASE %s", self->name);
    int rc = kl_test_db_exec(self->admin_url, sql);
    free(sql);
    if (rc < 0) {
        /* Nothing to drop: keep destroy from trying. */
        KL_FREE(&self->name);
        kl_test_db_destroy(&self);
        return NULL;
    }
    self->url = kl_test_db_conninfo(self->admin_url, self->name, NULL);
    if (!self->url)
        kl_test_db_destroy(&self);
    return self;
}

void
kl_test_db_destroy(kl_test_db_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kl_test_db_t *self = *self_p;
    if (self->name) {
        char *sql =
            kl_asprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", self->name);
        kl_test_db_exec(self->admin_url, sql);
        free(sql);
    }
    free(self->admin_url);
    free(self->name);
    free(self->url);
    free(self);
    *self_p = NULL;
}

const char *
kl_test_db_admin_url(const kl_test_db_t *self)
{
    return self->admin_url;
}

const char *
kl_test_db_name(const kl_test_db_t *self)
{
    return self->name;
}

const char *
kl_test_db_url(const kl_test_db_t *self)
{
    return self->url;
}
