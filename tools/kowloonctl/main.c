/*
 * kowloonctl: the operator's command line, talking to the services over
 * ZeroMQ. See docs/kowloonctl.md.
 *
 *   kowloonctl [global options] COMMAND [ARGS...]
 *
 * Adding a command is one line in s_commands (and its cmd_<name>.c; CMake
 * compiles every cmd_*.c it finds and defines KCTL_HAVE_CMD_<NAME>, so a
 * command whose file is not there yet is simply not offered).
 */
#include "kctl.h"

#include "kl_log.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} s_command_t;

static const s_command_t s_commands[] = {
    {"tenants", kctl_cmd_tenants,
     "list, create, show, suspend, resume and delete tenants"},
    {"plans", kctl_cmd_plans, "list and show plans"},
    {"migrate", kctl_cmd_migrate,
     "plan, run, watch and retry the product's migrations"},
#ifdef KCTL_HAVE_CMD_TENANT
    {"tenant", kctl_cmd_tenant, "move, back up, export and restore a tenant"},
#endif
#ifdef KCTL_HAVE_CMD_KEYGEN
    {"keygen", kctl_cmd_keygen, "generate CurveZMQ key pairs"},
#endif
#ifdef KCTL_HAVE_CMD_KEYS
    {"keys", kctl_cmd_keys, "manage the services' CurveZMQ keys"},
#endif
};

#define S_N_COMMANDS (sizeof s_commands / sizeof s_commands[0])

static void
s_usage(FILE *out)
{
    fprintf(out, "usage: kowloonctl [global options] COMMAND [ARGS...]\n"
                 "\n"
                 "commands:\n");
    for (size_t i = 0; i < S_N_COMMANDS; i++)
        fprintf(out, "  %-10s %s\n", s_commands[i].name, s_commands[i].summary);
    fprintf(
        out,
        "\n"
        "global options (anywhere on the line):\n"
        "  --json                    machine-readable output on stdout\n"
        "  --quiet, -q               no progress output\n"
        "  --timeout MS              deadline of each call (10000)\n"
        "  --tenant-endpoint EP      tenant service (repeatable; default\n"
        "                            KOWLOON_TENANT_ENDPOINTS)\n"
        "  --flags-endpoint EP       flags service (KOWLOON_FLAGS_ENDPOINTS)\n"
        "  --migration-endpoint EP   migration service\n"
        "                            (KOWLOON_MIGRATION_ENDPOINTS)\n"
        "  --billing-endpoint EP, --workspace-endpoint EP\n"
        "\n"
        "exit codes: 0 ok, 1 failed, 2 usage, 3 unavailable, 4 not found,\n"
        "            5 refused (exists, precondition, denied)\n"
        "`kowloonctl COMMAND --help` describes a command.\n");
}

int
main(int argc, char **argv)
{
    /* Library log lines would only interleave with the output. */
    kl_log_init("kowloonctl", KL_ERROR);
    signal(SIGPIPE, SIG_IGN);
    argc = kctl_parse_global(argc, argv);
    if (argc < 0)
        return KCTL_EXIT_USAGE;
    if (argc < 2) {
        s_usage(stderr);
        return KCTL_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        s_usage(stdout);
        return KCTL_EXIT_OK;
    }
    int rc = -1;
    for (size_t i = 0; i < S_N_COMMANDS; i++)
        if (strcmp(argv[1], s_commands[i].name) == 0) {
            rc = s_commands[i].fn(argc - 1, argv + 1);
            break;
        }
    if (rc < 0) {
        kctl_error("unknown command \"%s\"", argv[1]);
        s_usage(stderr);
        rc = KCTL_EXIT_USAGE;
    }
    fflush(stdout);
    kctl_shutdown();
    return rc;
}
