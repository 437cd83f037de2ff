/* gw_request_id: validation and generation of X-Request-Id. */
#include "gw_request_id.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static void
test_valid(void **state)
{
    char max[GW_REQUEST_ID_MAX + 2];
    assert_true(gw_request_id_valid("a"));
    assert_true(gw_request_id_valid("Req-1.2_3"));
    memset(max, 'x', GW_REQUEST_ID_MAX);
    max[GW_REQUEST_ID_MAX] = '\0';
    assert_true(gw_request_id_valid(max));
    max[GW_REQUEST_ID_MAX] = 'x';
    max[GW_REQUEST_ID_MAX + 1] = '\0';
    assert_false(gw_request_id_valid(max)); /* 65 characters */
    assert_false(gw_request_id_valid(""));
    assert_false(gw_request_id_valid(NULL));
    assert_false(gw_request_id_valid("a b"));
    assert_false(gw_request_id_valid("a\"b"));
    assert_false(gw_request_id_valid("a\r\nX-Evil: 1"));
    assert_false(gw_request_id_valid("caf\xc3\xa9"));
}

static void
test_generate(void **state)
{
    char a[GW_REQUEST_ID_SIZE], b[GW_REQUEST_ID_SIZE];
    gw_request_id_generate(a);
    gw_request_id_generate(b);
    assert_int_equal(strlen(a), 32);
    assert_int_equal(strspn(a, "0123456789abcdef"), 32);
    assert_true(gw_request_id_valid(a));
    assert_string_not_equal(a, b);
}

static void
test_pick(void **state)
{
    char out[GW_REQUEST_ID_SIZE];
    gw_request_id_pick("client-id-1", out);
    assert_string_equal(out, "client-id-1");
    gw_request_id_pick("bad id", out);
    assert_int_equal(strlen(out), 32);
    assert_int_equal(strspn(out, "0123456789abcdef"), 32);
    gw_request_id_pick(NULL, out);
    assert_int_equal(strlen(out), 32);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_generate),
        cmocka_unit_test(test_pick),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
