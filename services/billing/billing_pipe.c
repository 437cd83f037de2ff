/*
 * billing_pipe: BEGIN with the first statements, COMMIT with the last, in
 * libpq's pipeline mode.
 */
#include "billing_pipe.h"

#include "kl_alloc.h"

#include <assert.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Statement names one worker prepares: BEGIN, COMMIT and billing's two
 * intake statements, with room to spare. */
#define S_NAMES_MAX 16
#define S_NAME_MAX 64

struct billing_pipe {
    PGconn *conn;    /* the connection the names below are prepared on */
    int backend_pid; /* its server process: a new connection may get the
                      * same address, never the same live backend */
    char prepared[S_NAMES_MAX][S_NAME_MAX];
    int n_prepared;
    PGconn *tx_conn; /* connection of the transaction begin opened */
};

billing_pipe_t *
billing_pipe_new(void)
{
    return kl_calloc(1, sizeof(billing_pipe_t));
}

void
billing_pipe_destroy(billing_pipe_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free(*self_p);
    *self_p = NULL;
}

/* Forgets what was prepared when conn is not the connection it was
 * prepared on. */
static void
s_track(billing_pipe_t *self, PGconn *conn)
{
    int pid = PQbackendPID(conn);
    if (conn == self->conn && pid == self->backend_pid)
        return;
    self->conn = conn;
    self->backend_pid = pid;
    self->n_prepared = 0;
}

static bool
s_is_prepared(const billing_pipe_t *self, const char *name)
{
    for (int i = 0; i < self->n_prepared; i++)
        if (strcmp(self->prepared[i], name) == 0)
            return true;
    return false;
}

static void
s_mark_prepared(billing_pipe_t *self, const char *name)
{
    if (s_is_prepared(self, name))
        return;
    /* More names than any caller uses: a programmer error. */
    assert(self->n_prepared < S_NAMES_MAX && strlen(name) < S_NAME_MAX);
    snprintf(self->prepared[self->n_prepared++], S_NAME_MAX, "%s", name);
}

/* One line of libpq's message. */
static void
s_message(char *out, size_t size, const char *msg)
{
    if (!msg || !*msg)
        msg = "unknown error";
    size_t o = 0;
    for (size_t i = 0; msg[i] && o + 1 < size; i++) {
        char c = msg[i];
        if (c == '\n' || c == '\t' || c == '\r') {
            if (o > 0 && out[o - 1] != ' ')
                out[o++] = ' ';
            continue;
        }
        out[o++] = c;
    }
    while (o > 0 && out[o - 1] == ' ')
        o--;
    out[o] = '\0';
}

static int
s_lost(PGconn *conn, kl_status_t *status)
{
    char msg[KL_STATUS_MESSAGE_MAX - 64];
    s_message(msg, sizeof msg, PQerrorMessage(conn));
    return kl_status_set(status, KL_UNAVAILABLE, "database unavailable: %s",
                         msg);
}

/* A failed result as a status, by SQLSTATE as kl_pg maps it; a result
 * without one (or a dead connection) is UNAVAILABLE. */
static int
s_fail(PGconn *conn, const PGresult *res, kl_status_t *status)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (PQstatus(conn) != CONNECTION_OK || !state || !*state ||
        strncmp(state, "08", 2) == 0 || strcmp(state, "57P01") == 0 ||
        strcmp(state, "57P02") == 0 || strcmp(state, "57P03") == 0) {
        char msg[KL_STATUS_MESSAGE_MAX - 64];
        const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        s_message(msg, sizeof msg,
                  primary ? primary : PQresultErrorMessage(res));
        return kl_status_set(status, KL_UNAVAILABLE, "database unavailable: %s",
                             msg);
    }
    kl_code_t code = KL_INTERNAL;
    if (strcmp(state, "23505") == 0)
        code = KL_ALREADY_EXISTS;
    else if (strcmp(state, "23503") == 0 || strcmp(state, "23502") == 0 ||
             strcmp(state, "23514") == 0 || strncmp(state, "22", 2) == 0)
        code = KL_INVALID_ARGUMENT;
    else if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0)
        code = KL_ABORTED;
    else if (strcmp(state, "57014") == 0)
        code = KL_DEADLINE_EXCEEDED;
    char msg[KL_STATUS_MESSAGE_MAX];
    const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    s_message(msg, sizeof msg, primary ? primary : PQresultErrorMessage(res));
    return kl_status_set(status, code, "%s", msg);
}

/* What each result of the pipeline answers. */
typedef enum { S_PREPARE, S_BEGIN, S_STMT, S_COMMIT } s_kind_t;

typedef struct {
    s_kind_t kind;
    int index; /* S_PREPARE: the statement in all[]; S_STMT: in stmts[] */
} s_entry_t;

/* BEGIN and COMMIT are prepared too: no parsing per transaction. */
static const billing_pipe_stmt_t s_begin = {"billing_pipe_begin", "BEGIN", 0,
                                            NULL};
static const billing_pipe_stmt_t s_commit = {"billing_pipe_commit", "COMMIT", 0,
                                             NULL};

/*
 * Sends [PREPARE...] [BEGIN] stmts [COMMIT] sync in one pipeline and reads
 * every result. Returns 0 when all succeeded (and COMMIT, if sent,
 * committed), else the first failure. results[i] is set only on success.
 */
static int
s_run(billing_pipe_t *self, PGconn *conn, const billing_pipe_stmt_t *stmts,
      int n, bool begin, bool commit, PGresult **results, kl_status_t *status)
{
    /* Every statement to run, in order, and what its result answers. */
    const billing_pipe_stmt_t *all[BILLING_PIPE_MAX + 2];
    s_kind_t kinds[BILLING_PIPE_MAX + 2];
    int n_all = 0;
    if (begin) {
        kinds[n_all] = S_BEGIN;
        all[n_all++] = &s_begin;
    }
    for (int i = 0; i < n; i++) {
        kinds[n_all] = S_STMT;
        all[n_all++] = &stmts[i];
        results[i] = NULL;
    }
    if (commit) {
        kinds[n_all] = S_COMMIT;
        all[n_all++] = &s_commit;
    }
    s_entry_t q[2 * (BILLING_PIPE_MAX + 2)];
    int nq = 0;
    if (PQenterPipelineMode(conn) != 1)
        return s_lost(conn, status);
    bool sent = true;
    for (int i = 0; i < n_all; i++) {
        bool queued = false;
        for (int k = 0; k < nq; k++)
            queued |= strcmp(all[q[k].index]->name, all[i]->name) == 0;
        if (s_is_prepared(self, all[i]->name) || queued)
            continue;
        sent = sent && PQsendPrepare(conn, all[i]->name, all[i]->sql,
                                     all[i]->nparams, NULL) == 1;
        q[nq++] = (s_entry_t){S_PREPARE, i};
    }
    for (int i = 0, stmt = 0; i < n_all; i++) {
        sent = sent && PQsendQueryPrepared(conn, all[i]->name, all[i]->nparams,
                                           all[i]->params, NULL, NULL, 0) == 1;
        q[nq++] = (s_entry_t){kinds[i], kinds[i] == S_STMT ? stmt++ : -1};
    }
    /* A send that fails leaves the pipeline half-queued: the connection is
     * unusable, and kl_pg replaces it on its next failed use. */
    if (!sent || PQpipelineSync(conn) != 1)
        return s_lost(conn, status);

    int rc = 0;
    bool committed = false;
    for (int k = 0; k < nq; k++) {
        PGresult *res = PQgetResult(conn);
        if (!res)
            return rc < 0 ? rc : s_lost(conn, status);
        ExecStatusType rs = PQresultStatus(res);
        bool ok = rs == PGRES_COMMAND_OK || rs == PGRES_TUPLES_OK;
        if (!ok && rs != PGRES_PIPELINE_ABORTED && rc == 0)
            rc = s_fail(conn, res, status);
        if (ok && q[k].kind == S_PREPARE)
            s_mark_prepared(self, all[q[k].index]->name);
        if (ok && q[k].kind == S_COMMIT) {
            /* COMMIT of a failed transaction answers ROLLBACK. */
            committed = strcmp(PQcmdStatus(res), "COMMIT") == 0;
            if (!committed && rc == 0)
                rc = kl_status_set(status, KL_ABORTED,
                                   "transaction was rolled back");
        }
        if (ok && q[k].kind == S_STMT && rc == 0)
            results[q[k].index] = res;
        else
            PQclear(res);
        /* Each command's results end with a NULL. */
        while ((res = PQgetResult(conn)) != NULL)
            PQclear(res);
    }
    PGresult *sync = PQgetResult(conn);
    bool synced = sync && PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
    PQclear(sync);
    if (!synced || PQexitPipelineMode(conn) != 1) {
        if (rc == 0)
            rc = s_lost(conn, status);
    } else if (rc == 0 && commit && !committed) {
        rc = kl_status_set(status, KL_UNAVAILABLE,
                           "database unavailable: no answer to COMMIT");
    }
    if (rc < 0)
        for (int i = 0; i < n; i++) {
            PQclear(results[i]);
            results[i] = NULL;
        }
    return rc;
}

int
billing_pipe_begin(billing_pipe_t *self, kl_pg_t *pg,
                   const billing_pipe_stmt_t *stmts, int n, PGresult **results,
                   kl_status_t *status)
{
    assert(n >= 0 && n <= BILLING_PIPE_MAX);
    for (int i = 0; i < n; i++)
        results[i] = NULL;
    self->tx_conn = NULL;
    if (kl_pg_in_transaction(pg))
        return kl_status_set(status, KL_FAILED_PRECONDITION,
                             "a transaction is already open");
    PGconn *conn = kl_pg_conn(pg, status);
    if (!conn)
        return -(int)status->code;
    s_track(self, conn);
    int rc = s_run(self, conn, stmts, n, true, false, results, status);
    if (rc < 0) {
        kl_pg_rollback(pg);
        return rc;
    }
    self->tx_conn = conn;
    return 0;
}

int
billing_pipe_commit(billing_pipe_t *self, kl_pg_t *pg,
                    const billing_pipe_stmt_t *stmts, int n, PGresult **results,
                    kl_status_t *status)
{
    assert(n >= 0 && n <= BILLING_PIPE_MAX);
    for (int i = 0; i < n; i++)
        results[i] = NULL;
    PGconn *tx_conn = self->tx_conn;
    self->tx_conn = NULL;
    if (!tx_conn)
        return kl_status_set(status, KL_FAILED_PRECONDITION,
                             "no transaction is open");
    /* kl_pg hands back the same connection while it is alive and inside
     * the transaction; a replacement is never inside one. */
    kl_status_t ignored;
    PGconn *conn = kl_pg_conn(pg, &ignored);
    if (conn != tx_conn || PQtransactionStatus(conn) != PQTRANS_INTRANS) {
        kl_pg_rollback(pg);
        return kl_status_set(status, KL_UNAVAILABLE,
                             "database connection lost inside a "
                             "transaction");
    }
    int rc = s_run(self, conn, stmts, n, false, true, results, status);
    if (rc < 0)
        kl_pg_rollback(pg);
    return rc;
}

void
billing_pipe_rollback(billing_pipe_t *self, kl_pg_t *pg)
{
    self->tx_conn = NULL;
    kl_pg_rollback(pg);
}
