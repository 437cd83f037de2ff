/*
 * kowloon-config: prints the table of KOWLOON_* settings, or checks an
 * environment against it.
 *
 *   kowloon-config --markdown      the table, for docs/configuration.md
 *   kowloon-config --names         every variable name, one a line
 *   kowloon-config --check PROC    load the settings of PROC (gateway,
 *                                  tenant, flags, workspace, billing,
 *                                  migration)
 *                                  from the environment; exit 1 with
 *                                  the error if one is bad
 */
#include "kl_config.h"

#include <stdio.h>
#include <string.h>

static int
s_usage(void)
{
    fprintf(stderr,
            "usage: kowloon-config --markdown | --names | "
            "--check gateway|tenant|flags|workspace|billing|migration\n");
    return 2;
}

int
main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--markdown") == 0) {
        kl_config_write_markdown(stdout);
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "--names") == 0) {
        for (int id = 0; id < KL_CFG_COUNT; id++)
            printf("%s\n", kl_config_name((kl_config_id_t)id));
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "--check") == 0) {
        unsigned procs = strcmp(argv[2], "gateway") == 0     ? KL_PROC_GATEWAY
                         : strcmp(argv[2], "tenant") == 0    ? KL_PROC_TENANT
                         : strcmp(argv[2], "flags") == 0     ? KL_PROC_FLAGS
                         : strcmp(argv[2], "workspace") == 0 ? KL_PROC_WORKSPACE
                         : strcmp(argv[2], "billing") == 0   ? KL_PROC_BILLING
                         : strcmp(argv[2], "migration") == 0 ? KL_PROC_MIGRATION
                                                             : 0;
        if (!procs)
            return s_usage();
        kl_status_t st;
        kl_config_t *cfg = kl_config_load(procs, NULL, NULL, &st);
        if (!cfg) {
            fprintf(stderr, "kowloon-config: %s\n", st.message);
            return 1;
        }
        kl_config_destroy(&cfg);
        printf("ok\n");
        return 0;
    }
    return s_usage();
}
