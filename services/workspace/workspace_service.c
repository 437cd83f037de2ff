/*
 * workspace_service: the handlers of kowloon.workspace.WorkspaceService.
 * Each takes the tenant from the call context, validates its request,
 * opens a tenant-scoped transaction on the worker's connection, calls
 * workspace_store, commits, publishes a change event, and answers. Reads
 * of a single statement (GetProject, ListProjects, GetTask,
 * AdvancedReports) skip the open transaction: each statement is one
 * tenant-scoped read of one round trip (kl_tenant_read).
 */
#include "workspace_service.h"

#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_pg.h"
#include "kl_redis.h"
#include "kl_service.h"
#include "kl_tenant_db.h"
#include "kl_valid.h"
#include "kowloon/flags.pb-c.h"
#include "kowloon/workspace.pb-c.h"
#include "workspace_placement.h"
#include "workspace_store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_PAGE_DEFAULT 50
#define S_PAGE_MAX 500
#define S_EXPORT_PAGE_DEFAULT 20
#define S_EXPORT_PAGE_MAX 100
#define S_TEXT_MAX 10000 /* description and notes, characters */
#define S_FLAGS_TIMEOUT_MS 3000
#define S_LIMIT "max_projects"

struct workspace_service {
    /* First member: a handler's service pointer is this object. */
    Kowloon__Workspace__WorkspaceService_Service base;
    char *database_url;     /* owned; application role */
    char *owner_url;        /* owned; owner role */
    char *redis_url;        /* owned; "" disables events */
    char *events_channel;   /* owned */
    kl_rpc_client_t *flags; /* borrowed */
    int64_t flags_timeout_ms;
    char *shared_schema; /* owned; the row model's schema */
    char **db_servers;   /* owned "name=url" entries */
    size_t n_db_servers;
    size_t max_open_dbs;              /* tenant databases per worker */
    workspace_placement_t *placement; /* owned, shared by the workers */
    kl_events_t *events; /* tenant changes drop cached placements; NULL
                            without Redis */
};

/* What each worker thread owns. */
typedef struct {
    workspace_service_t *self; /* the service, borrowed */
    kl_tenant_db_t *tdb;       /* application role: main and tenant databases */
    kl_pg_t *pg;       /* the open tenant-scoped transaction's, borrowed */
    kl_redis_t *redis; /* event channel (may be disabled) */
} s_worker_t;

/* --- validation ------------------------------------------------------- */

/* --- page tokens (kl_valid): the last row's created_at and id -------- */

/* Empty token: first page. id receives the key's id (page->after_id). */
static int
s_token_decode(const char *token, workspace_page_t *page, char id[37],
               kl_status_t *status)
{
    if (kl_valid_empty(token))
        return 0;
    int64_t usec = 0;
    int rc = kl_valid_page_token_decode(token, &usec, id, status);
    if (rc < 0)
        return rc;
    page->after = true;
    page->after_usec = usec;
    page->after_id = id;
    return 0;
}

/* --- calls ------------------------------------------------------------ */

static s_worker_t *
s_worker(void *closure_data)
{
    return kl_call_worker(kl_call_from(closure_data));
}

static const kl_call_ctx_t *
s_ctx(void *closure_data)
{
    return kl_call_ctx(kl_call_from(closure_data));
}

/* The caller's tenant: only ever from the call context, never from the
 * request. */
static int
s_tenant(void *closure_data, const char **tenant_id, kl_status_t *status)
{
    const char *t = s_ctx(closure_data)->tenant_id;
    if (kl_valid_empty(t))
        return kl_status_set(status, KL_UNAUTHENTICATED,
                             "no tenant in call context");
    if (!kl_valid_uuid(t))
        return kl_status_set(status, KL_UNAUTHENTICATED,
                             "tenant in call context is not a UUID");
    *tenant_id = t;
    return 0;
}

/* Tenant check, the tenant's placement, then the tenant-scoped
 * transaction in whichever model the tenant lives. flags:
 * KL_TENANT_TX_READ_ONLY for calls that only read (they go on while the
 * tenant is being moved; writes answer UNAVAILABLE, retryable). */
static int
s_begin_ex(void *closure_data, s_worker_t **w, unsigned flags,
           kl_status_t *status)
{
    const char *tenant_id = NULL;
    int rc = s_tenant(closure_data, &tenant_id, status);
    if (rc < 0)
        return rc;
    *w = s_worker(closure_data);
    workspace_service_t *self = (*w)->self;
    /* A placement that went stale (a move finished) is refused by the
     * transaction itself; ask again once. */
    for (int attempt = 0; attempt < 2; attempt++) {
        kl_tenant_place_t place;
        rc =
            workspace_placement_get(self->placement, tenant_id, &place, status);
        if (rc < 0)
            return rc;
        (*w)->pg = kl_tenant_tx_begin_ex((*w)->tdb, &place, flags, status);
        if ((*w)->pg)
            return 0;
        rc = -(int)status->code;
        if (strcmp(status->message, "tenant placement changed, retry") != 0)
            break;
        workspace_placement_drop(self->placement, tenant_id);
    }
    return rc;
}

/* For a read of one statement: the caller's tenant and its placement
 * (into *place, which *db points at), for kl_tenant_read on the worker's
 * connections. */
static int
s_read_place(void *closure_data, kl_tenant_place_t *place, workspace_db_t *db,
             kl_status_t *status)
{
    const char *tenant_id = NULL;
    int rc = s_tenant(closure_data, &tenant_id, status);
    if (rc < 0)
        return rc;
    s_worker_t *w = s_worker(closure_data);
    rc = workspace_placement_get(w->self->placement, tenant_id, place, status);
    if (rc < 0)
        return rc;
    *db = (workspace_db_t){.tdb = w->tdb, .place = place};
    return 0;
}

/* After a read through s_read_place: whether to read once more because the
 * database refused a stale placement, as s_begin_ex asks again (the cached
 * placement is dropped first). */
static bool
s_read_again(void *closure_data, int rc, const kl_status_t *status,
             int *attempt)
{
    if (rc == 0 || (*attempt)++ > 0 ||
        strcmp(status->message, "tenant placement changed, retry") != 0)
        return false;
    workspace_placement_drop(s_worker(closure_data)->self->placement,
                             s_ctx(closure_data)->tenant_id);
    return true;
}

static int
s_begin(void *closure_data, s_worker_t **w, kl_status_t *status)
{
    return s_begin_ex(closure_data, w, 0, status);
}

static int
s_begin_read(void *closure_data, s_worker_t **w, kl_status_t *status)
{
    return s_begin_ex(closure_data, w, KL_TENANT_TX_READ_ONLY, status);
}

/* Ends the transaction: commits when rc is 0 (returning the commit's
 * result), otherwise rolls back and returns rc unchanged. */
static int
s_end(s_worker_t *w, int rc, kl_status_t *status)
{
    kl_pg_t *pg = w->pg;
    w->pg = NULL;
    if (rc < 0) {
        kl_tenant_tx_rollback(w->tdb, pg);
        return rc;
    }
    return kl_tenant_tx_commit(w->tdb, pg, status);
}

/* Publishes a change after commit. Events are hints: a failure is logged
 * and the call still succeeds. */
static void
s_publish(const workspace_service_t *self, void *closure_data, const char *kind,
          const char *id, const char *action)
{
    if (!self->redis_url[0])
        return;
    Kowloon__Events__ChangeEvent ev = KOWLOON__EVENTS__CHANGE_EVENT__INIT;
    ev.kind = (char *)kind;
    ev.id = (char *)id;
    ev.tenant_id = (char *)s_ctx(closure_data)->tenant_id;
    ev.action = (char *)action;
    kl_status_t st;
    if (kl_redis_publish_event(s_worker(closure_data)->redis,
                               self->events_channel, &ev, &st) < 0)
        KL_LOG(KL_WARN, "%s %s event for %s not published: %s, ignored", kind,
               action, id, st.message);
}

/* --- the project limit, counted by the flags service -------------------- */

/* Consume(tenant, plan, "max_projects", n) on the flags service. */
static int
s_consume(const workspace_service_t *self, const kl_call_ctx_t *ctx, int64_t n,
          kl_status_t *status)
{
    Kowloon__Flags__ConsumeRequest req = KOWLOON__FLAGS__CONSUME_REQUEST__INIT;
    req.tenant_id = (char *)ctx->tenant_id;
    req.plan = (char *)ctx->plan;
    req.limit = S_LIMIT;
    req.n = n;
    /* Not idempotent: a retry after a lost reply would count twice. */
    kl_call_opts_t opts = {.timeout_ms = self->flags_timeout_ms, .ctx = ctx};
    ProtobufCMessage *out = NULL;
    int rc = kl_rpc_client_call(self->flags, "Consume", &req.base, &opts, &out,
                                status);
    if (out)
        protobuf_c_message_free_unpacked(out, NULL);
    return rc;
}

/* The plan's max_projects for the message, from GetUsage; -1 unknown. */
static int64_t
s_max_projects(const workspace_service_t *self, const kl_call_ctx_t *ctx)
{
    Kowloon__Flags__UsageRequest req = KOWLOON__FLAGS__USAGE_REQUEST__INIT;
    req.tenant_id = (char *)ctx->tenant_id;
    req.plan = (char *)ctx->plan;
    kl_call_opts_t opts = {
        .timeout_ms = self->flags_timeout_ms, .idempotent = true, .ctx = ctx};
    ProtobufCMessage *out = NULL;
    kl_status_t st;
    int64_t max = -1;
    if (kl_rpc_client_call(self->flags, "GetUsage", &req.base, &opts, &out,
                           &st) == 0) {
        Kowloon__Flags__UsageResponse *u = (Kowloon__Flags__UsageResponse *)out;
        for (size_t i = 0; i < u->n_usage; i++)
            if (u->usage[i]->limit && strcmp(u->usage[i]->limit, S_LIMIT) == 0)
                max = u->usage[i]->max;
    }
    if (out)
        protobuf_c_message_free_unpacked(out, NULL);
    return max;
}

/* Counts one project before it is written. Flags unreachable: UNAVAILABLE
 * (a project is never created without being counted). */
static int
s_take_project(const workspace_service_t *self, const kl_call_ctx_t *ctx,
               kl_status_t *status)
{
    kl_status_t st;
    int rc = s_consume(self, ctx, 1, &st);
    if (rc == 0)
        return 0;
    if (rc == -KL_RESOURCE_EXHAUSTED) {
        int64_t max = s_max_projects(self, ctx);
        if (max >= 0)
            return kl_status_set(status, KL_RESOURCE_EXHAUSTED,
                                 "project limit reached (" S_LIMIT "=%lld)",
                                 (long long)max);
        return kl_status_set(status, KL_RESOURCE_EXHAUSTED,
                             "project limit reached (" S_LIMIT ")");
    }
    if (rc == -KL_UNAVAILABLE || rc == -KL_DEADLINE_EXCEEDED)
        return kl_status_set(status, KL_UNAVAILABLE,
                             "flags service unavailable: %s", st.message);
    return kl_status_set(status, KL_FAILED_PRECONDITION,
                         "cannot count " S_LIMIT ": %s: %s",
                         kl_code_name(st.code), st.message);
}

/* Gives one project back. A failure leaves the count one too high (never
 * too low): logged, not the caller's error. */
static void
s_release_project(const workspace_service_t *self, const kl_call_ctx_t *ctx)
{
    kl_status_t st;
    if (s_consume(self, ctx, -1, &st) < 0)
        KL_LOG(KL_ERROR,
               "releasing one " S_LIMIT " of tenant %s failed: %s: %s, the "
               "count stays one too high",
               ctx->tenant_id, kl_code_name(st.code), st.message);
}

/* --- messages --------------------------------------------------------- */

static void
s_project_msg(const workspace_project_t *row, Kowloon__Workspace__Project *p)
{
    kowloon__workspace__project__init(p);
    p->id = (char *)row->id;
    p->name = (char *)row->name;
    p->description = (char *)row->description;
    p->created_at = (char *)row->created_at;
    p->updated_at = (char *)row->updated_at;
}

static void
s_task_msg(const workspace_task_t *row, Kowloon__Workspace__Task *t)
{
    kowloon__workspace__task__init(t);
    t->id = (char *)row->id;
    t->project_id = (char *)row->project_id;
    t->title = (char *)row->title;
    t->done = row->done;
    t->notes = (char *)row->notes;
    t->created_at = (char *)row->created_at;
    t->updated_at = (char *)row->updated_at;
}

/* Answers a project call: the one row, or the failure. */
static void
s_answer_project(void *closure_data, const char *what, int rc,
                 const kl_status_t *st, workspace_rows_t *rows,
                 Kowloon__Workspace__Project_Closure closure)
{
    if (rc < 0) {
        kl_service_fail(closure_data, what, st);
        closure(NULL, closure_data);
    } else {
        Kowloon__Workspace__Project p;
        s_project_msg(&rows->projects[0], &p);
        closure(&p, closure_data);
    }
    workspace_store_rows_free(rows);
}

static void
s_answer_task(void *closure_data, const char *what, int rc,
              const kl_status_t *st, workspace_rows_t *rows,
              Kowloon__Workspace__Task_Closure closure)
{
    if (rc < 0) {
        kl_service_fail(closure_data, what, st);
        closure(NULL, closure_data);
    } else {
        Kowloon__Workspace__Task t;
        s_task_msg(&rows->tasks[0], &t);
        closure(&t, closure_data);
    }
    workspace_store_rows_free(rows);
}

static void
s_answer_deleted(void *closure_data, const char *what, int rc,
                 const kl_status_t *st,
                 Kowloon__Workspace__DeleteResponse_Closure closure)
{
    if (rc < 0) {
        kl_service_fail(closure_data, what, st);
        closure(NULL, closure_data);
        return;
    }
    Kowloon__Workspace__DeleteResponse out =
        KOWLOON__WORKSPACE__DELETE_RESPONSE__INIT;
    closure(&out, closure_data);
}

/* --- projects --------------------------------------------------------- */

static void
s_create_project(Kowloon__Workspace__WorkspaceService_Service *svc,
                 const Kowloon__Workspace__CreateProjectRequest *in,
                 Kowloon__Workspace__Project_Closure closure,
                 void *closure_data)
{
    workspace_service_t *self = (workspace_service_t *)svc;
    const kl_call_ctx_t *ctx = s_ctx(closure_data);
    s_worker_t *w = NULL;
    workspace_rows_t rows = {0};
    kl_status_t st;
    const char *tenant_id = NULL;

    int rc = s_tenant(closure_data, &tenant_id, &st);
    if (rc == 0 && kl_valid_empty(ctx->plan))
        rc = kl_status_set(&st, KL_FAILED_PRECONDITION,
                           "no plan in call context");
    if (rc == 0)
        rc = kl_valid_check_text("name", in->name, WORKSPACE_NAME_MAX, true,
                                 &st);
    if (rc == 0)
        rc = kl_valid_check_text("description", in->description, S_TEXT_MAX,
                                 false, &st);
    /* Counted first: of many concurrent creates only those the limit
     * allows get past this point. */
    if (rc == 0)
        rc = s_take_project(self, ctx, &st);
    if (rc < 0) {
        s_answer_project(closure_data, "CreateProject", rc, &st, &rows,
                         closure);
        return;
    }
    rc = s_begin(closure_data, &w, &st);
    if (rc == 0) {
        rc = workspace_store_project_create(w->pg, in->name, in->description,
                                            &rows, &st);
        rc = s_end(w, rc, &st);
    }
    if (rc < 0) {
        s_release_project(self, ctx);
    } else {
        KL_LOG(KL_INFO, "project %s created", rows.projects[0].id);
        s_publish(self, closure_data, "project", rows.projects[0].id,
                  "created");
    }
    s_answer_project(closure_data, "CreateProject", rc, &st, &rows, closure);
}

static void
s_get_project(Kowloon__Workspace__WorkspaceService_Service *svc,
              const Kowloon__Workspace__ProjectRef *in,
              Kowloon__Workspace__Project_Closure closure, void *closure_data)
{
    workspace_rows_t rows = {0};
    kl_tenant_place_t place;
    workspace_db_t db;
    kl_status_t st;
    int rc = s_tenant(closure_data, &(const char *){NULL}, &st);
    if (rc == 0)
        rc = kl_valid_check_uuid("id", in->id, &st);
    for (int attempt = 0; rc == 0;) {
        rc = s_read_place(closure_data, &place, &db, &st);
        if (rc == 0)
            rc = workspace_store_project_get(&db, in->id, &rows, &st);
        if (!s_read_again(closure_data, rc, &st, &attempt))
            break;
        rc = 0;
    }
    s_answer_project(closure_data, "GetProject", rc, &st, &rows, closure);
}

static void
s_list_projects(Kowloon__Workspace__WorkspaceService_Service *svc,
                const Kowloon__Workspace__ListProjectsRequest *in,
                Kowloon__Workspace__ListProjectsResponse_Closure closure,
                void *closure_data)
{
    workspace_rows_t rows = {0};
    workspace_page_t page = {0};
    kl_tenant_place_t place;
    workspace_db_t db;
    char after_id[37];
    bool more = false;
    kl_status_t st;
    int rc = s_tenant(closure_data, &(const char *){NULL}, &st);
    if (rc == 0)
        rc = kl_valid_check_page_size(in->page_size, S_PAGE_MAX, S_PAGE_DEFAULT,
                                      &page.limit, &st);
    if (rc == 0)
        rc = s_token_decode(in->page_token, &page, after_id, &st);
    for (int attempt = 0; rc == 0;) {
        rc = s_read_place(closure_data, &place, &db, &st);
        if (rc == 0)
            rc = workspace_store_project_list(&db, &page, &rows, &more, &st);
        if (!s_read_again(closure_data, rc, &st, &attempt))
            break;
        rc = 0;
    }
    if (rc < 0) {
        workspace_store_rows_free(&rows);
        kl_service_fail(closure_data, "ListProjects", &st);
        closure(NULL, closure_data);
        return;
    }
    size_t n = rows.n;
    Kowloon__Workspace__Project *msgs = kl_calloc(n ? n : 1, sizeof *msgs);
    Kowloon__Workspace__Project **ptrs = kl_calloc(n ? n : 1, sizeof *ptrs);
    for (size_t i = 0; i < n; i++) {
        s_project_msg(&rows.projects[i], &msgs[i]);
        ptrs[i] = &msgs[i];
    }
    char token[KL_VALID_PAGE_TOKEN_SIZE] = "";
    if (more && n > 0)
        kl_valid_page_token_encode(rows.projects[n - 1].created_usec,
                                   rows.projects[n - 1].id, token,
                                   sizeof token);
    Kowloon__Workspace__ListProjectsResponse out =
        KOWLOON__WORKSPACE__LIST_PROJECTS_RESPONSE__INIT;
    out.n_projects = n;
    out.projects = ptrs;
    out.next_page_token = token;
    closure(&out, closure_data);
    free(ptrs);
    free(msgs);
    workspace_store_rows_free(&rows);
}

static void
s_update_project(Kowloon__Workspace__WorkspaceService_Service *svc,
                 const Kowloon__Workspace__UpdateProjectRequest *in,
                 Kowloon__Workspace__Project_Closure closure,
                 void *closure_data)
{
    workspace_service_t *self = (workspace_service_t *)svc;
    s_worker_t *w = NULL;
    workspace_rows_t rows = {0};
    kl_status_t st;
    const char *name = kl_valid_empty(in->name) ? NULL : in->name;
    const char *description =
        kl_valid_empty(in->description) ? NULL : in->description;
    int rc = s_tenant(closure_data, &(const char *){NULL}, &st);
    if (rc == 0)
        rc = kl_valid_check_uuid("id", in->id, &st);
    if (rc == 0 && !name && !description)
        rc = kl_status_set(&st, KL_INVALID_ARGUMENT,
                           "nothing to update: set name or description");
    if (rc == 0)
        rc = kl_valid_check_text("name", name, WORKSPACE_NAME_MAX, false, &st);
    if (rc == 0)
        rc = kl_valid_check_text("description", description, S_TEXT_MAX, false,
                                 &st);
    if (rc == 0)
        rc = s_begin(closure_data, &w, &st);
    if (rc == 0) {
        rc = workspace_store_project_update(w->pg, in->id, name, description,
                                            &rows, &st);
        rc = s_end(w, rc, &st);
    }
    if (rc == 0)
        s_publish(self, closure_data, "project", rows.projects[0].id,
                  "updated");
    s_answer_project(closure_data, "UpdateProject", rc, &st, &rows, closure);
}

static void
s_delete_project(Kowloon__Workspace__WorkspaceService_Service *svc,
                 const Kowloon__Workspace__ProjectRef *in,
                 Kowloon__Workspace__DeleteResponse_Closure closure,
                 void *closure_data)
{
    workspace_service_t *self = (workspace_service_t *)svc;
    const kl_call_ctx_t *ctx = s_ctx(closure_data);
    s_worker_t *w = NULL;
    kl_status_t st;
    int rc = s_tenant(closure_data, &(const char *){NULL}, &st);
    if (rc == 0 && kl_valid_empty(ctx->plan))
        rc = kl_status_set(&st, KL_FAILED_PRECONDITION,
                           "no plan in call context");
    if (rc == 0)
        rc = kl_valid_check_uuid("id", in->id, &st);
    if (rc == 0)
        rc = s_begin(closure_data, &w, &st);
    if (rc == 0) {
        rc = workspace_store_project_delete(w->pg, in->id, &st);
        rc = s_end(w, rc, &st);
    }
    if (rc == 0) {
        /* Released after commit: a crash in between over-counts, which
         * never lets a tenant past its limit. */
        s_release_project(self, ctx);
        KL_LOG(KL_INFO, "project %s deleted", in->id);
        s_publish(self, closure_data, "project", in->id, "deleted");
    }
    s_answer_deleted(closure_data, "DeleteProject", rc, &st, closure);
}

/* --- tasks ------------------------------------------------------------ */

static void
s_create_task(Kowloon__Workspace__WorkspaceService_Service *svc,
              const Kowloon__Workspace__CreateTaskRequest *in,
              Kowloon__Workspace__Task_Closure closure, void *closure_data)
{
    workspace_service_t *self = (workspace_service_t *)svc;
    s_worker_t *w = NULL;
    workspace_rows_t rows = {0};
    kl_status_t st;
    int rc = s_tenant(closure_data, &(const char *){NULL}, &st);
    if (rc == 0)
        rc = kl_valid_check_uuid("project_id", in->project_id, &st);
    if (rc == 0)
        rc = kl_valid_check_text("title", in->title, WORKSPACE_TITLE_MAX, true,
                                 &st);
    if (rc == 0)
        rc = kl_valid_check_text("notes", in->notes, S_TEXT_MAX, false, &st);
    if (rc == 0)
        rc = s_begin(closure_data, &w, &st);
    if (rc == 0) {
        rc = workspace_store_task_create(w->pg, in->project_id, in->title,
                                         in->notes, &rows, &st);
        rc = s_end(w, rc, &st);
    }
    if (rc == 0)
        s_publish(self, closure_data, "task", rows.tasks[0].id, "created");
    s_answer_task(closure_data, "CreateTask", rc, &st, &rows, closure);
}

/* project_id and id of a TaskRef-like request. */
static int
s_check_task_ref(const char *project_id, const char *id, kl_status_t *status)
{
    int rc = kl_valid_check_uuid("project_id", project_id, status);
    if (rc == 0)
        rc = kl_valid_check_uuid("id", id, status);
    return rc;
}

static void
s_get_task(Kowloon__Workspace__WorkspaceService_Service *svc,
           const Kowloon__Workspace__TaskRef *in,
           Kowloon__Workspace__Task_Closure closure, void *closure_data)
{
    workspace_rows_t rows = {0};
    kl_tenant_place_t place;
    workspace_db_t db;
    kl_status_t st;
    int rc = s_tenant(closure_data, &(const char *){NULL}, &st);
    if (rc == 0)
        rc = s_check_task_ref(in->project_id, in->id, &st);
    for (int attempt = 0; rc == 0;) {
        rc = s_read_place(closure_data, &place, &db, &st);
        if (rc == 0)
            rc = workspace_store_task_get(&db, in->project_id, in->id, &rows,
                                          &st);
        if (!s_read_again(closure_data, rc, &st, &attempt))
            break;
        rc = 0;
    }
    s_answer_task(closure_data, "GetTask", rc, &st, &rows, closure);
}

static void
s_list_tasks(Kowloon__Workspace__WorkspaceService_Service *svc,
             const Kowloon__Workspace__ListTasksRequest *in,
             Kowloon__Workspace__ListTasksResponse_Closure closure,
             void *closure_data)
{
    s_worker_t *w = NULL;
    workspace_rows_t rows = {0};
    workspace_page_t page = {0};
    char after_id[37];
    bool more = false;
    kl_status_t st;
    int rc = s_tenant(closure_data, &(const char *){NULL}, &st);
    if (rc == 0)
        rc = kl_valid_check_uuid("project_id", in->project_id, &st);
    if (rc == 0)
        rc = kl_valid_check_page_size(in->page_size, S_PAGE_MAX, S_PAGE_DEFAULT,
                                      &page.limit, &st);
    if (rc == 0)
        rc = s_token_decode(in->page_token, &page, after_id, &st);
    if (rc == 0)
        rc = s_begin_read(closure_data, &w, &st);
    if (rc == 0) {
        rc = workspace_store_task_list(w->pg, in->project_id, &page, &rows,
                                       &more, &st);
        rc = s_end(w, rc, &st);
    }
    if (rc < 0) {
        workspace_store_rows_free(&rows);
        kl_service_fail(closure_data, "ListTasks", &st);
        closure(NULL, closure_data);
        return;
    }
    size_t n = rows.n;
    Kowloon__Workspace__Task *msgs = kl_calloc(n ? n : 1, sizeof *msgs);
    Kowloon__Workspace__Task **ptrs = kl_calloc(n ? n : 1, sizeof *ptrs);
    for (size_t i = 0; i < n; i++) {
        s_task_msg(&rows.tasks[i], &msgs[i]);
        ptrs[i] = &msgs[i];
    }
    char token[KL_VALID_PAGE_TOKEN_SIZE] = "";
    if (more && n > 0)
        kl_valid_page_token_encode(rows.tasks[n - 1].created_usec,
                                   rows.tasks[n - 1].id, token, sizeof token);
    Kowloon__Workspace__ListTasksResponse out =
        KOWLOON__WORKSPACE__LIST_TASKS_RESPONSE__INIT;
    out.n_tasks = n;
    out.tasks = ptrs;
    out.next_page_token = token;
    closure(&out, closure_data);
    free(ptrs);
    free(msgs);
    workspace_store_rows_free(&rows);
}

static void
s_update_task(Kowloon__Workspace__WorkspaceService_Service *svc,
              const Kowloon__Workspace__UpdateTaskRequest *in,
              Kowloon__Workspace__Task_Closure closure, void *closure_data)
{
    workspace_service_t *self = (workspace_service_t *)svc;
    s_worker_t *w = NULL;
    workspace_rows_t rows = {0};
    kl_status_t st;
    const char *title = kl_valid_empty(in->title) ? NULL : in->title;
    const char *notes = kl_valid_empty(in->notes) ? NULL : in->notes;
    int done = in->done_set_case ==
                       KOWLOON__WORKSPACE__UPDATE_TASK_REQUEST__DONE_SET_DONE
                   ? (in->done ? 1 : 0)
                   : -1;
    int rc = s_tenant(closure_data, &(const char *){NULL}, &st);
    if (rc == 0)
        rc = s_check_task_ref(in->project_id, in->id, &st);
    if (rc == 0 && !title && !notes && done < 0)
        rc = kl_status_set(&st, KL_INVALID_ARGUMENT,
                           "nothing to update: set title, notes or done");
    if (rc == 0)
        rc = kl_valid_check_text("title", title, WORKSPACE_TITLE_MAX, false,
                                 &st);
    if (rc == 0)
        rc = kl_valid_check_text("notes", notes, S_TEXT_MAX, false, &st);
    if (rc == 0)
        rc = s_begin(closure_data, &w, &st);
    if (rc == 0) {
        rc = workspace_store_task_update(w->pg, in->project_id, in->id, title,
                                         notes, done, &rows, &st);
        rc = s_end(w, rc, &st);
    }
    if (rc == 0)
        s_publish(self, closure_data, "task", rows.tasks[0].id, "updated");
    s_answer_task(closure_data, "UpdateTask", rc, &st, &rows, closure);
}

static void
s_delete_task(Kowloon__Workspace__WorkspaceService_Service *svc,
              const Kowloon__Workspace__TaskRef *in,
              Kowloon__Workspace__DeleteResponse_Closure closure,
              void *closure_data)
{
    workspace_service_t *self = (workspace_service_t *)svc;
    s_worker_t *w = NULL;
    kl_status_t st;
    int rc = s_tenant(closure_data, &(const char *){NULL}, &st);
    if (rc == 0)
        rc = s_check_task_ref(in->project_id, in->id, &st);
    if (rc == 0)
        rc = s_begin(closure_data, &w, &st);
    if (rc == 0) {
        rc = workspace_store_task_delete(w->pg, in->project_id, in->id, &st);
        rc = s_end(w, rc, &st);
    }
    if (rc == 0)
        s_publish(self, closure_data, "task", in->id, "deleted");
    s_answer_deleted(closure_data, "DeleteTask", rc, &st, closure);
}

/* --- export and reports ----------------------------------------------- */

static void
s_export(Kowloon__Workspace__WorkspaceService_Service *svc,
         const Kowloon__Workspace__ExportRequest *in,
         Kowloon__Workspace__ExportPage_Closure closure, void *closure_data)
{
    s_worker_t *w = NULL;
    workspace_rows_t projects = {0}, tasks = {0};
    workspace_page_t page = {0};
    char after_id[37];
    bool more = false;
    kl_status_t st;
    int rc = s_tenant(closure_data, &(const char *){NULL}, &st);
    if (rc == 0)
        rc = kl_valid_check_page_size(in->page_size, S_EXPORT_PAGE_MAX,
                                      S_EXPORT_PAGE_DEFAULT, &page.limit, &st);
    if (rc == 0)
        rc = s_token_decode(in->page_token, &page, after_id, &st);
    if (rc == 0)
        rc = s_begin_ex(closure_data, &w, KL_TENANT_TX_SNAPSHOT, &st);
    if (rc == 0) {
        /* One snapshot (REPEATABLE READ): the page's tasks are those of
         * its projects as they were when the projects were read. */
        rc = workspace_store_project_list(&(workspace_db_t){.pg = w->pg}, &page,
                                          &projects, &more, &st);
        if (rc == 0 && projects.n > 0) {
            const char **ids = kl_calloc(projects.n, sizeof *ids);
            for (size_t i = 0; i < projects.n; i++)
                ids[i] = projects.projects[i].id;
            rc = workspace_store_tasks_of(w->pg, ids, projects.n, &tasks, &st);
            free(ids);
        }
        rc = s_end(w, rc, &st);
    }
    if (rc < 0) {
        workspace_store_rows_free(&projects);
        workspace_store_rows_free(&tasks);
        kl_service_fail(closure_data, "Export", &st);
        closure(NULL, closure_data);
        return;
    }
    size_t np = projects.n, nt = tasks.n;
    Kowloon__Workspace__ProjectExport *pe = kl_calloc(np ? np : 1, sizeof *pe);
    Kowloon__Workspace__ProjectExport **pe_ptrs =
        kl_calloc(np ? np : 1, sizeof *pe_ptrs);
    Kowloon__Workspace__Project *pm = kl_calloc(np ? np : 1, sizeof *pm);
    Kowloon__Workspace__Task *tm = kl_calloc(nt ? nt : 1, sizeof *tm);
    Kowloon__Workspace__Task **t_ptrs = kl_calloc(nt ? nt : 1, sizeof *t_ptrs);
    for (size_t i = 0; i < nt; i++) {
        s_task_msg(&tasks.tasks[i], &tm[i]);
        t_ptrs[i] = &tm[i];
    }
    for (size_t i = 0; i < np; i++) {
        kowloon__workspace__project_export__init(&pe[i]);
        s_project_msg(&projects.projects[i], &pm[i]);
        pe[i].project = &pm[i];
        /* Tasks come grouped by project: find this project's run. */
        size_t first = 0;
        while (first < nt &&
               strcmp(tasks.tasks[first].project_id, pm[i].id) != 0)
            first++;
        size_t end = first;
        while (end < nt && strcmp(tasks.tasks[end].project_id, pm[i].id) == 0)
            end++;
        pe[i].n_tasks = end - first;
        pe[i].tasks = pe[i].n_tasks ? &t_ptrs[first] : NULL;
        pe_ptrs[i] = &pe[i];
    }
    char token[KL_VALID_PAGE_TOKEN_SIZE] = "";
    if (more && np > 0)
        kl_valid_page_token_encode(projects.projects[np - 1].created_usec,
                                   projects.projects[np - 1].id, token,
                                   sizeof token);
    Kowloon__Workspace__ExportPage out = KOWLOON__WORKSPACE__EXPORT_PAGE__INIT;
    out.n_projects = np;
    out.projects = pe_ptrs;
    out.next_page_token = token;
    closure(&out, closure_data);
    free(t_ptrs);
    free(tm);
    free(pm);
    free(pe_ptrs);
    free(pe);
    workspace_store_rows_free(&projects);
    workspace_store_rows_free(&tasks);
}

static double
s_ratio(int64_t done, int64_t tasks)
{
    return tasks > 0 ? (double)done / (double)tasks : 0.0;
}

static void
s_advanced_reports(Kowloon__Workspace__WorkspaceService_Service *svc,
                   const Kowloon__Workspace__ReportsRequest *in,
                   Kowloon__Workspace__Reports_Closure closure,
                   void *closure_data)
{
    workspace_rows_t rows = {0};
    kl_tenant_place_t place;
    workspace_db_t db;
    kl_status_t st;
    int rc = 0;
    for (int attempt = 0; rc == 0;) {
        rc = s_read_place(closure_data, &place, &db, &st);
        if (rc == 0)
            rc = workspace_store_reports(&db, &rows, &st);
        if (!s_read_again(closure_data, rc, &st, &attempt))
            break;
        rc = 0;
    }
    if (rc < 0) {
        workspace_store_rows_free(&rows);
        kl_service_fail(closure_data, "AdvancedReports", &st);
        closure(NULL, closure_data);
        return;
    }
    size_t n = rows.n;
    Kowloon__Workspace__ProjectReport *msgs =
        kl_calloc(n ? n : 1, sizeof *msgs);
    Kowloon__Workspace__ProjectReport **ptrs =
        kl_calloc(n ? n : 1, sizeof *ptrs);
    Kowloon__Workspace__Reports out = KOWLOON__WORKSPACE__REPORTS__INIT;
    for (size_t i = 0; i < n; i++) {
        const workspace_report_t *r = &rows.reports[i];
        kowloon__workspace__project_report__init(&msgs[i]);
        msgs[i].project_id = (char *)r->project_id;
        msgs[i].name = (char *)r->name;
        msgs[i].tasks = r->tasks;
        msgs[i].done = r->done;
        msgs[i].done_ratio = s_ratio(r->done, r->tasks);
        ptrs[i] = &msgs[i];
        out.tasks += r->tasks;
        out.done += r->done;
    }
    out.done_ratio = s_ratio(out.done, out.tasks);
    out.n_projects = n;
    out.projects = ptrs;
    closure(&out, closure_data);
    free(ptrs);
    free(msgs);
    workspace_store_rows_free(&rows);
}

/* --- object ----------------------------------------------------------- */

/* A tenant event (moving, moved, updated, deleted) drops the tenant's
 * cached placement; NULL (events may have been missed) drops them all.
 * Only a hint: the fence in the database catches a stale placement even
 * when no event arrives. */
static void
s_on_event(const Kowloon__Events__ChangeEvent *ev, void *user)
{
    workspace_service_t *self = user;
    if (!ev)
        workspace_placement_drop(self->placement, NULL);
    else if (ev->kind && strcmp(ev->kind, "tenant") == 0 && ev->id && *ev->id)
        workspace_placement_drop(self->placement, ev->id);
}

static const Kowloon__Workspace__WorkspaceService_Service s_base =
    KOWLOON__WORKSPACE__WORKSPACE_SERVICE__INIT(s_);

workspace_service_t *
workspace_service_new(const workspace_service_opts_t *opts, kl_status_t *status)
{
    if (kl_valid_empty(opts->database_url) || kl_valid_empty(opts->owner_url)) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "workspace service needs the application and the owner "
                      "database URLs");
        return NULL;
    }
    if (!opts->flags) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "workspace service needs a flags client");
        return NULL;
    }
    kl_tenant_place_t probe_place;
    if (kl_tenant_place(
            "00000000-0000-4000-8000-000000000000", KL_ISOLATION_ROW,
            kl_valid_empty(opts->shared_schema) ? "workspace"
                                                : opts->shared_schema,
            NULL, &probe_place, status) < 0)
        return NULL;
    /* Malformed server entries are refused now, not at the first call. */
    kl_tenant_db_t *probe_db = kl_tenant_db_new(
        opts->database_url, opts->db_servers, opts->n_db_servers, 1, status);
    if (!probe_db)
        return NULL;
    kl_tenant_db_destroy(&probe_db);
    if (kl_valid_empty(opts->events_channel)) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "workspace service needs an events channel");
        return NULL;
    }
    /* A malformed Redis URL is a configuration error: refuse to start
     * rather than run without events. */
    kl_redis_t *probe = kl_redis_new(opts->redis_url, status);
    if (!probe)
        return NULL;
    kl_redis_destroy(&probe);

    workspace_service_t *self = kl_calloc(1, sizeof *self);
    self->base = s_base;
    self->database_url = kl_strdup(opts->database_url);
    self->owner_url = kl_strdup(opts->owner_url);
    self->redis_url = kl_strdup(opts->redis_url ? opts->redis_url : "");
    self->events_channel = kl_strdup(opts->events_channel);
    self->flags = opts->flags;
    self->flags_timeout_ms = opts->flags_timeout_ms > 0 ? opts->flags_timeout_ms
                                                        : S_FLAGS_TIMEOUT_MS;
    self->shared_schema =
        kl_strdup(kl_valid_empty(opts->shared_schema) ? "workspace"
                                                      : opts->shared_schema);
    self->n_db_servers = opts->n_db_servers;
    self->db_servers = kl_calloc(opts->n_db_servers + 1, sizeof(char *));
    for (size_t i = 0; i < opts->n_db_servers; i++)
        self->db_servers[i] = kl_strdup(opts->db_servers[i]);
    self->max_open_dbs = opts->max_open_dbs ? opts->max_open_dbs : 16;
    workspace_placement_opts_t popts = opts->placement;
    popts.shared_schema = self->shared_schema;
    self->placement = workspace_placement_new(&popts);
    if (self->redis_url[0]) {
        /* Without it placements still expire by TTL and the fence holds. */
        kl_status_t est;
        self->events = kl_events_subscribe(
            self->redis_url, self->events_channel, s_on_event, self, &est);
        if (!self->events)
            KL_LOG(KL_WARN, "tenant events not followed: %s, ignored",
                   est.message);
    }
    return self;
}

void
workspace_service_destroy(workspace_service_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    workspace_service_t *self = *self_p;
    free(self->database_url);
    free(self->owner_url);
    free(self->redis_url);
    kl_events_destroy(&self->events);
    free(self->events_channel);
    free(self->shared_schema);
    for (size_t i = 0; i < self->n_db_servers; i++)
        free(self->db_servers[i]);
    free(self->db_servers);
    workspace_placement_destroy(&self->placement);
    free(self);
    *self_p = NULL;
}

int
workspace_service_prepare(const workspace_service_t *self, kl_status_t *status)
{
    kl_pg_t *owner = kl_pg_new(self->owner_url);
    kl_pg_t *app = kl_pg_new(self->database_url);
    char role[256];
    int rc = workspace_store_current_role(app, role, sizeof role, status);
    if (rc == 0)
        rc = workspace_store_prepare(owner, self->shared_schema, role, status);
    if (rc == 0)
        rc = workspace_store_check(app, self->shared_schema, status);
    kl_pg_destroy(&app);
    kl_pg_destroy(&owner);
    return rc;
}

ProtobufCService *
workspace_service_base(workspace_service_t *self)
{
    return &self->base.base;
}

static void *
s_worker_init(int index, void *user)
{
    workspace_service_t *self = user;
    s_worker_t *w = kl_calloc(1, sizeof *w);
    w->self = self;
    /* The entries were checked in workspace_service_new. */
    w->tdb = kl_tenant_db_new(self->database_url,
                              (const char *const *)self->db_servers,
                              self->n_db_servers, self->max_open_dbs, NULL);
    /* The URL was checked in workspace_service_new. */
    w->redis = kl_redis_new(self->redis_url, NULL);
    return w;
}

static void
s_worker_fini(void *state, void *user)
{
    s_worker_t *w = state;
    if (!w)
        return;
    kl_tenant_db_destroy(&w->tdb);
    kl_redis_destroy(&w->redis);
    free(w);
}

static bool
s_ready(void *state, void *user)
{
    s_worker_t *w = state;
    PGresult *res = kl_pg_query(kl_tenant_db_main(w->tdb), "workspace_ready",
                                "SELECT 1", 0, NULL, NULL);
    bool ok = res != NULL;
    PQclear(res);
    return ok;
}

void
workspace_service_server_opts(workspace_service_t *self,
                              kl_rpc_server_opts_t *opts)
{
    opts->worker_init = s_worker_init;
    opts->worker_fini = s_worker_fini;
    opts->ready = s_ready;
    opts->user = self;
}
