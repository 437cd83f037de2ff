/*
 * migration_service: the RPC handlers.
 */
#include "migration_service.h"

#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_pg.h"
#include "kl_service.h"
#include "kowloon/migration.pb-c.h"
#include "kowloon/tenant.pb-c.h"
#include "migration_apply.h"
#include "migration_store.h"
#include "migration_target.h"
#include "migration_work.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Tenants asked of the tenant service per List page (its maximum). */
#define S_PAGE_SIZE 500

struct migration_service {
    /* First member: a handler's service pointer is this object. */
    Kowloon__Migration__MigrationService_Service base;
    char *database_url;         /* owned */
    char *owner_url;            /* owned */
    const char *const *servers; /* borrowed owner servers */
    size_t n_servers;
    char *shared_schema;            /* owned */
    const migration_files_t *files; /* borrowed */
    kl_rpc_client_t *tenants;       /* borrowed */
    int64_t tenants_timeout_ms;     /* per call */
    migration_runner_t *runner;     /* borrowed, may be NULL */
    char *app_role;                 /* owned; "": no grants */
    /* owned; each RPC worker's control database connection (pg) and
     * owner-role connections (extra, a migration_apply_t) */
    kl_service_t *std;
};

/* The worker's owner-role connections. */
static migration_apply_t *
s_ap(kl_service_worker_t *w)
{
    return w->extra;
}

/* --- targets ------------------------------------------------------------- */

typedef struct {
    migration_target_t *items;
    size_t n, cap;
    int has_shared; /* the shared target is in items */
} s_targets_t;

static void
s_targets_add(s_targets_t *ts, const migration_target_t *t)
{
    if (strcmp(t->isolation, "row") == 0) {
        if (ts->has_shared)
            return;
        ts->has_shared = 1;
    }
    if (ts->n == ts->cap) {
        ts->cap = ts->cap ? ts->cap * 2 : 64;
        ts->items = kl_realloc(ts->items, ts->cap * sizeof *ts->items);
    }
    ts->items[ts->n++] = *t;
}

static int
s_add_tenant(migration_service_t *self, s_targets_t *ts,
             const Kowloon__Tenant__Tenant *tenant, kl_status_t *status)
{
    migration_target_t t;
    int rc = migration_target_for_tenant(tenant->id, tenant->isolation,
                                         tenant->db_server, self->shared_schema,
                                         &t, status);
    if (rc < 0)
        return rc;
    s_targets_add(ts, &t);
    return 0;
}

/* The targets of the tenants named in ids, or of every tenant (not
 * deleted) when there is none — and then always the row model's shared
 * target, first, even with no row tenant yet (the first one created finds
 * its tables). Shared target once, first-come order. */
static int
s_collect(migration_service_t *self, char **ids, size_t n_ids, s_targets_t *ts,
          kl_status_t *status)
{
    kl_call_opts_t copts = {.timeout_ms = self->tenants_timeout_ms,
                            .idempotent = true};
    if (n_ids > 0) {
        for (size_t i = 0; i < n_ids; i++) {
            Kowloon__Tenant__GetTenantRequest req =
                KOWLOON__TENANT__GET_TENANT_REQUEST__INIT;
            req.id = ids[i];
            ProtobufCMessage *out = NULL;
            int rc = kl_rpc_client_call(self->tenants, "Get", &req.base, &copts,
                                        &out, status);
            if (rc < 0)
                return rc;
            rc = s_add_tenant(self, ts, (Kowloon__Tenant__Tenant *)out, status);
            protobuf_c_message_free_unpacked(out, NULL);
            if (rc < 0)
                return rc;
        }
        return 0;
    }
    migration_target_t shared;
    if (migration_target_shared(self->shared_schema, &shared, status) < 0)
        return -(int)status->code;
    s_targets_add(ts, &shared);
    char *token = kl_strdup("");
    int rc = 0;
    for (;;) {
        Kowloon__Tenant__ListTenantsRequest req =
            KOWLOON__TENANT__LIST_TENANTS_REQUEST__INIT;
        req.page_size = S_PAGE_SIZE;
        req.page_token = token;
        ProtobufCMessage *out = NULL;
        rc = kl_rpc_client_call(self->tenants, "List", &req.base, &copts, &out,
                                status);
        if (rc < 0)
            break;
        Kowloon__Tenant__ListTenantsResponse *page =
            (Kowloon__Tenant__ListTenantsResponse *)out;
        for (size_t i = 0; rc == 0 && i < page->n_tenants; i++)
            rc = s_add_tenant(self, ts, page->tenants[i], status);
        free(token);
        token = kl_strdup(page->next_page_token ? page->next_page_token : "");
        protobuf_c_message_free_unpacked(out, NULL);
        if (rc < 0 || !*token)
            break;
    }
    free(token);
    return rc;
}

/* Fails the call with a tenant-service error, saying where it came from. */
static void
s_fail_tenants(kl_call_t *call, const kl_status_t *st)
{
    kl_code_t code = st->code == KL_NOT_FOUND || st->code == KL_INVALID_ARGUMENT
                         ? st->code
                         : KL_UNAVAILABLE;
    kl_call_fail(call, code, "tenant service: %s", st->message);
}

/* --- Plan ---------------------------------------------------------------- */

static void
s_plan(Kowloon__Migration__MigrationService_Service *svc,
       const Kowloon__Migration__PlanRequest *in,
       Kowloon__Migration__PlanResponse_Closure closure, void *cd)
{
    migration_service_t *self = (migration_service_t *)svc;
    kl_call_t *call = kl_call_from(cd);
    kl_service_worker_t *w = kl_call_worker(call);
    kl_status_t st;
    s_targets_t ts = {0};
    if (s_collect(self, in->tenant_ids, in->n_tenant_ids, &ts, &st) < 0) {
        s_fail_tenants(call, &st);
        closure(NULL, cd);
        free(ts.items);
        return;
    }
    int latest = migration_files_latest(self->files);
    size_t n_files = migration_files_count(self->files);
    Kowloon__Migration__Migration *migs = kl_calloc(n_files + 1, sizeof *migs);
    Kowloon__Migration__Migration **mig_ps =
        kl_calloc(n_files + 1, sizeof *mig_ps);
    for (size_t i = 0; i < n_files; i++) {
        const migration_file_t *f =
            migration_files_get(self->files, (int)i + 1);
        kowloon__migration__migration__init(&migs[i]);
        migs[i].version = f->version;
        migs[i].name = f->file_name;
        migs[i].checksum = (char *)f->checksum;
        migs[i].no_transaction = f->no_transaction != 0;
        mig_ps[i] = &migs[i];
    }
    Kowloon__Migration__TargetPlan *plans = kl_calloc(ts.n + 1, sizeof *plans);
    Kowloon__Migration__TargetPlan **plan_ps =
        kl_calloc(ts.n + 1, sizeof *plan_ps);
    char(*locs)[160] = kl_calloc(ts.n + 1, sizeof *locs);
    char **errors = kl_calloc(ts.n + 1, sizeof *errors);
    int32_t *pending = kl_calloc(ts.n * (size_t)latest + 1, sizeof *pending);
    Kowloon__Migration__PlanResponse out =
        KOWLOON__MIGRATION__PLAN_RESPONSE__INIT;
    for (size_t i = 0; i < ts.n; i++) {
        const migration_target_t *t = &ts.items[i];
        Kowloon__Migration__TargetPlan *p = &plans[i];
        kowloon__migration__target_plan__init(p);
        plan_ps[i] = p;
        p->target = (char *)t->target;
        p->tenant_id = (char *)t->tenant_id;
        p->isolation = (char *)t->isolation;
        migration_target_location(t, locs[i], sizeof locs[i]);
        p->location = locs[i];
        migration_applied_t *hist = NULL;
        size_t n_hist = 0;
        int cur = 0;
        if (migration_apply_history(s_ap(w), t, &hist, &n_hist, &st) < 0 ||
            migration_apply_check(self->files, hist, n_hist, &cur, &st) < 0) {
            errors[i] = kl_strdup(st.message);
            p->error = errors[i];
            out.targets_failing++;
        } else {
            p->pending = &pending[i * (size_t)latest];
            for (int v = 1; v <= latest; v++)
                if (!migration_apply_has(hist, n_hist, v))
                    p->pending[p->n_pending++] = v;
            if (p->n_pending > 0)
                out.targets_pending++;
        }
        p->current_version = cur;
        free(hist);
        migration_apply_release(s_ap(w));
    }
    out.migrations = mig_ps;
    out.n_migrations = n_files;
    out.targets = plan_ps;
    out.n_targets = ts.n;
    out.latest_version = latest;
    closure(&out, cd);
    for (size_t i = 0; i < ts.n; i++)
        free(errors[i]);
    free(errors);
    free(pending);
    free(locs);
    free(plan_ps);
    free(plans);
    free(mig_ps);
    free(migs);
    free(ts.items);
}

/* --- Run, Retry ---------------------------------------------------------- */

static void
s_run(Kowloon__Migration__MigrationService_Service *svc,
      const Kowloon__Migration__RunRequest *in,
      Kowloon__Migration__RunResponse_Closure closure, void *cd)
{
    migration_service_t *self = (migration_service_t *)svc;
    kl_call_t *call = kl_call_from(cd);
    kl_service_worker_t *w = kl_call_worker(call);
    kl_status_t st;
    s_targets_t ts = {0};
    if (s_collect(self, in->tenant_ids, in->n_tenant_ids, &ts, &st) < 0) {
        s_fail_tenants(call, &st);
        closure(NULL, cd);
        free(ts.items);
        return;
    }
    int64_t run_id = 0;
    int latest = migration_files_latest(self->files);
    if (migration_store_create_run(w->pg, latest, ts.items, ts.n, &run_id,
                                   &st) < 0) {
        kl_call_fail_status(call, &st);
        closure(NULL, cd);
        free(ts.items);
        return;
    }
    if (self->runner)
        migration_runner_wake(self->runner);
    KL_LOG(KL_INFO, "run %" PRId64 ": %zu targets to version %d", run_id, ts.n,
           latest);
    Kowloon__Migration__RunResponse out =
        KOWLOON__MIGRATION__RUN_RESPONSE__INIT;
    out.run_id = run_id;
    out.targets = (int32_t)ts.n;
    out.latest_version = latest;
    closure(&out, cd);
    free(ts.items);
}

static void
s_retry(Kowloon__Migration__MigrationService_Service *svc,
        const Kowloon__Migration__RetryRequest *in,
        Kowloon__Migration__RunResponse_Closure closure, void *cd)
{
    migration_service_t *self = (migration_service_t *)svc;
    kl_call_t *call = kl_call_from(cd);
    kl_service_worker_t *w = kl_call_worker(call);
    kl_status_t st;
    int64_t run_id = 0;
    int n = 0;
    int latest = migration_files_latest(self->files);
    if (in->run_id < 0 || migration_store_retry_run(w->pg, in->run_id, latest,
                                                    &run_id, &n, &st) < 0) {
        if (in->run_id < 0)
            kl_call_fail(call, KL_INVALID_ARGUMENT, "run id must be >= 0");
        else
            kl_call_fail_status(call, &st);
        closure(NULL, cd);
        return;
    }
    if (self->runner)
        migration_runner_wake(self->runner);
    KL_LOG(KL_INFO, "run %" PRId64 ": retrying %d failed targets", run_id, n);
    Kowloon__Migration__RunResponse out =
        KOWLOON__MIGRATION__RUN_RESPONSE__INIT;
    out.run_id = run_id;
    out.targets = n;
    out.latest_version = latest;
    closure(&out, cd);
}

/* --- Status -------------------------------------------------------------- */

static void
s_status(Kowloon__Migration__MigrationService_Service *svc,
         const Kowloon__Migration__StatusRequest *in,
         Kowloon__Migration__RunStatus_Closure closure, void *cd)
{
    (void)svc;
    kl_call_t *call = kl_call_from(cd);
    kl_service_worker_t *w = kl_call_worker(call);
    kl_status_t st;
    migration_run_status_t rs;
    if (in->run_id < 0 ||
        migration_store_status(w->pg, in->run_id, in->max_failures, &rs, &st) <
            0) {
        if (in->run_id < 0)
            kl_call_fail(call, KL_INVALID_ARGUMENT, "run id must be >= 0");
        else
            kl_call_fail_status(call, &st);
        closure(NULL, cd);
        return;
    }
    Kowloon__Migration__RunStatus out = KOWLOON__MIGRATION__RUN_STATUS__INIT;
    out.run_id = rs.run_id;
    out.state = rs.state;
    out.total = rs.total;
    out.done = rs.done;
    out.failed = rs.failed;
    out.remaining = rs.remaining;
    out.applied = rs.applied;
    out.elapsed_ms = rs.elapsed_ms;
    out.created_at = rs.created_at;
    out.finished_at = rs.finished_at;
    out.retry_of = rs.retry_of;
    out.latest_version = rs.latest_version;
    int finished = rs.done + rs.failed;
    out.rate_per_s =
        rs.elapsed_ms > 0 ? finished * 1000.0 / (double)rs.elapsed_ms : 0.0;
    out.eta_ms = rs.remaining == 0 ? 0
                 : out.rate_per_s > 0.0
                     ? (int64_t)(rs.remaining * 1000.0 / out.rate_per_s)
                     : -1;
    Kowloon__Migration__TargetFailure *fs =
        kl_calloc(rs.n_failures + 1, sizeof *fs);
    Kowloon__Migration__TargetFailure **fps =
        kl_calloc(rs.n_failures + 1, sizeof *fps);
    for (size_t i = 0; i < rs.n_failures; i++) {
        kowloon__migration__target_failure__init(&fs[i]);
        fs[i].target = rs.failures[i].target;
        fs[i].tenant_id = rs.failures[i].tenant_id;
        fs[i].version = rs.failures[i].version;
        fs[i].error = rs.failures[i].error;
        fps[i] = &fs[i];
    }
    out.failures = fps;
    out.n_failures = rs.n_failures;
    closure(&out, cd);
    free(fps);
    free(fs);
    migration_store_status_free(&rs);
}

/* --- ProvisionTenant ----------------------------------------------------- */

static void
s_provision_tenant(Kowloon__Migration__MigrationService_Service *svc,
                   const Kowloon__Migration__ProvisionTenantRequest *in,
                   Kowloon__Migration__ProvisionTenantResponse_Closure closure,
                   void *cd)
{
    migration_service_t *self = (migration_service_t *)svc;
    kl_call_t *call = kl_call_from(cd);
    kl_service_worker_t *w = kl_call_worker(call);
    kl_status_t st;
    migration_target_t t;
    int rc;
    if (in->isolation && *in->isolation) {
        rc = migration_target_for_tenant(in->tenant_id, in->isolation,
                                         in->db_server, self->shared_schema, &t,
                                         &st);
    } else {
        s_targets_t ts = {0};
        char *ids[] = {in->tenant_id};
        rc = in->tenant_id && *in->tenant_id
                 ? s_collect(self, ids, 1, &ts, &st)
                 : kl_status_set(&st, KL_INVALID_ARGUMENT,
                                 "tenant_id is required");
        if (rc == 0)
            t = ts.items[0];
        else if (st.code != KL_INVALID_ARGUMENT && st.code != KL_NOT_FOUND)
            kl_status_set(&st, KL_UNAVAILABLE, "tenant service: %.400s",
                          st.message);
        free(ts.items);
    }
    if (rc < 0) {
        kl_call_fail_status(call, &st);
        closure(NULL, cd);
        return;
    }
    migration_work_result_t res;
    rc = kl_pg_begin(w->pg, &st);
    if (rc == 0)
        rc = migration_work_target(w->pg, s_ap(w), self->files, &t,
                                   &(migration_work_opts_t){0}, &res, &st);
    if (rc == 0)
        rc = kl_pg_commit(w->pg, &st);
    else if (kl_pg_in_transaction(w->pg))
        kl_pg_rollback(w->pg);
    if (rc < 0) {
        kl_call_fail_status(call, &st);
        closure(NULL, cd);
        return;
    }
    if (res.failed) {
        KL_LOG(KL_WARN, "provisioning %s failed: %s", t.target, res.error);
        kl_call_fail(call, KL_FAILED_PRECONDITION, "%s", res.error);
        closure(NULL, cd);
        migration_work_result_free(&res);
        return;
    }
    Kowloon__Migration__ProvisionTenantResponse out =
        KOWLOON__MIGRATION__PROVISION_TENANT_RESPONSE__INIT;
    out.target = t.target;
    out.version = res.current;
    out.applied = res.applied;
    out.n_applied = (size_t)res.n_applied;
    closure(&out, cd);
    migration_work_result_free(&res);
}

/* --- object -------------------------------------------------------------- */

static const Kowloon__Migration__MigrationService_Service s_base =
    KOWLOON__MIGRATION__MIGRATION_SERVICE__INIT(s_);

/* A worker's owner-role connections, on the worker thread. */
static void *
s_apply_init(int index, void *user)
{
    migration_service_t *self = user;
    /* The URL was checked in migration_service_new. */
    migration_apply_t *ap = migration_apply_new(self->owner_url, self->servers,
                                                self->n_servers, NULL);
    if (ap)
        migration_apply_set_app_role(ap, self->app_role);
    return ap;
}

static void
s_apply_fini(void *extra, void *user)
{
    migration_apply_t *ap = extra;
    migration_apply_destroy(&ap);
}

migration_service_t *
migration_service_new(const migration_service_opts_t *opts, kl_status_t *status)
{
    migration_target_t probe;
    if (!opts || !opts->database_url || !*opts->database_url || !opts->files ||
        !opts->tenants) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "migration service needs a database URL, files and a "
                      "tenant client");
        return NULL;
    }
    if (migration_target_shared(opts->shared_schema, &probe, status) < 0)
        return NULL;
    migration_apply_t *ap = migration_apply_new(
        opts->owner_url, opts->owner_servers, opts->n_owner_servers, status);
    if (!ap)
        return NULL;
    migration_apply_destroy(&ap);
    migration_service_t *self = kl_calloc(1, sizeof *self);
    self->base = s_base;
    self->database_url = kl_strdup(opts->database_url);
    self->owner_url = kl_strdup(opts->owner_url);
    self->servers = opts->owner_servers;
    self->n_servers = opts->n_owner_servers;
    self->shared_schema = kl_strdup(opts->shared_schema);
    self->files = opts->files;
    self->tenants = opts->tenants;
    self->tenants_timeout_ms =
        opts->tenants_timeout_ms > 0 ? opts->tenants_timeout_ms : 10000;
    self->runner = opts->runner;
    self->app_role = kl_strdup(opts->app_role ? opts->app_role : "");
    self->std =
        kl_service_new(&(kl_service_opts_t){.name = "migration",
                                            .database_url = self->database_url,
                                            .extra_init = s_apply_init,
                                            .extra_fini = s_apply_fini,
                                            .extra_user = self});
    return self;
}

void
migration_service_destroy(migration_service_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    migration_service_t *self = *self_p;
    kl_service_destroy(&self->std);
    free(self->database_url);
    free(self->owner_url);
    free(self->shared_schema);
    free(self->app_role);
    free(self);
    *self_p = NULL;
}

ProtobufCService *
migration_service_base(migration_service_t *self)
{
    return &self->base.base;
}

void
migration_service_server_opts(migration_service_t *self,
                              kl_rpc_server_opts_t *opts)
{
    kl_service_server_opts(self->std, opts);
}
