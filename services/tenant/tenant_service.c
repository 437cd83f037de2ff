/*
 * tenant_service: the handlers of kowloon.tenant.TenantService. Each
 * validates its request, calls tenant_store on the worker's connection,
 * publishes a change event once the write is committed, and answers.
 */
#include "tenant_service.h"

#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_pg.h"
#include "kl_redis.h"
#include "kl_service.h"
#include "kl_subdomain.h"
#include "kl_valid.h"
#include "kowloon/migration.pb-c.h"
#include "kowloon/tenant.pb-c.h"
#include "tenant_apikey.h"
#include "tenant_creations.h"
#include "tenant_mover.h"
#include "tenant_moves.h"
#include "tenant_provision.h"
#include "tenant_store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_PAGE_DEFAULT 50
#define S_PAGE_MAX 500

struct tenant_service {
    /* First member: a handler's service pointer is this object. */
    Kowloon__Tenant__TenantService_Service base;
    char *database_url;      /* owned */
    char *redis_url;         /* owned; "" disables events */
    char *events_channel;    /* owned */
    char *default_plan;      /* owned */
    char *default_isolation; /* owned */
    char **reserved;         /* owned copies */
    size_t n_reserved;
    char **owner_servers; /* owned copies, "name=url" (never logged) */
    size_t n_owner_servers;
    char *app_role;      /* owned; "" until found at migrate */
    char *shared_schema; /* owned */
    tenant_provision_migrate_fn migrate;
    void *migrate_arg;
    kl_rpc_client_t *migration; /* borrowed */
    int64_t move_lock_timeout_ms;
    tenant_mover_stop_t move_stop_at; /* tests only */
    tenant_provision_t *prov;  /* made at migrate; NULL: no provisioning */
    tenant_moves_opts_t moves; /* filled in at migrate, with prov */
    kl_service_t *std;         /* owned; the workers' pg and redis */
};

/* --- validation ------------------------------------------------------- */

static const char *const s_isolations[] = {"row", "schema", "database", NULL};
static const char *const s_create_statuses[] = {"trialing", "active", NULL};
static const char *const s_update_statuses[] = {"trialing", "active",
                                                "past_due", "suspended", NULL};
static const char *const s_all_statuses[] = {"trialing",  "active",  "past_due",
                                             "suspended", "deleted", NULL};

static int
s_check_name(const char *field, const char *s, bool required,
             kl_status_t *status)
{
    return kl_valid_check_text(field, s, TENANT_NAME_MAX, required, status);
}

static int
s_check_subdomain(const tenant_service_t *self, const char *s,
                  kl_status_t *status)
{
    int rc = kl_subdomain_validate(s, status);
    if (rc < 0)
        return rc;
    if (kl_subdomain_reserved(s, (const char *const *)self->reserved,
                              self->n_reserved))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "subdomain \"%s\" is reserved", s);
    return 0;
}

/* --- page tokens (kl_valid): the last row's created_at and id -------- */

static int
s_token_decode(const char *token, tenant_store_page_t *page, char id[37],
               kl_status_t *status)
{
    int64_t usec = 0;
    int rc = kl_valid_page_token_decode(token, &usec, id, status);
    if (rc < 0)
        return rc;
    page->after = true;
    page->after_usec = usec;
    page->after_id = id;
    return 0;
}

/* --- answering -------------------------------------------------------- */

static void
s_tenant_msg(const tenant_row_t *row, Kowloon__Tenant__Tenant *t)
{
    kowloon__tenant__tenant__init(t);
    t->id = (char *)row->id;
    t->subdomain = (char *)row->subdomain;
    t->name = (char *)row->name;
    t->plan = (char *)row->plan;
    t->status = (char *)row->status;
    t->isolation = (char *)row->isolation;
    t->created_at = (char *)row->created_at;
    t->updated_at = (char *)row->updated_at;
    t->status_changed_at = (char *)row->status_changed_at;
    t->db_server = (char *)row->db_server;
    t->db_name = (char *)row->db_name;
    t->moving = row->moving;
}

static void
s_key_msg(const tenant_key_row_t *row, Kowloon__Tenant__ApiKey *k)
{
    kowloon__tenant__api_key__init(k);
    k->id = (char *)row->id;
    k->tenant_id = (char *)row->tenant_id;
    k->name = (char *)row->name;
    k->created_at = (char *)row->created_at;
}

/* Publishes a change after commit. Events are hints: a failure is logged
 * and the call still succeeds (caches expire by TTL). */
static void
s_publish_to(const tenant_service_t *self, kl_redis_t *redis, const char *kind,
             const char *id, const char *tenant_id, const char *subdomain,
             const char *action)
{
    if (!self->redis_url[0])
        return;
    Kowloon__Events__ChangeEvent ev = KOWLOON__EVENTS__CHANGE_EVENT__INIT;
    ev.kind = (char *)kind;
    ev.id = (char *)id;
    ev.tenant_id = (char *)tenant_id;
    ev.subdomain = (char *)(subdomain ? subdomain : "");
    ev.action = (char *)action;
    kl_status_t st;
    if (kl_redis_publish_event(redis, self->events_channel, &ev, &st) < 0)
        KL_LOG(KL_WARN, "%s %s event for %s not published: %s, ignored", kind,
               action, id, st.message);
}

/* s_publish_to on the worker's Redis connection. */
static void
s_publish(const tenant_service_t *self, kl_service_worker_t *w,
          const char *kind, const char *id, const char *tenant_id,
          const char *subdomain, const char *action)
{
    s_publish_to(self, w->redis, kind, id, tenant_id, subdomain, action);
}

static void
s_answer_tenant(const tenant_row_t *row,
                Kowloon__Tenant__Tenant_Closure closure, void *closure_data)
{
    Kowloon__Tenant__Tenant t;
    s_tenant_msg(row, &t);
    closure(&t, closure_data);
}

/* --- placement -------------------------------------------------------- */

/* The database server of a new database tenant: the one asked for (it
 * must be configured), else the configured server with the fewest live
 * database tenants, the first listed on a tie. */
static int
s_pick_server(const tenant_service_t *self, kl_service_worker_t *w,
              const char *asked, char out[KL_TENANT_NAME_MAX],
              kl_status_t *status)
{
    const char *const *names = NULL;
    size_t n = self->prov ? tenant_provision_servers(self->prov, &names) : 0;
    if (!kl_valid_empty(asked)) {
        if (n > 0 && !tenant_provision_has_server(self->prov, asked))
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "db_server \"%.64s\" is not a configured "
                                 "database server",
                                 asked);
        if (n == 0 && strcmp(asked, "main") != 0)
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "db_server \"%.64s\" is not a configured "
                                 "database server",
                                 asked);
        snprintf(out, KL_TENANT_NAME_MAX, "%s", asked);
        return 0;
    }
    /* Fewest live database tenants first, configuration order on a tie;
     * a server that does not answer is passed over. */
    int64_t counts[64];
    bool used[64] = {false};
    if (n > 64)
        n = 64;
    for (size_t i = 0; i < n; i++) {
        int rc =
            tenant_store_count_by_server(w->pg, names[i], &counts[i], status);
        if (rc < 0)
            return rc;
    }
    if (n == 0) {
        snprintf(out, KL_TENANT_NAME_MAX, "main");
        return 0;
    }
    for (size_t round = 0; round < n; round++) {
        size_t best = n;
        for (size_t i = 0; i < n; i++)
            if (!used[i] && (best == n || counts[i] < counts[best]))
                best = i;
        used[best] = true;
        kl_status_t probe_st;
        kl_pg_t *probe =
            tenant_provision_owner(self->prov, names[best], NULL, &probe_st);
        PGresult *res =
            probe ? kl_pg_query(probe, NULL, "SELECT 1", 0, NULL, &probe_st)
                  : NULL;
        bool up = res != NULL;
        PQclear(res);
        kl_pg_destroy(&probe);
        if (up) {
            snprintf(out, KL_TENANT_NAME_MAX, "%s", names[best]);
            return 0;
        }
        KL_LOG(KL_WARN, "database server \"%s\" passed over: %s", names[best],
               probe_st.message);
    }
    return kl_status_set(status, KL_UNAVAILABLE, "no database server answers");
}

/* Provisions a new schema or database tenant under its claim
 * (tenant_creations). */
static int
s_provision(const tenant_service_t *self, kl_service_worker_t *w,
            const tenant_row_t *row, tenant_mover_t **claim,
            kl_status_t *status)
{
    if (strcmp(row->isolation, "row") == 0)
        return 0;
    if (!self->prov) {
        KL_LOG(KL_WARN,
               "tenant %s recorded as %s but not provisioned: "
               "KOWLOON_TENANT_DB_OWNER_SERVERS is empty",
               row->id, row->isolation);
        return 0;
    }
    return tenant_creations_provision(self->prov, self->shared_schema, w->pg,
                                      row, claim, status);
}

static int
s_recover_creations(const tenant_service_t *self, kl_pg_t *pg,
                    const char *subdomain, size_t *removed, kl_status_t *status)
{
    *removed = 0;
    if (!self->prov)
        return 0;
    return tenant_creations_recover(self->prov, self->shared_schema, pg,
                                    subdomain, removed, status);
}

/* MigrationService.ProvisionTenant: the migrate hook in production. */
static int
s_migrate_rpc(void *arg, const kl_tenant_place_t *place, kl_status_t *status)
{
    tenant_service_t *self = arg;
    Kowloon__Migration__ProvisionTenantRequest req =
        KOWLOON__MIGRATION__PROVISION_TENANT_REQUEST__INIT;
    req.tenant_id = (char *)place->tenant_id;
    req.isolation = (char *)kl_isolation_name(place->isolation);
    /* The target's server: the tenant's record may still name another
     * placement (a move provisions before it switches). */
    req.db_server = place->isolation == KL_ISOLATION_DATABASE
                        ? (char *)place->db_server
                        : (char *)"";
    kl_call_ctx_t ctx = {.tenant_id = place->tenant_id};
    kl_call_opts_t copts = {.timeout_ms = 60000, .ctx = &ctx};
    ProtobufCMessage *out = NULL;
    int rc = kl_rpc_client_call(self->migration, "ProvisionTenant", &req.base,
                                &copts, &out, status);
    if (out)
        protobuf_c_message_free_unpacked(out, NULL);
    return rc;
}

/* --- handlers --------------------------------------------------------- */

static void
s_create(Kowloon__Tenant__TenantService_Service *svc,
         const Kowloon__Tenant__CreateTenantRequest *in,
         Kowloon__Tenant__Tenant_Closure closure, void *closure_data)
{
    tenant_service_t *self = (tenant_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    const char *plan = kl_valid_empty(in->plan) ? self->default_plan : in->plan;
    const char *isolation =
        kl_valid_empty(in->isolation) ? self->default_isolation : in->isolation;
    const char *status = kl_valid_empty(in->status) ? "trialing" : in->status;
    tenant_row_t row;

    int rc = s_check_subdomain(self, in->subdomain, &st);
    if (rc == 0)
        rc = s_check_name("name", in->name, true, &st);
    if (rc == 0)
        rc = kl_valid_check_plan("plan", plan, &st);
    if (rc == 0 && !kl_valid_one_of(isolation, s_isolations))
        rc = kl_status_set(&st, KL_INVALID_ARGUMENT,
                           "isolation \"%.64s\" is invalid: want row, schema "
                           "or database",
                           isolation);
    if (rc == 0 && !kl_valid_one_of(status, s_create_statuses))
        rc = kl_status_set(&st, KL_INVALID_ARGUMENT,
                           "status \"%.64s\" is invalid at creation: want "
                           "trialing or active",
                           status);
    char server[KL_TENANT_NAME_MAX] = "";
    if (rc == 0 && strcmp(isolation, "database") == 0)
        rc = s_pick_server(self, w, in->db_server, server, &st);
    /* Schema and database tenants are hidden until provisioned, and their
     * id is claimed before their record exists. */
    bool provisioning = self->prov && strcmp(isolation, "row") != 0;
    tenant_mover_t *claim = NULL;
    char id[37] = "";
    if (rc == 0 && provisioning &&
        !(claim = tenant_creations_claim(self->prov, id, &st)))
        rc = -(int)st.code;
    const char *new_id = provisioning ? id : NULL;
    if (rc == 0)
        rc = tenant_store_create(w->pg, new_id, in->subdomain, in->name, plan,
                                 isolation, server, status, provisioning, &row,
                                 &st);
    size_t removed = 0;
    /* The subdomain may be held by a creation a dead process left. */
    if (rc == -KL_ALREADY_EXISTS &&
        s_recover_creations(self, w->pg, in->subdomain, &removed, &st) == 0 &&
        removed > 0)
        rc = tenant_store_create(w->pg, new_id, in->subdomain, in->name, plan,
                                 isolation, server, status, provisioning, &row,
                                 &st);
    else if (rc == -KL_ALREADY_EXISTS)
        kl_status_set(&st, KL_ALREADY_EXISTS, "subdomain \"%s\" is taken",
                      in->subdomain);
    if (rc == 0)
        rc = s_provision(self, w, &row, &claim, &st);
    tenant_mover_destroy(&claim);
    if (rc < 0) {
        kl_service_fail(closure_data, "Create", &st);
        closure(NULL, closure_data);
        return;
    }
    KL_LOG(KL_INFO, "tenant %s created with subdomain \"%s\"", row.id,
           row.subdomain);
    s_publish(self, w, "tenant", row.id, row.id, row.subdomain, "created");
    s_answer_tenant(&row, closure, closure_data);
}

static void
s_get(Kowloon__Tenant__TenantService_Service *svc,
      const Kowloon__Tenant__GetTenantRequest *in,
      Kowloon__Tenant__Tenant_Closure closure, void *closure_data)
{
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    tenant_row_t row;
    int rc = kl_valid_check_uuid("id", in->id, &st);
    if (rc == 0)
        rc = tenant_store_get(w->pg, in->id, &row, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "Get", &st);
        closure(NULL, closure_data);
        return;
    }
    s_answer_tenant(&row, closure, closure_data);
}

static void
s_get_by_subdomain(Kowloon__Tenant__TenantService_Service *svc,
                   const Kowloon__Tenant__GetBySubdomainRequest *in,
                   Kowloon__Tenant__Tenant_Closure closure, void *closure_data)
{
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    tenant_row_t row;
    int rc = kl_subdomain_validate(in->subdomain, &st);
    if (rc == 0)
        rc = tenant_store_get_by_subdomain(w->pg, in->subdomain, &row, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "GetBySubdomain", &st);
        closure(NULL, closure_data);
        return;
    }
    s_answer_tenant(&row, closure, closure_data);
}

static void
s_list(Kowloon__Tenant__TenantService_Service *svc,
       const Kowloon__Tenant__ListTenantsRequest *in,
       Kowloon__Tenant__ListTenantsResponse_Closure closure, void *closure_data)
{
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    tenant_store_page_t page = {0};
    char after_id[37];
    int rc = kl_valid_check_page_size(in->page_size, S_PAGE_MAX, S_PAGE_DEFAULT,
                                      &page.limit, &st);
    if (rc == 0 && !kl_valid_empty(in->status)) {
        if (kl_valid_one_of(in->status, s_all_statuses))
            page.status = in->status;
        else
            rc = kl_status_set(&st, KL_INVALID_ARGUMENT,
                               "status \"%.64s\" is invalid: want trialing, "
                               "active, past_due, suspended or deleted",
                               in->status);
    }
    if (rc == 0 && !kl_valid_empty(in->page_token))
        rc = s_token_decode(in->page_token, &page, after_id, &st);

    tenant_row_t *rows = NULL;
    size_t n = 0;
    bool more = false;
    if (rc == 0)
        rc = tenant_store_list(w->pg, &page, &rows, &n, &more, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "List", &st);
        closure(NULL, closure_data);
        return;
    }
    Kowloon__Tenant__Tenant *msgs = kl_calloc(n ? n : 1, sizeof *msgs);
    Kowloon__Tenant__Tenant **ptrs = kl_calloc(n ? n : 1, sizeof *ptrs);
    for (size_t i = 0; i < n; i++) {
        s_tenant_msg(&rows[i], &msgs[i]);
        ptrs[i] = &msgs[i];
    }
    char token[KL_VALID_PAGE_TOKEN_SIZE] = "";
    if (more && n > 0)
        kl_valid_page_token_encode(rows[n - 1].created_usec, rows[n - 1].id,
                                   token, sizeof token);
    Kowloon__Tenant__ListTenantsResponse out =
        KOWLOON__TENANT__LIST_TENANTS_RESPONSE__INIT;
    out.n_tenants = n;
    out.tenants = ptrs;
    out.next_page_token = token;
    closure(&out, closure_data);
    free(ptrs);
    free(msgs);
    free(rows);
}

/* Update, Suspend and Resume: change fields, publish, answer. */
static void
s_change(tenant_service_t *self, void *closure_data, const char *what,
         const char *id, const char *name, const char *plan, const char *status,
         const char *action, Kowloon__Tenant__Tenant_Closure closure)
{
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    tenant_row_t row;
    int rc = kl_valid_check_uuid("id", id, &st);
    if (rc == 0)
        rc = tenant_store_update(w->pg, id, name, plan, status, &row, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, what, &st);
        closure(NULL, closure_data);
        return;
    }
    KL_LOG(KL_INFO, "tenant %s %s", row.id, action);
    s_publish(self, w, "tenant", row.id, row.id, row.subdomain, action);
    s_answer_tenant(&row, closure, closure_data);
}

static void
s_update(Kowloon__Tenant__TenantService_Service *svc,
         const Kowloon__Tenant__UpdateTenantRequest *in,
         Kowloon__Tenant__Tenant_Closure closure, void *closure_data)
{
    kl_status_t st;
    const char *name = kl_valid_empty(in->name) ? NULL : in->name;
    const char *plan = kl_valid_empty(in->plan) ? NULL : in->plan;
    const char *status = kl_valid_empty(in->status) ? NULL : in->status;
    int rc = kl_valid_check_uuid("id", in->id, &st);
    if (rc == 0 && !name && !plan && !status)
        rc = kl_status_set(&st, KL_INVALID_ARGUMENT,
                           "nothing to update: set name, plan or status");
    if (rc == 0 && name)
        rc = s_check_name("name", name, true, &st);
    if (rc == 0 && plan)
        rc = kl_valid_check_plan("plan", plan, &st);
    if (rc == 0 && status && strcmp(status, "deleted") == 0)
        rc = kl_status_set(&st, KL_INVALID_ARGUMENT,
                           "status cannot be set to deleted: use Delete");
    if (rc == 0 && status && !kl_valid_one_of(status, s_update_statuses))
        rc = kl_status_set(&st, KL_INVALID_ARGUMENT,
                           "status \"%.64s\" is invalid: want trialing, "
                           "active, past_due or suspended",
                           status);
    if (rc < 0) {
        kl_service_fail(closure_data, "Update", &st);
        closure(NULL, closure_data);
        return;
    }
    s_change((tenant_service_t *)svc, closure_data, "Update", in->id, name,
             plan, status, "updated", closure);
}

static void
s_suspend(Kowloon__Tenant__TenantService_Service *svc,
          const Kowloon__Tenant__TenantIdRequest *in,
          Kowloon__Tenant__Tenant_Closure closure, void *closure_data)
{
    s_change((tenant_service_t *)svc, closure_data, "Suspend", in->id, NULL,
             NULL, "suspended", "suspended", closure);
}

static void
s_resume(Kowloon__Tenant__TenantService_Service *svc,
         const Kowloon__Tenant__TenantIdRequest *in,
         Kowloon__Tenant__Tenant_Closure closure, void *closure_data)
{
    s_change((tenant_service_t *)svc, closure_data, "Resume", in->id, NULL,
             NULL, "active", "resumed", closure);
}

static void
s_delete(Kowloon__Tenant__TenantService_Service *svc,
         const Kowloon__Tenant__TenantIdRequest *in,
         Kowloon__Tenant__Tenant_Closure closure, void *closure_data)
{
    tenant_service_t *self = (tenant_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    tenant_row_t row;
    tenant_key_row_t *revoked = NULL;
    size_t n_revoked = 0;
    int rc = kl_valid_check_uuid("id", in->id, &st);
    if (rc == 0)
        rc =
            tenant_store_delete(w->pg, in->id, &row, &revoked, &n_revoked, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "Delete", &st);
        closure(NULL, closure_data);
        return;
    }
    KL_LOG(KL_INFO, "tenant %s deleted, %zu API keys revoked", row.id,
           n_revoked);
    s_publish(self, w, "tenant", row.id, row.id, row.subdomain, "deleted");
    for (size_t i = 0; i < n_revoked; i++)
        s_publish(self, w, "api_key", revoked[i].id, row.id, NULL, "revoked");
    free(revoked);
    s_answer_tenant(&row, closure, closure_data);
}

static void
s_create_api_key(Kowloon__Tenant__TenantService_Service *svc,
                 const Kowloon__Tenant__CreateApiKeyRequest *in,
                 Kowloon__Tenant__NewApiKey_Closure closure, void *closure_data)
{
    tenant_service_t *self = (tenant_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    tenant_key_row_t row;
    char key[TENANT_APIKEY_LEN + 1];
    int rc = kl_valid_check_uuid("tenant_id", in->tenant_id, &st);
    if (rc == 0)
        rc = s_check_name("name", in->name, false, &st);
    if (rc == 0)
        rc = tenant_store_key_create(w->pg, in->tenant_id,
                                     in->name ? in->name : "", &row, key, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "CreateApiKey", &st);
        closure(NULL, closure_data);
        return;
    }
    /* The key itself is never logged. */
    KL_LOG(KL_INFO, "API key %s created for tenant %s", row.id, row.tenant_id);
    s_publish(self, w, "api_key", row.id, row.tenant_id, NULL, "created");
    Kowloon__Tenant__ApiKey listed;
    s_key_msg(&row, &listed);
    Kowloon__Tenant__NewApiKey k = KOWLOON__TENANT__NEW_API_KEY__INIT;
    k.id = listed.id;
    k.tenant_id = listed.tenant_id;
    k.name = listed.name;
    k.created_at = listed.created_at;
    k.secret = key;
    closure(&k, closure_data);
    memset(key, 0, sizeof key);
}

static void
s_delete_api_key(Kowloon__Tenant__TenantService_Service *svc,
                 const Kowloon__Tenant__DeleteApiKeyRequest *in,
                 Kowloon__Tenant__DeleteApiKeyResponse_Closure closure,
                 void *closure_data)
{
    tenant_service_t *self = (tenant_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    int rc = kl_valid_check_uuid("tenant_id", in->tenant_id, &st);
    if (rc == 0 && kl_valid_empty(in->key_id))
        rc = kl_status_set(&st, KL_INVALID_ARGUMENT, "key_id is required");
    if (rc == 0 && !tenant_apikey_id_valid(in->key_id))
        rc = kl_status_set(&st, KL_INVALID_ARGUMENT,
                           "key_id \"%.64s\" is not an API key id: want 16 "
                           "lowercase hex characters",
                           in->key_id);
    if (rc == 0)
        rc = tenant_store_key_delete(w->pg, in->tenant_id, in->key_id, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "DeleteApiKey", &st);
        closure(NULL, closure_data);
        return;
    }
    KL_LOG(KL_INFO, "API key %s of tenant %s revoked", in->key_id,
           in->tenant_id);
    s_publish(self, w, "api_key", in->key_id, in->tenant_id, NULL, "revoked");
    Kowloon__Tenant__DeleteApiKeyResponse out =
        KOWLOON__TENANT__DELETE_API_KEY_RESPONSE__INIT;
    closure(&out, closure_data);
}

static void
s_list_api_keys(Kowloon__Tenant__TenantService_Service *svc,
                const Kowloon__Tenant__TenantIdRequest *in,
                Kowloon__Tenant__ListApiKeysResponse_Closure closure,
                void *closure_data)
{
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    tenant_key_row_t *rows = NULL;
    size_t n = 0;
    int rc = kl_valid_check_uuid("id", in->id, &st);
    if (rc == 0)
        rc = tenant_store_key_list(w->pg, in->id, &rows, &n, &st);
    if (rc < 0) {
        kl_service_fail(closure_data, "ListApiKeys", &st);
        closure(NULL, closure_data);
        return;
    }
    Kowloon__Tenant__ApiKey *msgs = kl_calloc(n ? n : 1, sizeof *msgs);
    Kowloon__Tenant__ApiKey **ptrs = kl_calloc(n ? n : 1, sizeof *ptrs);
    for (size_t i = 0; i < n; i++) {
        s_key_msg(&rows[i], &msgs[i]);
        ptrs[i] = &msgs[i];
    }
    Kowloon__Tenant__ListApiKeysResponse out =
        KOWLOON__TENANT__LIST_API_KEYS_RESPONSE__INIT;
    out.n_keys = n;
    out.keys = ptrs;
    closure(&out, closure_data);
    free(ptrs);
    free(msgs);
    free(rows);
}

static void
s_resolve_api_key(Kowloon__Tenant__TenantService_Service *svc,
                  const Kowloon__Tenant__ResolveApiKeyRequest *in,
                  Kowloon__Tenant__ResolveApiKeyResponse_Closure closure,
                  void *closure_data)
{
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    char id[TENANT_APIKEY_ID_LEN + 1];
    char tenant_id[37] = "";
    uint8_t presented[TENANT_APIKEY_HASH_LEN];
    uint8_t stored[TENANT_APIKEY_HASH_LEN];
    bool usable = false;

    /* Every way of failing answers the same, so a caller learns nothing
     * about which keys exist. A database failure is the one exception: it
     * is not the caller's fault and must not look like a bad key. */
    bool ok = tenant_apikey_parse(in->key, id, presented);
    if (ok) {
        int rc =
            tenant_store_key_lookup(w->pg, id, tenant_id, stored, &usable, &st);
        if (rc < 0 && rc != -KL_NOT_FOUND) {
            kl_service_fail(closure_data, "ResolveApiKey", &st);
            closure(NULL, closure_data);
            return;
        }
        if (rc == -KL_NOT_FOUND) {
            /* Compare anyway, against nothing that can match. */
            memset(stored, 0, sizeof stored);
            usable = false;
        }
        ok = tenant_apikey_hash_equal(presented, stored) && usable;
    }
    if (!ok) {
        kl_call_fail(kl_call_from(closure_data), KL_UNAUTHENTICATED,
                     "invalid API key");
        closure(NULL, closure_data);
        return;
    }
    Kowloon__Tenant__ResolveApiKeyResponse out =
        KOWLOON__TENANT__RESOLVE_API_KEY_RESPONSE__INIT;
    out.tenant_id = tenant_id;
    out.key_id = id;
    closure(&out, closure_data);
}

/* The change events of a move: a tenant_moves_event_fn whose arg is an
 * s_move_events_t (redis NULL: events off). */
typedef struct {
    const tenant_service_t *self;
    kl_redis_t *redis;
} s_move_events_t;

static void
s_move_event(void *arg, const tenant_row_t *row, const char *action)
{
    s_move_events_t *ev = arg;
    if (ev->redis)
        s_publish_to(ev->self, ev->redis, "tenant", row->id, row->id,
                     row->subdomain, action);
}

static void
s_move(Kowloon__Tenant__TenantService_Service *svc,
       const Kowloon__Tenant__MoveTenantRequest *in,
       Kowloon__Tenant__MoveTenantResponse_Closure closure, void *closure_data)
{
    tenant_service_t *self = (tenant_service_t *)svc;
    kl_service_worker_t *w = kl_service_worker(closure_data);
    kl_status_t st;
    tenant_row_t row;
    kl_tenant_place_t to;
    kl_isolation_t target = KL_ISOLATION_ROW;
    char server[KL_TENANT_NAME_MAX] = "";
    tenant_mover_result_t result;

    int rc = kl_valid_check_uuid("id", in->id, &st);
    if (rc == 0 && (kl_valid_empty(in->isolation) ||
                    kl_isolation_parse(in->isolation, &target, &st) < 0 ||
                    target == KL_ISOLATION_ROW))
        rc = kl_status_set(&st, KL_INVALID_ARGUMENT,
                           "isolation \"%.64s\" is invalid: want schema or "
                           "database",
                           in->isolation ? in->isolation : "");
    if (rc == 0 && !self->prov)
        rc = kl_status_set(&st, KL_FAILED_PRECONDITION,
                           "moves need KOWLOON_TENANT_DB_OWNER_SERVERS");
    /* Unknown and deleted tenants are refused before a server is chosen;
     * tenant_moves_move reads the record again under the tenant's claim. */
    if (rc == 0)
        rc = tenant_store_get(w->pg, in->id, &row, &st);
    if (rc == 0 && strcmp(row.status, "deleted") == 0)
        rc = kl_status_set(&st, KL_FAILED_PRECONDITION, "tenant %s is deleted",
                           row.id);
    if (rc == 0 && target == KL_ISOLATION_DATABASE)
        rc = s_pick_server(self, w, in->db_server, server, &st);
    if (rc == 0)
        rc = kl_tenant_place(row.id, target, self->shared_schema, server, &to,
                             &st);
    if (rc == 0) {
        s_move_events_t ev = {self, self->redis_url[0] ? w->redis : NULL};
        rc = tenant_moves_move(&self->moves, w->pg, &to,
                               !kl_valid_empty(in->db_server), &ev, &row,
                               &result, &st);
    }
    if (rc < 0) {
        kl_service_fail(closure_data, "Move", &st);
        closure(NULL, closure_data);
        return;
    }
    Kowloon__Tenant__Tenant t;
    s_tenant_msg(&row, &t);
    Kowloon__Tenant__TableCount counts[TENANT_MOVER_MAX_TABLES];
    Kowloon__Tenant__TableCount *ptrs[TENANT_MOVER_MAX_TABLES];
    for (size_t i = 0; i < result.n_counts; i++) {
        kowloon__tenant__table_count__init(&counts[i]);
        counts[i].table = result.counts[i].table;
        counts[i].rows = result.counts[i].rows;
        ptrs[i] = &counts[i];
    }
    Kowloon__Tenant__MoveTenantResponse out =
        KOWLOON__TENANT__MOVE_TENANT_RESPONSE__INIT;
    out.tenant = &t;
    out.n_counts = result.n_counts;
    out.counts = ptrs;
    out.elapsed_ms = result.elapsed_ms;
    closure(&out, closure_data);
}

/* --- object ----------------------------------------------------------- */

static const Kowloon__Tenant__TenantService_Service s_base =
    KOWLOON__TENANT__TENANT_SERVICE__INIT(s_);

tenant_service_t *
tenant_service_new(const tenant_service_opts_t *opts, kl_status_t *status)
{
    if (kl_valid_empty(opts->database_url)) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "tenant service needs a database URL");
        return NULL;
    }
    if (!kl_valid_plan(opts->default_plan)) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "default plan \"%.64s\" is invalid: want 1 to 63 of "
                      "a-z, 0-9, _ and -",
                      opts->default_plan ? opts->default_plan : "");
        return NULL;
    }
    if (!opts->default_isolation ||
        !kl_valid_one_of(opts->default_isolation, s_isolations)) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "default isolation must be row, schema or database");
        return NULL;
    }
    if (kl_valid_empty(opts->events_channel)) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "tenant service needs an events channel");
        return NULL;
    }
    /* A malformed Redis URL is a configuration error: refuse to start
     * rather than run without events. */
    kl_redis_t *probe = kl_redis_new(opts->redis_url, status);
    if (!probe)
        return NULL;
    kl_redis_destroy(&probe);

    tenant_service_t *self = kl_calloc(1, sizeof *self);
    self->base = s_base;
    self->database_url = kl_strdup(opts->database_url);
    self->redis_url = kl_strdup(opts->redis_url ? opts->redis_url : "");
    self->events_channel = kl_strdup(opts->events_channel);
    self->default_plan = kl_strdup(opts->default_plan);
    self->default_isolation = kl_strdup(opts->default_isolation);
    self->n_reserved = opts->n_reserved;
    self->reserved = kl_calloc(opts->n_reserved ? opts->n_reserved : 1,
                               sizeof *self->reserved);
    for (size_t i = 0; i < opts->n_reserved; i++)
        self->reserved[i] = kl_strdup(opts->reserved[i]);
    self->n_owner_servers = opts->n_owner_servers;
    self->owner_servers = kl_calloc(opts->n_owner_servers + 1, sizeof(char *));
    for (size_t i = 0; i < opts->n_owner_servers; i++)
        self->owner_servers[i] = kl_strdup(opts->owner_servers[i]);
    self->app_role = kl_strdup(opts->app_role ? opts->app_role : "");
    self->shared_schema =
        kl_strdup(kl_valid_empty(opts->shared_schema) ? "workspace"
                                                      : opts->shared_schema);
    self->migrate = opts->migrate;
    self->migrate_arg = opts->migrate_arg;
    self->migration = opts->migration;
    if (!self->migrate && self->migration) {
        self->migrate = s_migrate_rpc;
        self->migrate_arg = self;
    }
    self->move_lock_timeout_ms =
        opts->move_lock_timeout_ms > 0 ? opts->move_lock_timeout_ms : 30000;
    self->move_stop_at = opts->move_stop_at;
    /* The Redis URL was checked above. */
    self->std =
        kl_service_new(&(kl_service_opts_t){.name = "tenant",
                                            .database_url = self->database_url,
                                            .redis_url = self->redis_url});
    return self;
}

void
tenant_service_destroy(tenant_service_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    tenant_service_t *self = *self_p;
    kl_service_destroy(&self->std);
    free(self->database_url);
    free(self->redis_url);
    free(self->events_channel);
    free(self->default_plan);
    free(self->default_isolation);
    for (size_t i = 0; i < self->n_reserved; i++)
        free(self->reserved[i]);
    free(self->reserved);
    for (size_t i = 0; i < self->n_owner_servers; i++)
        free(self->owner_servers[i]);
    free(self->owner_servers);
    free(self->app_role);
    free(self->shared_schema);
    tenant_provision_destroy(&self->prov);
    free(self);
    *self_p = NULL;
}

int
tenant_service_migrate(const tenant_service_t *self, kl_status_t *status)
{
    kl_pg_t *pg = kl_pg_new(self->database_url);
    int rc = tenant_store_migrate(pg, status);
    /* Start-up, before any worker runs: the role, the provisioner and the
     * moves' settings are filled in here, once, so the const of the
     * interface is only about callers. */
    tenant_service_t *mut = (tenant_service_t *)self;
    if (rc == 0 && self->n_owner_servers > 0 && !self->app_role[0]) {
        PGresult *res =
            kl_pg_query(pg, "tenant_current_user", "SELECT current_user::text",
                        0, NULL, status);
        rc = res ? 0 : -(int)status->code;
        if (res) {
            free(mut->app_role);
            mut->app_role = kl_strdup(PQgetvalue(res, 0, 0));
            PQclear(res);
        }
    }
    if (rc == 0 && self->n_owner_servers > 0 && !self->prov) {
        tenant_provision_opts_t popts = {
            .owner_servers = (const char *const *)self->owner_servers,
            .n_owner_servers = self->n_owner_servers,
            .app_role = self->app_role,
            .shared_schema = self->shared_schema,
            .migrate = self->migrate,
            .migrate_arg = self->migrate_arg,
        };
        mut->prov = tenant_provision_new(&popts, status);
        if (!mut->prov)
            rc = -(int)status->code;
        else if (!self->migrate)
            KL_LOG(KL_WARN, "no migration service configured: new schema and "
                            "database tenants get no tables");
        if (rc == 0)
            rc = tenant_provision_prepare(self->prov, status);
    }
    /* The switch of a move is one transaction when this service's own
     * role may write the fence (it owns it when DATABASE_URL's role is the
     * main owner role, as in every shipped stage); otherwise two steps,
     * the fence first, and a recovery settles a process that died between
     * them. Nothing is granted for it: the application role stays
     * read-only on the fence. */
    bool may_fence = false;
    if (rc == 0 && self->prov)
        rc = tenant_store_may_fence(pg, &may_fence, status);
    if (rc == 0 && self->prov) {
        mut->moves = (tenant_moves_opts_t){
            .prov = self->prov,
            .shared_schema = self->shared_schema,
            .lock_timeout_ms = self->move_lock_timeout_ms,
            .switch_fences = may_fence,
            .stop_at = self->move_stop_at,
            .event = s_move_event,
        };
        if (!may_fence)
            KL_LOG(KL_INFO, "the role of KOWLOON_DATABASE_URL may not write "
                            "the placement fence: a move switches in two "
                            "steps");
    }
    kl_pg_destroy(&pg);
    return rc;
}

int
tenant_service_recover(const tenant_service_t *self, kl_status_t *status)
{
    if (!self->prov)
        return 0;
    kl_pg_t *pg = kl_pg_new(self->database_url);
    kl_redis_t *redis = NULL;
    if (self->redis_url[0]) {
        kl_status_t rst;
        redis = kl_redis_new(self->redis_url, &rst);
        if (!redis)
            KL_LOG(KL_WARN, "no events for settled moves: %s", rst.message);
    }
    s_move_events_t ev = {self, redis};
    size_t settled = 0, left = 0, removed = 0;
    int rc = s_recover_creations(self, pg, NULL, &removed, status);
    if (rc == 0)
        rc = tenant_moves_recover(&self->moves, pg, &ev, &settled, &left,
                                  status);
    /* Each tenant left for a failure was logged at warn already; one left
     * because another process holds it is that process's to settle. */
    if (rc == 0 && (settled > 0 || left > 0))
        KL_LOG(KL_INFO, "unsettled moves: %zu settled, %zu left as they were",
               settled, left);
    kl_redis_destroy(&redis);
    kl_pg_destroy(&pg);
    return rc;
}

ProtobufCService *
tenant_service_base(tenant_service_t *self)
{
    return &self->base.base;
}

void
tenant_service_server_opts(tenant_service_t *self, kl_rpc_server_opts_t *opts)
{
    kl_service_server_opts(self->std, opts);
}
