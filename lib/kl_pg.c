/*
 * kl_pg: one self-healing PostgreSQL connection with per-connection
 * prepared statements, SQLSTATE-to-status mapping, transactions and schema
 * migrations under an advisory lock.
 */
#include "kl_pg.h"

#include "kl_alloc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Seconds libpq may spend opening a connection. */
#define S_CONNECT_TIMEOUT "3"

struct kl_pg {
    char *conninfo;  /* libpq connection string or URI, owned */
    PGconn *conn;    /* live connection, or NULL until the next use */
    bool in_tx;      /* between kl_pg_begin and commit/rollback */
    bool conn_lost;  /* the connection broke inside the open transaction */
    char **prepared; /* names prepared on conn, owned */
    size_t n_prepared;
    size_t cap_prepared;
};

/* libpq prints notices ("schema already exists, skipping") on stderr by
 * default, which would break our JSON log lines. They carry nothing a
 * caller acts on, so they are dropped. */
static void
s_notice_ignore(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* Forgets the connection and everything prepared on it. */
static void
s_drop(kl_pg_t *self)
{
    if (self->conn) {
        PQfinish(self->conn);
        self->conn = NULL;
    }
    for (size_t i = 0; i < self->n_prepared; i++)
        free(self->prepared[i]);
    self->n_prepared = 0;
}

kl_pg_t *
kl_pg_new(const char *conninfo)
{
    kl_pg_t *self = kl_calloc(1, sizeof *self);
    self->conninfo = kl_strdup(conninfo ? conninfo : "");
    return self;
}

void
kl_pg_destroy(kl_pg_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kl_pg_t *self = *self_p;
    s_drop(self);
    free(self->prepared);
    free(self->conninfo);
    free(self);
    *self_p = NULL;
}

/* Copies libpq's message without its trailing newline. */
static void
s_copy_message(char *out, size_t out_size, const char *msg)
{
    if (!msg || !*msg)
        msg = "unknown error";
    size_t len = strlen(msg);
    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
        len--;
    /* libpq's messages span lines ("...\n\tIs the server running"): one
     * line reads better in a status and a log. */
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < out_size; i++) {
        char c = msg[i];
        if (c == '\n' || c == '\t' || c == '\r') {
            if (o > 0 && out[o - 1] != ' ')
                out[o++] = ' ';
            continue;
        }
        out[o++] = c;
    }
    out[o] = '\0';
}

static int
s_connect(kl_pg_t *self, kl_status_t *status)
{
    /* connect_timeout comes first so that one given in the connection
     * string itself (expanded from "dbname") wins. */
    const char *const keys[] = {"connect_timeout", "fallback_application_name",
                                "dbname", NULL};
    const char *const values[] = {S_CONNECT_TIMEOUT, "kowloon", self->conninfo,
                                  NULL};
    s_drop(self);
    PGconn *conn = PQconnectdbParams(keys, values, 1);
    if (!conn)
        return kl_status_set(status, KL_UNAVAILABLE,
                             "PQconnectdbParams() failed: out of memory");
    if (PQstatus(conn) != CONNECTION_OK) {
        char msg[KL_STATUS_MESSAGE_MAX - 64];
        s_copy_message(msg, sizeof msg, PQerrorMessage(conn));
        PQfinish(conn);
        return kl_status_set(status, KL_UNAVAILABLE,
                             "cannot connect to database: %s", msg);
    }
    PQsetNoticeProcessor(conn, s_notice_ignore, NULL);
    self->conn = conn;
    return 0;
}

/* Whether an idle connection still works. The server tells an idle client
 * it is going away (pg_terminate_backend, shutdown) and closes the socket;
 * reading what is pending makes libpq notice, without sending anything. */
static bool
s_idle_conn_ok(kl_pg_t *self)
{
    if (PQstatus(self->conn) != CONNECTION_OK)
        return false;
    if (PQtransactionStatus(self->conn) != PQTRANS_IDLE)
        return true; /* busy or inside a transaction: judged on use */
    if (!PQconsumeInput(self->conn))
        return false;
    return PQstatus(self->conn) == CONNECTION_OK;
}

/* Makes sure self->conn is usable. *reused tells whether an existing
 * connection is used (only then is a retry worth it). */
static int
s_ensure(kl_pg_t *self, bool *reused, kl_status_t *status)
{
    if (reused)
        *reused = false;
    if (self->in_tx) {
        if (self->conn_lost || !self->conn)
            return kl_status_set(status, KL_UNAVAILABLE,
                                 "database connection lost inside a "
                                 "transaction");
        if (reused)
            *reused = true;
        return 0;
    }
    if (self->conn && s_idle_conn_ok(self)) {
        if (reused)
            *reused = true;
        return 0;
    }
    return s_connect(self, status);
}

PGconn *
kl_pg_conn(kl_pg_t *self, kl_status_t *status)
{
    if (s_ensure(self, NULL, status) < 0)
        return NULL;
    return self->conn;
}

/* Whether a failed result means the connection is gone. */
static bool
s_broken(kl_pg_t *self, const PGresult *res)
{
    if (!self->conn || PQstatus(self->conn) != CONNECTION_OK)
        return true;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (!state || !*state)
        return true;
    if (strncmp(state, "08", 2) == 0)
        return true;
    return strcmp(state, "57P01") == 0 || strcmp(state, "57P02") == 0 ||
           strcmp(state, "57P03") == 0;
}

/* Maps a failed result to a status, by SQLSTATE. */
static int
s_fail(kl_pg_t *self, const PGresult *res, bool broken, kl_status_t *status)
{
    char msg[KL_STATUS_MESSAGE_MAX];
    const char *primary =
        res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (primary)
        s_copy_message(msg, sizeof msg, primary);
    else if (res && *PQresultErrorMessage(res))
        s_copy_message(msg, sizeof msg, PQresultErrorMessage(res));
    else
        s_copy_message(msg, sizeof msg,
                       self->conn ? PQerrorMessage(self->conn) : NULL);
    if (broken)
        return kl_status_set(status, KL_UNAVAILABLE, "database unavailable: %s",
                             msg);

    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
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
    return kl_status_set(status, code, "%s", msg);
}

static bool
s_is_prepared(const kl_pg_t *self, const char *name)
{
    for (size_t i = 0; i < self->n_prepared; i++)
        if (strcmp(self->prepared[i], name) == 0)
            return true;
    return false;
}

static void
s_add_prepared(kl_pg_t *self, const char *name)
{
    if (self->n_prepared == self->cap_prepared) {
        self->cap_prepared = self->cap_prepared ? self->cap_prepared * 2 : 16;
        self->prepared = kl_realloc(self->prepared, self->cap_prepared *
                                                        sizeof *self->prepared);
    }
    self->prepared[self->n_prepared++] = kl_strdup(name);
}

/* What one attempt runs. */
typedef enum { S_PREPARED, S_PARAMS, S_SIMPLE } s_kind_t;

typedef struct {
    s_kind_t kind;
    const char *name; /* S_PREPARED */
    const char *sql;
    int nparams;
    const char *const *params;
} s_stmt_t;

/* One attempt on the current connection. Returns the result on success;
 * NULL with *broken telling whether the connection died. */
static PGresult *
s_attempt(kl_pg_t *self, const s_stmt_t *st, bool *broken, kl_status_t *status)
{
    PGresult *res = NULL;
    *broken = false;
    if (st->kind == S_PREPARED && !s_is_prepared(self, st->name)) {
        res = PQprepare(self->conn, st->name, st->sql, st->nparams, NULL);
        if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
            *broken = s_broken(self, res);
            s_fail(self, res, *broken, status);
            PQclear(res);
            return NULL;
        }
        PQclear(res);
        s_add_prepared(self, st->name);
    }
    switch (st->kind) {
    case S_PREPARED:
        res = PQexecPrepared(self->conn, st->name, st->nparams, st->params,
                             NULL, NULL, 0);
        break;
    case S_PARAMS:
        res = PQexecParams(self->conn, st->sql, st->nparams, NULL, st->params,
                           NULL, NULL, 0);
        break;
    case S_SIMPLE:
        res = PQexec(self->conn, st->sql);
        break;
    }
    ExecStatusType rs = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (rs == PGRES_COMMAND_OK || rs == PGRES_TUPLES_OK)
        return res;
    *broken = s_broken(self, res);
    s_fail(self, res, *broken, status);
    PQclear(res);
    return NULL;
}

/* Runs st, reconnecting and retrying once when a connection that was idle
 * outside a transaction turns out to be dead. Inside a transaction a dead
 * connection is remembered so that every later call fails until rollback. */
static PGresult *
s_run(kl_pg_t *self, const s_stmt_t *st, kl_status_t *status)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        bool reused = false, broken = false;
        if (s_ensure(self, &reused, status) < 0)
            return NULL;
        PGresult *res = s_attempt(self, st, &broken, status);
        if (res)
            return res;
        if (!broken)
            return NULL;
        s_drop(self);
        if (self->in_tx) {
            self->conn_lost = true;
            return NULL;
        }
        if (!reused)
            return NULL;
    }
    return NULL;
}

/* Public functions accept status NULL; the helpers always get one. */
#define S_STATUS(status, local) ((status) ? (status) : &(local))

PGresult *
kl_pg_query(kl_pg_t *self, const char *name, const char *sql, int nparams,
            const char *const *params, kl_status_t *status)
{
    kl_status_t local;
    /* A NULL name runs the statement unprepared. */
    s_stmt_t st = {name ? S_PREPARED : S_PARAMS, name, sql, nparams, params};
    return s_run(self, &st, S_STATUS(status, local));
}

/* Runs sql with parameters, unprepared (SQL built at run time). */
static PGresult *
s_query_params(kl_pg_t *self, const char *sql, int nparams,
               const char *const *params, kl_status_t *status)
{
    s_stmt_t st = {S_PARAMS, NULL, sql, nparams, params};
    return s_run(self, &st, status);
}

/* Runs sql without parameters and discards its result. */
static int
s_exec(kl_pg_t *self, const char *sql, kl_status_t *status)
{
    s_stmt_t st = {S_SIMPLE, NULL, sql, 0, NULL};
    PGresult *res = s_run(self, &st, status);
    if (!res)
        return -(int)status->code;
    PQclear(res);
    return 0;
}

int
kl_pg_exec(kl_pg_t *self, const char *sql, kl_status_t *status)
{
    kl_status_t local;
    return s_exec(self, sql, S_STATUS(status, local));
}

/* --- pipelines ------------------------------------------------------------ */

/* Whether stmts[i]'s name must be prepared in this pipeline: not yet on
 * the connection and not by an earlier statement of the same pipeline. */
static bool
s_needs_prepare(const kl_pg_t *self, const kl_pg_stmt_t *stmts, size_t i)
{
    if (!stmts[i].name || s_is_prepared(self, stmts[i].name))
        return false;
    for (size_t j = 0; j < i; j++)
        if (stmts[j].name && strcmp(stmts[j].name, stmts[i].name) == 0)
            return false;
    return true;
}

/* Reads the answer to one sent command (a Prepare or a statement) and the
 * NULL that ends it. Returns the result when it succeeded, else NULL after
 * recording the first failure in *failed/status (*broken when the
 * connection died: the caller stops reading). */
static PGresult *
s_pipeline_answer(kl_pg_t *self, bool *failed, bool *broken,
                  kl_status_t *status)
{
    PGresult *res = PQgetResult(self->conn);
    ExecStatusType rs = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (rs == PGRES_COMMAND_OK || rs == PGRES_TUPLES_OK) {
        /* One statement, one result: the NULL after it. */
        PGresult *end;
        while ((end = PQgetResult(self->conn)) != NULL)
            PQclear(end);
        return res;
    }
    if (rs == PGRES_PIPELINE_ABORTED) {
        /* Skipped by the server after an earlier failure. */
        PQclear(res);
        PQclear(PQgetResult(self->conn));
        if (!*failed) {
            *failed = true;
            kl_status_set(status, KL_INTERNAL, "pipeline aborted");
        }
        return NULL;
    }
    /* An error, or no answer at all (the connection is gone). */
    bool dead = s_broken(self, res);
    if (!*failed) {
        *failed = true;
        s_fail(self, res, dead, status);
    }
    PQclear(res);
    if (dead)
        *broken = true;
    else
        PQclear(PQgetResult(self->conn));
    return NULL;
}

/* One attempt of a pipeline on the current connection. open_after: the
 * statements must leave a transaction open (KL_PG_PIPE_BEGIN alone), else
 * the connection idle. Returns 0, or -code with *broken telling whether
 * the connection died (then the caller drops it: its pipeline state is
 * unknown). */
static int
s_pipeline_attempt(kl_pg_t *self, const kl_pg_stmt_t *stmts, size_t n,
                   bool open_after, PGresult **results, bool *broken,
                   kl_status_t *status)
{
    PGconn *conn = self->conn;
    *broken = false;
    char msg[KL_STATUS_MESSAGE_MAX - 64];
    if (!PQenterPipelineMode(conn)) {
        *broken = true;
        s_copy_message(msg, sizeof msg, PQerrorMessage(conn));
        return kl_status_set(status, KL_UNAVAILABLE,
                             "PQenterPipelineMode() failed: %s", msg);
    }
    /* Send everything. A send fails only on a dead connection (libpq
     * buffers the rest until the sync). */
    bool *prepare = kl_calloc(n, sizeof *prepare);
    bool sent = true;
    for (size_t i = 0; i < n && sent; i++) {
        const kl_pg_stmt_t *st = &stmts[i];
        prepare[i] = s_needs_prepare(self, stmts, i);
        if (prepare[i])
            sent = PQsendPrepare(conn, st->name, st->sql, st->nparams, NULL);
        if (sent)
            sent = st->name
                       ? PQsendQueryPrepared(conn, st->name, st->nparams,
                                             st->params, NULL, NULL, 0)
                       : PQsendQueryParams(conn, st->sql, st->nparams, NULL,
                                           st->params, NULL, NULL, 0);
    }
    if (sent)
        sent = PQpipelineSync(conn);
    if (!sent) {
        free(prepare);
        *broken = true;
        s_copy_message(msg, sizeof msg, PQerrorMessage(conn));
        return kl_status_set(status, KL_UNAVAILABLE, "database unavailable: %s",
                             msg);
    }

    /* Read every answer in order: a Prepare's, then its statement's. */
    bool failed = false;
    for (size_t i = 0; i < n && !*broken; i++) {
        if (prepare[i]) {
            PGresult *res = s_pipeline_answer(self, &failed, broken, status);
            if (res)
                s_add_prepared(self, stmts[i].name);
            PQclear(res);
            if (*broken)
                break;
        }
        results[i] = s_pipeline_answer(self, &failed, broken, status);
    }
    free(prepare);
    if (!*broken) {
        PGresult *sync = PQgetResult(conn);
        bool synced = sync && PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
        PQclear(sync);
        if (!synced || !PQexitPipelineMode(conn)) {
            *broken = true;
            s_copy_message(msg, sizeof msg, PQerrorMessage(conn));
            if (!failed)
                kl_status_set(status, KL_UNAVAILABLE,
                              "database unavailable: pipeline did not end: %s",
                              msg);
            failed = true;
        }
    }
    bool keep = true; /* the results before a failed statement */
    PGTransactionStatusType ts =
        *broken ? PQTRANS_UNKNOWN : PQtransactionStatus(conn);
    if (!failed && !*broken &&
        ts != (open_after ? PQTRANS_INTRANS : PQTRANS_IDLE)) {
        kl_status_set(status, KL_INTERNAL,
                      open_after ? "pipeline ended its transaction"
                                 : "pipeline left a transaction open");
        keep = false;
        failed = true;
    }
    if (failed && !*broken && ts != PQTRANS_IDLE) {
        /* The transaction failed (the server keeps it open, aborted,
         * after the sync) or was left open: end it, so that the
         * connection is idle again with nothing of it committed. */
        PGresult *res = PQexec(conn, "ROLLBACK");
        if (!res || PQresultStatus(res) != PGRES_COMMAND_OK)
            *broken = true;
        PQclear(res);
    }
    if (!failed)
        return 0;
    for (size_t i = 0; i < n && (*broken || !keep); i++) {
        PQclear(results[i]);
        results[i] = NULL;
    }
    return -(int)status->code;
}

/* BEGIN and COMMIT of kl_pg_pipeline_ex, prepared as any statement. */
static const kl_pg_stmt_t s_pipe_begin = {"kl_pg_pipe_begin", "BEGIN", 0, NULL};
static const kl_pg_stmt_t s_pipe_commit = {"kl_pg_pipe_commit", "COMMIT", 0,
                                           NULL};

/* Runs all (n_all statements) outside a transaction: as s_run, a
 * connection that was idle and turns out to be dead is made again, and the
 * pipeline sent once more. */
static int
s_pipeline_outside(kl_pg_t *self, const kl_pg_stmt_t *all, size_t n_all,
                   bool open_after, PGresult **res_all, kl_status_t *status)
{
    if (self->in_tx)
        return kl_status_set(status, KL_FAILED_PRECONDITION,
                             "a pipeline cannot run inside a transaction");
    int rc = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        bool reused = false, broken = false;
        rc = s_ensure(self, &reused, status);
        if (rc < 0)
            return rc;
        rc = s_pipeline_attempt(self, all, n_all, open_after, res_all, &broken,
                                status);
        if (rc == 0 || !broken)
            return rc;
        s_drop(self);
        if (!reused)
            return rc;
    }
    return rc;
}

/* Runs all (ending with COMMIT) inside the open transaction, on its own
 * connection only, and ends the transaction whatever happens. */
static int
s_pipeline_commit(kl_pg_t *self, const kl_pg_stmt_t *all, size_t n_all,
                  PGresult **res_all, kl_status_t *status)
{
    if (!self->in_tx)
        return kl_status_set(status, KL_FAILED_PRECONDITION,
                             "no transaction is open");
    int rc;
    bool broken = false;
    /* The connection is the transaction's: kl_pg never replaces it while
     * a transaction is open, and drops it (conn_lost) when it breaks. What
     * the server last said about the transaction decides the rest. */
    PGTransactionStatusType ts = self->conn_lost || !self->conn
                                     ? PQTRANS_UNKNOWN
                                     : PQtransactionStatus(self->conn);
    if (ts == PQTRANS_INTRANS)
        rc = s_pipeline_attempt(self, all, n_all, false, res_all, &broken,
                                status);
    else if (ts == PQTRANS_INERROR)
        rc = kl_status_set(status, KL_ABORTED, "transaction was rolled back");
    else if (ts == PQTRANS_UNKNOWN)
        rc = kl_status_set(status, KL_UNAVAILABLE,
                           "database connection lost inside a transaction");
    else /* idle: COMMIT or ROLLBACK went through kl_pg_exec */
        rc = kl_status_set(status, KL_INTERNAL,
                           "transaction was ended outside kl_pg");
    if (broken)
        s_drop(self);
    /* Whatever happened, the transaction is over: committed, rolled back
     * (by the attempt, or here), or gone with its connection. */
    kl_pg_rollback(self);
    return rc;
}

int
kl_pg_pipeline_ex(kl_pg_t *self, const kl_pg_stmt_t *stmts, size_t n,
                  unsigned flags, PGresult **results, kl_status_t *status)
{
    kl_status_t local;
    status = S_STATUS(status, local);
    for (size_t i = 0; i < n; i++)
        results[i] = NULL;
    bool begin = flags & KL_PG_PIPE_BEGIN, commit = flags & KL_PG_PIPE_COMMIT;
    if (flags & ~(KL_PG_PIPE_BEGIN | KL_PG_PIPE_COMMIT))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "unknown pipeline flags %#x", flags);
    if (!begin && !commit) {
        if (n == 0)
            return kl_status_set(status, KL_INVALID_ARGUMENT,
                                 "a pipeline needs a statement");
        return s_pipeline_outside(self, stmts, n, false, results, status);
    }

    /* [BEGIN] statements [COMMIT], with a result slot each. */
    size_t n_all = n + begin + commit;
    kl_pg_stmt_t *all = kl_malloc(n_all * sizeof *all);
    PGresult **res_all = kl_calloc(n_all, sizeof *res_all);
    size_t first = begin ? 1 : 0;
    if (begin)
        all[0] = s_pipe_begin;
    if (n > 0)
        memcpy(all + first, stmts, n * sizeof *stmts);
    if (commit)
        all[n_all - 1] = s_pipe_commit;

    int rc =
        commit && !begin
            ? s_pipeline_commit(self, all, n_all, res_all, status)
            : s_pipeline_outside(self, all, n_all, !commit, res_all, status);
    /* COMMIT of a transaction that had failed answers "ROLLBACK"; the
     * connection is idle then, nothing written. */
    if (rc == 0 && commit &&
        strcmp(PQcmdStatus(res_all[n_all - 1]), "COMMIT") != 0)
        rc = kl_status_set(status, KL_ABORTED, "transaction was rolled back");
    if (rc == 0 && begin && !commit) {
        self->in_tx = true;
        self->conn_lost = false;
    }
    for (size_t i = 0; i < n_all; i++) {
        if (rc == 0 && i >= first && i < first + n)
            results[i - first] = res_all[i];
        else
            PQclear(res_all[i]);
    }
    free(res_all);
    free(all);
    return rc;
}

int
kl_pg_pipeline(kl_pg_t *self, const kl_pg_stmt_t *stmts, size_t n,
               PGresult **results, kl_status_t *status)
{
    return kl_pg_pipeline_ex(self, stmts, n, 0, results, status);
}

int
kl_pg_begin(kl_pg_t *self, kl_status_t *status)
{
    kl_status_t local;
    status = S_STATUS(status, local);
    if (self->in_tx)
        return kl_status_set(status, KL_FAILED_PRECONDITION,
                             "a transaction is already open");
    /* Outside a transaction, so s_run may reconnect and retry. */
    int rc = s_exec(self, "BEGIN", status);
    if (rc < 0)
        return rc;
    self->in_tx = true;
    self->conn_lost = false;
    return 0;
}

int
kl_pg_commit(kl_pg_t *self, kl_status_t *status)
{
    kl_status_t local;
    status = S_STATUS(status, local);
    if (!self->in_tx)
        return kl_status_set(status, KL_FAILED_PRECONDITION,
                             "no transaction is open");
    int rc;
    if (self->conn_lost || !self->conn) {
        rc = kl_status_set(status, KL_UNAVAILABLE,
                           "database connection lost inside a transaction");
    } else {
        s_stmt_t st = {S_SIMPLE, NULL, "COMMIT", 0, NULL};
        PGresult *res = s_run(self, &st, status);
        if (!res) {
            rc = -(int)status->code;
        } else {
            /* COMMIT of a transaction that had failed answers "ROLLBACK":
             * nothing was written. */
            rc = strcmp(PQcmdStatus(res), "ROLLBACK") == 0
                     ? kl_status_set(status, KL_ABORTED,
                                     "transaction was rolled back")
                     : 0;
            PQclear(res);
        }
    }
    /* Whatever happened, the server ended the transaction (or the
     * connection is gone). */
    self->in_tx = false;
    self->conn_lost = false;
    if (rc < 0 && self->conn && PQtransactionStatus(self->conn) != PQTRANS_IDLE)
        s_drop(self);
    return rc;
}

void
kl_pg_rollback(kl_pg_t *self)
{
    if (!self)
        return;
    if (self->conn && !self->conn_lost &&
        PQtransactionStatus(self->conn) != PQTRANS_IDLE) {
        PGresult *res = PQexec(self->conn, "ROLLBACK");
        bool ok = res && PQresultStatus(res) == PGRES_COMMAND_OK;
        PQclear(res);
        if (!ok)
            s_drop(self);
    }
    self->in_tx = false;
    self->conn_lost = false;
}

bool
kl_pg_in_transaction(const kl_pg_t *self)
{
    return self && self->in_tx;
}

/* Whether steps are in strictly ascending order of positive versions. */
static bool
s_steps_ok(const kl_pg_migration_t *steps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (steps[i].version <= 0 || !steps[i].sql)
            return false;
        if (i > 0 && steps[i].version <= steps[i - 1].version)
            return false;
    }
    return true;
}

/* The body of kl_pg_migrate, inside its transaction. */
static int
s_migrate_tx(kl_pg_t *self, const char *schema, const char *qschema,
             const kl_pg_migration_t *steps, size_t n, kl_status_t *status)
{
    /* Serialises every instance migrating this schema; released at commit
     * or rollback. */
    const char *lock_params[] = {schema};
    PGresult *res = kl_pg_query(
        self, "kl_pg_migrate_lock",
        "SELECT pg_advisory_xact_lock(hashtext('kowloon.migrate.' || $1))", 1,
        lock_params, status);
    if (!res)
        return -(int)status->code;
    PQclear(res);

    char *sql = kl_asprintf("CREATE SCHEMA IF NOT EXISTS %s;"
                            "CREATE TABLE IF NOT EXISTS %s.schema_migrations ("
                            " version int PRIMARY KEY,"
                            " applied_at timestamptz NOT NULL DEFAULT now())",
                            qschema, qschema);
    int rc = s_exec(self, sql, status);
    free(sql);
    if (rc < 0)
        return rc;

    char *check = kl_asprintf(
        "SELECT 1 FROM %s.schema_migrations WHERE version = $1", qschema);
    char *record = kl_asprintf(
        "INSERT INTO %s.schema_migrations (version) VALUES ($1)", qschema);
    for (size_t i = 0; i < n && rc == 0; i++) {
        char version[16];
        snprintf(version, sizeof version, "%d", steps[i].version);
        const char *params[] = {version};
        res = s_query_params(self, check, 1, params, status);
        if (!res) {
            rc = -(int)status->code;
            break;
        }
        bool applied = PQntuples(res) > 0;
        PQclear(res);
        if (applied)
            continue;
        rc = s_exec(self, steps[i].sql, status);
        if (rc < 0) {
            char cause[KL_STATUS_MESSAGE_MAX];
            snprintf(cause, sizeof cause, "%s", status->message);
            rc = kl_status_set(status, status->code,
                               "migration %s version %d failed: %s", schema,
                               steps[i].version, cause);
            break;
        }
        res = s_query_params(self, record, 1, params, status);
        if (!res)
            rc = -(int)status->code;
        PQclear(res);
    }
    free(check);
    free(record);
    return rc;
}

int
kl_pg_migrate(kl_pg_t *self, const char *schema, const kl_pg_migration_t *steps,
              size_t n, kl_status_t *status)
{
    kl_status_t local;
    status = S_STATUS(status, local);
    if (!schema || !*schema)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "migration needs a schema name");
    if (!s_steps_ok(steps, n))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "migration steps of %s must have ascending "
                             "positive versions",
                             schema);
    int rc = kl_pg_begin(self, status);
    if (rc < 0)
        return rc;
    /* The schema name is quoted by the server's own rules. */
    char *qschema = PQescapeIdentifier(self->conn, schema, strlen(schema));
    if (!qschema) {
        char msg[KL_STATUS_MESSAGE_MAX - 64];
        s_copy_message(msg, sizeof msg, PQerrorMessage(self->conn));
        kl_pg_rollback(self);
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "PQescapeIdentifier() failed: %s", msg);
    }
    rc = s_migrate_tx(self, schema, qschema, steps, n, status);
    PQfreemem(qschema);
    if (rc < 0) {
        kl_pg_rollback(self);
        return rc;
    }
    return kl_pg_commit(self, status);
}
