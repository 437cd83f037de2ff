/*
 * migration_runner: one instance's pool of migration workers. Each worker
 * thread owns a control-database connection and a migration_apply, claims
 * pending targets of running runs (any instance's runs: instances share the
 * work through the database), migrates them, and polls when there is
 * nothing to claim. Starting an instance resumes whatever a crashed one
 * left pending.
 */
#ifndef MIGRATION_RUNNER_H
#define MIGRATION_RUNNER_H

#include "kl_code.h"
#include "migration_files.h"

typedef struct {
    const char *database_url; /* control database (schema migration) */
    const char *owner_url;    /* owner role, KOWLOON_DATA_OWNER_URL */
    /* KOWLOON_TENANT_DB_OWNER_SERVERS entries; borrowed, outlive it */
    const char *const *owner_servers;
    size_t n_owner_servers;
    const migration_files_t *files; /* borrowed; outlives the runner */
    int workers;                    /* threads, >= 1 */
    int poll_ms;                    /* idle poll interval */
    const char *instance;           /* recorded on each target it ran */
    const char *app_role; /* KOWLOON_DATA_APP_ROLE; NULL or "": no grants */
} migration_runner_opts_t;

typedef struct migration_runner migration_runner_t;

/* Copies opts (not files) and starts the workers. NULL + status. */
migration_runner_t *migration_runner_new(const migration_runner_opts_t *opts,
                                         kl_status_t *status);

/* Wakes idle workers at once (a run was just created). Thread-safe. */
void migration_runner_wake(migration_runner_t *self);

/* Stops the workers (each finishes the target it holds) and frees. */
void migration_runner_destroy(migration_runner_t **self_p);

#endif
