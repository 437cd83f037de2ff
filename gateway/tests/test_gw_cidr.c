/* gw_cidr: trusted-proxy address blocks. */
#include "gw_cidr.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static void
test_ipv4_blocks(void **state)
{
    gw_cidr_list_t *l = gw_cidr_list_new();
    kl_status_t st;
    assert_int_equal(gw_cidr_list_add(l, "10.0.0.0/8", &st), 0);
    assert_int_equal(gw_cidr_list_add(l, "192.168.1.7", &st), 0);
    assert_int_equal(gw_cidr_list_add(l, "172.16.5.9/12", &st), 0);
    assert_true(gw_cidr_list_contains(l, "10.255.1.2"));
    assert_true(gw_cidr_list_contains(l, "10.0.0.0"));
    assert_false(gw_cidr_list_contains(l, "11.0.0.1"));
    assert_true(gw_cidr_list_contains(l, "192.168.1.7"));
    assert_false(gw_cidr_list_contains(l, "192.168.1.8"));
    /* host bits of "172.16.5.9/12" are ignored: it is 172.16.0.0/12 */
    assert_true(gw_cidr_list_contains(l, "172.31.255.255"));
    assert_false(gw_cidr_list_contains(l, "172.32.0.1"));
    /* IPv4-mapped IPv6 peers match IPv4 blocks */
    assert_true(gw_cidr_list_contains(l, "::ffff:10.1.2.3"));
    assert_false(gw_cidr_list_contains(l, "::ffff:11.1.2.3"));
    /* an IPv6 peer never matches an IPv4 block */
    assert_false(gw_cidr_list_contains(l, "::a01:203"));
    gw_cidr_list_destroy(&l);
    assert_null(l);
    gw_cidr_list_destroy(&l);
}

static void
test_ipv6_blocks(void **state)
{
    gw_cidr_list_t *l = gw_cidr_list_new();
    assert_int_equal(gw_cidr_list_add(l, "::1/128", NULL), 0);
    assert_int_equal(gw_cidr_list_add(l, "2001:db8::/33", NULL), 0);
    assert_true(gw_cidr_list_contains(l, "::1"));
    assert_false(gw_cidr_list_contains(l, "::2"));
    assert_true(gw_cidr_list_contains(l, "2001:db8:7fff::1"));
    assert_false(gw_cidr_list_contains(l, "2001:db8:8000::1"));
    assert_false(gw_cidr_list_contains(l, "127.0.0.1"));
    gw_cidr_list_destroy(&l);
}

static void
test_zero_prefix_and_empty(void **state)
{
    gw_cidr_list_t *l = gw_cidr_list_new();
    assert_false(gw_cidr_list_contains(l, "127.0.0.1"));
    assert_int_equal(gw_cidr_list_add(l, "0.0.0.0/0", NULL), 0);
    assert_true(gw_cidr_list_contains(l, "1.2.3.4"));
    assert_false(gw_cidr_list_contains(l, "::1"));
    gw_cidr_list_destroy(&l);
}

static void
test_malformed(void **state)
{
    gw_cidr_list_t *l = gw_cidr_list_new();
    kl_status_t st;
    assert_int_equal(gw_cidr_list_add(l, "10.0.0.0/33", &st),
                     -KL_INVALID_ARGUMENT);
    assert_string_equal(st.message,
                        "\"10.0.0.0/33\": bad prefix length (want 0..32)");
    assert_int_equal(gw_cidr_list_add(l, "::/129", &st), -KL_INVALID_ARGUMENT);
    assert_int_equal(gw_cidr_list_add(l, "10.0.0.0/", &st),
                     -KL_INVALID_ARGUMENT);
    assert_int_equal(gw_cidr_list_add(l, "10.0.0.0/8x", &st),
                     -KL_INVALID_ARGUMENT);
    assert_int_equal(gw_cidr_list_add(l, "example.com", &st),
                     -KL_INVALID_ARGUMENT);
    assert_string_equal(st.message,
                        "\"example.com\" is not an address or CIDR block");
    assert_int_equal(gw_cidr_list_add(l, "/8", &st), -KL_INVALID_ARGUMENT);
    assert_int_equal(gw_cidr_list_add(l, "", &st), -KL_INVALID_ARGUMENT);
    /* nothing malformed was added; malformed peers are never inside */
    assert_int_equal(gw_cidr_list_add(l, "0.0.0.0/0", NULL), 0);
    assert_false(gw_cidr_list_contains(l, "garbage"));
    assert_false(gw_cidr_list_contains(l, ""));
    assert_false(gw_cidr_list_contains(l, NULL));
    gw_cidr_list_destroy(&l);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ipv4_blocks),
        cmocka_unit_test(test_ipv6_blocks),
        cmocka_unit_test(test_zero_prefix_and_empty),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
