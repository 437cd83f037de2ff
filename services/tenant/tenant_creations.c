/*
 * tenant_creations: a new tenant's provisioning under its claim, and the
 * removal of creations a dead process left (tenant_creations.h).
 */
#include "tenant_creations.h"

#include "kl_log.h"
#include "kl_tenant_db.h"
#include "tenant_apikey.h"
#include "tenant_mover.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int
s_place_of(const char *shared_schema, const tenant_row_t *row,
           kl_tenant_place_t *out, kl_status_t *status)
{
    kl_isolation_t iso;
    int rc = kl_isolation_parse(row->isolation, &iso, status);
    if (rc == 0)
        rc = kl_tenant_place(row->id, iso, shared_schema, row->db_server, out,
                             status);
    return rc;
}

tenant_mover_t *
tenant_creations_claim(const tenant_provision_t *prov, char id[37],
                       kl_status_t *status)
{
    uint8_t b[16];
    if (tenant_apikey_random(b, sizeof b, status) < 0)
        return NULL;
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    snprintf(id, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
             "%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10],
             b[11], b[12], b[13], b[14], b[15]);
    /* A fresh random id: only a server that cannot be reached fails. */
    return tenant_mover_new(prov, id, status);
}

int
tenant_creations_provision(const tenant_provision_t *prov,
                           const char *shared_schema, kl_pg_t *pg,
                           const tenant_row_t *row, tenant_mover_t **claim,
                           kl_status_t *status)
{
    kl_tenant_place_t place;
    bool placed = false;
    int rc = s_place_of(shared_schema, row, &place, status);
    if (rc == 0)
        placed = true;
    if (rc == 0)
        rc = tenant_provision_create(prov, &place, status);
    if (rc == 0)
        rc = tenant_provision_fence(prov, row->id, row->isolation, status);
    if (rc == 0)
        rc = tenant_store_provisioned(pg, row->id, status);
    if (rc < 0) {
        KL_LOG(KL_WARN, "provisioning tenant %s (%s) failed: %s", row->id,
               row->isolation, status->message);
        kl_status_t ignored;
        if (placed)
            tenant_provision_drop(prov, &place, &ignored);
        if (tenant_store_purge(pg, row->id, &ignored) < 0)
            KL_LOG(KL_WARN,
                   "removing tenant %s failed: %s; the next start or a "
                   "Create of its subdomain removes it",
                   row->id, ignored.message);
        if (status->code != KL_UNAVAILABLE)
            kl_status_set(status, KL_INTERNAL,
                          "provisioning the tenant's %s failed",
                          row->isolation);
        rc = -(int)status->code;
    }
    /* Only now: until its record is final or gone, the claim says the
     * creation is alive. */
    tenant_mover_destroy(claim);
    return rc;
}

int
tenant_creations_recover(const tenant_provision_t *prov,
                         const char *shared_schema, kl_pg_t *pg,
                         const char *subdomain, size_t *removed,
                         kl_status_t *status)
{
    *removed = 0;
    tenant_row_t *rows = NULL;
    size_t n = 0;
    int rc = tenant_store_unprovisioned(pg, subdomain, &rows, &n, status);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        kl_status_t st;
        tenant_mover_t *claim = tenant_mover_new(prov, rows[i].id, &st);
        if (!claim) {
            /* Claimed: its creator is alive (it is provisioning now). */
            KL_LOG(st.code == KL_FAILED_PRECONDITION ? KL_DEBUG : KL_WARN,
                   "tenant %s: unfinished creation left alone: %s", rows[i].id,
                   st.message);
            continue;
        }
        /* Read again under the claim: its creator may have finished (and
         * let the claim go) since the list was read. */
        bool still = false;
        int trc = tenant_store_provisioning(pg, rows[i].id, &still, &st);
        if (trc == 0 && !still) {
            tenant_mover_destroy(&claim);
            continue;
        }
        kl_tenant_place_t place;
        if (trc == 0)
            trc = s_place_of(shared_schema, &rows[i], &place, &st);
        if (trc == 0)
            trc = tenant_provision_drop(prov, &place, &st);
        if (trc == 0)
            trc = tenant_store_purge(pg, rows[i].id, &st);
        tenant_mover_destroy(&claim);
        if (trc < 0) {
            KL_LOG(KL_WARN, "tenant %s: unfinished creation left: %s",
                   rows[i].id, st.message);
            continue;
        }
        (*removed)++;
        KL_LOG(KL_INFO,
               "tenant %s (\"%s\", %s): creation left unfinished by a dead "
               "process removed",
               rows[i].id, rows[i].subdomain, rows[i].isolation);
    }
    free(rows);
    return rc;
}
