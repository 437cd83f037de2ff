/* gw_auth: bearer parsing and the admin token check. */
#include "gw_auth.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static void
test_bearer(void **state)
{
    size_t len = 0;
    const char *t = gw_auth_bearer("Bearer abc", &len);
    assert_non_null(t);
    assert_int_equal(len, 3);
    assert_memory_equal(t, "abc", 3);
    t = gw_auth_bearer("bearer   abc  ", &len);
    assert_non_null(t);
    assert_int_equal(len, 3);
    assert_null(gw_auth_bearer(NULL, &len));
    assert_null(gw_auth_bearer("Basic YWJjOmRlZg==", &len));
    assert_null(gw_auth_bearer("Bearer", &len));
    assert_null(gw_auth_bearer("Bearer    ", &len));
    assert_null(gw_auth_bearer("Bearerabc", &len));
}

static void
test_admin(void **state)
{
    gw_auth_t *a = gw_auth_new("0123456789abcdef-admin");
    kl_status_t st;
    assert_int_equal(
        gw_auth_check_admin(a, "Bearer 0123456789abcdef-admin", &st), 0);
    assert_int_equal(gw_auth_check_admin(a, NULL, &st), -KL_UNAUTHENTICATED);
    assert_string_equal(st.message, "missing bearer token");
    assert_int_equal(gw_auth_check_admin(a, "Basic abc", &st),
                     -KL_UNAUTHENTICATED);
    assert_int_equal(
        gw_auth_check_admin(a, "Bearer 0123456789abcdef-admiN", &st),
        -KL_PERMISSION_DENIED);
    assert_string_equal(st.message, "invalid admin token");
    /* a prefix of the token is wrong, not "shorter but equal" */
    assert_int_equal(gw_auth_check_admin(a, "Bearer 0123456789abcdef", &st),
                     -KL_PERMISSION_DENIED);
    assert_int_equal(
        gw_auth_check_admin(a, "Bearer 0123456789abcdef-admin-and-more", &st),
        -KL_PERMISSION_DENIED);
    gw_auth_destroy(&a);
    assert_null(a);
    gw_auth_destroy(&a);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bearer),
        cmocka_unit_test(test_admin),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
