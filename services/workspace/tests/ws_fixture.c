/*
 * ws_fixture: databases and roles for the workspace tests.
 */
#include "ws_fixture.h"

#include "kl_alloc.h"
#include "kl_test_db.h"

#include <dirent.h>
#include <pthread.h>
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
    /* A role's conninfo drops the superuser's password: trust auth on
     * loopback needs none. */
    return kl_test_db_conninfo(url, dbname, user);
}

void
ws_exec(const char *url, const char *sql)
{
    if (kl_test_db_exec(url, sql) < 0)
        fail_msg("ws_exec failed (see above)");
}

char *
ws_value(const char *url, const char *sql)
{
    char *v = kl_test_db_value(url, sql);
    if (!v)
        fail_msg("ws_value failed (see above)");
    return v;
}

void
ws_uuid(char out[37])
{
    kl_test_db_uuid(out);
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
    char *sql = kl_asprintf(
        "CREATE ROLE %s LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE CREATEDB;"
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
    tenant_provision_destroy(&ws.prov);
    if (ws.db[0]) {
        /* The tenant databases this run made. */
        char *list = kl_asprintf(
            "SELECT coalesce(string_agg(format('DROP DATABASE %%I WITH "
            "(FORCE)', datname), ';'), 'SELECT 1') FROM pg_database d"
            " JOIN pg_roles r ON r.oid = d.datdba WHERE r.rolname = '%s'"
            " AND d.datname LIKE 'kowloon_t_%%'",
            ws.owner);
        char *drops = ws_value(ws.admin_url, list);
        free(list);
        /* DROP DATABASE refuses to run in a transaction: one by one. */
        char *save = NULL;
        for (char *d = strtok_r(drops, ";", &save); d;
             d = strtok_r(NULL, ";", &save))
            ws_exec(ws.admin_url, d);
        free(drops);
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

/* --- isolation models ---------------------------------------------------- */

kl_isolation_t ws_model = KL_ISOLATION_ROW;

void
ws_fixture_model(int argc, char **argv)
{
    const char *name = argc > 1 ? argv[1] : getenv("KLTEST_WS_MODEL");
    kl_status_t st;
    if (name && *name && kl_isolation_parse(name, &ws_model, &st) < 0) {
        fprintf(stderr,
                "unknown model \"%s\": want row, schema or "
                "database\n",
                name);
        exit(2);
    }
    fprintf(stderr, "isolation model: %s\n", kl_isolation_name(ws_model));
}

static int
s_name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int
ws_apply_migrations(void *arg, const kl_tenant_place_t *place,
                    kl_status_t *status)
{
    (void)arg;
    char *url =
        place->isolation == KL_ISOLATION_DATABASE
            ? kl_tenant_db_conninfo(ws.owner_url, place->db_name, status)
            : kl_strdup(ws.owner_url);
    if (!url)
        return -(int)status->code;
    DIR *dir = opendir(WS_MIGRATIONS_DIR);
    if (!dir) {
        free(url);
        return kl_status_set(status, KL_NOT_FOUND, "%s: cannot open",
                             WS_MIGRATIONS_DIR);
    }
    char *names[64];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) && n < 64)
        if (e->d_name[0] == 'V' && strstr(e->d_name, ".sql"))
            names[n++] = kl_strdup(e->d_name);
    closedir(dir);
    qsort(names, n, sizeof names[0], s_name_cmp);
    kl_pg_t *pg = kl_pg_new(url);
    free(url);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        char *path = kl_asprintf("%s/%s", WS_MIGRATIONS_DIR, names[i]);
        FILE *f = fopen(path, "rb");
        free(path);
        char *sql = kl_calloc(1, 65536);
        size_t got = f ? fread(sql, 1, 65535, f) : 0;
        if (f)
            fclose(f);
        if (rc == 0 && got == 0)
            rc = kl_status_set(status, KL_NOT_FOUND, "%s: empty", names[i]);
        if (rc == 0)
            rc = kl_pg_begin(pg, status);
        if (rc == 0) {
            PGresult *r = kl_pg_query(
                pg, NULL,
                "SELECT set_config('search_path', quote_ident($1), true)", 1,
                (const char *const[]){place->schema}, status);
            rc = r ? 0 : -(int)status->code;
            PQclear(r);
            if (rc == 0)
                rc = kl_pg_exec(pg, sql, status);
            if (rc == 0)
                rc = kl_pg_commit(pg, status);
            else
                kl_pg_rollback(pg);
        }
        free(sql);
        free(names[i]);
    }
    kl_pg_destroy(&pg);
    return rc;
}

void
ws_prepare_shared(void)
{
    char *main = kl_asprintf("main=%s", ws.owner_url);
    const char *owners[] = {main};
    kl_status_t st;
    tenant_provision_opts_t popts = {.owner_servers = owners,
                                     .n_owner_servers = 1,
                                     .app_role = ws.app,
                                     .shared_schema = "workspace",
                                     .migrate = ws_apply_migrations};
    ws.prov = tenant_provision_new(&popts, &st);
    free(main);
    if (!ws.prov)
        fail_msg("tenant_provision_new: %s", st.message);
    if (tenant_provision_prepare(ws.prov, &st) < 0)
        fail_msg("prepare: %s", st.message);
    kl_pg_t *owner = kl_pg_new(ws.owner_url);
    kl_tenant_place_t shared;
    if (kl_tenant_place("00000000-0000-4000-8000-000000000000",
                        KL_ISOLATION_ROW, "workspace", NULL, &shared,
                        &st) < 0 ||
        kl_tenant_db_grant_schema(owner, "workspace", ws.app, &st) < 0 ||
        ws_apply_migrations(NULL, &shared, &st) < 0 ||
        kl_tenant_db_grant_schema(owner, "workspace", ws.app, &st) < 0)
        fail_msg("shared schema: %s", st.message);
    kl_pg_destroy(&owner);
}

/* Tenants seen so far and where they are. */
static struct {
    pthread_mutex_t mu;
    kl_tenant_place_t *places;
    size_t n, cap;
} s_known = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0};

/* Records place; s_known.mu held. */
static void
s_set_locked(const kl_tenant_place_t *place)
{
    size_t i = 0;
    while (i < s_known.n &&
           strcmp(s_known.places[i].tenant_id, place->tenant_id) != 0)
        i++;
    if (i == s_known.n) {
        if (s_known.n == s_known.cap) {
            s_known.cap = s_known.cap ? 2 * s_known.cap : 64;
            s_known.places = kl_realloc(s_known.places,
                                        s_known.cap * sizeof *s_known.places);
        }
        s_known.n++;
    }
    s_known.places[i] = *place;
}

void
ws_placement_set(const kl_tenant_place_t *place)
{
    pthread_mutex_lock(&s_known.mu);
    s_set_locked(place);
    pthread_mutex_unlock(&s_known.mu);
}

int
ws_placement(void *arg, const char *tenant_id, kl_tenant_place_t *out,
             kl_status_t *status)
{
    (void)arg;
    pthread_mutex_lock(&s_known.mu);
    for (size_t i = 0; i < s_known.n; i++)
        if (strcmp(s_known.places[i].tenant_id, tenant_id) == 0) {
            *out = s_known.places[i];
            pthread_mutex_unlock(&s_known.mu);
            return 0;
        }
    /* Provisioned under the lock: one tenant is made once. */
    int rc =
        kl_tenant_place(tenant_id, ws_model, "workspace", "main", out, status);
    if (rc == 0)
        rc = tenant_provision_create(ws.prov, out, status);
    if (rc == 0 && ws_model != KL_ISOLATION_ROW)
        rc = tenant_provision_fence(ws.prov, tenant_id,
                                    kl_isolation_name(ws_model), status);
    if (rc == 0)
        s_set_locked(out);
    pthread_mutex_unlock(&s_known.mu);
    return rc;
}

long
ws_rows(const char *table, const char *tenant_id)
{
    kl_tenant_place_t place;
    kl_status_t st;
    bool known = false;
    pthread_mutex_lock(&s_known.mu);
    for (size_t i = 0; i < s_known.n; i++)
        if (strcmp(s_known.places[i].tenant_id, tenant_id) == 0) {
            place = s_known.places[i];
            known = true;
        }
    pthread_mutex_unlock(&s_known.mu);
    if (!known && kl_tenant_place(tenant_id, KL_ISOLATION_ROW, "workspace",
                                  NULL, &place, &st) < 0)
        fail_msg("ws_rows: %s", st.message);
    /* A tenant never seen has no schema or database: look where a row
     * tenant's rows would be (none). */
    char *url = place.isolation == KL_ISOLATION_DATABASE
                    ? kl_tenant_db_conninfo(ws.super_url, place.db_name, &st)
                    : kl_strdup(ws.super_url);
    char *sql = kl_asprintf("SELECT count(*) FROM %s.%s WHERE tenant_id = '%s'",
                            place.schema, table, tenant_id);
    char *v = ws_value(url, sql);
    long n = strtol(v, NULL, 10);
    free(v);
    free(sql);
    free(url);
    return n;
}

void
ws_owner_exec(const char *tenant_id, const char *sql)
{
    kl_tenant_place_t place;
    kl_status_t st;
    if (ws_placement(NULL, tenant_id, &place, &st) < 0)
        fail_msg("ws_owner_exec: %s", st.message);
    char *url = place.isolation == KL_ISOLATION_DATABASE
                    ? kl_tenant_db_conninfo(ws.owner_url, place.db_name, &st)
                    : kl_strdup(ws.owner_url);
    char *all = kl_asprintf("SET search_path = %s; %s", place.schema, sql);
    ws_exec(url, all);
    free(all);
    free(url);
}

int64_t
ws_move_count(const Kowloon__Tenant__MoveTenantResponse *m, const char *table)
{
    for (size_t i = 0; i < m->n_counts; i++)
        if (strcmp(m->counts[i]->table, table) == 0)
            return m->counts[i]->rows;
    return -1;
}
