/*
 * tenant_creations: creating a schema or database tenant so that a process
 * dying half way leaves nothing half made for long (docs/isolation.md,
 * "Creating a tenant when the process can die").
 *
 * The record is made first with provisioning set (tenant_store_create),
 * which hides it from every read and change; tenant_creations_provision
 * then holds the tenant's claim (tenant_mover_new: a session advisory lock
 * that dies with the process) while it provisions and fences, and makes
 * the tenant visible. A record still provisioning
 * TENANT_CREATIONS_STALE_S after it was made, whose claim nobody holds,
 * was left by a dead process: tenant_creations_recover drops what was made
 * of its schema or database and deletes the record.
 */
#ifndef TENANT_CREATIONS_H
#define TENANT_CREATIONS_H

#include "kl_code.h"
#include "kl_pg.h"
#include "tenant_provision.h"
#include "tenant_store.h"

#include <stddef.h>

/* Older than this (and unclaimed): a dead process's. Its creator takes the
 * claim milliseconds after recording it. */
#define TENANT_CREATIONS_STALE_S 60

/* Provisions row (recorded provisioning, schema or database model) under
 * its claim, fences it and makes it visible. On failure drops what was
 * made, removes the record (it never existed) and answers UNAVAILABLE (a
 * server down) or INTERNAL "provisioning the tenant's <model> failed". pg:
 * the main database (the record). */
int tenant_creations_provision(const tenant_provision_t *prov,
                               const char *shared_schema, kl_pg_t *pg,
                               const tenant_row_t *row, kl_status_t *status);

/* Removes the creations a dead process left, oldest first; only
 * subdomain's unless it is NULL. One it cannot remove is logged and left.
 * *removed counts those removed; -code only when they cannot be listed. */
int tenant_creations_recover(const tenant_provision_t *prov,
                             const char *shared_schema, kl_pg_t *pg,
                             const char *subdomain, size_t *removed,
                             kl_status_t *status);

#endif
