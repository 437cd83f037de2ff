/*
 * Tests of kl_subdomain: the subdomain rules and Host header parsing.
 */
#include "kl_subdomain.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static void
s_assert_invalid(const char *s, const char *want)
{
    kl_status_t st;
    assert_int_equal(kl_subdomain_validate(s, &st), -KL_INVALID_ARGUMENT);
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_string_equal(st.message, want);
    assert_int_equal(kl_subdomain_validate(s, NULL), -KL_INVALID_ARGUMENT);
}

static void
test_validate_ok(void **state)
{
    (void)state;
    static const char *const ok[] = {
        "acme",
        "abc",
        "a-b",
        "a1b",
        "123",
        "xn--bcher-kva",
        "a--b",
        "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        kl_status_t st;
        assert_int_equal(strlen(ok[i]) <= 63, 1);
        assert_int_equal(kl_subdomain_validate(ok[i], &st), 0);
    }
}

static void
test_validate_rejects(void **state)
{
    (void)state;
    s_assert_invalid("ab", "subdomain must be 3 to 63 characters long, got 2");
    s_assert_invalid("", "subdomain must be 3 to 63 characters long, got 0");
    s_assert_invalid(NULL, "subdomain must be 3 to 63 characters long, got 0");
    s_assert_invalid(
        "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz01",
        "subdomain must be 3 to 63 characters long, got 64");
    s_assert_invalid("Acme", "subdomain \"Acme\": only lowercase letters, "
                             "digits and inner hyphens are allowed");
    s_assert_invalid("ac_me", "subdomain \"ac_me\": only lowercase letters, "
                              "digits and inner hyphens are allowed");
    s_assert_invalid("a.cme", "subdomain \"a.cme\": only lowercase letters, "
                              "digits and inner hyphens are allowed");
    s_assert_invalid("acm\xc3\xa9", "subdomain \"acm\xc3\xa9\": only "
                                    "lowercase letters, digits and inner "
                                    "hyphens are allowed");
    s_assert_invalid("ac me", "subdomain \"ac me\": only lowercase letters, "
                              "digits and inner hyphens are allowed");
    s_assert_invalid("-acme", "subdomain \"-acme\": may not start or end "
                              "with a hyphen");
    s_assert_invalid("acme-", "subdomain \"acme-\": may not start or end "
                              "with a hyphen");
}

static void
test_reserved(void **state)
{
    (void)state;
    const char *const reserved[] = {"www", "api", "admin"};
    assert_true(kl_subdomain_reserved("api", reserved, 3));
    assert_true(kl_subdomain_reserved("admin", reserved, 3));
    assert_false(kl_subdomain_reserved("apis", reserved, 3));
    assert_false(kl_subdomain_reserved("ap", reserved, 3));
    assert_false(kl_subdomain_reserved("api", reserved, 0));
}

/* host against base -> kind, and the subdomain for TENANT. */
static void
s_assert_host(const char *host, const char *base, kl_host_kind_t kind,
              const char *sub)
{
    char out[64];
    memset(out, 'z', sizeof out);
    kl_host_kind_t got = kl_host_parse(host, base, out, sizeof out);
    if (got != kind)
        fail_msg("kl_host_parse(\"%s\", \"%s\") = %d, want %d",
                 host ? host : "(null)", base, got, kind);
    assert_string_equal(out, kind == KL_HOST_TENANT ? sub : "");
}

static void
test_host_tenant(void **state)
{
    (void)state;
    s_assert_host("acme.localhost", "localhost", KL_HOST_TENANT, "acme");
    s_assert_host("acme.localhost:8080", "localhost", KL_HOST_TENANT, "acme");
    s_assert_host("ACME.LocalHost", "localhost", KL_HOST_TENANT, "acme");
    s_assert_host("acme.localhost.", "localhost", KL_HOST_TENANT, "acme");
    s_assert_host("acme.localhost.:443", "localhost", KL_HOST_TENANT, "acme");
    s_assert_host("acme.yoursaas.com", "yoursaas.com", KL_HOST_TENANT, "acme");
    s_assert_host("a-1.yoursaas.com:65535", "yoursaas.com", KL_HOST_TENANT,
                  "a-1");
    s_assert_host("x.localhost:1", "localhost", KL_HOST_OTHER, "");
    /* The base is matched without regard to case or a trailing dot. */
    s_assert_host("acme.yoursaas.com", "YourSaaS.com", KL_HOST_TENANT, "acme");
    s_assert_host("acme.yoursaas.com", "yoursaas.com.", KL_HOST_TENANT, "acme");

    /* out too small: kind still TENANT, out left empty. */
    char small[3] = "zz";
    assert_int_equal(
        kl_host_parse("acme.localhost", "localhost", small, sizeof small),
        KL_HOST_TENANT);
    assert_string_equal(small, "");
    assert_int_equal(kl_host_parse("acme.localhost", "localhost", NULL, 0),
                     KL_HOST_TENANT);
}

static void
test_host_apex_and_other(void **state)
{
    (void)state;
    s_assert_host("localhost", "localhost", KL_HOST_APEX, "");
    s_assert_host("localhost:8080", "localhost", KL_HOST_APEX, "");
    s_assert_host("LOCALHOST.", "localhost", KL_HOST_APEX, "");
    s_assert_host("yoursaas.com", "yoursaas.com", KL_HOST_APEX, "");
    /* Nested labels are not tenants. */
    s_assert_host("a.acme.localhost", "localhost", KL_HOST_OTHER, "");
    s_assert_host("www.acme.yoursaas.com", "yoursaas.com", KL_HOST_OTHER, "");
    /* Other domains, and ones that only end like the base. */
    s_assert_host("example.com", "yoursaas.com", KL_HOST_OTHER, "");
    s_assert_host("evilyoursaas.com", "yoursaas.com", KL_HOST_OTHER, "");
    s_assert_host("acme.yoursaas.com.evil.net", "yoursaas.com", KL_HOST_OTHER,
                  "");
    s_assert_host("127.0.0.1:8080", "localhost", KL_HOST_OTHER, "");
    /* Labels that are no valid subdomain. */
    s_assert_host("ab.localhost", "localhost", KL_HOST_OTHER, "");
    s_assert_host("-ab.localhost", "localhost", KL_HOST_OTHER, "");
    s_assert_host("abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvw"
                  "xyz01.localhost",
                  "localhost", KL_HOST_OTHER, "");
    /* IPv6 literals are never tenants. */
    s_assert_host("[::1]", "localhost", KL_HOST_OTHER, "");
    s_assert_host("[::1]:8080", "localhost", KL_HOST_OTHER, "");
    s_assert_host("[2001:db8::1]:443", "localhost", KL_HOST_OTHER, "");
}

static void
test_host_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        ":8080",
        "acme.localhost:",
        "acme.localhost:0",
        "acme.localhost:65536",
        "acme.localhost:123456",
        "acme.localhost:80a",
        "acme.localhost:-1",
        "acme.localhost:80:80",
        "acme..localhost",
        ".localhost",
        ".",
        "..",
        "acme.localhost..",
        "ac_me.localhost",
        "acme.local host",
        "acme.localhost/path",
        "user@acme.localhost",
        "acm\xc3\xa9.localhost",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[::1]:0",
        "[::1]:99999",
        "[::1]:http",
        "[]",
        "[::1]]",
        "[not an address]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        s_assert_host(bad[i], "localhost", KL_HOST_MALFORMED, "");
    s_assert_host(NULL, "localhost", KL_HOST_MALFORMED, "");

    /* Over-long hosts: a DNS name is at most 253 characters. */
    char host[600];
    memset(host, 'a', sizeof host - 1);
    host[sizeof host - 1] = '\0';
    s_assert_host(host, "localhost", KL_HOST_MALFORMED, "");
    memset(host, 'a', 300);
    strcpy(host + 300, ".localhost");
    s_assert_host(host, "localhost", KL_HOST_MALFORMED, "");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_validate_ok),
        cmocka_unit_test(test_validate_rejects),
        cmocka_unit_test(test_reserved),
        cmocka_unit_test(test_host_tenant),
        cmocka_unit_test(test_host_apex_and_other),
        cmocka_unit_test(test_host_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
