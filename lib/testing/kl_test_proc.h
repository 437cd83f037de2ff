/*
 * kl_test_proc: a real program run by a test as a child process (test
 * support only: library kowloon_testing), e.g. kowloon-tenant started with
 * its settings in the environment and its output in a log file.
 *
 *   int port = kl_test_proc_free_port();
 *   const char *vars[] = {"KOWLOON_TENANT_BIND=tcp://127.0.0.1:PORT",
 *                         ..., NULL};
 *   kl_test_proc_t *p = kl_test_proc_start(bin, vars, "KOWLOON_", log);
 *   kl_test_proc_wait_serving(p, "tcp://127.0.0.1:PORT", 30000, &st);
 *   ...
 *   assert_int_equal(kl_test_proc_stop(&p), 0);  // SIGTERM, clean exit
 */
#ifndef KL_TEST_PROC_H
#define KL_TEST_PROC_H

#include "kl_code.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct kl_test_proc kl_test_proc_t;

/* A TCP port on 127.0.0.1 free at the time of the call, or -1 after
 * printing why. */
int kl_test_proc_free_port(void);

/* Runs bin (no arguments) with this process's environment, less every
 * variable whose name starts with drop_prefix (NULL: none), plus vars
 * ("NAME=value" strings, NULL-terminated; borrowed, copied by the
 * child); its stdout and stderr are appended to the file log. NULL after
 * printing why (fork failed). A bin that cannot be executed exits 127. */
kl_test_proc_t *kl_test_proc_start(const char *bin, const char *const *vars,
                                   const char *drop_prefix, const char *log);

/* The child's process id. */
pid_t kl_test_proc_pid(const kl_test_proc_t *self);

/* Whether the child has exited (it is reaped: its status is kept for
 * kl_test_proc_stop). */
bool kl_test_proc_exited(kl_test_proc_t *self);

/* Waits until endpoint answers kowloon.rpc.Health/Check SERVING. Returns 0;
 * -KL_UNAVAILABLE if the child exits first; -KL_DEADLINE_EXCEEDED after
 * timeout_ms (st says what the last check answered). */
int kl_test_proc_wait_serving(kl_test_proc_t *self, const char *endpoint,
                              int64_t timeout_ms, kl_status_t *st);

/* Sends SIGTERM (unless it exited already), waits for the child and
 * frees. Returns its exit status, or 128 + the signal that ended it (0:
 * clean, LeakSanitizer's verdict included). NULL or *self_p NULL: 0. */
int kl_test_proc_stop(kl_test_proc_t **self_p);

/* The same with SIGKILL (a crash). */
int kl_test_proc_kill(kl_test_proc_t **self_p);

/* CLOCK_MONOTONIC in milliseconds. */
int64_t kl_test_proc_now_ms(void);

/* Sleeps ms milliseconds. */
void kl_test_proc_sleep_ms(int ms);

#endif
