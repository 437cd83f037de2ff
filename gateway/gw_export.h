/*
 * gw_export: GET /api/export — the tenant's whole workspace as one JSON
 * document,
 *   {"tenant":"<subdomain>","projects":[<ProjectExport>, ...]}
 * streamed with chunked transfer encoding while WorkspaceService.Export is
 * called page after page (page_token), so the gateway holds one page at a
 * time, never the whole export.
 *
 * Errors: a failure of the first page is returned to the caller, who
 * answers it as any error (nothing was sent yet). A failure after the
 * first byte cannot change the status any more: it is logged, the chunked
 * body is ended there, and the document is left incomplete (no closing
 * "]}"), so that a client parsing it sees the export failed.
 */
#ifndef GW_EXPORT_H
#define GW_EXPORT_H

#include "kl_code.h"
#include "kl_rpc_client.h"

#include <stdint.h>

struct mg_connection;

/* Runs the export over client (WorkspaceService) with ctx (the tenant's
 * call context; borrowed). Returns the HTTP status sent (200), or -code
 * with status set when nothing was sent. */
int gw_export_stream(struct mg_connection *conn, kl_rpc_client_t *client,
                     const kl_call_ctx_t *ctx, int64_t timeout_ms,
                     const char *subdomain, kl_status_t *status);

#endif
