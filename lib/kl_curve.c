/*
 * kl_curve: key files through czmq's zcert (the format kowloonctl keygen
 * writes), the allow-list as a sorted array of 32-byte keys under a mutex,
 * and a ZAP handler (RFC 27) that is a REP socket on the server's own
 * context, served by a thread of its own.
 *
 * We do not use czmq's zauth actor: it lives on czmq's global context,
 * while each Kowloon server has a context of its own, and until it is told
 * to use CURVE it lets NULL-mechanism clients in. Our handler refuses
 * everything but CURVE with a listed key from its first request.
 */
#include "kl_curve.h"

#include "kl_alloc.h"
#include "kl_log.h"

#include <czmq.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#define S_ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define S_ZAP_DOMAIN "kowloon"
/* Poll tick of the ZAP thread: how soon it sees destroy, and how often it
 * looks at the allow-list directory's modification time. */
#define S_ZAP_TICK_MS 250
#define S_DIR_CHECK_MS 1000
#define S_ZAP_FRAMES_MAX 16

struct kl_curve {
    uint8_t public_key[KL_CURVE_KEY_BYTES]; /* own public key */
    uint8_t secret_key[KL_CURVE_KEY_BYTES]; /* own secret key */
    char public_z85[KL_CURVE_Z85_LEN + 1];  /* own public key, Z85 */
    char *allow_dir;                        /* allow-list dir, owned; NULL */
    pthread_mutex_t mu;                     /* guards the fields below */
    uint8_t (*allowed)[KL_CURVE_KEY_BYTES]; /* sorted allowed keys */
    size_t n_allowed;                       /* keys in allowed */
    struct timespec dir_mtime;              /* allow_dir's mtime when read */
};

struct kl_curve_zap {
    kl_curve_t *curve;          /* not owned */
    void *rep;                  /* REP on inproc://zeromq.zap.01 */
    pthread_t thread;           /* answers requests */
    atomic_bool stop;           /* destroy has begun */
    atomic_uint_fast64_t n_ok;  /* requests allowed */
    atomic_uint_fast64_t n_bad; /* requests refused */
};

static int
s_key_cmp(const void *a, const void *b)
{
    return memcmp(a, b, KL_CURVE_KEY_BYTES);
}

/* Reads dir into a new sorted key array. */
static int
s_read_dir(const char *dir, uint8_t (**keys_p)[KL_CURVE_KEY_BYTES], size_t *n_p,
           struct timespec *mtime, kl_status_t *status)
{
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "curve allow-list %s is not a readable "
                             "directory: %s",
                             dir, errno ? strerror(errno) : "not a directory");
    DIR *d = opendir(dir);
    if (!d)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "opendir(%s) failed: %s", dir, strerror(errno));
    uint8_t(*keys)[KL_CURVE_KEY_BYTES] = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' ||
            (len >= 7 && strcmp(e->d_name + len - 7, "_secret") == 0))
            continue;
        char *path = kl_asprintf("%s/%s", dir, e->d_name);
        struct stat fsb;
        bool regular = stat(path, &fsb) == 0 && S_ISREG(fsb.st_mode);
        /* zcert_load prefers "<path>_secret"; a public cert must be read
         * as itself, so load it through zconfig. */
        zconfig_t *root = regular ? zconfig_load(path) : NULL;
        const char *pub =
            root ? zconfig_get(root, "/curve/public-key", NULL) : NULL;
        if (pub && kl_curve_key_valid(pub)) {
            if (n == cap) {
                cap = cap ? cap * 2 : 8;
                keys = kl_realloc(keys, cap * sizeof *keys);
            }
            zmq_z85_decode(keys[n], pub);
            n++;
        } else if (regular) {
            KL_LOG(KL_WARN,
                   "%s is not a public certificate (no curve/public-key), "
                   "ignored",
                   path);
        }
        zconfig_destroy(&root);
        free(path);
    }
    closedir(d);
    if (n > 1)
        qsort(keys, n, sizeof *keys, s_key_cmp);
    *keys_p = keys;
    *n_p = n;
    *mtime = sb.st_mtim;
    return 0;
}

bool
kl_curve_key_valid(const char *text)
{
    static const char z85[] =
        "0123456789abcdefghijklmnopqrstuvwxyz"
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
    if (!text || strlen(text) != KL_CURVE_Z85_LEN)
        return false;
    for (size_t i = 0; i < KL_CURVE_Z85_LEN; i++)
        if (!strchr(z85, text[i]))
            return false;
    return true;
}

kl_curve_t *
kl_curve_new(const char *secret_key_file, const char *allowed_clients_dir,
             kl_status_t *status)
{
    if (!secret_key_file || !*secret_key_file) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "curve: no secret key file given");
        return NULL;
    }
    zconfig_t *root = zconfig_load(secret_key_file);
    if (!root) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "curve key file %s cannot be read: %s", secret_key_file,
                      access(secret_key_file, R_OK) == 0 ? "not a certificate"
                                                         : strerror(errno));
        return NULL;
    }
    const char *pub = zconfig_get(root, "/curve/public-key", NULL);
    const char *sec = zconfig_get(root, "/curve/secret-key", NULL);
    if (!kl_curve_key_valid(pub) || !kl_curve_key_valid(sec)) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "curve key file %s has no %s (want the NAME.key_secret "
                      "file written by kowloonctl keygen)",
                      secret_key_file,
                      kl_curve_key_valid(pub) ? "curve/secret-key"
                                              : "curve/public-key");
        zconfig_destroy(&root);
        return NULL;
    }
    kl_curve_t *self = kl_calloc(1, sizeof *self);
    pthread_mutex_init(&self->mu, NULL);
    zmq_z85_decode(self->public_key, pub);
    zmq_z85_decode(self->secret_key, sec);
    snprintf(self->public_z85, sizeof self->public_z85, "%s", pub);
    zconfig_destroy(&root);
    if (allowed_clients_dir && *allowed_clients_dir) {
        self->allow_dir = kl_strdup(allowed_clients_dir);
        if (s_read_dir(self->allow_dir, &self->allowed, &self->n_allowed,
                       &self->dir_mtime, status) < 0) {
            kl_curve_destroy(&self);
            return NULL;
        }
    }
    return self;
}

void
kl_curve_destroy(kl_curve_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kl_curve_t *self = *self_p;
    /* The secret key must not linger in freed memory. */
    explicit_bzero(self->secret_key, sizeof self->secret_key);
    free(self->allowed);
    free(self->allow_dir);
    pthread_mutex_destroy(&self->mu);
    free(self);
    *self_p = NULL;
}

const char *
kl_curve_public_key(const kl_curve_t *self)
{
    return self ? self->public_z85 : NULL;
}

bool
kl_curve_has_allow_list(const kl_curve_t *self)
{
    return self && self->allow_dir;
}

int
kl_curve_reload(kl_curve_t *self, kl_status_t *status)
{
    if (!self)
        return kl_status_set(status, KL_INVALID_ARGUMENT, "no curve");
    if (!self->allow_dir)
        return 0;
    uint8_t(*keys)[KL_CURVE_KEY_BYTES] = NULL;
    size_t n = 0;
    struct timespec mtime;
    int rc = s_read_dir(self->allow_dir, &keys, &n, &mtime, status);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&self->mu);
    uint8_t(*old)[KL_CURVE_KEY_BYTES] = self->allowed;
    size_t old_n = self->n_allowed;
    self->allowed = keys;
    self->n_allowed = n;
    self->dir_mtime = mtime;
    pthread_mutex_unlock(&self->mu);
    free(old);
    if (old_n != n)
        KL_LOG(KL_INFO, "curve allow-list %s reloaded: %zu client keys",
               self->allow_dir, n);
    return 0;
}

/* Reloads when the directory's mtime moved (a file added, removed or
 * renamed into it). */
static void
s_reload_if_changed(kl_curve_t *self)
{
    struct stat sb;
    if (!self->allow_dir || stat(self->allow_dir, &sb) != 0)
        return;
    pthread_mutex_lock(&self->mu);
    bool changed = sb.st_mtim.tv_sec != self->dir_mtime.tv_sec ||
                   sb.st_mtim.tv_nsec != self->dir_mtime.tv_nsec;
    pthread_mutex_unlock(&self->mu);
    if (changed) {
        kl_status_t st;
        if (kl_curve_reload(self, &st) < 0)
            KL_LOG(KL_WARN, "curve allow-list reload failed: %s, kept",
                   st.message);
    }
}

size_t
kl_curve_allowed_count(const kl_curve_t *self)
{
    if (!self)
        return 0;
    kl_curve_t *s = (kl_curve_t *)self;
    pthread_mutex_lock(&s->mu);
    size_t n = s->n_allowed;
    pthread_mutex_unlock(&s->mu);
    return n;
}

bool
kl_curve_allows(const kl_curve_t *self, const uint8_t *key)
{
    if (!self || !key)
        return false;
    kl_curve_t *s = (kl_curve_t *)self;
    pthread_mutex_lock(&s->mu);
    bool found = s->n_allowed && bsearch(key, s->allowed, s->n_allowed,
                                         sizeof *s->allowed, s_key_cmp) != NULL;
    pthread_mutex_unlock(&s->mu);
    return found;
}

static int
s_setsockopt(void *sock, int option, const void *v, size_t len,
             const char *name, kl_status_t *status)
{
    if (zmq_setsockopt(sock, option, v, len) != 0)
        return kl_status_set(status, KL_INTERNAL,
                             "zmq_setsockopt(%s) failed: %s", name,
                             zmq_strerror(zmq_errno()));
    return 0;
}

int
kl_curve_setup_server(const kl_curve_t *self, void *socket, kl_status_t *status)
{
    if (!self || !socket)
        return kl_status_set(status, KL_INVALID_ARGUMENT, "curve: no socket");
    int one = 1;
    int rc = s_setsockopt(socket, ZMQ_CURVE_SERVER, &one, sizeof one,
                          "ZMQ_CURVE_SERVER", status);
    if (rc == 0)
        rc = s_setsockopt(socket, ZMQ_CURVE_SECRETKEY, self->secret_key,
                          KL_CURVE_KEY_BYTES, "ZMQ_CURVE_SECRETKEY", status);
    if (rc == 0)
        rc = s_setsockopt(socket, ZMQ_ZAP_DOMAIN, S_ZAP_DOMAIN,
                          strlen(S_ZAP_DOMAIN), "ZMQ_ZAP_DOMAIN", status);
    return rc;
}

int
kl_curve_setup_client(const kl_curve_t *self, void *socket,
                      const char *server_key_z85, kl_status_t *status)
{
    if (!self || !socket)
        return kl_status_set(status, KL_INVALID_ARGUMENT, "curve: no socket");
    if (!kl_curve_key_valid(server_key_z85))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "curve server key \"%s\" is not a 40-character "
                             "Z85 key",
                             server_key_z85 ? server_key_z85 : "");
    uint8_t server_key[KL_CURVE_KEY_BYTES];
    zmq_z85_decode(server_key, server_key_z85);
    int rc = s_setsockopt(socket, ZMQ_CURVE_SERVERKEY, server_key,
                          sizeof server_key, "ZMQ_CURVE_SERVERKEY", status);
    if (rc == 0)
        rc = s_setsockopt(socket, ZMQ_CURVE_PUBLICKEY, self->public_key,
                          KL_CURVE_KEY_BYTES, "ZMQ_CURVE_PUBLICKEY", status);
    if (rc == 0)
        rc = s_setsockopt(socket, ZMQ_CURVE_SECRETKEY, self->secret_key,
                          KL_CURVE_KEY_BYTES, "ZMQ_CURVE_SECRETKEY", status);
    return rc;
}

int
kl_curve_keygen(const char *dir, const char *name, char *public_z85,
                kl_status_t *status)
{
    if (!dir || !*dir || !name || !*name || strchr(name, '/'))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "keygen: a directory and a name without '/' are "
                             "required");
    char *pub_path = kl_asprintf("%s/%s.key", dir, name);
    char *sec_path = kl_asprintf("%s/%s.key_secret", dir, name);
    int rc = 0;
    if (access(pub_path, F_OK) == 0 || access(sec_path, F_OK) == 0) {
        rc = kl_status_set(status, KL_ALREADY_EXISTS,
                           "%s or %s already exists, not overwritten", pub_path,
                           sec_path);
        goto done;
    }
    zcert_t *cert = zcert_new();
    if (!cert) {
        rc = kl_status_set(status, KL_INTERNAL, "zcert_new() failed");
        goto done;
    }
    zcert_set_meta(cert, "name", "%s", name);
    /* The secret file is created private from the start, not chmod'ed
     * after being readable for a moment. */
    mode_t old = umask(077);
    int src = zcert_save_secret(cert, sec_path);
    umask(022);
    int prc = src == 0 ? zcert_save_public(cert, pub_path) : -1;
    umask(old);
    if (src != 0 || prc != 0) {
        rc = kl_status_set(status, KL_UNAVAILABLE, "writing %s failed: %s",
                           src != 0 ? sec_path : pub_path, strerror(errno));
        unlink(sec_path);
        unlink(pub_path);
    } else {
        chmod(sec_path, 0600);
        chmod(pub_path, 0644);
        if (public_z85)
            snprintf(public_z85, KL_CURVE_Z85_LEN + 1, "%s",
                     zcert_public_txt(cert));
    }
    zcert_destroy(&cert);
done:
    free(pub_path);
    free(sec_path);
    return rc;
}

/* --- the ZAP handler ---------------------------------------------------- */

/* Answers one ZAP request (frames already read). */
static void
s_zap_answer(kl_curve_zap_t *self, zmq_msg_t *f, int n)
{
    /* [version][request id][domain][address][identity][mechanism][creds] */
    const char *code = "400";
    const char *text = "client key not allowed";
    char user[KL_CURVE_Z85_LEN + 1] = "";
    bool version_ok = n >= 6 && zmq_msg_size(&f[0]) == 3 &&
                      memcmp(zmq_msg_data(&f[0]), "1.0", 3) == 0;
    if (!version_ok) {
        code = "500";
        text = "malformed ZAP request";
    } else if (zmq_msg_size(&f[5]) != 5 ||
               memcmp(zmq_msg_data(&f[5]), "CURVE", 5) != 0) {
        text = "only CURVE is accepted";
    } else if (n == 7 && zmq_msg_size(&f[6]) == KL_CURVE_KEY_BYTES) {
        const uint8_t *key = zmq_msg_data(&f[6]);
        zmq_z85_encode(user, key, KL_CURVE_KEY_BYTES);
        if (kl_curve_allows(self->curve, key)) {
            code = "200";
            text = "OK";
        }
    }
    if (code[0] == '2') {
        atomic_fetch_add(&self->n_ok, 1);
    } else {
        atomic_fetch_add(&self->n_bad, 1);
        char addr[64] = "";
        if (n >= 4) {
            size_t l = zmq_msg_size(&f[3]);
            if (l >= sizeof addr)
                l = sizeof addr - 1;
            memcpy(addr, zmq_msg_data(&f[3]), l);
        }
        KL_LOG(KL_WARN, "curve client %s from %s refused: %s",
               user[0] ? user : "-", addr[0] ? addr : "-", text);
    }
    /* [version][request id][status code][status text][user id][metadata] */
    zmq_send(self->rep, "1.0", 3, ZMQ_SNDMORE);
    if (n >= 2)
        zmq_send(self->rep, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]),
                 ZMQ_SNDMORE);
    else
        zmq_send(self->rep, "", 0, ZMQ_SNDMORE);
    zmq_send(self->rep, code, 3, ZMQ_SNDMORE);
    zmq_send(self->rep, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(self->rep, user, code[0] == '2' ? strlen(user) : 0, ZMQ_SNDMORE);
    zmq_send(self->rep, "", 0, 0);
}

static void *
s_zap_main(void *arg)
{
    kl_curve_zap_t *self = arg;
    int64_t next_check = 0;
    while (!atomic_load(&self->stop)) {
        zmq_pollitem_t item = {self->rep, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&item, 1, S_ZAP_TICK_MS);
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t now_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
        if (now_ms >= next_check) {
            s_reload_if_changed(self->curve);
            next_check = now_ms + S_DIR_CHECK_MS;
        }
        if (rc <= 0 || !(item.revents & ZMQ_POLLIN))
            continue;
        zmq_msg_t f[S_ZAP_FRAMES_MAX];
        int n = 0;
        bool more = true;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, self->rep, 0) < 0) {
                zmq_msg_close(&m);
                break;
            }
            more = zmq_msg_more(&m);
            if (n < S_ZAP_FRAMES_MAX)
                f[n++] = m;
            else
                zmq_msg_close(&m);
        }
        s_zap_answer(self, f, n);
        for (int i = 0; i < n; i++)
            zmq_msg_close(&f[i]);
    }
    return NULL;
}

kl_curve_zap_t *
kl_curve_zap_new(kl_curve_t *curve, void *zctx, kl_status_t *status)
{
    if (!curve || !zctx) {
        kl_status_set(status, KL_INVALID_ARGUMENT, "zap: missing argument");
        return NULL;
    }
    kl_curve_zap_t *self = kl_calloc(1, sizeof *self);
    self->curve = curve;
    atomic_init(&self->stop, false);
    atomic_init(&self->n_ok, 0);
    atomic_init(&self->n_bad, 0);
    self->rep = zmq_socket(zctx, ZMQ_REP);
    int linger = 0;
    if (self->rep)
        zmq_setsockopt(self->rep, ZMQ_LINGER, &linger, sizeof linger);
    if (!self->rep || zmq_bind(self->rep, S_ZAP_ENDPOINT) != 0) {
        kl_status_set(status, KL_INTERNAL, "zmq_bind(%s) failed: %s",
                      S_ZAP_ENDPOINT, zmq_strerror(zmq_errno()));
        if (self->rep)
            zmq_close(self->rep);
        free(self);
        return NULL;
    }
    /* pthread_create is the full barrier libzmq wants when a socket moves
     * to another thread. */
    if (pthread_create(&self->thread, NULL, s_zap_main, self) != 0) {
        kl_status_set(status, KL_INTERNAL, "zap: pthread_create() failed");
        zmq_close(self->rep);
        free(self);
        return NULL;
    }
    return self;
}

void
kl_curve_zap_destroy(kl_curve_zap_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kl_curve_zap_t *self = *self_p;
    atomic_store(&self->stop, true);
    pthread_join(self->thread, NULL);
    zmq_close(self->rep);
    free(self);
    *self_p = NULL;
}

void
kl_curve_zap_counts(const kl_curve_zap_t *self, uint64_t *allowed,
                    uint64_t *refused)
{
    kl_curve_zap_t *s = (kl_curve_zap_t *)self;
    if (allowed)
        *allowed = s ? atomic_load(&s->n_ok) : 0;
    if (refused)
        *refused = s ? atomic_load(&s->n_bad) : 0;
}
