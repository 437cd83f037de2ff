/*
 * The workspace service end to end, in process: the real flags service and
 * the workspace service each on tcp://127.0.0.1:*, against a database made
 * in KLTEST_PG_URL with an owner role and an application role, called
 * through kl_rpc_client with a call context per tenant. Also runs the
 * kowloon-workspace binary to see it refuse unsafe roles.
 */
#include "flags_service.h"
#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_redis.h"
#include "kl_rpc_client.h"
#include "kl_rpc_server.h"
#include "kowloon/flags.pb-c.h"
#include "kowloon/rpc.pb-c.h"
#include "kowloon/workspace.pb-c.h"
#include "workspace_service.h"
#include "workspace_store.h"
#include "ws_fixture.h"

#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

extern char **environ;

#define S_TIMEOUT_MS 10000
#define S_BIG "wsbig"     /* plan: max_projects 1000 */
#define S_THREE "wsthree" /* plan: max_projects 3 */

static char s_channel[64];

/* --- the flags service -------------------------------------------------- */

static struct {
    flags_service_t *svc;
    kl_rpc_server_t *server;
    pthread_t thread;
    kl_rpc_client_t *client; /* the workspace service's, and the tests' */
} s_flags;

/* --- the workspace service ---------------------------------------------- */

typedef struct {
    workspace_service_t *svc;
    kl_rpc_server_t *server;
    pthread_t thread;
    kl_rpc_client_t *client;
} s_instance_t;

static s_instance_t s_ws;

static void *
s_run(void *arg)
{
    kl_rpc_server_run(arg);
    return NULL;
}

static kl_rpc_server_t *
s_serve(ProtobufCService *base, kl_rpc_server_opts_t *sopts, pthread_t *thread)
{
    kl_status_t st;
    sopts->bind = "tcp://127.0.0.1:*";
    sopts->workers = 4;
    sopts->no_signal_handlers = true;
    kl_rpc_server_t *server = kl_rpc_server_new(sopts, &st);
    if (!server)
        fail_msg("kl_rpc_server_new: %s", st.message);
    assert_int_equal(kl_rpc_server_add_service(server, base), 0);
    if (kl_rpc_server_bind(server, &st) < 0)
        fail_msg("bind: %s", st.message);
    assert_int_equal(pthread_create(thread, NULL, s_run, server), 0);
    return server;
}

/* A workspace instance whose flags calls go through flags. */
static void
s_start(s_instance_t *in, kl_rpc_client_t *flags)
{
    kl_status_t st;
    workspace_service_opts_t opts = {
        .database_url = ws.app_url,
        .owner_url = ws.owner_url,
        .redis_url = ws.redis_url,
        .events_channel = s_channel,
        .flags = flags,
        /* Placements from the fixture: every tenant in this run's model,
         * provisioned on first sight (the tenant service's role). */
        .placement = {.fn = ws_placement},
    };
    memset(in, 0, sizeof *in);
    in->svc = workspace_service_new(&opts, &st);
    if (!in->svc)
        fail_msg("workspace_service_new: %s", st.message);
    if (workspace_service_prepare(in->svc, &st) < 0)
        fail_msg("prepare: %s", st.message);
    kl_rpc_server_opts_t sopts = {0};
    workspace_service_server_opts(in->svc, &sopts);
    in->server = s_serve(workspace_service_base(in->svc), &sopts, &in->thread);
    const char *endpoint = kl_rpc_server_endpoint(in->server);
    kl_rpc_client_opts_t copts = {.endpoints = &endpoint, .n_endpoints = 1};
    in->client = kl_rpc_client_new(
        &kowloon__workspace__workspace_service__descriptor, &copts, &st);
    assert_non_null(in->client);
}

static void
s_stop(s_instance_t *in)
{
    if (!in->server)
        return;
    kl_rpc_client_destroy(&in->client);
    kl_rpc_server_stop(in->server);
    pthread_join(in->thread, NULL);
    kl_rpc_server_destroy(&in->server);
    workspace_service_destroy(&in->svc);
}

/* --- calls -------------------------------------------------------------- */

static void
s_free(void *msg)
{
    if (msg)
        protobuf_c_message_free_unpacked(msg, NULL);
}

/* Calls method as tenant (NULL: no tenant) on plan; returns 0 or -code. */
static int
s_call_on(s_instance_t *in, const char *tenant, const char *plan,
          const char *method, const void *input, void *output_p,
          kl_status_t *st)
{
    kl_call_ctx_t ctx = {
        .request_id = "test", .tenant_id = tenant, .plan = plan ? plan : S_BIG};
    kl_call_opts_t opts = {.timeout_ms = S_TIMEOUT_MS, .ctx = &ctx};
    ProtobufCMessage **out = output_p;
    ProtobufCMessage *ignored = NULL;
    kl_status_clear(st);
    int rc = kl_rpc_client_call(in->client, method, input, &opts,
                                out ? out : &ignored, st);
    s_free(ignored);
    return rc;
}

static int
s_call(const char *tenant, const char *method, const void *input,
       void *output_p, kl_status_t *st)
{
    return s_call_on(&s_ws, tenant, NULL, method, input, output_p, st);
}

/* Expects method (as tenant) to fail with code and exactly message. */
#define S_EXPECT_FAIL(tenant, method, input, code, ...)                        \
    do {                                                                       \
        kl_status_t st_;                                                       \
        char want_[KL_STATUS_MESSAGE_MAX];                                     \
        snprintf(want_, sizeof want_, __VA_ARGS__);                            \
        int rc_ = s_call(tenant, method, input, NULL, &st_);                   \
        if (rc_ != -(code) || strcmp(st_.message, want_) != 0)                 \
            fail_msg("%s: want %s \"%s\", got %s \"%s\"", method,              \
                     kl_code_name(code), want_, kl_strerror(rc_),              \
                     st_.message);                                             \
    } while (0)

static Kowloon__Workspace__Project *
s_project(const char *tenant, const char *name, const char *description)
{
    Kowloon__Workspace__CreateProjectRequest req =
        KOWLOON__WORKSPACE__CREATE_PROJECT_REQUEST__INIT;
    req.name = (char *)name;
    req.description = (char *)(description ? description : "");
    Kowloon__Workspace__Project *p = NULL;
    kl_status_t st;
    if (s_call(tenant, "CreateProject", &req, &p, &st) != 0)
        fail_msg("CreateProject %s: %s", name, st.message);
    return p;
}

static Kowloon__Workspace__Task *
s_task(const char *tenant, const char *project_id, const char *title)
{
    Kowloon__Workspace__CreateTaskRequest req =
        KOWLOON__WORKSPACE__CREATE_TASK_REQUEST__INIT;
    req.project_id = (char *)project_id;
    req.title = (char *)title;
    Kowloon__Workspace__Task *t = NULL;
    kl_status_t st;
    if (s_call(tenant, "CreateTask", &req, &t, &st) != 0)
        fail_msg("CreateTask %s: %s", title, st.message);
    return t;
}

static void
s_set_done(const char *tenant, const char *project_id, const char *id,
           bool done)
{
    Kowloon__Workspace__UpdateTaskRequest req =
        KOWLOON__WORKSPACE__UPDATE_TASK_REQUEST__INIT;
    req.project_id = (char *)project_id;
    req.id = (char *)id;
    req.done_set_case = KOWLOON__WORKSPACE__UPDATE_TASK_REQUEST__DONE_SET_DONE;
    req.done = done;
    Kowloon__Workspace__Task *t = NULL;
    kl_status_t st;
    if (s_call(tenant, "UpdateTask", &req, &t, &st) != 0)
        fail_msg("UpdateTask: %s", st.message);
    assert_int_equal(t->done, done);
    s_free(t);
}

/* "2026-11-27T17:03:05.123Z" */
static void
s_assert_time(const char *s)
{
    int y, mo, d, h, mi, sec, ms;
    char z = 0;
    assert_int_equal(strlen(s), 24);
    assert_int_equal(sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%c", &y, &mo, &d, &h,
                            &mi, &sec, &ms, &z),
                     8);
    assert_int_equal(z, 'Z');
}

/* Rows of tenant in table, counted as the superuser (RLS bypassed), in
 * the tenant's placement. */
static long
s_rows(const char *table, const char *tenant)
{
    return ws_rows(table, tenant);
}

/* --- events ------------------------------------------------------------- */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int subscribed;
    char seen[64][160]; /* "kind action id tenant" */
    int n;
} s_ev = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
static kl_events_t *s_events;

static void
s_on_event(const Kowloon__Events__ChangeEvent *ev, void *user)
{
    pthread_mutex_lock(&s_ev.mu);
    if (!ev)
        s_ev.subscribed++;
    else if (s_ev.n < 64)
        snprintf(s_ev.seen[s_ev.n++], sizeof s_ev.seen[0], "%s %s %s %s",
                 ev->kind, ev->action, ev->id, ev->tenant_id);
    pthread_cond_broadcast(&s_ev.cond);
    pthread_mutex_unlock(&s_ev.mu);
}

static void
s_expect_event(const char *kind, const char *action, const char *id,
               const char *tenant)
{
    char want[160];
    snprintf(want, sizeof want, "%s %s %s %s", kind, action, id, tenant);
    int64_t until = kl_now_mono_ms() + 5000;
    pthread_mutex_lock(&s_ev.mu);
    for (;;) {
        for (int i = 0; i < s_ev.n; i++)
            if (strcmp(s_ev.seen[i], want) == 0) {
                pthread_mutex_unlock(&s_ev.mu);
                return;
            }
        if (kl_now_mono_ms() >= until)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&s_ev.cond, &s_ev.mu, &ts);
    }
    pthread_mutex_unlock(&s_ev.mu);
    fail_msg("no event \"%s\"", want);
}

/* --- fixture ------------------------------------------------------------ */

/* A plan with max_projects; the flags service wants every required limit
 * set, the others unlimited here. */
static void
s_plan(const char *name, int64_t max_projects)
{
    static const char *const keys[] = {"max_projects",
                                       "api_requests_per_minute",
                                       "max_api_keys", "storage_mb"};
    Kowloon__Flags__Plan__LimitsEntry e[4];
    Kowloon__Flags__Plan__LimitsEntry *ep[4];
    for (int i = 0; i < 4; i++) {
        kowloon__flags__plan__limits_entry__init(&e[i]);
        e[i].key = (char *)keys[i];
        e[i].value = i == 0 ? max_projects : -1;
        ep[i] = &e[i];
    }
    Kowloon__Flags__Plan plan = KOWLOON__FLAGS__PLAN__INIT;
    plan.name = (char *)name;
    plan.n_limits = 4;
    plan.limits = ep;
    kl_call_opts_t opts = {.timeout_ms = S_TIMEOUT_MS};
    ProtobufCMessage *out = NULL;
    kl_status_t st;
    if (kl_rpc_client_call(s_flags.client, "CreatePlan", &plan.base, &opts,
                           &out, &st) != 0)
        fail_msg("CreatePlan %s: %s", name, st.message);
    s_free(out);
}

static int
s_group_setup(void **state)
{
    kl_log_init("workspace-test", KL_WARN);
    if (ws_fixture_setup("workspace_service") < 0)
        return -1;
    ws_prepare_shared();
    snprintf(s_channel, sizeof s_channel, "kltest:workspace:%d", (int)getpid());
    kl_status_t st;
    s_events =
        kl_events_subscribe(ws.redis_url, s_channel, s_on_event, NULL, &st);
    if (!s_events) {
        fprintf(stderr, "kl_events_subscribe: %s\n", st.message);
        return -1;
    }
    int64_t until = kl_now_mono_ms() + 5000;
    pthread_mutex_lock(&s_ev.mu);
    while (s_ev.subscribed == 0 && kl_now_mono_ms() < until) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&s_ev.cond, &s_ev.mu, &ts);
    }
    int subscribed = s_ev.subscribed;
    pthread_mutex_unlock(&s_ev.mu);
    if (!subscribed) {
        fprintf(stderr, "no subscription to %s\n", ws.redis_url);
        return -1;
    }

    /* The real flags service, its schema in the same database. */
    flags_service_opts_t fopts = {.database_url = ws.super_url,
                                  .redis_url = "",
                                  .events_channel = s_channel};
    s_flags.svc = flags_service_new(&fopts, &st);
    if (!s_flags.svc || flags_service_migrate(s_flags.svc, &st) < 0) {
        fprintf(stderr, "flags service: %s\n", st.message);
        return -1;
    }
    kl_rpc_server_opts_t sopts = {0};
    flags_service_server_opts(s_flags.svc, &sopts);
    s_flags.server =
        s_serve(flags_service_base(s_flags.svc), &sopts, &s_flags.thread);
    const char *endpoint = kl_rpc_server_endpoint(s_flags.server);
    kl_rpc_client_opts_t copts = {.endpoints = &endpoint, .n_endpoints = 1};
    s_flags.client = kl_rpc_client_new(
        &kowloon__flags__flags_service__descriptor, &copts, &st);
    assert_non_null(s_flags.client);
    s_plan(S_BIG, 1000);
    s_plan(S_THREE, 3);

    s_start(&s_ws, s_flags.client);
    return 0;
}

static int
s_group_teardown(void **state)
{
    s_stop(&s_ws);
    if (s_flags.server) {
        kl_rpc_client_destroy(&s_flags.client);
        kl_rpc_server_stop(s_flags.server);
        pthread_join(s_flags.thread, NULL);
        kl_rpc_server_destroy(&s_flags.server);
    }
    flags_service_destroy(&s_flags.svc);
    kl_events_destroy(&s_events);
    ws_fixture_teardown();
    return 0;
}

/* --- tests: projects and tasks ------------------------------------------ */

static void
test_projects_crud(void **state)
{
    char a[37];
    ws_uuid(a);
    Kowloon__Workspace__Project *p = s_project(a, "Launch", "the first one");
    assert_int_equal(strlen(p->id), 36);
    assert_string_equal(p->name, "Launch");
    assert_string_equal(p->description, "the first one");
    s_assert_time(p->created_at);
    s_assert_time(p->updated_at);
    s_expect_event("project", "created", p->id, a);
    assert_int_equal(s_rows("projects", a), 1);

    Kowloon__Workspace__ProjectRef ref = KOWLOON__WORKSPACE__PROJECT_REF__INIT;
    ref.id = p->id;
    Kowloon__Workspace__Project *g = NULL;
    kl_status_t st;
    assert_int_equal(s_call(a, "GetProject", &ref, &g, &st), 0);
    assert_string_equal(g->id, p->id);
    assert_string_equal(g->name, "Launch");
    s_free(g);

    /* Empty fields are left unchanged. */
    Kowloon__Workspace__UpdateProjectRequest up =
        KOWLOON__WORKSPACE__UPDATE_PROJECT_REQUEST__INIT;
    up.id = p->id;
    up.name = "Launch v2";
    Kowloon__Workspace__Project *u = NULL;
    assert_int_equal(s_call(a, "UpdateProject", &up, &u, &st), 0);
    assert_string_equal(u->name, "Launch v2");
    assert_string_equal(u->description, "the first one");
    s_free(u);
    up.name = "";
    up.description = "renamed";
    assert_int_equal(s_call(a, "UpdateProject", &up, &u, &st), 0);
    assert_string_equal(u->name, "Launch v2");
    assert_string_equal(u->description, "renamed");
    s_expect_event("project", "updated", p->id, a);
    s_free(u);

    Kowloon__Workspace__ListProjectsRequest lr =
        KOWLOON__WORKSPACE__LIST_PROJECTS_REQUEST__INIT;
    Kowloon__Workspace__ListProjectsResponse *l = NULL;
    assert_int_equal(s_call(a, "ListProjects", &lr, &l, &st), 0);
    assert_int_equal(l->n_projects, 1);
    assert_string_equal(l->projects[0]->id, p->id);
    assert_string_equal(l->next_page_token, "");
    s_free(l);

    assert_int_equal(s_call(a, "DeleteProject", &ref, NULL, &st), 0);
    s_expect_event("project", "deleted", p->id, a);
    S_EXPECT_FAIL(a, "GetProject", &ref, KL_NOT_FOUND, "project %s not found",
                  p->id);
    S_EXPECT_FAIL(a, "DeleteProject", &ref, KL_NOT_FOUND,
                  "project %s not found", p->id);
    assert_int_equal(s_rows("projects", a), 0);
    s_free(p);
}

static void
test_tasks_crud(void **state)
{
    char a[37];
    ws_uuid(a);
    Kowloon__Workspace__Project *p = s_project(a, "Tasks", NULL);
    Kowloon__Workspace__CreateTaskRequest cr =
        KOWLOON__WORKSPACE__CREATE_TASK_REQUEST__INIT;
    cr.project_id = p->id;
    cr.title = "write docs";
    cr.notes = "in docs/";
    Kowloon__Workspace__Task *t = NULL;
    kl_status_t st;
    assert_int_equal(s_call(a, "CreateTask", &cr, &t, &st), 0);
    assert_string_equal(t->project_id, p->id);
    assert_string_equal(t->title, "write docs");
    assert_string_equal(t->notes, "in docs/");
    assert_false(t->done);
    s_assert_time(t->created_at);
    s_expect_event("task", "created", t->id, a);

    Kowloon__Workspace__TaskRef ref = KOWLOON__WORKSPACE__TASK_REF__INIT;
    ref.project_id = p->id;
    ref.id = t->id;
    Kowloon__Workspace__Task *g = NULL;
    assert_int_equal(s_call(a, "GetTask", &ref, &g, &st), 0);
    assert_string_equal(g->title, "write docs");
    s_free(g);

    /* done changes only when given; false is a value, not "unset". */
    s_set_done(a, p->id, t->id, true);
    Kowloon__Workspace__UpdateTaskRequest ur =
        KOWLOON__WORKSPACE__UPDATE_TASK_REQUEST__INIT;
    ur.project_id = p->id;
    ur.id = t->id;
    ur.title = "write the docs";
    Kowloon__Workspace__Task *u = NULL;
    assert_int_equal(s_call(a, "UpdateTask", &ur, &u, &st), 0);
    assert_string_equal(u->title, "write the docs");
    assert_string_equal(u->notes, "in docs/");
    assert_true(u->done);
    s_free(u);
    s_set_done(a, p->id, t->id, false);

    Kowloon__Workspace__Task *t2 = s_task(a, p->id, "second");
    Kowloon__Workspace__ListTasksRequest lr =
        KOWLOON__WORKSPACE__LIST_TASKS_REQUEST__INIT;
    lr.project_id = p->id;
    Kowloon__Workspace__ListTasksResponse *l = NULL;
    assert_int_equal(s_call(a, "ListTasks", &lr, &l, &st), 0);
    assert_int_equal(l->n_tasks, 2);
    assert_string_equal(l->tasks[0]->id, t->id);
    assert_string_equal(l->tasks[1]->id, t2->id);
    s_free(l);

    assert_int_equal(s_call(a, "DeleteTask", &ref, NULL, &st), 0);
    s_expect_event("task", "deleted", t->id, a);
    S_EXPECT_FAIL(a, "GetTask", &ref, KL_NOT_FOUND, "task %s not found", t->id);
    S_EXPECT_FAIL(a, "DeleteTask", &ref, KL_NOT_FOUND, "task %s not found",
                  t->id);

    /* Deleting the project takes its tasks with it. */
    Kowloon__Workspace__ProjectRef pr = KOWLOON__WORKSPACE__PROJECT_REF__INIT;
    pr.id = p->id;
    assert_int_equal(s_call(a, "DeleteProject", &pr, NULL, &st), 0);
    assert_int_equal(s_rows("tasks", a), 0);
    S_EXPECT_FAIL(a, "ListTasks", &lr, KL_NOT_FOUND, "project %s not found",
                  p->id);
    s_free(t2);
    s_free(t);
    s_free(p);
}

static void
test_validation(void **state)
{
    char a[37];
    ws_uuid(a);
    Kowloon__Workspace__CreateProjectRequest cp =
        KOWLOON__WORKSPACE__CREATE_PROJECT_REQUEST__INIT;
    S_EXPECT_FAIL(a, "CreateProject", &cp, KL_INVALID_ARGUMENT,
                  "name is required");
    char long_name[202];
    memset(long_name, 'n', 201);
    long_name[201] = '\0';
    cp.name = long_name;
    S_EXPECT_FAIL(a, "CreateProject", &cp, KL_INVALID_ARGUMENT,
                  "name must be at most 200 characters, got 201");
    long_name[200] = '\0';
    Kowloon__Workspace__Project *p = s_project(a, long_name, NULL);
    /* 200 characters of 3 bytes each are fine: characters, not bytes. */
    char wide[601];
    for (int i = 0; i < 200; i++)
        memcpy(wide + 3 * i, "\xe4\xb9\x9d", 3); /* 九 */
    wide[600] = '\0';
    Kowloon__Workspace__Project *p2 = s_project(a, wide, NULL);
    assert_string_equal(p2->name, wide);
    cp.name = "\xc3\x28";
    S_EXPECT_FAIL(a, "CreateProject", &cp, KL_INVALID_ARGUMENT,
                  "name must be valid UTF-8");
    /* No project was counted for the refused ones. */
    assert_int_equal(s_rows("projects", a), 2);

    Kowloon__Workspace__ProjectRef ref = KOWLOON__WORKSPACE__PROJECT_REF__INIT;
    S_EXPECT_FAIL(a, "GetProject", &ref, KL_INVALID_ARGUMENT, "id is required");
    ref.id = "not-a-uuid";
    S_EXPECT_FAIL(a, "GetProject", &ref, KL_INVALID_ARGUMENT,
                  "id \"not-a-uuid\" is not a UUID");
    S_EXPECT_FAIL(a, "DeleteProject", &ref, KL_INVALID_ARGUMENT,
                  "id \"not-a-uuid\" is not a UUID");

    Kowloon__Workspace__UpdateProjectRequest up =
        KOWLOON__WORKSPACE__UPDATE_PROJECT_REQUEST__INIT;
    up.id = p->id;
    S_EXPECT_FAIL(a, "UpdateProject", &up, KL_INVALID_ARGUMENT,
                  "nothing to update: set name or description");
    memset(long_name, 'n', 201);
    up.name = long_name;
    S_EXPECT_FAIL(a, "UpdateProject", &up, KL_INVALID_ARGUMENT,
                  "name must be at most 200 characters, got 201");

    Kowloon__Workspace__CreateTaskRequest ct =
        KOWLOON__WORKSPACE__CREATE_TASK_REQUEST__INIT;
    S_EXPECT_FAIL(a, "CreateTask", &ct, KL_INVALID_ARGUMENT,
                  "project_id is required");
    ct.project_id = p->id;
    S_EXPECT_FAIL(a, "CreateTask", &ct, KL_INVALID_ARGUMENT,
                  "title is required");
    char long_title[502];
    memset(long_title, 't', 501);
    long_title[501] = '\0';
    ct.title = long_title;
    S_EXPECT_FAIL(a, "CreateTask", &ct, KL_INVALID_ARGUMENT,
                  "title must be at most 500 characters, got 501");
    long_title[500] = '\0';
    Kowloon__Workspace__Task *t = s_task(a, p->id, long_title);
    char missing[37];
    ws_uuid(missing);
    ct.project_id = missing;
    S_EXPECT_FAIL(a, "CreateTask", &ct, KL_NOT_FOUND, "project %s not found",
                  missing);

    Kowloon__Workspace__UpdateTaskRequest ut =
        KOWLOON__WORKSPACE__UPDATE_TASK_REQUEST__INIT;
    ut.project_id = p->id;
    ut.id = t->id;
    S_EXPECT_FAIL(a, "UpdateTask", &ut, KL_INVALID_ARGUMENT,
                  "nothing to update: set title, notes or done");
    ut.id = "x";
    S_EXPECT_FAIL(a, "UpdateTask", &ut, KL_INVALID_ARGUMENT,
                  "id \"x\" is not a UUID");
    Kowloon__Workspace__TaskRef tr = KOWLOON__WORKSPACE__TASK_REF__INIT;
    tr.project_id = p->id;
    S_EXPECT_FAIL(a, "GetTask", &tr, KL_INVALID_ARGUMENT, "id is required");
    tr.id = missing;
    S_EXPECT_FAIL(a, "GetTask", &tr, KL_NOT_FOUND, "task %s not found",
                  missing);

    Kowloon__Workspace__ListProjectsRequest lp =
        KOWLOON__WORKSPACE__LIST_PROJECTS_REQUEST__INIT;
    lp.page_size = 501;
    S_EXPECT_FAIL(a, "ListProjects", &lp, KL_INVALID_ARGUMENT,
                  "page_size must be 1 to 500, got 501");
    lp.page_size = -1;
    S_EXPECT_FAIL(a, "ListProjects", &lp, KL_INVALID_ARGUMENT,
                  "page_size must be 1 to 500, got -1");
    lp.page_size = 0;
    lp.page_token = "not a token";
    S_EXPECT_FAIL(a, "ListProjects", &lp, KL_INVALID_ARGUMENT,
                  "invalid page_token");
    lp.page_token = "MTIzOm5vdC1hLXV1aWQ"; /* "123:not-a-uuid" */
    S_EXPECT_FAIL(a, "ListProjects", &lp, KL_INVALID_ARGUMENT,
                  "invalid page_token");
    Kowloon__Workspace__ListTasksRequest lt =
        KOWLOON__WORKSPACE__LIST_TASKS_REQUEST__INIT;
    lt.project_id = p->id;
    lt.page_size = 1000;
    S_EXPECT_FAIL(a, "ListTasks", &lt, KL_INVALID_ARGUMENT,
                  "page_size must be 1 to 500, got 1000");
    Kowloon__Workspace__ExportRequest er =
        KOWLOON__WORKSPACE__EXPORT_REQUEST__INIT;
    er.page_size = 101;
    S_EXPECT_FAIL(a, "Export", &er, KL_INVALID_ARGUMENT,
                  "page_size must be 1 to 100, got 101");
    er.page_size = 0;
    er.page_token = "%%%";
    S_EXPECT_FAIL(a, "Export", &er, KL_INVALID_ARGUMENT, "invalid page_token");
    s_free(t);
    s_free(p2);
    s_free(p);
}

/* The tenant comes from the call context only. */
static void
test_call_context(void **state)
{
    Kowloon__Workspace__ListProjectsRequest lp =
        KOWLOON__WORKSPACE__LIST_PROJECTS_REQUEST__INIT;
    S_EXPECT_FAIL(NULL, "ListProjects", &lp, KL_UNAUTHENTICATED,
                  "no tenant in call context");
    S_EXPECT_FAIL("acme", "ListProjects", &lp, KL_UNAUTHENTICATED,
                  "tenant in call context is not a UUID");
    Kowloon__Workspace__CreateProjectRequest cp =
        KOWLOON__WORKSPACE__CREATE_PROJECT_REQUEST__INIT;
    cp.name = "x";
    S_EXPECT_FAIL(NULL, "CreateProject", &cp, KL_UNAUTHENTICATED,
                  "no tenant in call context");
    Kowloon__Workspace__ReportsRequest rr =
        KOWLOON__WORKSPACE__REPORTS_REQUEST__INIT;
    S_EXPECT_FAIL(NULL, "AdvancedReports", &rr, KL_UNAUTHENTICATED,
                  "no tenant in call context");
    /* No plan: a project cannot be counted, so it is not created. */
    char a[37];
    ws_uuid(a);
    kl_status_t st;
    int rc = s_call_on(&s_ws, a, "", "CreateProject", &cp, NULL, &st);
    assert_int_equal(rc, -KL_FAILED_PRECONDITION);
    assert_string_equal(st.message, "no plan in call context");
    assert_int_equal(s_rows("projects", a), 0);
}

/* Tenant B can neither read, list, update, delete nor add tasks to tenant
 * A's project, whatever ids it sends; and gets the same answers as for ids
 * that exist nowhere. */
static void
test_cross_tenant(void **state)
{
    char a[37], b[37];
    ws_uuid(a);
    ws_uuid(b);
    Kowloon__Workspace__Project *pa = s_project(a, "A's secret", "private");
    Kowloon__Workspace__Task *ta = s_task(a, pa->id, "A's task");
    Kowloon__Workspace__Project *pb = s_project(b, "B's own", NULL);
    kl_status_t st;

    Kowloon__Workspace__ProjectRef ref = KOWLOON__WORKSPACE__PROJECT_REF__INIT;
    ref.id = pa->id;
    S_EXPECT_FAIL(b, "GetProject", &ref, KL_NOT_FOUND, "project %s not found",
                  pa->id);
    S_EXPECT_FAIL(b, "DeleteProject", &ref, KL_NOT_FOUND,
                  "project %s not found", pa->id);
    Kowloon__Workspace__UpdateProjectRequest up =
        KOWLOON__WORKSPACE__UPDATE_PROJECT_REQUEST__INIT;
    up.id = pa->id;
    up.name = "taken over";
    S_EXPECT_FAIL(b, "UpdateProject", &up, KL_NOT_FOUND, "project %s not found",
                  pa->id);

    Kowloon__Workspace__CreateTaskRequest ct =
        KOWLOON__WORKSPACE__CREATE_TASK_REQUEST__INIT;
    ct.project_id = pa->id;
    ct.title = "injected";
    S_EXPECT_FAIL(b, "CreateTask", &ct, KL_NOT_FOUND, "project %s not found",
                  pa->id);
    Kowloon__Workspace__ListTasksRequest lt =
        KOWLOON__WORKSPACE__LIST_TASKS_REQUEST__INIT;
    lt.project_id = pa->id;
    S_EXPECT_FAIL(b, "ListTasks", &lt, KL_NOT_FOUND, "project %s not found",
                  pa->id);

    /* A's task through A's project id, and through B's own project. */
    Kowloon__Workspace__TaskRef tr = KOWLOON__WORKSPACE__TASK_REF__INIT;
    tr.project_id = pa->id;
    tr.id = ta->id;
    S_EXPECT_FAIL(b, "GetTask", &tr, KL_NOT_FOUND, "project %s not found",
                  pa->id);
    S_EXPECT_FAIL(b, "DeleteTask", &tr, KL_NOT_FOUND, "project %s not found",
                  pa->id);
    tr.project_id = pb->id;
    S_EXPECT_FAIL(b, "GetTask", &tr, KL_NOT_FOUND, "task %s not found", ta->id);
    S_EXPECT_FAIL(b, "DeleteTask", &tr, KL_NOT_FOUND, "task %s not found",
                  ta->id);
    Kowloon__Workspace__UpdateTaskRequest ut =
        KOWLOON__WORKSPACE__UPDATE_TASK_REQUEST__INIT;
    ut.project_id = pb->id;
    ut.id = ta->id;
    ut.title = "hijacked";
    S_EXPECT_FAIL(b, "UpdateTask", &ut, KL_NOT_FOUND, "task %s not found",
                  ta->id);
    ut.project_id = pa->id;
    S_EXPECT_FAIL(b, "UpdateTask", &ut, KL_NOT_FOUND, "project %s not found",
                  pa->id);

    /* The same answer as for a project that exists nowhere. */
    char nowhere[37];
    ws_uuid(nowhere);
    ref.id = nowhere;
    S_EXPECT_FAIL(b, "GetProject", &ref, KL_NOT_FOUND, "project %s not found",
                  nowhere);

    /* B's listings, export and reports hold B's project only. */
    Kowloon__Workspace__ListProjectsRequest lp =
        KOWLOON__WORKSPACE__LIST_PROJECTS_REQUEST__INIT;
    Kowloon__Workspace__ListProjectsResponse *l = NULL;
    assert_int_equal(s_call(b, "ListProjects", &lp, &l, &st), 0);
    assert_int_equal(l->n_projects, 1);
    assert_string_equal(l->projects[0]->id, pb->id);
    s_free(l);
    Kowloon__Workspace__ExportRequest er =
        KOWLOON__WORKSPACE__EXPORT_REQUEST__INIT;
    Kowloon__Workspace__ExportPage *e = NULL;
    assert_int_equal(s_call(b, "Export", &er, &e, &st), 0);
    assert_int_equal(e->n_projects, 1);
    assert_string_equal(e->projects[0]->project->id, pb->id);
    assert_int_equal(e->projects[0]->n_tasks, 0);
    s_free(e);
    Kowloon__Workspace__ReportsRequest rr =
        KOWLOON__WORKSPACE__REPORTS_REQUEST__INIT;
    Kowloon__Workspace__Reports *r = NULL;
    assert_int_equal(s_call(b, "AdvancedReports", &rr, &r, &st), 0);
    assert_int_equal(r->n_projects, 1);
    assert_int_equal(r->tasks, 0);
    s_free(r);

    /* A's data is untouched. */
    Kowloon__Workspace__TaskRef mine = KOWLOON__WORKSPACE__TASK_REF__INIT;
    mine.project_id = pa->id;
    mine.id = ta->id;
    Kowloon__Workspace__Task *t = NULL;
    assert_int_equal(s_call(a, "GetTask", &mine, &t, &st), 0);
    assert_string_equal(t->title, "A's task");
    s_free(t);
    ref.id = pa->id;
    Kowloon__Workspace__Project *p = NULL;
    assert_int_equal(s_call(a, "GetProject", &ref, &p, &st), 0);
    assert_string_equal(p->name, "A's secret");
    s_free(p);
    assert_int_equal(s_rows("tasks", a), 1);
    assert_int_equal(s_rows("tasks", b), 0);
    s_free(pb);
    s_free(ta);
    s_free(pa);
}

/* --- tests: the project limit ------------------------------------------- */

typedef struct {
    const char *tenant;
    int rc;
    char message[KL_STATUS_MESSAGE_MAX];
} s_create_job_t;

static void *
s_create_job(void *arg)
{
    s_create_job_t *job = arg;
    Kowloon__Workspace__CreateProjectRequest req =
        KOWLOON__WORKSPACE__CREATE_PROJECT_REQUEST__INIT;
    req.name = "racing";
    kl_status_t st;
    job->rc = s_call_on(&s_ws, job->tenant, S_THREE, "CreateProject", &req,
                        NULL, &st);
    snprintf(job->message, sizeof job->message, "%s", st.message);
    return NULL;
}

/* 8 concurrent creates under max_projects=3: exactly 3 projects. */
static void
test_project_limit_concurrent(void **state)
{
    char c[37];
    ws_uuid(c);
    s_create_job_t jobs[8];
    pthread_t threads[8];
    for (int i = 0; i < 8; i++) {
        jobs[i] = (s_create_job_t){.tenant = c};
        assert_int_equal(
            pthread_create(&threads[i], NULL, s_create_job, &jobs[i]), 0);
    }
    int ok = 0, exhausted = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(threads[i], NULL);
        if (jobs[i].rc == 0) {
            ok++;
        } else if (jobs[i].rc == -KL_RESOURCE_EXHAUSTED) {
            assert_string_equal(jobs[i].message,
                                "project limit reached (max_projects=3)");
            exhausted++;
        } else {
            fail_msg("CreateProject: %s %s", kl_strerror(jobs[i].rc),
                     jobs[i].message);
        }
    }
    assert_int_equal(ok, 3);
    assert_int_equal(exhausted, 5);
    assert_int_equal(s_rows("projects", c), 3);

    /* Deleting one gives its place back. */
    Kowloon__Workspace__ListProjectsRequest lp =
        KOWLOON__WORKSPACE__LIST_PROJECTS_REQUEST__INIT;
    Kowloon__Workspace__ListProjectsResponse *l = NULL;
    kl_status_t st;
    assert_int_equal(s_call_on(&s_ws, c, S_THREE, "ListProjects", &lp, &l, &st),
                     0);
    assert_int_equal(l->n_projects, 3);
    Kowloon__Workspace__ProjectRef ref = KOWLOON__WORKSPACE__PROJECT_REF__INIT;
    ref.id = l->projects[0]->id;
    assert_int_equal(
        s_call_on(&s_ws, c, S_THREE, "DeleteProject", &ref, NULL, &st), 0);
    s_free(l);
    s_create_job_t again = {.tenant = c};
    s_create_job(&again);
    assert_int_equal(again.rc, 0);
    s_create_job(&again);
    assert_int_equal(again.rc, -KL_RESOURCE_EXHAUSTED);
    assert_string_equal(again.message,
                        "project limit reached (max_projects=3)");
    assert_int_equal(s_rows("projects", c), 3);

    /* The flags service's count agrees. */
    Kowloon__Flags__UsageRequest ur = KOWLOON__FLAGS__USAGE_REQUEST__INIT;
    ur.tenant_id = c;
    ur.plan = S_THREE;
    kl_call_opts_t opts = {.timeout_ms = S_TIMEOUT_MS};
    Kowloon__Flags__UsageResponse *u = NULL;
    assert_int_equal(kl_rpc_client_call(s_flags.client, "GetUsage", &ur.base,
                                        &opts, (ProtobufCMessage **)&u, &st),
                     0);
    bool seen = false;
    for (size_t i = 0; i < u->n_usage; i++)
        if (strcmp(u->usage[i]->limit, "max_projects") == 0) {
            assert_int_equal(u->usage[i]->used, 3);
            assert_int_equal(u->usage[i]->max, 3);
            seen = true;
        }
    assert_true(seen);
    s_free(u);
}

/* max_projects used by tenant on plan, as the flags service counts it. */
static int64_t
s_used(const char *tenant, const char *plan)
{
    Kowloon__Flags__UsageRequest ur = KOWLOON__FLAGS__USAGE_REQUEST__INIT;
    ur.tenant_id = (char *)tenant;
    ur.plan = (char *)plan;
    kl_call_opts_t opts = {.timeout_ms = S_TIMEOUT_MS};
    Kowloon__Flags__UsageResponse *u = NULL;
    kl_status_t st;
    if (kl_rpc_client_call(s_flags.client, "GetUsage", &ur.base, &opts,
                           (ProtobufCMessage **)&u, &st) != 0)
        fail_msg("GetUsage: %s", st.message);
    int64_t used = -1;
    for (size_t i = 0; i < u->n_usage; i++)
        if (strcmp(u->usage[i]->limit, "max_projects") == 0)
            used = u->usage[i]->used;
    s_free(u);
    return used;
}

/* A create counted by the flags service whose insert then fails gives its
 * place back. */
static void
test_failed_insert_releases(void **state)
{
    char c[37];
    ws_uuid(c);
    /* The owner makes one name fail in the database, after validation. */
    ws_owner_exec(c, "ALTER TABLE projects ADD CONSTRAINT"
                     " test_no_boom CHECK (name <> 'boom')");
    s_create_job_t job = {.tenant = c};
    s_create_job(&job);
    assert_int_equal(job.rc, 0);
    assert_int_equal(s_used(c, S_THREE), 1);
    Kowloon__Workspace__CreateProjectRequest req =
        KOWLOON__WORKSPACE__CREATE_PROJECT_REQUEST__INIT;
    req.name = "boom";
    kl_status_t st;
    int rc = s_call_on(&s_ws, c, S_THREE, "CreateProject", &req, NULL, &st);
    ws_owner_exec(c, "ALTER TABLE projects DROP CONSTRAINT test_no_boom");
    assert_int_equal(rc, -KL_INVALID_ARGUMENT);
    assert_int_equal(s_used(c, S_THREE), 1);
    assert_int_equal(s_rows("projects", c), 1);
    s_create_job(&job);
    assert_int_equal(job.rc, 0);
    s_create_job(&job);
    assert_int_equal(job.rc, 0);
    s_create_job(&job);
    assert_int_equal(job.rc, -KL_RESOURCE_EXHAUSTED);
    assert_int_equal(s_used(c, S_THREE), 3);
}

/* Flags unreachable: UNAVAILABLE, and nothing created uncounted. */
static void
test_flags_unavailable(void **state)
{
    /* A port that was just free: nobody answers there. */
    const char *dead = "tcp://127.0.0.1:1";
    kl_rpc_client_opts_t copts = {.endpoints = &dead, .n_endpoints = 1};
    kl_status_t st;
    kl_rpc_client_t *flags = kl_rpc_client_new(
        &kowloon__flags__flags_service__descriptor, &copts, &st);
    assert_non_null(flags);
    s_instance_t other;
    s_start(&other, flags);
    char a[37];
    ws_uuid(a);
    Kowloon__Workspace__CreateProjectRequest req =
        KOWLOON__WORKSPACE__CREATE_PROJECT_REQUEST__INIT;
    req.name = "uncounted";
    int rc = s_call_on(&other, a, S_BIG, "CreateProject", &req, NULL, &st);
    assert_int_equal(rc, -KL_UNAVAILABLE);
    assert_true(strncmp(st.message, "flags service unavailable: ",
                        strlen("flags service unavailable: ")) == 0);
    assert_int_equal(s_rows("projects", a), 0);
    /* Reads need no flags service. */
    Kowloon__Workspace__ListProjectsRequest lp =
        KOWLOON__WORKSPACE__LIST_PROJECTS_REQUEST__INIT;
    assert_int_equal(
        s_call_on(&other, a, S_BIG, "ListProjects", &lp, NULL, &st), 0);
    s_stop(&other);
    kl_rpc_client_destroy(&flags);
}

/* --- tests: pages, export, reports -------------------------------------- */

static void
test_list_pages(void **state)
{
    char a[37];
    ws_uuid(a);
    char *ids[5];
    for (int i = 0; i < 5; i++) {
        char name[16];
        snprintf(name, sizeof name, "p%d", i);
        Kowloon__Workspace__Project *p = s_project(a, name, NULL);
        ids[i] = kl_strdup(p->id);
        s_free(p);
    }
    Kowloon__Workspace__ListProjectsRequest lp =
        KOWLOON__WORKSPACE__LIST_PROJECTS_REQUEST__INIT;
    lp.page_size = 2;
    char token[256] = "";
    int seen = 0;
    kl_status_t st;
    for (int page = 0; page < 3; page++) {
        lp.page_token = token;
        Kowloon__Workspace__ListProjectsResponse *l = NULL;
        assert_int_equal(s_call(a, "ListProjects", &lp, &l, &st), 0);
        assert_int_equal(l->n_projects, page < 2 ? 2 : 1);
        for (size_t i = 0; i < l->n_projects; i++)
            assert_string_equal(l->projects[i]->id, ids[seen++]);
        assert_int_equal(l->next_page_token[0] == '\0', page == 2);
        snprintf(token, sizeof token, "%s", l->next_page_token);
        s_free(l);
    }
    assert_int_equal(seen, 5);

    /* Tasks page the same way. */
    char *tids[3];
    for (int i = 0; i < 3; i++) {
        Kowloon__Workspace__Task *t = s_task(a, ids[0], "t");
        tids[i] = kl_strdup(t->id);
        s_free(t);
    }
    Kowloon__Workspace__ListTasksRequest lt =
        KOWLOON__WORKSPACE__LIST_TASKS_REQUEST__INIT;
    lt.project_id = ids[0];
    lt.page_size = 2;
    Kowloon__Workspace__ListTasksResponse *l = NULL;
    assert_int_equal(s_call(a, "ListTasks", &lt, &l, &st), 0);
    assert_int_equal(l->n_tasks, 2);
    assert_string_equal(l->tasks[0]->id, tids[0]);
    assert_string_equal(l->tasks[1]->id, tids[1]);
    assert_true(l->next_page_token[0] != '\0');
    lt.page_token = kl_strdup(l->next_page_token);
    s_free(l);
    assert_int_equal(s_call(a, "ListTasks", &lt, &l, &st), 0);
    assert_int_equal(l->n_tasks, 1);
    assert_string_equal(l->tasks[0]->id, tids[2]);
    assert_string_equal(l->next_page_token, "");
    s_free(l);
    free(lt.page_token);
    for (int i = 0; i < 3; i++)
        free(tids[i]);
    for (int i = 0; i < 5; i++)
        free(ids[i]);
}

static void
test_export_pages(void **state)
{
    char a[37];
    ws_uuid(a);
    /* Project i has i tasks. */
    char *ids[5];
    for (int i = 0; i < 5; i++) {
        char name[16];
        snprintf(name, sizeof name, "export%d", i);
        Kowloon__Workspace__Project *p = s_project(a, name, "d");
        ids[i] = kl_strdup(p->id);
        s_free(p);
        for (int j = 0; j < i; j++) {
            char title[32];
            snprintf(title, sizeof title, "t%d.%d", i, j);
            s_free(s_task(a, ids[i], title));
        }
    }
    Kowloon__Workspace__ExportRequest er =
        KOWLOON__WORKSPACE__EXPORT_REQUEST__INIT;
    er.page_size = 2;
    char token[256] = "";
    int seen = 0, pages = 0;
    kl_status_t st;
    do {
        er.page_token = token;
        Kowloon__Workspace__ExportPage *e = NULL;
        assert_int_equal(s_call(a, "Export", &er, &e, &st), 0);
        pages++;
        for (size_t i = 0; i < e->n_projects; i++, seen++) {
            const Kowloon__Workspace__ProjectExport *pe = e->projects[i];
            assert_string_equal(pe->project->id, ids[seen]);
            assert_string_equal(pe->project->description, "d");
            assert_int_equal(pe->n_tasks, seen);
            for (size_t j = 0; j < pe->n_tasks; j++) {
                char title[64];
                snprintf(title, sizeof title, "t%d.%zu", seen, j);
                assert_string_equal(pe->tasks[j]->title, title);
                assert_string_equal(pe->tasks[j]->project_id, ids[seen]);
            }
        }
        snprintf(token, sizeof token, "%s", e->next_page_token);
        s_free(e);
    } while (token[0] && pages < 10);
    assert_int_equal(pages, 3);
    assert_int_equal(seen, 5);

    /* Default page size: all five at once. */
    er.page_size = 0;
    er.page_token = "";
    Kowloon__Workspace__ExportPage *e = NULL;
    assert_int_equal(s_call(a, "Export", &er, &e, &st), 0);
    assert_int_equal(e->n_projects, 5);
    assert_string_equal(e->next_page_token, "");
    s_free(e);
    for (int i = 0; i < 5; i++)
        free(ids[i]);
}

static void
test_reports(void **state)
{
    char a[37];
    ws_uuid(a);
    Kowloon__Workspace__ReportsRequest rr =
        KOWLOON__WORKSPACE__REPORTS_REQUEST__INIT;
    Kowloon__Workspace__Reports *r = NULL;
    kl_status_t st;
    assert_int_equal(s_call(a, "AdvancedReports", &rr, &r, &st), 0);
    assert_int_equal(r->n_projects, 0);
    assert_int_equal(r->tasks, 0);
    assert_true(r->done_ratio == 0.0);
    s_free(r);

    Kowloon__Workspace__Project *p1 = s_project(a, "three tasks", NULL);
    Kowloon__Workspace__Project *p2 = s_project(a, "one task", NULL);
    Kowloon__Workspace__Project *p3 = s_project(a, "no tasks", NULL);
    for (int i = 0; i < 3; i++) {
        Kowloon__Workspace__Task *t = s_task(a, p1->id, "t");
        if (i < 2)
            s_set_done(a, p1->id, t->id, true);
        s_free(t);
    }
    s_free(s_task(a, p2->id, "t"));
    assert_int_equal(s_call(a, "AdvancedReports", &rr, &r, &st), 0);
    assert_int_equal(r->n_projects, 3);
    assert_string_equal(r->projects[0]->project_id, p1->id);
    assert_string_equal(r->projects[0]->name, "three tasks");
    assert_int_equal(r->projects[0]->tasks, 3);
    assert_int_equal(r->projects[0]->done, 2);
    assert_true(r->projects[0]->done_ratio == 2.0 / 3.0);
    assert_string_equal(r->projects[1]->project_id, p2->id);
    assert_int_equal(r->projects[1]->tasks, 1);
    assert_int_equal(r->projects[1]->done, 0);
    assert_true(r->projects[1]->done_ratio == 0.0);
    assert_string_equal(r->projects[2]->project_id, p3->id);
    assert_int_equal(r->projects[2]->tasks, 0);
    assert_true(r->projects[2]->done_ratio == 0.0);
    assert_int_equal(r->tasks, 4);
    assert_int_equal(r->done, 2);
    assert_true(r->done_ratio == 0.5);
    s_free(r);
    s_free(p3);
    s_free(p2);
    s_free(p1);
}

/* --- tests: the binary --------------------------------------------------- */

/* Runs kowloon-workspace with database_url as KOWLOON_DATABASE_URL until it
 * exits or, when it serves, until SIGTERM after the log shows serving.
 * Returns its exit status; *log gets its stderr (caller frees). */
static int
s_run_binary(const char *database_url, char **log)
{
    char path[] = "/tmp/kltest_workspace_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    char *vars[] = {
        kl_asprintf("KOWLOON_DATABASE_URL=%s", database_url),
        kl_asprintf("KOWLOON_DATA_OWNER_URL=%s", ws.owner_url),
        kl_asprintf("KOWLOON_REDIS_URL="),
        kl_asprintf("KOWLOON_FLAGS_ENDPOINTS=%s",
                    kl_rpc_server_endpoint(s_flags.server)),
        kl_asprintf("KOWLOON_WORKSPACE_BIND=tcp://127.0.0.1:*"),
        kl_asprintf("KOWLOON_WORKERS=1"),
    };
    size_t n_vars = sizeof vars / sizeof vars[0], n_env = 0;
    while (environ[n_env])
        n_env++;
    /* Built before fork: the child only calls async-signal-safe
     * functions. */
    char **envp = kl_calloc(n_env + n_vars + 1, sizeof *envp);
    size_t k = 0;
    for (size_t i = 0; i < n_env; i++)
        if (strncmp(environ[i], "KOWLOON_", 8) != 0)
            envp[k++] = environ[i];
    for (size_t i = 0; i < n_vars; i++)
        envp[k++] = vars[i];
    char *argv[] = {WS_BINARY, NULL};
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fd, 2);
        execve(WS_BINARY, argv, envp);
        _exit(127);
    }
    close(fd);
    int status = 0;
    int64_t until = kl_now_mono_ms() + 60000;
    bool termed = false;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        FILE *f = fopen(path, "r");
        char line[4096];
        bool serving = false;
        while (f && fgets(line, sizeof line, f))
            if (strstr(line, "serving kowloon.workspace.WorkspaceService"))
                serving = true;
        if (f)
            fclose(f);
        if ((serving || kl_now_mono_ms() > until) && !termed) {
            kill(pid, SIGTERM);
            termed = true;
        }
        usleep(50 * 1000);
    }
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t cap = 65536;
    *log = kl_calloc(1, cap);
    size_t got = fread(*log, 1, cap - 1, f);
    (*log)[got] = '\0';
    fclose(f);
    unlink(path);
    for (size_t i = 0; i < n_vars; i++)
        free(vars[i]);
    free(envp);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void
s_expect_in(const char *log, const char *want)
{
    if (!strstr(log, want))
        fail_msg("log lacks \"%s\":\n%s", want, log);
}

static void
test_binary_refuses_unsafe_roles(void **state)
{
    char *log = NULL;
    /* DATABASE_URL pointing at the owner role. */
    int rc = s_run_binary(ws.owner_url, &log);
    if (rc != 2)
        fail_msg("exit %d, want 2:\n%s", rc, log);
    s_expect_in(log, "refusing to run: application role owns schema "
                     "workspace");
    free(log);
    /* ...and at a superuser. */
    rc = s_run_binary(ws.super_url, &log);
    if (rc != 2)
        fail_msg("exit %d, want 2:\n%s", rc, log);
    s_expect_in(log, "is a superuser: row-level security would not apply "
                     "to it");
    free(log);
    /* The application role: it serves, and stops cleanly on SIGTERM. */
    rc = s_run_binary(ws.app_url, &log);
    if (rc != 0)
        fail_msg("exit %d, want 0:\n%s", rc, log);
    s_expect_in(log, "serving kowloon.workspace.WorkspaceService on "
                     "tcp://127.0.0.1:");
    free(log);
}

/* The catalog check in the tenant's own schema (and database): the
 * application role owns nothing there, has no BYPASSRLS, and every table
 * it can use has row-level security enabled and forced. */
static void
test_catalog_in_model(void **state)
{
    char a[37];
    ws_uuid(a);
    Kowloon__Workspace__Project *p = s_project(a, "catalog", "");
    s_free(p);
    kl_tenant_place_t place;
    kl_status_t st;
    assert_int_equal(ws_placement(NULL, a, &place, &st), 0);
    assert_int_equal(place.isolation, ws_model);
    char *url = place.isolation == KL_ISOLATION_DATABASE
                    ? kl_tenant_db_conninfo(ws.app_url, place.db_name, &st)
                    : kl_strdup(ws.app_url);
    kl_pg_t *pg = kl_pg_new(url);
    if (workspace_store_check(pg, place.schema, &st) < 0)
        fail_msg("check %s: %s", place.schema, st.message);
    /* The owner of the tenant's schema is the owner role, not the app. */
    PGresult *r = kl_pg_query(
        pg, NULL,
        "SELECT count(*) FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind = 'r'"
        " AND (pg_catalog.pg_has_role(current_user, c.relowner, 'MEMBER')"
        "  OR NOT (c.relrowsecurity AND c.relforcerowsecurity))"
        " AND pg_catalog.has_table_privilege(c.oid, 'SELECT')",
        1, (const char *const[]){place.schema}, &st);
    assert_non_null(r);
    assert_string_equal(PQgetvalue(r, 0, 0), "0");
    PQclear(r);
    kl_pg_destroy(&pg);
    free(url);
}

int
main(int argc, char **argv)
{
    ws_fixture_model(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_projects_crud),
        cmocka_unit_test(test_tasks_crud),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_call_context),
        cmocka_unit_test(test_cross_tenant),
        cmocka_unit_test(test_project_limit_concurrent),
        cmocka_unit_test(test_failed_insert_releases),
        cmocka_unit_test(test_flags_unavailable),
        cmocka_unit_test(test_list_pages),
        cmocka_unit_test(test_export_pages),
        cmocka_unit_test(test_reports),
        cmocka_unit_test(test_binary_refuses_unsafe_roles),
        cmocka_unit_test(test_catalog_in_model),
    };
    return cmocka_run_group_tests(tests, s_group_setup, s_group_teardown);
}
