/*
 * Moves that a dying process left unsettled (docs/isolation.md, "Moves"),
 * in process against a database made in KLTEST_PG_URL: the real tenant
 * service and the real workspace service, as in test_workspace_move.
 *
 * A "crash" is a tenant service whose moves stop dead at one point
 * (move_stop_at: nothing after it runs, nothing is undone, and its
 * database sessions end, as a dead process's do). A "restart" is a new
 * instance doing what kowloon-tenant does at start: migrate, then
 * tenant_service_recover. Checked for each crash point: the move is
 * finished when the fence shows the switch happened and undone otherwise,
 * the tenant's rows all there and counted, writes accepted again, the
 * event published; that a Move asked for such a tenant settles it first;
 * that a move running in a live instance, one whose claim is held, or
 * one whose move lock is busy, is left alone; two instances recovering at once;
 * and a move whose lock session was lost not switching.
 *
 * Two kinds of tenant service: one whose role may write the fence (the
 * superuser here; the owner role in the shipped stages), whose switch is
 * one transaction, and one whose role may not (a role of its own), which
 * switches in two steps — the only one with a "fenced, not switched"
 * state.
 */
#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_rpc.h"
#include "kl_rpc_client.h"
#include "kl_rpc_server.h"
#include "kl_tenant_db.h"
#include "kl_test_db.h"
#include "kl_test_events.h"
#include "kl_test_server.h"
#include "kowloon/tenant.pb-c.h"
#include "kowloon/workspace.pb-c.h"
#include "tenant_service.h"
#include "workspace_service.h"
#include "ws_fixture.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define S_TIMEOUT_MS 10000
#define S_MOVE_TIMEOUT_MS 120000

/* One tenant service instance, served. */
typedef struct {
    tenant_service_t *svc;
    kl_test_server_t *srv;
} s_inst_t;

static s_inst_t s_live; /* never crashes; the workspace asks it */
static workspace_service_t *s_wsvc;
static kl_test_server_t *s_ws;
static kl_rpc_client_t *s_noflags;
static kl_test_events_t *s_events;
static char *s_main_owner; /* "main=<owner url>" */
static char s_channel[64];
static char s_svc[128];   /* a role that may not write the fence */
static char *s_svc_url;   /* that role on the test database */
static char *s_admin_url; /* kept past the fixture's teardown */

/* The migrate hook: ws_apply_migrations, held while s_hold.id is being
 * provisioned (a move "in progress" for as long as a test wants). */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char id[37];
    bool held; /* the hook is waiting */
} s_hold = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, "", false};

static int
s_migrate(void *arg, const kl_tenant_place_t *place, kl_status_t *status)
{
    pthread_mutex_lock(&s_hold.mu);
    if (s_hold.id[0] && strcmp(s_hold.id, place->tenant_id) == 0) {
        s_hold.held = true;
        pthread_cond_broadcast(&s_hold.cv);
        while (s_hold.id[0])
            pthread_cond_wait(&s_hold.cv, &s_hold.mu);
        s_hold.held = false;
    }
    pthread_mutex_unlock(&s_hold.mu);
    return ws_apply_migrations(arg, place, status);
}

static void
s_hold_tenant(const char *id)
{
    pthread_mutex_lock(&s_hold.mu);
    snprintf(s_hold.id, sizeof s_hold.id, "%s", id);
    pthread_mutex_unlock(&s_hold.mu);
}

static void
s_wait_held(void)
{
    pthread_mutex_lock(&s_hold.mu);
    while (!s_hold.held)
        pthread_cond_wait(&s_hold.cv, &s_hold.mu);
    pthread_mutex_unlock(&s_hold.mu);
}

static void
s_release(void)
{
    pthread_mutex_lock(&s_hold.mu);
    s_hold.id[0] = '\0';
    pthread_cond_broadcast(&s_hold.cv);
    pthread_mutex_unlock(&s_hold.mu);
}

/* --- instances ------------------------------------------------------------ */

static tenant_service_t *
s_service(const char *db_url, tenant_mover_stop_t stop_at)
{
    const char *owners[] = {s_main_owner};
    tenant_service_opts_t topts = {
        .database_url = db_url,
        .redis_url = ws.redis_url,
        .events_channel = s_channel,
        .default_plan = "starter",
        .default_isolation = "row",
        .owner_servers = owners,
        .n_owner_servers = 1,
        .app_role = ws.app,
        .shared_schema = "workspace",
        .migrate = s_migrate,
        .move_lock_timeout_ms = 20000,
        .move_stop_at = stop_at,
    };
    kl_status_t st;
    tenant_service_t *svc = tenant_service_new(&topts, &st);
    if (!svc || tenant_service_migrate(svc, &st) < 0)
        fail_msg("tenant service: %s", st.message);
    return svc;
}

static void
s_inst_start(s_inst_t *out, const char *db_url, tenant_mover_stop_t stop_at)
{
    out->svc = s_service(db_url, stop_at);
    kl_rpc_server_opts_t sopts = {.workers = 3};
    tenant_service_server_opts(out->svc, &sopts);
    out->srv = kl_test_server_start(tenant_service_base(out->svc), &sopts);
    assert_non_null(out->srv);
}

static void
s_inst_stop(s_inst_t *in)
{
    kl_test_server_stop(&in->srv);
    tenant_service_destroy(&in->svc);
}

/* What kowloon-tenant does when it starts, before it serves. */
static void
s_restart(const char *db_url)
{
    tenant_service_t *svc = s_service(db_url, TENANT_MOVER_STOP_NONE);
    kl_status_t st;
    if (tenant_service_recover(svc, &st) < 0)
        fail_msg("tenant_service_recover: %s", st.message);
    tenant_service_destroy(&svc);
}

static int
s_setup(void **state)
{
    (void)state;
    kl_log_init("move-recovery-test", KL_WARN);
    if (ws_fixture_setup("move_recovery") < 0)
        return -1;
    ws_prepare_shared();
    s_admin_url = kl_strdup(ws.admin_url);
    snprintf(s_channel, sizeof s_channel, "kltest:moverec:%d", (int)getpid());
    s_main_owner = kl_asprintf("main=%s", ws.owner_url);
    s_inst_start(&s_live, ws.super_url, TENANT_MOVER_STOP_NONE);

    /* A tenant service role that owns nothing and may not write the
     * fence: it may use schema "tenant", nothing more. */
    snprintf(s_svc, sizeof s_svc, "%s_svc", ws.app);
    char *sql =
        kl_asprintf("CREATE ROLE %s LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE;"
                    "GRANT CONNECT, CREATE ON DATABASE %s TO %s;",
                    s_svc, ws.db, s_svc);
    ws_exec(ws.admin_url, sql);
    free(sql);
    sql = kl_asprintf("GRANT USAGE, CREATE ON SCHEMA tenant TO %s;"
                      "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN"
                      " SCHEMA tenant TO %s",
                      s_svc, s_svc);
    ws_exec(ws.super_url, sql);
    free(sql);
    s_svc_url = ws_conninfo(ws.admin_url, ws.db, s_svc);

    s_events = kl_test_events_new(ws.redis_url, s_channel);
    assert_non_null(s_events);

    kl_status_t st;
    const char *nowhere = "tcp://127.0.0.1:1";
    kl_rpc_client_opts_t fopts = {.endpoints = &nowhere, .n_endpoints = 1};
    s_noflags = kl_rpc_client_new(&kowloon__tenant__tenant_service__descriptor,
                                  &fopts, &st);
    assert_non_null(s_noflags);
    workspace_service_opts_t wopts = {
        .database_url = ws.app_url,
        .owner_url = ws.owner_url,
        .redis_url = "",
        .events_channel = s_channel,
        .flags = s_noflags,
        .placement = {.tenants = kl_test_server_client(s_live.srv),
                      .ttl_ms = 600000},
    };
    s_wsvc = workspace_service_new(&wopts, &st);
    if (!s_wsvc || workspace_service_prepare(s_wsvc, &st) < 0)
        fail_msg("workspace service: %s", st.message);
    kl_rpc_server_opts_t wsopts = {.workers = 3};
    workspace_service_server_opts(s_wsvc, &wsopts);
    s_ws = kl_test_server_start(workspace_service_base(s_wsvc), &wsopts);
    assert_non_null(s_ws);
    return 0;
}

static int
s_teardown(void **state)
{
    (void)state;
    kl_test_server_stop(&s_ws);
    workspace_service_destroy(&s_wsvc);
    s_inst_stop(&s_live);
    kl_rpc_client_destroy(&s_noflags);
    kl_test_events_destroy(&s_events);
    KL_FREE(&s_main_owner);
    KL_FREE(&s_svc_url);
    ws_fixture_teardown();
    if (s_svc[0]) {
        char *sql = kl_asprintf("DROP ROLE IF EXISTS %s", s_svc);
        if (kl_test_db_exec(s_admin_url, sql) < 0)
            fprintf(stderr, "dropping role %s failed\n", s_svc);
        free(sql);
    }
    KL_FREE(&s_admin_url);
    return 0;
}

/* --- calls ---------------------------------------------------------------- */

static void
s_free(void *msg)
{
    if (msg)
        protobuf_c_message_free_unpacked(msg, NULL);
}

static int
s_wcall(const char *tenant, const char *method, const void *in, void *out_p,
        kl_status_t *st)
{
    kl_call_ctx_t ctx = {
        .request_id = "recovery-test", .tenant_id = tenant, .plan = "starter"};
    kl_call_opts_t opts = {.timeout_ms = S_TIMEOUT_MS, .ctx = &ctx};
    ProtobufCMessage *ignored = NULL;
    ProtobufCMessage **out = out_p ? out_p : &ignored;
    int rc = kl_rpc_client_call(kl_test_server_client(s_ws), method, in, &opts,
                                out, st);
    s_free(ignored);
    return rc;
}

static void
s_place_record(const Kowloon__Tenant__Tenant *t)
{
    kl_isolation_t iso;
    kl_tenant_place_t p;
    kl_status_t st;
    assert_int_equal(kl_isolation_parse(t->isolation, &iso, &st), 0);
    assert_int_equal(
        kl_tenant_place(t->id, iso, "workspace", t->db_server, &p, &st), 0);
    ws_placement_set(&p);
}

/* The record, from the live instance; the fixture learns its placement
 * (ws_rows counts there). Caller frees. */
static Kowloon__Tenant__Tenant *
s_get(const char *id)
{
    Kowloon__Tenant__GetTenantRequest req =
        KOWLOON__TENANT__GET_TENANT_REQUEST__INIT;
    req.id = (char *)id;
    Kowloon__Tenant__Tenant *t = NULL;
    kl_status_t st;
    if (kl_test_server_call(s_live.srv, "Get", &req, &t, S_TIMEOUT_MS, &st) < 0)
        fail_msg("Get %s: %s", id, st.message);
    s_place_record(t);
    return t;
}

static Kowloon__Tenant__MoveTenantResponse *
s_move(s_inst_t *in, const char *id, const char *isolation, kl_status_t *st)
{
    Kowloon__Tenant__MoveTenantRequest req =
        KOWLOON__TENANT__MOVE_TENANT_REQUEST__INIT;
    req.id = (char *)id;
    req.isolation = (char *)isolation;
    Kowloon__Tenant__MoveTenantResponse *out = NULL;
    if (kl_test_server_call(in->srv, "Move", &req, &out, S_MOVE_TIMEOUT_MS,
                            st) < 0)
        return NULL;
    return out;
}

/* UpdateProject as tenant: a write that needs no flags service. */
static int
s_write(const char *tenant, const char *project, const char *name,
        kl_status_t *st)
{
    Kowloon__Workspace__UpdateProjectRequest req =
        KOWLOON__WORKSPACE__UPDATE_PROJECT_REQUEST__INIT;
    req.id = (char *)project;
    req.name = (char *)name;
    return s_wcall(tenant, "UpdateProject", &req, NULL, st);
}

/* The project's name, read through the workspace service. */
static void
s_assert_name(const char *tenant, const char *project, const char *name)
{
    Kowloon__Workspace__ProjectRef ref = KOWLOON__WORKSPACE__PROJECT_REF__INIT;
    ref.id = (char *)project;
    Kowloon__Workspace__Project *p = NULL;
    kl_status_t st;
    if (s_wcall(tenant, "GetProject", &ref, &p, &st) < 0)
        fail_msg("GetProject: %s", st.message);
    assert_string_equal(p->name, name);
    s_free(p);
}

/* A value of sql (printf format) as the superuser. Caller frees. */
static char *
s_value(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char buf[2048];
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return ws_value(ws.super_url, buf);
}

static void
s_assert_value(const char *want, const char *fmt, const char *id)
{
    char *v = s_value(fmt, id, id);
    assert_string_equal(v, want);
    free(v);
}

#define S_SCHEMAS                                                              \
    "SELECT count(*) FROM pg_namespace WHERE nspname = 't_' ||"                \
    " replace('%s', '-', '')"
#define S_DATABASES                                                            \
    "SELECT count(*) FROM pg_database WHERE datname = 'kowloon_t_' ||"         \
    " replace('%s', '-', '')"
#define S_FENCE                                                                \
    "SELECT coalesce((SELECT isolation FROM kowloon_placement.moved"           \
    " WHERE tenant_id = '%s'), '')"
#define S_SHARED_ROWS                                                          \
    "SELECT (SELECT count(*) FROM workspace.projects WHERE tenant_id = '%s')"  \
    " + (SELECT count(*) FROM workspace.tasks WHERE tenant_id = '%s')"
#define S_CLEANUP "SELECT move_cleanup FROM tenant.tenants WHERE id = '%s'"

/* --- tenants -------------------------------------------------------------- */

/* A tenant with 3 projects and 12 tasks, one project renamed "seeded"
 * through the workspace service. */
typedef struct {
    char id[37];
    char *project;
} s_tenant_t;

static void
s_tenant_new(s_tenant_t *out, const char *prefix, const char *isolation)
{
    static int n;
    char sub[64];
    snprintf(sub, sizeof sub, "%s%d%d", prefix, (int)getpid() % 100000, ++n);
    Kowloon__Tenant__CreateTenantRequest req =
        KOWLOON__TENANT__CREATE_TENANT_REQUEST__INIT;
    req.subdomain = sub;
    req.name = "Recovering";
    req.isolation = (char *)isolation;
    Kowloon__Tenant__Tenant *t = NULL;
    kl_status_t st;
    if (kl_test_server_call(s_live.srv, "Create", &req, &t, S_TIMEOUT_MS, &st) <
        0)
        fail_msg("Create %s: %s", sub, st.message);
    snprintf(out->id, sizeof out->id, "%s", t->id);
    s_place_record(t);
    s_free(t);
    char *sql =
        kl_asprintf("SELECT set_config('app.tenant_id', '%s', false);"
                    "INSERT INTO projects (name) SELECT 'seed ' || g"
                    " FROM generate_series(1, 3) g;"
                    "INSERT INTO tasks (project_id, title) SELECT p.id,"
                    " 'task ' || g FROM projects p, generate_series(1, 4) g;"
                    "RESET app.tenant_id",
                    out->id);
    ws_owner_exec(out->id, sql);
    free(sql);
    Kowloon__Workspace__ListProjectsRequest lreq =
        KOWLOON__WORKSPACE__LIST_PROJECTS_REQUEST__INIT;
    lreq.page_size = 1;
    Kowloon__Workspace__ListProjectsResponse *list = NULL;
    if (s_wcall(out->id, "ListProjects", &lreq, &list, &st) < 0)
        fail_msg("ListProjects: %s", st.message);
    out->project = kl_strdup(list->projects[0]->id);
    s_free(list);
    assert_int_equal(s_write(out->id, out->project, "seeded", &st), 0);
}

static void
s_tenant_free(s_tenant_t *t)
{
    KL_FREE(&t->project);
}

/* The record says model, not moving; its rows are all there (3 + 12);
 * writes are accepted (a stale cache in the workspace service is refused
 * by the fence and asks again) and read back. */
static void
s_assert_settled(const s_tenant_t *x, const char *model, const char *name)
{
    Kowloon__Tenant__Tenant *now = s_get(x->id);
    assert_string_equal(now->isolation, model);
    assert_false(now->moving);
    s_free(now);
    assert_int_equal(ws_rows("projects", x->id), 3);
    assert_int_equal(ws_rows("tasks", x->id), 12);
    s_assert_name(x->id, x->project, name);
    kl_status_t st;
    if (s_write(x->id, x->project, "settled", &st) < 0)
        fail_msg("write after recovery: %s", st.message);
    s_assert_name(x->id, x->project, "settled");
    s_assert_value("", S_CLEANUP, x->id);
}

static void
s_assert_event(const char *id, const char *action)
{
    if (kl_test_events_wait(s_events, "tenant", id, id, NULL, action, 5000) < 0)
        fail_msg("no tenant/%s event for %s", action, id);
}

/* Moves x to model on an instance that stops dead at stop_at. */
static void
s_crash(const s_tenant_t *x, const char *model, const char *db_url,
        tenant_mover_stop_t stop_at, const char *message)
{
    s_inst_t dying;
    s_inst_start(&dying, db_url, stop_at);
    kl_status_t st;
    Kowloon__Tenant__MoveTenantResponse *m = s_move(&dying, x->id, model, &st);
    if (m)
        fail_msg("the move did not stop");
    assert_int_equal(st.code, KL_ABORTED);
    assert_string_equal(st.message, message);
    s_inst_stop(&dying);
}

/* --- a crash before the switch: undone ------------------------------------ */

/* The target made, nothing copied. Writes go on in the old placement (the
 * move lock went with the process); the recovery drops the half-made
 * schema and clears moving. */
static void
test_crash_provisioned_undone(void **state)
{
    (void)state;
    s_tenant_t x;
    s_tenant_new(&x, "prov", "row");
    s_crash(&x, "schema", ws.super_url, TENANT_MOVER_STOP_PROVISIONED,
            "move stopped once provisioned (test hook)");
    Kowloon__Tenant__Tenant *now = s_get(x.id);
    assert_true(now->moving);
    assert_string_equal(now->isolation, "row");
    s_free(now);
    s_assert_value("1", S_SCHEMAS, x.id);
    kl_status_t st;
    assert_int_equal(s_write(x.id, x.project, "after the crash", &st), 0);

    s_restart(ws.super_url);
    s_assert_event(x.id, "updated");
    s_assert_value("0", S_SCHEMAS, x.id);
    s_assert_value("", S_FENCE, x.id);
    s_assert_settled(&x, "row", "after the crash");
    s_tenant_free(&x);
}

/* Copied and counted, not switched: the copy is dropped, the source (with
 * a write made after the crash) stays the tenant's data. */
static void
test_crash_copied_undone(void **state)
{
    (void)state;
    s_tenant_t x;
    s_tenant_new(&x, "copied", "row");
    s_crash(&x, "database", ws.super_url, TENANT_MOVER_STOP_COPIED,
            "move stopped once copied (test hook)");
    s_assert_value("1", S_DATABASES, x.id);
    kl_status_t st;
    assert_int_equal(s_write(x.id, x.project, "after the crash", &st), 0);

    s_restart(ws.super_url);
    s_assert_event(x.id, "updated");
    s_assert_value("0", S_DATABASES, x.id);
    s_assert_settled(&x, "row", "after the crash");
    s_tenant_free(&x);
}

/* --- a crash after the fence: finished ------------------------------------ */

/* A two-step switch (the service's role may not write the fence): fence
 * written, record not switched. Writes are refused — never misdirected —
 * until the recovery finishes the move: record switched, old schema
 * dropped, "moved" published. */
static void
test_crash_fenced_finished(void **state)
{
    (void)state;
    s_tenant_t x;
    s_tenant_new(&x, "fenced", "schema");
    s_crash(&x, "database", s_svc_url, TENANT_MOVER_STOP_FENCED,
            "move stopped once fenced (test hook)");
    Kowloon__Tenant__Tenant *now = s_get(x.id);
    assert_true(now->moving);
    assert_string_equal(now->isolation, "schema");
    s_free(now);
    s_assert_value("database", S_FENCE, x.id);
    kl_status_t st;
    assert_int_equal(s_write(x.id, x.project, "refused", &st), -KL_UNAVAILABLE);
    assert_string_equal(st.message, "tenant placement changed, retry");

    s_restart(ws.super_url);
    s_assert_event(x.id, "moved");
    now = s_get(x.id);
    assert_string_equal(now->db_server, "main");
    s_free(now);
    s_assert_value("0", S_SCHEMAS, x.id);
    s_assert_value("1", S_DATABASES, x.id);
    s_assert_settled(&x, "database", "seeded");
    s_tenant_free(&x);
}

/* Switched, old copy not removed: the record says schema, the tenant's
 * rows are still in the shared tables; the recovery deletes them. */
static void
test_crash_switched_cleaned(void **state)
{
    (void)state;
    s_tenant_t x;
    s_tenant_new(&x, "switched", "row");
    s_crash(&x, "schema", ws.super_url, TENANT_MOVER_STOP_SWITCHED,
            "move stopped once switched (test hook)");
    s_assert_value("15", S_SHARED_ROWS, x.id);
    s_assert_value("row", S_CLEANUP, x.id);
    Kowloon__Tenant__Tenant *now = s_get(x.id);
    assert_string_equal(now->isolation, "schema");
    assert_false(now->moving);
    s_free(now);

    s_restart(ws.super_url);
    s_assert_event(x.id, "moved");
    s_assert_value("0", S_SHARED_ROWS, x.id);
    s_assert_value("schema", S_FENCE, x.id);
    s_assert_settled(&x, "schema", "seeded");
    s_tenant_free(&x);
}

/* Where the service's role may write the fence, fence and record change
 * in one transaction: there is no "fenced, not switched" point to stop
 * at, and the move completes. */
static void
test_one_transaction_switch(void **state)
{
    (void)state;
    s_tenant_t x;
    s_tenant_new(&x, "onetx", "row");
    s_inst_t in;
    s_inst_start(&in, ws.super_url, TENANT_MOVER_STOP_FENCED);
    kl_status_t st;
    Kowloon__Tenant__MoveTenantResponse *m = s_move(&in, x.id, "schema", &st);
    if (!m)
        fail_msg("Move: %s", st.message);
    assert_string_equal(m->tenant->isolation, "schema");
    s_free(m);
    s_inst_stop(&in);
    s_assert_value("schema", S_FENCE, x.id);
    s_assert_value("0", S_SHARED_ROWS, x.id);
    s_assert_settled(&x, "schema", "seeded");
    s_tenant_free(&x);
}

/* --- a Move asked for a tenant left moving ------------------------------ */

static void
test_move_settles_first(void **state)
{
    (void)state;
    /* Left fenced for schema; Move to schema: the recovery finishes that
     * very move and answers it, counts included. */
    s_tenant_t x;
    s_tenant_new(&x, "again", "row");
    s_crash(&x, "schema", s_svc_url, TENANT_MOVER_STOP_FENCED,
            "move stopped once fenced (test hook)");
    kl_status_t st;
    Kowloon__Tenant__MoveTenantResponse *m =
        s_move(&s_live, x.id, "schema", &st);
    if (!m)
        fail_msg("Move: %s", st.message);
    assert_string_equal(m->tenant->isolation, "schema");
    assert_false(m->tenant->moving);
    assert_int_equal(ws_move_count(m, "projects"), 3);
    assert_int_equal(ws_move_count(m, "tasks"), 12);
    s_free(m);
    s_assert_value("0", S_SHARED_ROWS, x.id);
    s_assert_settled(&x, "schema", "seeded");

    /* Left with a full copy in a schema, not switched; Move to database:
     * the schema copy is dropped, then the move asked for runs. */
    s_tenant_t y;
    s_tenant_new(&y, "other", "row");
    s_crash(&y, "schema", ws.super_url, TENANT_MOVER_STOP_COPIED,
            "move stopped once copied (test hook)");
    m = s_move(&s_live, y.id, "database", &st);
    if (!m)
        fail_msg("Move: %s", st.message);
    assert_string_equal(m->tenant->isolation, "database");
    assert_int_equal(ws_move_count(m, "projects"), 3);
    assert_int_equal(ws_move_count(m, "tasks"), 12);
    s_free(m);
    s_assert_value("0", S_SCHEMAS, y.id);
    s_assert_value("0", S_SHARED_ROWS, y.id);
    s_assert_settled(&y, "database", "seeded");
    s_tenant_free(&x);
    s_tenant_free(&y);
}

/* --- what a recovery leaves alone ---------------------------------------- */

typedef struct {
    const char *id;
    const char *model;
    Kowloon__Tenant__MoveTenantResponse *out;
    kl_status_t st;
} s_move_job_t;

static void *
s_move_thread(void *arg)
{
    s_move_job_t *job = arg;
    job->out = s_move(&s_live, job->id, job->model, &job->st);
    return NULL;
}

/* A move in progress in a live instance (held in its provisioning, under
 * its claim and move lock): a starting instance does not touch it, a
 * Move elsewhere is refused, and the move then completes. */
static void
test_live_move_left_alone(void **state)
{
    (void)state;
    s_tenant_t x;
    s_tenant_new(&x, "live", "row");
    s_hold_tenant(x.id);
    s_move_job_t job = {.id = x.id, .model = "schema"};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, s_move_thread, &job), 0);
    s_wait_held();

    s_restart(ws.super_url);
    Kowloon__Tenant__Tenant *now = s_get(x.id);
    assert_true(now->moving);
    assert_string_equal(now->isolation, "row");
    s_free(now);
    s_assert_value("1", S_SCHEMAS, x.id);
    s_inst_t other;
    s_inst_start(&other, ws.super_url, TENANT_MOVER_STOP_NONE);
    kl_status_t st;
    assert_null(s_move(&other, x.id, "database", &st));
    assert_int_equal(st.code, KL_FAILED_PRECONDITION);
    char want[128];
    snprintf(want, sizeof want, "tenant %s is already being moved", x.id);
    assert_string_equal(st.message, want);
    s_inst_stop(&other);

    s_release();
    pthread_join(th, NULL);
    if (!job.out)
        fail_msg("Move: %s", job.st.message);
    assert_int_equal(ws_move_count(job.out, "projects"), 3);
    assert_int_equal(ws_move_count(job.out, "tasks"), 12);
    s_free(job.out);
    s_assert_settled(&x, "schema", "seeded");
    s_tenant_free(&x);
}

/* A move's claim is taken before the tenant is marked moving and before
 * the move lock is asked for: a tenant whose claim is held (here by a
 * session of the test, as a live Move holds it in that window) is not
 * touched even though its move lock is free. */
static void
test_claimed_move_left_alone(void **state)
{
    (void)state;
    s_tenant_t x;
    s_tenant_new(&x, "claimed", "row");
    s_crash(&x, "schema", ws.super_url, TENANT_MOVER_STOP_COPIED,
            "move stopped once copied (test hook)");
    PGconn *mover = PQconnectdb(ws.owner_url);
    assert_int_equal(PQstatus(mover), CONNECTION_OK);
    PGresult *r = PQexecParams(
        mover,
        "SELECT pg_advisory_lock(" TENANT_MOVER_CLAIM_SQL("$1::text") ")", 1,
        NULL, (const char *const[]){x.id}, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);

    s_restart(ws.super_url);
    Kowloon__Tenant__Tenant *now = s_get(x.id);
    assert_true(now->moving);
    s_free(now);
    s_assert_value("1", S_SCHEMAS, x.id);

    PQfinish(mover);
    s_restart(ws.super_url);
    s_assert_value("0", S_SCHEMAS, x.id);
    s_assert_settled(&x, "row", "seeded");
    s_tenant_free(&x);
}

/* A move left unsettled whose move lock is held (a write under way): a
 * starting instance does not wait for it and leaves the tenant; the next
 * start settles it. */
static void
test_busy_lock_left_alone(void **state)
{
    (void)state;
    s_tenant_t x;
    s_tenant_new(&x, "busy", "row");
    s_crash(&x, "schema", ws.super_url, TENANT_MOVER_STOP_COPIED,
            "move stopped once copied (test hook)");
    PGconn *writer = PQconnectdb(ws.app_url);
    assert_int_equal(PQstatus(writer), CONNECTION_OK);
    PGresult *r = PQexecParams(
        writer,
        "SELECT pg_advisory_lock_shared(" KL_TENANT_LOCK_SQL("$1::text") ")", 1,
        NULL, (const char *const[]){x.id}, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);

    int64_t started = kl_now_mono_ms();
    s_restart(ws.super_url);
    assert_true(kl_now_mono_ms() - started < 10000);
    Kowloon__Tenant__Tenant *now = s_get(x.id);
    assert_true(now->moving);
    s_free(now);
    s_assert_value("1", S_SCHEMAS, x.id);

    PQfinish(writer);
    s_restart(ws.super_url);
    s_assert_value("0", S_SCHEMAS, x.id);
    s_assert_settled(&x, "row", "seeded");
    s_tenant_free(&x);
}

/* --- two instances starting at once -------------------------------------- */

static void *
s_restart_thread(void *arg)
{
    s_restart(arg);
    return NULL;
}

static void
test_concurrent_recovery(void **state)
{
    (void)state;
    s_tenant_t p, c, f, s;
    s_tenant_new(&p, "cp", "row");
    s_tenant_new(&c, "cc", "row");
    s_tenant_new(&f, "cf", "row");
    s_tenant_new(&s, "cs", "schema");
    s_crash(&p, "schema", ws.super_url, TENANT_MOVER_STOP_PROVISIONED,
            "move stopped once provisioned (test hook)");
    s_crash(&c, "database", ws.super_url, TENANT_MOVER_STOP_COPIED,
            "move stopped once copied (test hook)");
    s_crash(&f, "database", s_svc_url, TENANT_MOVER_STOP_FENCED,
            "move stopped once fenced (test hook)");
    s_crash(&s, "database", ws.super_url, TENANT_MOVER_STOP_SWITCHED,
            "move stopped once switched (test hook)");

    pthread_t a, b;
    assert_int_equal(pthread_create(&a, NULL, s_restart_thread, ws.super_url),
                     0);
    assert_int_equal(pthread_create(&b, NULL, s_restart_thread, s_svc_url), 0);
    pthread_join(a, NULL);
    pthread_join(b, NULL);

    s_assert_value("0", S_SCHEMAS, p.id);
    s_assert_settled(&p, "row", "seeded");
    s_assert_value("0", S_DATABASES, c.id);
    s_assert_settled(&c, "row", "seeded");
    s_assert_event(f.id, "moved");
    s_assert_value("0", S_SHARED_ROWS, f.id);
    s_assert_settled(&f, "database", "seeded");
    s_assert_event(s.id, "moved");
    s_assert_value("0", S_SCHEMAS, s.id);
    s_assert_settled(&s, "database", "seeded");
    s_tenant_free(&p);
    s_tenant_free(&c);
    s_tenant_free(&f);
    s_tenant_free(&s);
}

/* --- a move that lost its lock -------------------------------------------- */

/* The mover's session ends mid-move (its claim and move lock with it):
 * writes to the old placement are accepted again at once, so the move
 * must not switch. It fails, the target is dropped, and the write made
 * meanwhile is the tenant's. */
static void
test_lost_lock_does_not_switch(void **state)
{
    (void)state;
    s_tenant_t x;
    s_tenant_new(&x, "lost", "row");
    s_hold_tenant(x.id);
    s_move_job_t job = {.id = x.id, .model = "schema"};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, s_move_thread, &job), 0);
    s_wait_held();
    char *pid = s_value(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) ="
        " hashtextextended('kowloon.tenant.move.' || '%s', 0)",
        x.id);
    char *killed = s_value("SELECT pg_terminate_backend(%s)", pid);
    assert_string_equal(killed, "t");
    free(killed);
    free(pid);
    kl_status_t st;
    int64_t until = kl_now_mono_ms() + 5000;
    int wrc;
    while ((wrc = s_write(x.id, x.project, "while the lock was lost", &st)) <
               0 &&
           kl_now_mono_ms() < until)
        usleep(50 * 1000);
    assert_int_equal(wrc, 0);

    s_release();
    pthread_join(th, NULL);
    assert_null(job.out);
    assert_int_equal(job.st.code, KL_ABORTED);
    char want[128];
    snprintf(want, sizeof want, "the move lock of tenant %s was lost", x.id);
    assert_string_equal(job.st.message, want);
    s_assert_value("0", S_SCHEMAS, x.id);
    s_assert_value("", S_FENCE, x.id);
    s_assert_settled(&x, "row", "while the lock was lost");
    s_tenant_free(&x);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crash_provisioned_undone),
        cmocka_unit_test(test_crash_copied_undone),
        cmocka_unit_test(test_crash_fenced_finished),
        cmocka_unit_test(test_crash_switched_cleaned),
        cmocka_unit_test(test_one_transaction_switch),
        cmocka_unit_test(test_move_settles_first),
        cmocka_unit_test(test_live_move_left_alone),
        cmocka_unit_test(test_claimed_move_left_alone),
        cmocka_unit_test(test_busy_lock_left_alone),
        cmocka_unit_test(test_concurrent_recovery),
        cmocka_unit_test(test_lost_lock_does_not_switch),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
