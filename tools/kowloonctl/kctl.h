/*
 * kctl: what every kowloonctl command shares — the global options, the
 * clients of the services, calls with their errors mapped to exit codes,
 * and output (human tables, or --json).
 *
 * A command is `int kctl_cmd_<name>(int argc, char **argv)`: argv[0] is the
 * command's name, global options are already removed, and the result is
 * the process's exit code (KCTL_EXIT_*). Register it with one line in
 * main.c's table. Commands print results on stdout and errors on stderr
 * ("kowloonctl: tenants show: tenant ... not found").
 */
#ifndef KCTL_H
#define KCTL_H

#include "kl_code.h"
#include "kl_rpc_client.h"

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Exit codes (docs/kowloonctl.md). FAILED: the operation failed, or a
 * migration run or plan has failed targets. */
#define KCTL_EXIT_OK 0
#define KCTL_EXIT_FAILED 1
#define KCTL_EXIT_USAGE 2       /* bad command line or bad argument */
#define KCTL_EXIT_UNAVAILABLE 3 /* service unreachable or timed out */
#define KCTL_EXIT_NOT_FOUND 4   /* no such tenant, plan, run */
#define KCTL_EXIT_REFUSED 5     /* already exists, precondition, denied */

/* The services kowloonctl talks to. */
typedef enum {
    KCTL_TENANT = 0,
    KCTL_FLAGS,
    KCTL_MIGRATION,
    KCTL_BILLING,
    KCTL_WORKSPACE,
    KCTL_SERVICE_COUNT
} kctl_service_t;

/* Global options (set by main before the command runs). */
typedef struct {
    bool json;          /* --json: machine output */
    int64_t timeout_ms; /* --timeout MS: per call (default 10000) */
    bool quiet;         /* --quiet: no progress output */
} kctl_opts_t;

const kctl_opts_t *kctl_opts(void);

/* Removes the global options from argv (anywhere on the line), storing
 * them. Returns the new argc, or -1 after printing a usage error.
 * --json, --quiet, --timeout MS, --tenant-endpoint EP (repeatable), and
 * likewise --flags-, --migration-, --billing-, --workspace-endpoint; an
 * endpoint not given comes from KOWLOON_<SERVICE>_ENDPOINTS, else the
 * settings table's default. */
int kctl_parse_global(int argc, char **argv);

/* The client of a service, made on first use (owned by kctl; freed by
 * kctl_shutdown). NULL after printing an error. */
kl_rpc_client_t *kctl_client(kctl_service_t service);
void kctl_shutdown(void);

/* Calls method; on failure prints "kowloonctl: <what>: <message>" on
 * stderr and returns the exit code for the status; 0 with *out on OK
 * (caller frees with protobuf_c_message_free_unpacked). */
int kctl_call(kctl_service_t service, const char *method,
              const ProtobufCMessage *in, bool idempotent, int64_t timeout_ms,
              const char *what, ProtobufCMessage **out);

/* Exit code for a status code. */
int kctl_exit_for(kl_code_t code);

/* Prints an error line on stderr: "kowloonctl: <fmt>". */
void kctl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints msg as JSON (proto3 mapping, defaults included) on stdout. */
void kctl_print_json_message(const ProtobufCMessage *msg);
/* Prints a JSON value on stdout and drops the reference. */
void kctl_print_json(json_t *value);

/* Whether argv holds -h or --help (commands answer with their usage). */
bool kctl_wants_help(int argc, char **argv);

/* A human table: columns, then rows of cells (copied), printed aligned. */
typedef struct kctl_table kctl_table_t;
kctl_table_t *kctl_table_new(const char *const *headers, size_t n_cols);
void kctl_table_row(kctl_table_t *self, const char *const *cells);
void kctl_table_print(const kctl_table_t *self);
void kctl_table_destroy(kctl_table_t **self_p);

/* Commands (defined in cmd_<name>.c). */
int kctl_cmd_tenants(int argc, char **argv);
int kctl_cmd_plans(int argc, char **argv);
int kctl_cmd_migrate(int argc, char **argv);
int kctl_cmd_tenant(int argc, char **argv);
int kctl_cmd_keygen(int argc, char **argv);
int kctl_cmd_keys(int argc, char **argv);

#endif
