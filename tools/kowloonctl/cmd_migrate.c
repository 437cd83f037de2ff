/*
 * kowloonctl migrate: plan | run | status | retry.
 */
#include "kctl.h"

#include "kl_rpc.h"
#include "kowloon/migration.pb-c.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Plan and Run list every tenant and may read every target's history. */
#define S_LONG_TIMEOUT_MS 600000

static int
s_usage(FILE *out, int rc)
{
    fprintf(
        out,
        "usage: kowloonctl migrate plan [--tenant ID]... [--all]\n"
        "       kowloonctl migrate run [--tenant ID]... [--wait] "
        "[--interval MS]\n"
        "       kowloonctl migrate status [RUN_ID] [--failures N] "
        "[--wait]\n"
        "       kowloonctl migrate retry [RUN_ID] [--wait]\n"
        "\n"
        "plan     dry run: what would run where (only targets with work or\n"
        "         errors, unless --all); exit 1 if a target has an error\n"
        "run      starts a run over every tenant (or the --tenant ones);\n"
        "         --wait follows it with a progress bar on stderr and\n"
        "         exits 1 if a target failed\n"
        "status   progress of a run (default: the latest); exit 1 if a\n"
        "         target failed\n"
        "retry    a new run over the failed targets of a finished run\n");
    return rc;
}

/* Collects --tenant IDs and flags shared by plan and run. */
typedef struct {
    char **ids;
    size_t n_ids;
    bool all, wait;
    long interval_ms, failures;
    int64_t run_id;
} s_args_t;

static int
s_parse(int argc, char **argv, s_args_t *a, bool allow_run_id)
{
    memset(a, 0, sizeof *a);
    a->interval_ms = 500;
    a->ids = calloc((size_t)argc + 1, sizeof *a->ids);
    if (!a->ids)
        abort();
    for (int i = 1; i < argc; i++) {
        char *end;
        if (strcmp(argv[i], "--tenant") == 0 && i + 1 < argc) {
            a->ids[a->n_ids++] = argv[++i];
        } else if (strcmp(argv[i], "--all") == 0) {
            a->all = true;
        } else if (strcmp(argv[i], "--wait") == 0) {
            a->wait = true;
        } else if (strcmp(argv[i], "--interval") == 0 && i + 1 < argc) {
            a->interval_ms = strtol(argv[++i], &end, 10);
            if (*end || a->interval_ms < 50 || a->interval_ms > 60000) {
                kctl_error("--interval wants 50..60000 ms");
                return -1;
            }
        } else if (strcmp(argv[i], "--failures") == 0 && i + 1 < argc) {
            a->failures = strtol(argv[++i], &end, 10);
            if (*end || a->failures < 1 || a->failures > 100000) {
                kctl_error("--failures wants 1..100000");
                return -1;
            }
        } else if (allow_run_id && argv[i][0] != '-' && a->run_id == 0) {
            long long v = strtoll(argv[i], &end, 10);
            if (*end || v < 1) {
                kctl_error("\"%s\" is not a run id", argv[i]);
                return -1;
            }
            a->run_id = v;
        } else {
            kctl_error("migrate %s: unexpected \"%s\"", argv[0], argv[i]);
            return -1;
        }
    }
    return 0;
}

/* --- plan ---------------------------------------------------------------- */

static int
s_plan(const s_args_t *a)
{
    Kowloon__Migration__PlanRequest req =
        KOWLOON__MIGRATION__PLAN_REQUEST__INIT;
    req.tenant_ids = a->ids;
    req.n_tenant_ids = a->n_ids;
    ProtobufCMessage *m = NULL;
    int rc = kctl_call(KCTL_MIGRATION, "Plan", &req.base, true,
                       S_LONG_TIMEOUT_MS, "migrate plan", &m);
    if (rc != KCTL_EXIT_OK)
        return rc;
    const Kowloon__Migration__PlanResponse *p =
        (Kowloon__Migration__PlanResponse *)m;
    if (kctl_opts()->json) {
        kctl_print_json_message(m);
    } else {
        printf("%zu migrations, latest V%04d; %zu targets: %d to migrate, "
               "%d with errors\n",
               p->n_migrations, p->latest_version, p->n_targets,
               p->targets_pending, p->targets_failing);
        const char *h[] = {"TARGET",  "ISOLATION", "LOCATION",
                           "CURRENT", "WOULD RUN", "ERROR"};
        kctl_table_t *t = kctl_table_new(h, 6);
        for (size_t i = 0; i < p->n_targets; i++) {
            const Kowloon__Migration__TargetPlan *tp = p->targets[i];
            if (!a->all && tp->n_pending == 0 && !*tp->error)
                continue;
            char cur[16], pend[256] = "";
            snprintf(cur, sizeof cur, "V%04d", tp->current_version);
            size_t len = 0;
            for (size_t k = 0; k < tp->n_pending && len < sizeof pend; k++)
                len +=
                    (size_t)snprintf(pend + len, sizeof pend - len, "%sV%04d",
                                     k ? " " : "", tp->pending[k]);
            const char *row[] = {
                tp->target, tp->isolation,           tp->location,
                cur,        *tp->error ? "-" : pend, tp->error};
            kctl_table_row(t, row);
        }
        kctl_table_print(t);
        kctl_table_destroy(&t);
        for (size_t i = 0; i < p->n_migrations; i++)
            if (p->migrations[i]->no_transaction)
                printf("%s runs outside a transaction "
                       "(-- kowloon:no-transaction): not atomic with its "
                       "history row\n",
                       p->migrations[i]->name);
    }
    rc = p->targets_failing > 0 ? KCTL_EXIT_FAILED : KCTL_EXIT_OK;
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

/* --- status and the progress bar ----------------------------------------- */

static void
s_eta(char *buf, size_t size, int64_t ms)
{
    if (ms < 0)
        snprintf(buf, size, "?");
    else if (ms < 60000)
        snprintf(buf, size, "%" PRId64 "s", (ms + 999) / 1000);
    else
        snprintf(buf, size, "%" PRId64 "m%02" PRId64 "s", ms / 60000,
                 (ms / 1000) % 60);
}

static void
s_progress(const Kowloon__Migration__RunStatus *s, bool tty)
{
    char eta[32];
    s_eta(eta, sizeof eta, s->eta_ms);
    int finished = s->done + s->failed;
    if (tty) {
        const int width = 30;
        int fill =
            s->total > 0 ? (int)((int64_t)finished * width / s->total) : width;
        char bar[64];
        for (int i = 0; i < width; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[width] = '\0';
        fprintf(stderr,
                "\r[%s] %d/%d done, %d failed, %d remaining  %.1f/s  ETA %s  ",
                bar, s->done, s->total, s->failed, s->remaining, s->rate_per_s,
                eta);
    } else {
        fprintf(stderr,
                "run %" PRId64 ": %d/%d done, %d failed, %d remaining, "
                "%.1f/s, ETA %s\n",
                s->run_id, s->done, s->total, s->failed, s->remaining,
                s->rate_per_s, eta);
    }
    fflush(stderr);
}

static void
s_print_status(const Kowloon__Migration__RunStatus *s)
{
    if (kctl_opts()->json) {
        kctl_print_json_message(&s->base);
        return;
    }
    printf("run:        %" PRId64 "%s\n", s->run_id,
           s->retry_of ? " (retry)" : "");
    if (s->retry_of)
        printf("retry of:   %" PRId64 "\n", s->retry_of);
    printf("state:      %s\n", s->state);
    printf("version:    V%04d\n", s->latest_version);
    printf("targets:    %d total, %d done, %d failed, %d remaining\n", s->total,
           s->done, s->failed, s->remaining);
    printf("applied:    %d migrations\n", s->applied);
    printf("elapsed:    %.3f s (%.1f targets/s)\n", s->elapsed_ms / 1000.0,
           s->rate_per_s);
    printf("started:    %s\n", s->created_at);
    if (*s->finished_at)
        printf("finished:   %s\n", s->finished_at);
    if (s->n_failures > 0) {
        printf("\nfailed targets:\n");
        const char *h[] = {"TARGET", "VERSION", "ERROR"};
        kctl_table_t *t = kctl_table_new(h, 3);
        for (size_t i = 0; i < s->n_failures; i++) {
            const Kowloon__Migration__TargetFailure *f = s->failures[i];
            char v[16];
            snprintf(v, sizeof v, f->version ? "V%04d" : "-", f->version);
            const char *row[] = {f->target, v, f->error};
            kctl_table_row(t, row);
        }
        kctl_table_print(t);
        kctl_table_destroy(&t);
        if ((int)s->n_failures < s->failed)
            printf("(%d more; --failures N lists more)\n",
                   s->failed - (int)s->n_failures);
    }
}

static int
s_get_status(int64_t run_id, long failures, ProtobufCMessage **out)
{
    Kowloon__Migration__StatusRequest req =
        KOWLOON__MIGRATION__STATUS_REQUEST__INIT;
    req.run_id = run_id;
    req.max_failures = (int32_t)failures;
    return kctl_call(KCTL_MIGRATION, "Status", &req.base, true, 0,
                     "migrate status", out);
}

/* Shows run_id's status; with wait, follows it until finished. */
static int
s_follow(int64_t run_id, const s_args_t *a)
{
    bool tty = isatty(STDERR_FILENO) == 1;
    bool show = a->wait && !kctl_opts()->quiet;
    int64_t last_line = 0;
    ProtobufCMessage *m = NULL;
    for (;;) {
        int rc = s_get_status(run_id, a->failures, &m);
        if (rc != KCTL_EXIT_OK)
            return rc;
        const Kowloon__Migration__RunStatus *s =
            (Kowloon__Migration__RunStatus *)m;
        bool finished = strcmp(s->state, "finished") == 0;
        if (!a->wait || finished)
            break;
        /* A TTY gets a bar redrawn in place; a log gets a line every 2 s. */
        int64_t now = kl_now_mono_ms();
        if (show && (tty || now - last_line >= 2000)) {
            s_progress(s, tty);
            last_line = now;
        }
        protobuf_c_message_free_unpacked(m, NULL);
        m = NULL;
        struct timespec ts = {a->interval_ms / 1000,
                              (a->interval_ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
    }
    const Kowloon__Migration__RunStatus *s = (Kowloon__Migration__RunStatus *)m;
    if (show) {
        s_progress(s, tty);
        if (tty)
            fputc('\n', stderr);
    }
    s_print_status(s);
    int rc = s->failed > 0 ? KCTL_EXIT_FAILED : KCTL_EXIT_OK;
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

/* --- run, retry ---------------------------------------------------------- */

static int
s_started(ProtobufCMessage *m, const s_args_t *a, const char *what)
{
    const Kowloon__Migration__RunResponse *r =
        (Kowloon__Migration__RunResponse *)m;
    int64_t run_id = r->run_id;
    if (!a->wait) {
        if (kctl_opts()->json)
            kctl_print_json_message(m);
        else
            printf("run %" PRId64 " started (%s): %d targets to V%04d\n",
                   r->run_id, what, r->targets, r->latest_version);
    } else if (!kctl_opts()->quiet) {
        fprintf(stderr, "run %" PRId64 " started (%s): %d targets to V%04d\n",
                r->run_id, what, r->targets, r->latest_version);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return a->wait ? s_follow(run_id, a) : KCTL_EXIT_OK;
}

int
kctl_cmd_migrate(int argc, char **argv)
{
    if (argc < 2 || kctl_wants_help(argc, argv))
        return s_usage(argc < 2 ? stderr : stdout,
                       argc < 2 ? KCTL_EXIT_USAGE : KCTL_EXIT_OK);
    const char *sub = argv[1];
    bool is_plan = strcmp(sub, "plan") == 0, is_run = strcmp(sub, "run") == 0,
         is_status = strcmp(sub, "status") == 0,
         is_retry = strcmp(sub, "retry") == 0;
    if (!is_plan && !is_run && !is_status && !is_retry) {
        kctl_error("migrate: unknown subcommand \"%s\"", sub);
        return s_usage(stderr, KCTL_EXIT_USAGE);
    }
    s_args_t a;
    int rc;
    if (s_parse(argc - 1, argv + 1, &a, is_status || is_retry) < 0) {
        free(a.ids);
        return s_usage(stderr, KCTL_EXIT_USAGE);
    }
    ProtobufCMessage *m = NULL;
    if (is_plan) {
        rc = s_plan(&a);
    } else if (is_status) {
        rc = s_follow(a.run_id, &a);
    } else if (is_run) {
        Kowloon__Migration__RunRequest req =
            KOWLOON__MIGRATION__RUN_REQUEST__INIT;
        req.tenant_ids = a.ids;
        req.n_tenant_ids = a.n_ids;
        rc = kctl_call(KCTL_MIGRATION, "Run", &req.base, false,
                       S_LONG_TIMEOUT_MS, "migrate run", &m);
        if (rc == KCTL_EXIT_OK)
            rc = s_started(m, &a, a.n_ids ? "named tenants" : "every tenant");
    } else {
        Kowloon__Migration__RetryRequest req =
            KOWLOON__MIGRATION__RETRY_REQUEST__INIT;
        req.run_id = a.run_id;
        rc = kctl_call(KCTL_MIGRATION, "Retry", &req.base, false, 0,
                       "migrate retry", &m);
        if (rc == KCTL_EXIT_OK)
            rc = s_started(m, &a, "failed targets");
    }
    free(a.ids);
    return rc;
}
