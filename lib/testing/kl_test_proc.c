/*
 * kl_test_proc: a real program run by a test as a child process
 * (kl_test_proc.h).
 */
#include "kl_test_proc.h"

#include "kl_alloc.h"
#include "kl_rpc_client.h"
#include "kowloon/rpc.pb-c.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

struct kl_test_proc {
    pid_t pid;   /* the child */
    bool reaped; /* waited for already; status holds its wait status */
    int status;
};

int
kl_test_proc_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        fprintf(stderr, "kl_test_proc: no free port: %s\n", strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

kl_test_proc_t *
kl_test_proc_start(const char *bin, const char *const *vars,
                   const char *drop_prefix, const char *log)
{
    size_t n_env = 0, n_vars = 0;
    while (environ[n_env])
        n_env++;
    while (vars && vars[n_vars])
        n_vars++;
    size_t drop = drop_prefix ? strlen(drop_prefix) : 0;
    char **env = kl_calloc(n_env + n_vars + 1, sizeof *env);
    size_t k = 0;
    for (size_t i = 0; i < n_vars; i++)
        env[k++] = (char *)vars[i];
    for (size_t i = 0; i < n_env; i++)
        if (drop == 0 || strncmp(environ[i], drop_prefix, drop) != 0)
            env[k++] = environ[i];
    env[k] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        char *argv[] = {(char *)bin, NULL};
        execve(bin, argv, env);
        _exit(127);
    }
    free(env);
    if (pid < 0) {
        fprintf(stderr, "kl_test_proc: fork: %s\n", strerror(errno));
        return NULL;
    }
    kl_test_proc_t *self = kl_calloc(1, sizeof *self);
    self->pid = pid;
    return self;
}

pid_t
kl_test_proc_pid(const kl_test_proc_t *self)
{
    return self->pid;
}

bool
kl_test_proc_exited(kl_test_proc_t *self)
{
    if (!self->reaped &&
        waitpid(self->pid, &self->status, WNOHANG) == self->pid)
        self->reaped = true;
    return self->reaped;
}

int
kl_test_proc_wait_serving(kl_test_proc_t *self, const char *endpoint,
                          int64_t timeout_ms, kl_status_t *st)
{
    kl_status_t local;
    if (!st)
        st = &local;
    kl_rpc_client_opts_t o = {.endpoints = &endpoint, .n_endpoints = 1};
    kl_rpc_client_t *c =
        kl_rpc_client_new(&kowloon__rpc__health__descriptor, &o, st);
    if (!c)
        return -(int)st->code;
    int64_t until = kl_test_proc_now_ms() + timeout_ms;
    int rc;
    for (;;) {
        Kowloon__Rpc__HealthCheckRequest req =
            KOWLOON__RPC__HEALTH_CHECK_REQUEST__INIT;
        ProtobufCMessage *out = NULL;
        kl_call_opts_t co = {.timeout_ms = 500};
        rc = kl_rpc_client_call(c, "Check", &req.base, &co, &out, st);
        if (rc == 0) {
            int status = ((Kowloon__Rpc__HealthCheckResponse *)out)->status;
            protobuf_c_message_free_unpacked(out, NULL);
            if (status ==
                KOWLOON__RPC__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING)
                break;
            kl_status_set(st, KL_UNAVAILABLE, "%s answers status %d", endpoint,
                          status);
        }
        if (kl_test_proc_exited(self)) {
            rc = kl_status_set(st, KL_UNAVAILABLE, "process %d exited",
                               (int)self->pid);
            break;
        }
        if (kl_test_proc_now_ms() > until) {
            char last[KL_STATUS_MESSAGE_MAX];
            snprintf(last, sizeof last, "%s", st->message);
            rc = kl_status_set(st, KL_DEADLINE_EXCEEDED,
                               "%s not serving after %lld ms: %s", endpoint,
                               (long long)timeout_ms, last);
            break;
        }
        kl_test_proc_sleep_ms(100);
    }
    kl_rpc_client_destroy(&c);
    return rc;
}

static int
s_end(kl_test_proc_t **self_p, int sig)
{
    if (!self_p || !*self_p)
        return 0;
    kl_test_proc_t *self = *self_p;
    if (!self->reaped) {
        kill(self->pid, sig);
        while (waitpid(self->pid, &self->status, 0) < 0 && errno == EINTR)
            ;
    }
    int st = self->status;
    free(self);
    *self_p = NULL;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int
kl_test_proc_stop(kl_test_proc_t **self_p)
{
    return s_end(self_p, SIGTERM);
}

int
kl_test_proc_kill(kl_test_proc_t **self_p)
{
    return s_end(self_p, SIGKILL);
}

int64_t
kl_test_proc_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
kl_test_proc_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}
