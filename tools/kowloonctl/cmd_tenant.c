/*
 * kowloonctl tenant: move | backup | export | restore | verify — one
 * tenant's data (docs/isolation.md, docs/operations/backup-restore.md).
 *
 * move calls TenantService.Move. The others run deploy/backup/kowloon-
 * tenant.sh (pg_dump, pg_restore and psql need the database's owner
 * credentials, which only the operator's host holds:
 * KOWLOON_DATABASE_URL and KOWLOON_TENANT_DB_OWNER_SERVERS in the
 * environment), found through KOWLOON_TENANT_TOOL, next to the binary in
 * a build tree, or under /opt/kowloon. The tool is executed directly (no
 * shell), with the arguments checked here first.
 */
#include "kctl.h"

#include "kowloon/tenant.pb-c.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* A move copies every row of the tenant: minutes, not seconds. */
#define S_MOVE_TIMEOUT_MS 600000
#define S_TOOL_INSTALLED "/opt/kowloon/deploy/backup/kowloon-tenant.sh"

static int
s_usage(FILE *out, int rc)
{
    fprintf(out,
            "usage: kowloonctl tenant move ID --to schema|database "
            "[--server NAME]\n"
            "       kowloonctl tenant backup ID OUT\n"
            "       kowloonctl tenant export ID OUTDIR\n"
            "       kowloonctl tenant restore ID IN [--into TARGET_ID]\n"
            "       kowloonctl tenant verify ID IN\n"
            "\n"
            "move copies the tenant's rows to a schema or a database of its\n"
            "own (row -> schema, row -> database, schema -> database),\n"
            "verifies the counts, switches and deletes the old copy; writes\n"
            "for the tenant answer 503 (retry) meanwhile. --server picks the\n"
            "database server (default: the one with the fewest tenants).\n"
            "\n"
            "backup writes a pg_dump (schema and database tenants) or an\n"
            "export (row tenants); export writes the tenant's rows as CSV\n"
            "with a MANIFEST; restore loads a backup or an export in place,\n"
            "or --into another (fresh) tenant with the ids rewritten; verify\n"
            "compares a backup's row counts with the live tenant. These need\n"
            "KOWLOON_DATABASE_URL and KOWLOON_TENANT_DB_OWNER_SERVERS (owner\n"
            "credentials) and run deploy/backup/kowloon-tenant.sh (or\n"
            "KOWLOON_TENANT_TOOL).\n");
    return rc;
}

/* A lowercase canonical uuid: the only tenant reference these accept. */
static bool
s_is_uuid(const char *s)
{
    if (!s || strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!((s[i] >= '0' && s[i] <= '9') ||
                     (s[i] >= 'a' && s[i] <= 'f'))) {
            return false;
        }
    }
    return true;
}

static int
s_move(int argc, char **argv)
{
    const char *id = NULL, *to = NULL, *server = "";
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--to") == 0 && i + 1 < argc)
            to = argv[++i];
        else if (strcmp(argv[i], "--server") == 0 && i + 1 < argc)
            server = argv[++i];
        else if (!id && argv[i][0] != '-')
            id = argv[i];
        else
            return s_usage(stderr, KCTL_EXIT_USAGE);
    }
    if (!s_is_uuid(id)) {
        kctl_error("tenant move: ID must be a tenant id (a lowercase uuid)");
        return KCTL_EXIT_USAGE;
    }
    if (!to) {
        kctl_error("tenant move: --to schema|database is required");
        return KCTL_EXIT_USAGE;
    }
    Kowloon__Tenant__MoveTenantRequest req =
        KOWLOON__TENANT__MOVE_TENANT_REQUEST__INIT;
    req.id = (char *)id;
    req.isolation = (char *)to;
    req.db_server = (char *)server;
    int64_t timeout = kctl_opts()->timeout_ms;
    if (timeout < S_MOVE_TIMEOUT_MS)
        timeout = S_MOVE_TIMEOUT_MS;
    ProtobufCMessage *m = NULL;
    /* Not idempotent: a retry on another instance would find the tenant
     * moving (or moved) and refuse, which is right, but say so plainly. */
    int rc = kctl_call(KCTL_TENANT, "Move", &req.base, false, timeout,
                       "tenant move", &m);
    if (rc != 0)
        return rc;
    Kowloon__Tenant__MoveTenantResponse *out =
        (Kowloon__Tenant__MoveTenantResponse *)m;
    if (kctl_opts()->json) {
        kctl_print_json_message(m);
    } else {
        printf("tenant %s moved to %s%s%s in %lld ms\n", out->tenant->id,
               out->tenant->isolation, out->tenant->db_server[0] ? " on " : "",
               out->tenant->db_server, (long long)out->elapsed_ms);
        const char *headers[] = {"TABLE", "ROWS"};
        kctl_table_t *t = kctl_table_new(headers, 2);
        for (size_t i = 0; i < out->n_counts; i++) {
            char rows[32];
            snprintf(rows, sizeof rows, "%lld",
                     (long long)out->counts[i]->rows);
            const char *cells[] = {out->counts[i]->table, rows};
            kctl_table_row(t, cells);
        }
        kctl_table_print(t);
        kctl_table_destroy(&t);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return KCTL_EXIT_OK;
}

/* The path of kowloon-tenant.sh into out. */
static int
s_tool(char *out, size_t size)
{
    const char *env = getenv("KOWLOON_TENANT_TOOL");
    if (env && *env) {
        snprintf(out, size, "%s", env);
        return access(out, X_OK) == 0 ? 0 : -1;
    }
    /* Layouts relative to the binary: a build directory inside the source
     * tree (<src>/build-x/tools/kowloonctl/kowloonctl), an install prefix
     * (<prefix>/bin/kowloonctl with <prefix>/deploy or share/kowloon). */
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        char *dir = dirname(self);
        const char *rel[] = {"/../../../deploy/backup/kowloon-tenant.sh",
                             "/../deploy/backup/kowloon-tenant.sh",
                             "/../share/kowloon/backup/kowloon-tenant.sh"};
        for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
            snprintf(out, size, "%s%s", dir, rel[i]);
            if (access(out, X_OK) == 0)
                return 0;
        }
    }
    snprintf(out, size, "%s", S_TOOL_INSTALLED);
    return access(out, X_OK) == 0 ? 0 : -1;
}

/* Runs the tool with argv (no shell); its exit status becomes ours. */
static int
s_run_tool(const char *const *args)
{
    char tool[PATH_MAX];
    if (s_tool(tool, sizeof tool) < 0) {
        kctl_error("tenant: kowloon-tenant.sh not found (set "
                   "KOWLOON_TENANT_TOOL)");
        return KCTL_EXIT_FAILED;
    }
    const char *argv[8] = {tool};
    size_t n = 1;
    for (; args[n - 1] && n < 7; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        kctl_error("tenant: fork() failed: %s", strerror(errno));
        return KCTL_EXIT_FAILED;
    }
    if (pid == 0) {
        if (kctl_opts()->quiet)
            setenv("KOWLOON_QUIET", "1", 1);
        execv(tool, (char *const *)argv);
        fprintf(stderr, "kowloonctl: tenant: execv(%s) failed: %s\n", tool,
                strerror(errno));
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return KCTL_EXIT_OK;
    return KCTL_EXIT_FAILED;
}

int
kctl_cmd_tenant(int argc, char **argv)
{
    if (argc < 2 || kctl_wants_help(argc, argv))
        return s_usage(argc < 2 ? stderr : stdout,
                       argc < 2 ? KCTL_EXIT_USAGE : KCTL_EXIT_OK);
    const char *sub = argv[1];
    if (strcmp(sub, "move") == 0)
        return s_move(argc, argv);
    bool known = strcmp(sub, "backup") == 0 || strcmp(sub, "export") == 0 ||
                 strcmp(sub, "restore") == 0 || strcmp(sub, "verify") == 0;
    if (!known) {
        kctl_error("tenant: unknown subcommand \"%s\"", sub);
        return s_usage(stderr, KCTL_EXIT_USAGE);
    }
    bool restore = strcmp(sub, "restore") == 0;
    if (!(argc == 4 ||
          (restore && argc == 6 && strcmp(argv[4], "--into") == 0)))
        return s_usage(stderr, KCTL_EXIT_USAGE);
    if (!s_is_uuid(argv[2]) || (argc == 6 && !s_is_uuid(argv[5]))) {
        kctl_error("tenant %s: tenant ids are lowercase uuids", sub);
        return KCTL_EXIT_USAGE;
    }
    const char *args[6] = {sub, argv[2], argv[3], NULL, NULL, NULL};
    if (argc == 6) {
        args[3] = "--into";
        args[4] = argv[5];
    }
    return s_run_tool(args);
}
