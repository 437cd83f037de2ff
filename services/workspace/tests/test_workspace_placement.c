/*
 * workspace_placement: the placement cache, without a database or a tenant
 * service (a counting source stands in for TenantService.Get).
 */
#include "kl_alloc.h"
#include "workspace_placement.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

static const char *s_a = "0a0a0a0a-0000-4000-8000-00000000000a";
static const char *s_b = "0b0b0b0b-0000-4000-8000-00000000000b";
static const char *s_c = "0c0c0c0c-0000-4000-8000-00000000000c";

typedef struct {
    int calls;
    kl_isolation_t iso; /* what the source answers */
    int fail;           /* answer UNAVAILABLE */
} s_source_t;

static int
s_source(void *arg, const char *tenant_id, kl_tenant_place_t *out,
         kl_status_t *status)
{
    s_source_t *src = arg;
    src->calls++;
    if (src->fail)
        return kl_status_set(status, KL_UNAVAILABLE, "tenant service down");
    return kl_tenant_place(tenant_id, src->iso, "workspace", "db2", out,
                           status);
}

static void
test_cached_then_dropped(void **state)
{
    (void)state;
    s_source_t src = {.iso = KL_ISOLATION_SCHEMA};
    workspace_placement_opts_t opts = {.fn = s_source, .fn_arg = &src};
    workspace_placement_t *p = workspace_placement_new(&opts);
    kl_tenant_place_t out;
    kl_status_t st;
    assert_int_equal(workspace_placement_get(p, s_a, &out, &st), 0);
    assert_int_equal(out.isolation, KL_ISOLATION_SCHEMA);
    assert_string_equal(out.schema, "t_0a0a0a0a00004000800000000000000a");
    assert_int_equal(workspace_placement_get(p, s_a, &out, &st), 0);
    assert_int_equal(src.calls, 1);
    /* A move happened: the entry is dropped, the next get asks again. */
    src.iso = KL_ISOLATION_DATABASE;
    workspace_placement_drop(p, s_a);
    assert_int_equal(workspace_placement_get(p, s_a, &out, &st), 0);
    assert_int_equal(src.calls, 2);
    assert_int_equal(out.isolation, KL_ISOLATION_DATABASE);
    assert_string_equal(out.db_server, "db2");
    /* Drop all. */
    assert_int_equal(workspace_placement_get(p, s_b, &out, &st), 0);
    workspace_placement_drop(p, NULL);
    assert_int_equal(workspace_placement_get(p, s_a, &out, &st), 0);
    assert_int_equal(workspace_placement_get(p, s_b, &out, &st), 0);
    assert_int_equal(src.calls, 5);
    /* Failures are not cached. */
    src.fail = 1;
    assert_int_equal(workspace_placement_get(p, s_c, &out, &st),
                     -KL_UNAVAILABLE);
    assert_int_equal(workspace_placement_get(p, s_c, &out, &st),
                     -KL_UNAVAILABLE);
    assert_int_equal(src.calls, 7);
    workspace_placement_destroy(&p);
    assert_null(p);
    workspace_placement_destroy(&p);
}

static void
test_ttl_and_capacity(void **state)
{
    (void)state;
    s_source_t src = {.iso = KL_ISOLATION_ROW};
    workspace_placement_opts_t opts = {
        .fn = s_source, .fn_arg = &src, .ttl_ms = 50, .max_entries = 2};
    workspace_placement_t *p = workspace_placement_new(&opts);
    kl_tenant_place_t out;
    kl_status_t st;
    assert_int_equal(workspace_placement_get(p, s_a, &out, &st), 0);
    usleep(80 * 1000);
    assert_int_equal(workspace_placement_get(p, s_a, &out, &st), 0);
    assert_int_equal(src.calls, 2);
    /* Two slots, three tenants: one is evicted, all are answered. */
    assert_int_equal(workspace_placement_get(p, s_b, &out, &st), 0);
    assert_int_equal(workspace_placement_get(p, s_c, &out, &st), 0);
    assert_string_equal(out.tenant_id, s_c);
    assert_int_equal(src.calls, 4);
    workspace_placement_destroy(&p);
}

/* Many tenants: each answered with its own placement, asked once while
 * cached; one dropped among them is asked again, the others are not; past
 * the bound every tenant is still answered right. */
static void
test_many_tenants(void **state)
{
    (void)state;
    enum { N = 3000 };
    s_source_t src = {.iso = KL_ISOLATION_SCHEMA};
    workspace_placement_opts_t opts = {
        .fn = s_source, .fn_arg = &src, .ttl_ms = 600000, .max_entries = N};
    workspace_placement_t *p = workspace_placement_new(&opts);
    static char ids[N + 500][37];
    for (int i = 0; i < N + 500; i++)
        snprintf(ids[i], sizeof ids[i], "%08x-0000-4000-8000-%012x",
                 (unsigned)i * 2654435761u, (unsigned)i);
    kl_tenant_place_t out;
    kl_status_t st;
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < N; i++) {
            assert_int_equal(workspace_placement_get(p, ids[i], &out, &st), 0);
            assert_string_equal(out.tenant_id, ids[i]);
            assert_int_equal(strncmp(out.schema + 2, ids[i], 8), 0);
        }
    assert_int_equal(src.calls, N);
    workspace_placement_drop(p, ids[1234]);
    for (int i = 0; i < N; i++)
        assert_int_equal(workspace_placement_get(p, ids[i], &out, &st), 0);
    assert_int_equal(src.calls, N + 1);
    /* 500 more than fit: each evicts one, every answer is still right. */
    for (int i = 0; i < N + 500; i++) {
        assert_int_equal(workspace_placement_get(p, ids[i], &out, &st), 0);
        assert_string_equal(out.tenant_id, ids[i]);
    }
    assert_true(src.calls > N + 500);
    workspace_placement_destroy(&p);
}

/* Without a source every tenant is in the row model. */
static void
test_row_only(void **state)
{
    (void)state;
    workspace_placement_opts_t opts = {.shared_schema = "shop"};
    workspace_placement_t *p = workspace_placement_new(&opts);
    kl_tenant_place_t out;
    kl_status_t st;
    assert_int_equal(workspace_placement_get(p, s_a, &out, &st), 0);
    assert_int_equal(out.isolation, KL_ISOLATION_ROW);
    assert_string_equal(out.schema, "shop");
    assert_int_equal(
        workspace_placement_get(p, "x'; DROP TABLE y; --", &out, &st),
        -KL_INVALID_ARGUMENT);
    workspace_placement_destroy(&p);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cached_then_dropped),
        cmocka_unit_test(test_ttl_and_capacity),
        cmocka_unit_test(test_many_tenants),
        cmocka_unit_test(test_row_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
