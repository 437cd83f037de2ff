/*
 * kl_rpc_env: the settings read once at start, a list of the clients it
 * made (with the setting each one follows) and, when asked, a thread that
 * reloads on SIGHUP.
 */
#include "kl_rpc_env.h"

#include "kl_alloc.h"
#include "kl_log.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* Largest endpoint file read. */
#define S_FILE_MAX (256 * 1024)

/* A client the env made. */
typedef struct s_client {
    kl_rpc_client_t *client; /* owned */
    kl_config_id_t id;       /* the *_ENDPOINTS setting it follows */
    struct s_client *next;   /* list link */
} s_client_t;

/* Endpoint strings handed out by kl_rpc_env_client_opts. */
typedef struct s_list {
    char **items;        /* owned */
    size_t n;            /* entries */
    struct s_list *next; /* list link */
} s_list_t;

struct kl_rpc_env {
    const kl_config_t *cfg; /* not owned */
    unsigned procs;         /* which settings cfg holds */
    kl_curve_t *curve;      /* owned; NULL without keys */
    const char *server_key; /* CURVE_SERVER_PUBLIC_KEY, in cfg; NULL */
    int drain_grace_ms;     /* RPC_DRAIN_GRACE_MS */
    size_t max_bytes;       /* RPC_MAX_MESSAGE_BYTES */
    pthread_mutex_t mu;     /* guards clients, lists, reloads */
    s_client_t *clients;    /* made by kl_rpc_env_client */
    s_list_t *lists;        /* made by kl_rpc_env_client_opts */
    int hup_fd;             /* eventfd written by the SIGHUP handler */
    pthread_t hup_thread;   /* reloads on SIGHUP */
    bool hup_started;       /* hup_thread runs */
    atomic_bool hup_stop;   /* destroy has begun */
};

/* The env SIGHUP reloads; one per process. */
static _Atomic(kl_rpc_env_t *) s_hup_env;

kl_rpc_env_t *
kl_rpc_env_new(const kl_config_t *cfg, unsigned procs, kl_status_t *status)
{
    if (!cfg) {
        kl_status_set(status, KL_INVALID_ARGUMENT, "rpc env: no config");
        return NULL;
    }
    const char *key_file = kl_config_str(cfg, KL_CFG_CURVE_SECRET_KEY_FILE);
    const char *allow_dir =
        procs & KL_PROC_SERVICES
            ? kl_config_str(cfg, KL_CFG_CURVE_ALLOWED_CLIENTS_DIR)
            : "";
    const char *server_key = kl_config_str(cfg, KL_CFG_CURVE_SERVER_PUBLIC_KEY);
    if (*allow_dir && !*key_file) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "%s is set but %s is not: a service needs its own key "
                      "pair to serve Curve clients",
                      kl_config_name(KL_CFG_CURVE_ALLOWED_CLIENTS_DIR),
                      kl_config_name(KL_CFG_CURVE_SECRET_KEY_FILE));
        return NULL;
    }
    if (*server_key && !kl_curve_key_valid(server_key)) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "%s: \"%s\" is not a 40-character Z85 key",
                      kl_config_name(KL_CFG_CURVE_SERVER_PUBLIC_KEY),
                      server_key);
        return NULL;
    }
    kl_rpc_env_t *self = kl_calloc(1, sizeof *self);
    self->cfg = cfg;
    self->procs = procs;
    self->hup_fd = -1;
    atomic_init(&self->hup_stop, false);
    pthread_mutex_init(&self->mu, NULL);
    self->server_key = *server_key ? server_key : NULL;
    self->max_bytes = (size_t)kl_config_int(cfg, KL_CFG_RPC_MAX_MESSAGE_BYTES);
    if (procs & KL_PROC_SERVICES)
        self->drain_grace_ms =
            (int)kl_config_int(cfg, KL_CFG_RPC_DRAIN_GRACE_MS);
    if (*key_file) {
        kl_status_t st;
        self->curve = kl_curve_new(key_file, allow_dir, &st);
        if (!self->curve) {
            kl_status_set(status, KL_INVALID_ARGUMENT, "%s / %s: %s",
                          kl_config_name(KL_CFG_CURVE_SECRET_KEY_FILE),
                          kl_config_name(KL_CFG_CURVE_ALLOWED_CLIENTS_DIR),
                          st.message);
            kl_rpc_env_destroy(&self);
            return NULL;
        }
        KL_LOG(KL_INFO, "curve on: public key %s, %zu allowed client keys",
               kl_curve_public_key(self->curve),
               kl_curve_allowed_count(self->curve));
    }
    return self;
}

void
kl_rpc_env_destroy(kl_rpc_env_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kl_rpc_env_t *self = *self_p;
    if (self->hup_started) {
        kl_rpc_env_t *expected = self;
        if (atomic_compare_exchange_strong(&s_hup_env, &expected, NULL))
            signal(SIGHUP, SIG_DFL);
        atomic_store(&self->hup_stop, true);
        uint64_t one = 1;
        ssize_t n = write(self->hup_fd, &one, sizeof one);
        (void)n;
        pthread_join(self->hup_thread, NULL);
    }
    if (self->hup_fd >= 0)
        close(self->hup_fd);
    while (self->clients) {
        s_client_t *c = self->clients;
        self->clients = c->next;
        kl_rpc_client_destroy(&c->client);
        free(c);
    }
    while (self->lists) {
        s_list_t *l = self->lists;
        self->lists = l->next;
        kl_rpc_env_free_list(&l->items, l->n);
        free(l);
    }
    kl_curve_destroy(&self->curve);
    pthread_mutex_destroy(&self->mu);
    free(self);
    *self_p = NULL;
}

kl_curve_t *
kl_rpc_env_curve(const kl_rpc_env_t *self)
{
    return self ? self->curve : NULL;
}

void
kl_rpc_env_server_opts(const kl_rpc_env_t *self, kl_rpc_server_opts_t *opts)
{
    if (!self || !opts)
        return;
    opts->curve = self->curve;
    opts->drain_grace_ms = self->drain_grace_ms;
}

/* --- endpoint lists --------------------------------------------------- */

static void
s_push(char ***list, size_t *n, size_t *cap, const char *item, size_t len)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        *list = kl_realloc(*list, *cap * sizeof **list);
    }
    (*list)[(*n)++] = kl_strndup(item, len);
}

/* Appends the endpoints of file path. */
static int
s_read_file(const char *path, char ***list, size_t *n, size_t *cap,
            kl_status_t *status)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "endpoint file %s: %s", path, strerror(errno));
    char *buf = kl_malloc(S_FILE_MAX + 1);
    size_t len = fread(buf, 1, S_FILE_MAX + 1, f);
    bool err = ferror(f);
    fclose(f);
    if (err || len > S_FILE_MAX) {
        free(buf);
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "endpoint file %s: %s", path,
                             err ? "read failed" : "larger than 256 KiB");
    }
    buf[len] = '\0';
    /* Comments end at the line's end; items are split at commas,
     * whitespace and newlines. */
    for (char *p = buf; *p;) {
        if (*p == '#') {
            while (*p && *p != '\n')
                p++;
            continue;
        }
        if (*p == ',' || *p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') {
            p++;
            continue;
        }
        char *start = p;
        while (*p && *p != ',' && *p != ' ' && *p != '\t' && *p != '\r' &&
               *p != '\n' && *p != '#')
            p++;
        s_push(list, n, cap, start, (size_t)(p - start));
    }
    free(buf);
    return 0;
}

int
kl_rpc_env_expand(const char *const *items, size_t n_items, char ***out,
                  size_t *n_out, kl_status_t *status)
{
    char **list = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < n_items; i++) {
        const char *item = items[i] ? items[i] : "";
        if (item[0] == '@') {
            int rc = s_read_file(item + 1, &list, &n, &cap, status);
            if (rc < 0) {
                kl_rpc_env_free_list(&list, n);
                return rc;
            }
        } else if (*item) {
            s_push(&list, &n, &cap, item, strlen(item));
        }
    }
    if (n == 0) {
        kl_rpc_env_free_list(&list, n);
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "the endpoint list is empty");
    }
    *out = list;
    *n_out = n;
    return 0;
}

void
kl_rpc_env_free_list(char ***list_p, size_t n)
{
    if (!list_p || !*list_p)
        return;
    for (size_t i = 0; i < n; i++)
        free((*list_p)[i]);
    free(*list_p);
    *list_p = NULL;
}

/* The endpoints of setting id, files read. */
static int
s_endpoints(kl_rpc_env_t *self, kl_config_id_t id, char ***list, size_t *n,
            kl_status_t *status)
{
    size_t n_items = kl_config_list_len(self->cfg, id);
    const char **items = kl_calloc(n_items ? n_items : 1, sizeof *items);
    for (size_t i = 0; i < n_items; i++)
        items[i] = kl_config_list_at(self->cfg, id, i);
    kl_status_t st;
    int rc = kl_rpc_env_expand(items, n_items, list, n, &st);
    free(items);
    if (rc < 0)
        return kl_status_set(status, st.code, "%s: %s", kl_config_name(id),
                             st.message);
    return 0;
}

int
kl_rpc_env_client_opts(kl_rpc_env_t *self, kl_config_id_t id,
                       kl_rpc_client_opts_t *opts, kl_status_t *status)
{
    if (!self || !opts)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "rpc env: missing argument");
    char **list = NULL;
    size_t n = 0;
    int rc = s_endpoints(self, id, &list, &n, status);
    if (rc < 0)
        return rc;
    s_list_t *l = kl_calloc(1, sizeof *l);
    l->items = list;
    l->n = n;
    pthread_mutex_lock(&self->mu);
    l->next = self->lists;
    self->lists = l;
    pthread_mutex_unlock(&self->mu);
    opts->endpoints = (const char *const *)list;
    opts->n_endpoints = n;
    opts->curve = self->curve;
    opts->server_public_key = self->server_key;
    opts->max_message_bytes = self->max_bytes;
    return 0;
}

kl_rpc_client_t *
kl_rpc_env_client(kl_rpc_env_t *self, kl_config_id_t id,
                  const ProtobufCServiceDescriptor *service,
                  kl_status_t *status)
{
    if (!self || !service) {
        kl_status_set(status, KL_INVALID_ARGUMENT, "rpc env: missing argument");
        return NULL;
    }
    char **list = NULL;
    size_t n = 0;
    if (s_endpoints(self, id, &list, &n, status) < 0)
        return NULL;
    kl_rpc_client_opts_t opts = {
        .endpoints = (const char *const *)list,
        .n_endpoints = n,
        .max_message_bytes = self->max_bytes,
        .curve = self->curve,
        .server_public_key = self->server_key,
    };
    kl_status_t st;
    kl_rpc_client_t *client = kl_rpc_client_new(service, &opts, &st);
    kl_rpc_env_free_list(&list, n);
    if (!client) {
        kl_status_set(status, st.code, "%s: %s", kl_config_name(id),
                      st.message);
        return NULL;
    }
    s_client_t *c = kl_calloc(1, sizeof *c);
    c->client = client;
    c->id = id;
    pthread_mutex_lock(&self->mu);
    c->next = self->clients;
    self->clients = c;
    pthread_mutex_unlock(&self->mu);
    return client;
}

int
kl_rpc_env_reload(kl_rpc_env_t *self, kl_status_t *status)
{
    if (!self)
        return kl_status_set(status, KL_INVALID_ARGUMENT, "no rpc env");
    int first = 0;
    kl_status_clear(status);
    pthread_mutex_lock(&self->mu);
    for (s_client_t *c = self->clients; c; c = c->next) {
        char **list = NULL;
        size_t n = 0;
        kl_status_t st;
        int rc = s_endpoints(self, c->id, &list, &n, &st);
        if (rc == 0) {
            rc = kl_rpc_client_set_endpoints(c->client,
                                             (const char *const *)list, n, &st);
            if (rc == 0)
                KL_LOG(KL_INFO, "%s reloaded: %zu endpoints",
                       kl_config_name(c->id), n);
            kl_rpc_env_free_list(&list, n);
        }
        if (rc < 0 && first == 0) {
            first = rc;
            kl_status_set(status, st.code, "%s: %s", kl_config_name(c->id),
                          st.message);
        }
    }
    pthread_mutex_unlock(&self->mu);
    if (self->curve) {
        kl_status_t st;
        int rc = kl_curve_reload(self->curve, &st);
        if (rc < 0 && first == 0) {
            first = rc;
            kl_status_set(status, st.code, "%s: %s",
                          kl_config_name(KL_CFG_CURVE_ALLOWED_CLIENTS_DIR),
                          st.message);
        }
    }
    return first;
}

/* --- SIGHUP ----------------------------------------------------------- */

static void
s_on_sighup(int signo)
{
    (void)signo;
    int saved = errno;
    kl_rpc_env_t *env = atomic_load(&s_hup_env);
    if (env) {
        uint64_t one = 1;
        ssize_t n = write(env->hup_fd, &one, sizeof one);
        (void)n;
    }
    errno = saved;
}

static void *
s_hup_main(void *arg)
{
    kl_rpc_env_t *self = arg;
    for (;;) {
        uint64_t v;
        ssize_t n = read(self->hup_fd, &v, sizeof v);
        if (atomic_load(&self->hup_stop))
            break;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        kl_status_t st;
        if (kl_rpc_env_reload(self, &st) < 0)
            KL_LOG(KL_ERROR,
                   "SIGHUP reload failed: %s, kept the old "
                   "settings",
                   st.message);
        else
            KL_LOG(KL_INFO, "SIGHUP: endpoints and allow-list reloaded");
    }
    return NULL;
}

int
kl_rpc_env_handle_sighup(kl_rpc_env_t *self)
{
    if (!self)
        return -KL_INVALID_ARGUMENT;
    if (self->hup_started)
        return 0;
    kl_rpc_env_t *expected = NULL;
    if (!atomic_compare_exchange_strong(&s_hup_env, &expected, self))
        return -KL_ALREADY_EXISTS;
    /* Blocking reads: the thread sleeps until a signal or destroy. */
    self->hup_fd = eventfd(0, EFD_CLOEXEC);
    if (self->hup_fd < 0 ||
        pthread_create(&self->hup_thread, NULL, s_hup_main, self) != 0) {
        atomic_store(&s_hup_env, NULL);
        return -KL_INTERNAL;
    }
    self->hup_started = true;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_sighup;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGHUP, &sa, NULL);
    return 0;
}
