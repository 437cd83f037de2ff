/*
 * kowloonctl keygen: writes CurveZMQ key pairs in czmq's zcert format
 * (docs/operations/curve.md). Needs no service: it runs on the host that
 * will own the key.
 */
#include "kctl.h"

#include "kl_curve.h"

#include <stdio.h>
#include <string.h>

static int
s_usage(FILE *out, int rc)
{
    fprintf(
        out,
        "usage: kowloonctl keygen [--dir DIR] NAME...\n"
        "\n"
        "Writes a new Curve key pair for each NAME:\n"
        "  DIR/NAME.key         public certificate (mode 0644): copy it\n"
        "                       into the KOWLOON_CURVE_ALLOWED_CLIENTS_DIR\n"
        "                       of every service NAME calls\n"
        "  DIR/NAME.key_secret  both keys (mode 0600): this process's\n"
        "                       KOWLOON_CURVE_SECRET_KEY_FILE; never copy it\n"
        "and prints NAME and its public key (the \"?key=\" of endpoints\n"
        "that reach NAME). DIR defaults to the current directory. Existing\n"
        "files are never overwritten.\n");
    return rc;
}

int
kctl_cmd_keygen(int argc, char **argv)
{
    if (kctl_wants_help(argc, argv))
        return s_usage(stdout, KCTL_EXIT_OK);
    const char *dir = ".";
    int first = 1;
    if (argc >= 3 && strcmp(argv[1], "--dir") == 0) {
        dir = argv[2];
        first = 3;
    }
    if (first >= argc)
        return s_usage(stderr, KCTL_EXIT_USAGE);
    for (int i = first; i < argc; i++)
        if (argv[i][0] == '-' || !argv[i][0] || strchr(argv[i], '/')) {
            kctl_error("keygen: bad key name \"%s\" (want a plain file name)",
                       argv[i]);
            return KCTL_EXIT_USAGE;
        }
    json_t *out = kctl_opts()->json ? json_array() : NULL;
    int rc = KCTL_EXIT_OK;
    for (int i = first; i < argc; i++) {
        char pub[KL_CURVE_Z85_LEN + 1];
        kl_status_t st;
        if (kl_curve_keygen(dir, argv[i], pub, &st) < 0) {
            kctl_error("keygen: %s", st.message);
            rc = st.code == KL_ALREADY_EXISTS ? KCTL_EXIT_REFUSED
                                              : KCTL_EXIT_FAILED;
            break;
        }
        if (out) {
            char pub_file[4096], sec_file[4096];
            snprintf(pub_file, sizeof pub_file, "%s/%s.key", dir, argv[i]);
            snprintf(sec_file, sizeof sec_file, "%s/%s.key_secret", dir,
                     argv[i]);
            json_array_append_new(out, json_pack("{s:s, s:s, s:s, s:s}", "name",
                                                 argv[i], "public_key", pub,
                                                 "public_file", pub_file,
                                                 "secret_file", sec_file));
        } else
            printf("%s %s\n", argv[i], pub);
    }
    if (out)
        kctl_print_json(out);
    return rc;
}
