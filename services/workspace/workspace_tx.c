/*
 * workspace_tx: a transaction with app.tenant_id set for its duration.
 */
#include "workspace_tx.h"

int
workspace_tx_begin(kl_pg_t *pg, const char *tenant_id, kl_status_t *status)
{
    /* An empty setting would match no row anyway; refusing it here turns a
     * caller's mistake into an error instead of an empty answer. */
    if (!tenant_id || !*tenant_id)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "tenant-scoped transaction needs a tenant id");
    int rc = kl_pg_begin(pg, status);
    if (rc < 0)
        return rc;
    /* The third argument, true, makes the setting local to this
     * transaction: COMMIT or ROLLBACK restores the session's value (none). */
    const char *params[] = {tenant_id};
    PGresult *res = kl_pg_query(pg, "workspace_tx_tenant",
                                "SELECT set_config('app.tenant_id', $1, true)",
                                1, params, status);
    if (!res) {
        kl_pg_rollback(pg);
        return -(int)status->code;
    }
    PQclear(res);
    return 0;
}

int
workspace_tx_end(kl_pg_t *pg, int rc, kl_status_t *status)
{
    if (rc < 0) {
        kl_pg_rollback(pg);
        return rc;
    }
    return kl_pg_commit(pg, status);
}
