/*
 * tenant_creations: creating a schema or database tenant so that a process
 * dying half way leaves nothing half made for long (docs/isolation.md,
 * "Creating a tenant when the process can die").
 *
 * The new tenant's id is claimed first (tenant_creations_claim: a random
 * id, and its claim, tenant_mover_new, a session advisory lock that dies
 * with the process); then its record is made with provisioning set
 * (tenant_store_create), which hides it from every read and change;
 * tenant_creations_provision provisions and fences under that claim, makes
 * the tenant visible and only then lets the claim go. So a record still
 * provisioning whose claim nobody holds was left by a dead process, at any
 * age: tenant_creations_recover drops what was made of its schema or
 * database and deletes the record.
 */
#ifndef TENANT_CREATIONS_H
#define TENANT_CREATIONS_H

#include "kl_code.h"
#include "kl_pg.h"
#include "tenant_mover.h"
#include "tenant_provision.h"
#include "tenant_store.h"

#include <stddef.h>

/* A new tenant id (a random version 4 uuid) into id, and its claim, taken
 * before any record of it exists. NULL + UNAVAILABLE when the main
 * database cannot be reached. */
tenant_mover_t *tenant_creations_claim(const tenant_provision_t *prov,
                                       char id[37], kl_status_t *status);

/* Provisions row (recorded provisioning under the id *claim holds, schema
 * or database model), fences it, makes it visible, and ends the claim
 * (*claim is NULL after). On failure drops what was made, removes the
 * record (it never existed) and answers UNAVAILABLE (a server down) or
 * INTERNAL "provisioning the tenant's <model> failed". pg: the main
 * database (the record). */
int tenant_creations_provision(const tenant_provision_t *prov,
                               const char *shared_schema, kl_pg_t *pg,
                               const tenant_row_t *row, tenant_mover_t **claim,
                               kl_status_t *status);

/* Removes the creations a dead process left, oldest first; only
 * subdomain's unless it is NULL. One it cannot remove is logged and left.
 * *removed counts those removed; -code only when they cannot be listed. */
int tenant_creations_recover(const tenant_provision_t *prov,
                             const char *shared_schema, kl_pg_t *pg,
                             const char *subdomain, size_t *removed,
                             kl_status_t *status);

#endif
