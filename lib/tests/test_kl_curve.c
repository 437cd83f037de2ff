/*
 * kl_curve and Curve in the RPC layer: keygen files, the right client key
 * served, a wrong key and a plaintext client refused, key rotation (old and
 * new accepted while both are listed, the old refused once removed and
 * reloaded), a non-loopback bind without keys refused, and the latency
 * Curve adds (printed).
 */
#include <stdlib.h>

#include "kl_rpc_test_echo.h"

#include "kl_curve.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

typedef struct {
    char dir[64];        /* temporary directory */
    char keys[96];       /* dir/keys: every key pair */
    char allow[96];      /* dir/allow: the server's allow-list */
    char server_pub[41]; /* the server's public key */
    kl_curve_t *server;  /* server keys + allow-list */
    kl_curve_t *old_key; /* client "old" (listed) */
    kl_curve_t *new_key; /* client "new" (listed) */
    kl_curve_t *rogue;   /* client "rogue" (never listed) */
} s_fixture_t;

static char *
s_path(const char *dir, const char *name)
{
    return kl_asprintf("%s/%s", dir, name);
}

static void
s_copy(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb");
    FILE *out = fopen(to, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    fclose(out);
}

static kl_curve_t *
s_load(s_fixture_t *f, const char *name, const char *allow)
{
    char *secret = kl_asprintf("%s/%s.key_secret", f->keys, name);
    kl_status_t st;
    kl_curve_t *c = kl_curve_new(secret, allow, &st);
    if (!c)
        fprintf(stderr, "kl_curve_new: %s\n", st.message);
    assert_non_null(c);
    free(secret);
    return c;
}

static int
s_setup(void **state)
{
    s_fixture_t *f = kl_calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/kl_curve_test.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->keys, sizeof f->keys, "%s/keys", f->dir);
    snprintf(f->allow, sizeof f->allow, "%s/allow", f->dir);
    assert_int_equal(mkdir(f->keys, 0700), 0);
    assert_int_equal(mkdir(f->allow, 0700), 0);
    kl_status_t st;
    const char *names[] = {"server", "old", "new", "rogue"};
    for (size_t i = 0; i < 4; i++) {
        char pub[41];
        assert_int_equal(kl_curve_keygen(f->keys, names[i], pub, &st), 0);
        if (i == 0)
            memcpy(f->server_pub, pub, sizeof pub);
    }
    /* Old and new are allowed, as during a rotation. */
    for (size_t i = 1; i <= 2; i++) {
        char *from = kl_asprintf("%s/%s.key", f->keys, names[i]);
        char *to = kl_asprintf("%s/%s.key", f->allow, names[i]);
        s_copy(from, to);
        free(from);
        free(to);
    }
    f->server = s_load(f, "server", f->allow);
    f->old_key = s_load(f, "old", NULL);
    f->new_key = s_load(f, "new", NULL);
    f->rogue = s_load(f, "rogue", NULL);
    *state = f;
    return 0;
}

static int
s_teardown(void **state)
{
    s_fixture_t *f = *state;
    kl_curve_destroy(&f->server);
    kl_curve_destroy(&f->old_key);
    kl_curve_destroy(&f->new_key);
    kl_curve_destroy(&f->rogue);
    char *cmd = kl_asprintf("rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    free(f);
    return 0;
}

/* An Echo server with Curve keys (or plaintext when curve is NULL). */
static ts_server_t *
s_start(const char *tag, kl_curve_t *curve)
{
    ts_server_t *ts = kl_calloc(1, sizeof *ts);
    snprintf(ts->tag, sizeof ts->tag, "%s", tag);
    kl_rpc_server_opts_t opts = {
        .bind = "tcp://127.0.0.1:*",
        .workers = 2,
        .worker_init = ts_worker_init,
        .worker_fini = ts_worker_fini,
        .user = ts,
        .no_signal_handlers = true,
        .curve = curve,
    };
    kl_status_t st;
    ts->server = kl_rpc_server_new(&opts, &st);
    assert_non_null(ts->server);
    assert_int_equal(
        kl_rpc_server_add_service(ts->server, &ts_echo_service.base), 0);
    assert_int_equal(kl_rpc_server_bind(ts->server, &st), 0);
    assert_int_equal(pthread_create(&ts->thread, NULL, ts_run, ts), 0);
    ts->running = true;
    return ts;
}

/* A client of the Echo server at ep with client keys curve (NULL:
 * plaintext) and server key key (NULL: none). */
static kl_rpc_client_t *
s_client(const char *ep, const kl_curve_t *curve, const char *key)
{
    char *spec = key ? kl_asprintf("%s?key=%s", ep, key) : kl_strdup(ep);
    const char *eps[] = {spec};
    kl_rpc_client_opts_t opts = {
        .endpoints = eps, .n_endpoints = 1, .curve = curve};
    kl_status_t st;
    kl_rpc_client_t *c =
        kl_rpc_client_new(&kowloon__test__echo__descriptor, &opts, &st);
    if (!c)
        fprintf(stderr, "kl_rpc_client_new: %s\n", st.message);
    free(spec);
    return c;
}

static void
test_keygen_files(void **state)
{
    s_fixture_t *f = *state;
    struct stat sb;
    char *sec = s_path(f->keys, "server.key_secret");
    char *pub = s_path(f->keys, "server.key");
    assert_int_equal(stat(sec, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    assert_int_equal(stat(pub, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0644);
    assert_true(kl_curve_key_valid(f->server_pub));
    assert_string_equal(kl_curve_public_key(f->server), f->server_pub);
    assert_int_equal(kl_curve_allowed_count(f->server), 2);

    kl_status_t st;
    /* Never overwrites a key pair. */
    assert_int_equal(kl_curve_keygen(f->keys, "server", NULL, &st),
                     -KL_ALREADY_EXISTS);
    assert_int_equal(kl_curve_keygen(f->keys, "a/b", NULL, &st),
                     -KL_INVALID_ARGUMENT);
    /* The public file has no secret key: not usable as own key pair. */
    assert_null(kl_curve_new(pub, NULL, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_non_null(strstr(st.message, "curve/secret-key"));
    assert_null(kl_curve_new("/nonexistent/x.key_secret", NULL, &st));
    assert_non_null(strstr(st.message, "/nonexistent/x.key_secret"));
    assert_null(kl_curve_new(sec, "/nonexistent-dir", &st));
    assert_non_null(strstr(st.message, "/nonexistent-dir"));
    assert_false(kl_curve_key_valid("short"));
    assert_false(
        kl_curve_key_valid("0123456789012345678901234567890123456 ,8"));
    free(sec);
    free(pub);
}

static void
test_right_key_served_wrong_and_plaintext_refused(void **state)
{
    s_fixture_t *f = *state;
    ts_server_t *ts = s_start("C", f->server);
    const char *ep = kl_rpc_server_endpoint(ts->server);
    kl_status_t st;
    char tag[16];

    kl_rpc_client_t *good = s_client(ep, f->old_key, f->server_pub);
    assert_int_equal(
        ts_call_echo(good, "Echo", "hi", 0, 3000, false, tag, sizeof tag, &st),
        0);
    assert_string_equal(tag, "C");
    int served = atomic_load(&ts->invocations);
    assert_int_equal(served, 1);

    /* A key not in the allow-list: the handshake fails, nothing runs. */
    kl_rpc_client_t *bad = s_client(ep, f->rogue, f->server_pub);
    assert_int_equal(
        ts_call_echo(bad, "Echo", "no", 0, 1500, false, NULL, 0, &st),
        -KL_UNAVAILABLE);
    /* Plaintext to a Curve server: refused the same way. */
    kl_rpc_client_t *plain = s_client(ep, NULL, NULL);
    assert_int_equal(
        ts_call_echo(plain, "Echo", "no", 0, 1500, false, NULL, 0, &st),
        -KL_UNAVAILABLE);
    /* A raw plaintext DEALER gets no answer either. */
    void *zctx = zmq_ctx_new();
    void *d = ts_dealer(zctx, ep);
    uint8_t *req;
    size_t len = ts_pack_request(KL_RPC_VERSION, 7, "kowloon.test.Echo", "Echo",
                                 0, NULL, 0, &req);
    zmq_send(d, req, len, ZMQ_DONTWAIT);
    free(req);
    assert_null(ts_recv_response(d));
    zmq_close(d);
    zmq_ctx_term(zctx);

    assert_int_equal(atomic_load(&ts->invocations), served);
    /* The allowed client still works. */
    assert_int_equal(
        ts_call_echo(good, "Echo", "again", 0, 3000, false, NULL, 0, &st), 0);
    kl_rpc_client_destroy(&good);
    kl_rpc_client_destroy(&bad);
    kl_rpc_client_destroy(&plain);
    ts_destroy(&ts);
}

static void
test_rotation(void **state)
{
    s_fixture_t *f = *state;
    ts_server_t *ts = s_start("R", f->server);
    const char *ep = kl_rpc_server_endpoint(ts->server);
    kl_status_t st;

    /* Both keys listed: both served. */
    kl_rpc_client_t *old_c = s_client(ep, f->old_key, f->server_pub);
    kl_rpc_client_t *new_c = s_client(ep, f->new_key, f->server_pub);
    assert_int_equal(
        ts_call_echo(old_c, "Echo", "old", 0, 3000, false, NULL, 0, &st), 0);
    assert_int_equal(
        ts_call_echo(new_c, "Echo", "new", 0, 3000, false, NULL, 0, &st), 0);
    kl_rpc_client_destroy(&old_c);

    /* Rotation done: the old certificate leaves the allow-list. */
    char *old_pub = s_path(f->allow, "old.key");
    assert_int_equal(unlink(old_pub), 0);
    free(old_pub);
    assert_int_equal(kl_curve_reload(f->server, &st), 0);
    assert_int_equal(kl_curve_allowed_count(f->server), 1);

    int before = atomic_load(&ts->invocations);
    old_c = s_client(ep, f->old_key, f->server_pub);
    assert_int_equal(
        ts_call_echo(old_c, "Echo", "old", 0, 1500, false, NULL, 0, &st),
        -KL_UNAVAILABLE);
    assert_int_equal(atomic_load(&ts->invocations), before);
    assert_int_equal(
        ts_call_echo(new_c, "Echo", "new", 0, 3000, false, NULL, 0, &st), 0);
    kl_rpc_client_t *new2 = s_client(ep, f->new_key, f->server_pub);
    assert_int_equal(
        ts_call_echo(new2, "Echo", "new2", 0, 3000, false, NULL, 0, &st), 0);

    /* Putting it back is seen without an explicit reload: the handler
     * watches the directory. */
    char *from = s_path(f->keys, "old.key");
    char *to = s_path(f->allow, "old.key");
    s_copy(from, to);
    free(from);
    free(to);
    for (int i = 0; i < 40 && kl_curve_allowed_count(f->server) != 2; i++)
        ts_sleep_ms(100);
    assert_int_equal(kl_curve_allowed_count(f->server), 2);
    kl_rpc_client_destroy(&old_c);
    old_c = s_client(ep, f->old_key, f->server_pub);
    assert_int_equal(
        ts_call_echo(old_c, "Echo", "old", 0, 3000, false, NULL, 0, &st), 0);

    kl_rpc_client_destroy(&old_c);
    kl_rpc_client_destroy(&new_c);
    kl_rpc_client_destroy(&new2);
    ts_destroy(&ts);
}

static void
test_non_loopback_needs_keys(void **state)
{
    s_fixture_t *f = *state;
    const char *binds[] = {"tcp://0.0.0.0:0", "tcp://*:0", "tcp://10.1.2.3:0",
                           "tcp://127.evil.example:0"};
    for (size_t i = 0; i < 4; i++) {
        kl_rpc_server_opts_t opts = {
            .bind = binds[i], .workers = 1, .no_signal_handlers = true};
        kl_status_t st;
        kl_rpc_server_t *s = kl_rpc_server_new(&opts, &st);
        assert_non_null(s);
        assert_int_equal(kl_rpc_server_bind(s, &st), -KL_FAILED_PRECONDITION);
        assert_non_null(strstr(st.message, binds[i]));
        assert_non_null(strstr(st.message, "KOWLOON_CURVE_SECRET_KEY_FILE"));
        /* run() refuses the same way, and returns. */
        assert_int_equal(kl_rpc_server_run(s), -KL_FAILED_PRECONDITION);
        kl_rpc_server_destroy(&s);
    }
    /* Keys without an allow-list are refused too. */
    kl_rpc_server_opts_t opts = {.bind = "tcp://127.0.0.1:0",
                                 .workers = 1,
                                 .no_signal_handlers = true,
                                 .curve = f->old_key};
    kl_status_t st;
    kl_rpc_server_t *s = kl_rpc_server_new(&opts, &st);
    assert_int_equal(kl_rpc_server_bind(s, &st), -KL_FAILED_PRECONDITION);
    assert_non_null(strstr(st.message, "KOWLOON_CURVE_ALLOWED_CLIENTS_DIR"));
    kl_rpc_server_destroy(&s);
}

/* Mean microseconds of one Echo round trip over n sequential calls. */
static double
s_mean_us(kl_rpc_client_t *c, int n)
{
    kl_status_t st;
    /* Warm up: connection, handshake. */
    for (int i = 0; i < 20; i++)
        assert_int_equal(
            ts_call_echo(c, "Echo", "w", 0, 3000, false, NULL, 0, &st), 0);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++)
        assert_int_equal(
            ts_call_echo(c, "Echo", "bench", 0, 3000, false, NULL, 0, &st), 0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double us = (double)(b.tv_sec - a.tv_sec) * 1e6 +
                (double)(b.tv_nsec - a.tv_nsec) / 1e3;
    return us / n;
}

static void
test_latency_overhead(void **state)
{
    s_fixture_t *f = *state;
    const int n = 2000;
    ts_server_t *plain_s = s_start("P", NULL);
    ts_server_t *curve_s = s_start("K", f->server);
    kl_rpc_client_t *plain =
        s_client(kl_rpc_server_endpoint(plain_s->server), NULL, NULL);
    kl_rpc_client_t *curve = s_client(kl_rpc_server_endpoint(curve_s->server),
                                      f->new_key, f->server_pub);
    double p = s_mean_us(plain, n);
    double k = s_mean_us(curve, n);
    /* Printed for docs/operations/curve.md; the build type (sanitizers)
     * changes the absolute figures a lot, the difference much less. */
    printf("curve latency: %d sequential Echo calls on loopback: plaintext "
           "%.1f us, curve %.1f us, overhead %.1f us (%.0f%%)\n",
           n, p, k, k - p, p > 0 ? (k - p) * 100.0 / p : 0.0);
    assert_int_equal(atomic_load(&curve_s->invocations), n + 20);
    kl_rpc_client_destroy(&plain);
    kl_rpc_client_destroy(&curve);
    ts_destroy(&plain_s);
    ts_destroy(&curve_s);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keygen_files),
        cmocka_unit_test(test_right_key_served_wrong_and_plaintext_refused),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_non_loopback_needs_keys),
        cmocka_unit_test(test_latency_overhead),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
