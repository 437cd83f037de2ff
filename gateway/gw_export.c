/*
 * gw_export: one Export call per page; each page becomes one chunk.
 */
#include "gw_export.h"

#include "gw_reply.h"
#include "kl_alloc.h"
#include "kl_json.h"
#include "kl_log.h"
#include "kowloon/workspace.pb-c.h"

#include <civetweb.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fetches the page after token into *page (caller frees). */
static int
s_page(kl_rpc_client_t *client, const kl_call_ctx_t *ctx, int64_t timeout_ms,
       const char *token, Kowloon__Workspace__ExportPage **page,
       kl_status_t *status)
{
    Kowloon__Workspace__ExportRequest req =
        KOWLOON__WORKSPACE__EXPORT_REQUEST__INIT;
    kl_call_opts_t opts = {timeout_ms, true, ctx};
    ProtobufCMessage *out = NULL;

    req.page_token = (char *)token;
    *page = NULL;
    int rc =
        kl_rpc_client_call(client, "Export", &req.base, &opts, &out, status);
    if (rc < 0)
        return rc;
    *page = (Kowloon__Workspace__ExportPage *)out;
    return 0;
}

/* Appends the projects of page, as JSON, each preceded by a comma unless
 * it is the very first (*first). Caller frees the result. */
static char *
s_render(const Kowloon__Workspace__ExportPage *page, bool *first, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *buf = kl_malloc(cap);
    for (size_t i = 0; i < page->n_projects; i++) {
        json_t *j = kl_json_from_message(&page->projects[i]->base,
                                         KL_JSON_EMIT_DEFAULTS);
        char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        if (!text) {
            free(buf);
            return NULL;
        }
        size_t tl = strlen(text);
        while (n + tl + 2 > cap) {
            cap *= 2;
            buf = kl_realloc(buf, cap);
        }
        if (!*first)
            buf[n++] = ',';
        *first = false;
        memcpy(buf + n, text, tl);
        n += tl;
        free(text);
    }
    *len = n;
    return buf;
}

int
gw_export_stream(struct mg_connection *conn, kl_rpc_client_t *client,
                 const kl_call_ctx_t *ctx, int64_t timeout_ms,
                 const char *subdomain, kl_status_t *status)
{
    Kowloon__Workspace__ExportPage *page = NULL;
    char head[512];
    size_t head_len = 0;
    bool first = true;
    size_t projects = 0, pages = 0;

    int rc = s_page(client, ctx, timeout_ms, "", &page, status);
    if (rc < 0)
        return rc;

    /* From here on the status is 200 whatever happens. */
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 200 OK\r\n"
                     "Content-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n"
                     "X-Request-Id: %s\r\n"
                     "Cache-Control: no-store\r\n\r\n",
                     ctx->request_id ? ctx->request_id : "");
    bool ok = n > 0 && (size_t)n < sizeof head &&
              mg_write(conn, head, (size_t)n) == n;
    memcpy(head, "{\"tenant\":\"", 11);
    head_len = 11;
    gw_reply_json_escape(head, &head_len, sizeof head - 16,
                         subdomain ? subdomain : "");
    memcpy(head + head_len, "\",\"projects\":[", 14);
    head_len += 14;
    ok = ok && mg_send_chunk(conn, head, (unsigned)head_len) > 0;

    char *prev_token = NULL;
    while (ok && page) {
        size_t len = 0;
        char *chunk = s_render(page, &first, &len);
        projects += page->n_projects;
        pages++;
        if (!chunk) {
            KL_LOG(KL_ERROR,
                   "export: page %zu did not transcode, export cut "
                   "short",
                   pages);
            ok = false;
        } else {
            if (len && mg_send_chunk(conn, chunk, (unsigned)len) <= 0)
                ok = false;
            free(chunk);
        }
        const char *next = page->next_page_token ? page->next_page_token : "";
        if (!ok || !*next) {
            kowloon__workspace__export_page__free_unpacked(page, NULL);
            page = NULL;
            break;
        }
        if (prev_token && strcmp(prev_token, next) == 0) {
            KL_LOG(KL_ERROR, "export: Export repeated page token, export cut "
                             "short");
            ok = false;
            kowloon__workspace__export_page__free_unpacked(page, NULL);
            page = NULL;
            break;
        }
        free(prev_token);
        prev_token = kl_strdup(next);
        kowloon__workspace__export_page__free_unpacked(page, NULL);
        page = NULL;
        kl_status_t st;
        if (s_page(client, ctx, timeout_ms, prev_token, &page, &st) < 0) {
            KL_LOG(KL_ERROR,
                   "export: WorkspaceService.Export failed after %zu pages "
                   "(%zu projects sent): %s: %s; export cut short",
                   pages, projects, kl_code_name(st.code), st.message);
            ok = false;
        }
    }
    free(prev_token);
    if (ok)
        ok = mg_send_chunk(conn, "]}", 2) > 0;
    /* End the chunked body either way, so the connection stays usable; an
     * export cut short lacks its closing "]}". */
    mg_send_chunk(conn, "", 0);
    return 200;
}
