/*
 * Tests of kl_alloc's growing string, kl_buf: empty adds, growth across
 * many doublings, binary bytes, printf of long and short output.
 */
#include "kl_alloc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static void
test_buf_empty_add_makes_a_string(void **state)
{
    (void)state;
    kl_buf_t b = {0};
    assert_null(b.p);
    kl_buf_add(&b, "", 0);
    assert_non_null(b.p);
    assert_string_equal(b.p, "");
    assert_int_equal(b.len, 0);
    free(b.p);
}

static void
test_buf_grows(void **state)
{
    (void)state;
    kl_buf_t b = {0};
    char want[10001];
    for (size_t i = 0; i < 10000; i++) {
        char c = (char)('a' + i % 26);
        kl_buf_add(&b, &c, 1);
        want[i] = c;
    }
    want[10000] = '\0';
    assert_int_equal(b.len, 10000);
    assert_true(b.cap > b.len);
    assert_string_equal(b.p, want);
    /* Bytes with NULs in them are kept as given. */
    kl_buf_add(&b, "x\0y", 3);
    assert_int_equal(b.len, 10003);
    assert_memory_equal(b.p + 10000, "x\0y", 4);
    free(b.p);
}

static void
test_buf_str_and_printf(void **state)
{
    (void)state;
    kl_buf_t b = {0};
    kl_buf_str(&b, "BEGIN;");
    kl_buf_printf(&b, "SELECT %d, '%s';", 42, "x");
    assert_string_equal(b.p, "BEGIN;SELECT 42, 'x';");
    /* Output longer than the capacity at hand. */
    char big[5000];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    kl_buf_printf(&b, "[%s]", big);
    assert_int_equal(b.len, strlen("BEGIN;SELECT 42, 'x';") + 4999 + 2);
    assert_int_equal(b.p[b.len - 1], ']');
    assert_int_equal(b.p[b.len], '\0');
    assert_int_equal(strlen(b.p), b.len);
    /* printf of nothing on a fresh buffer still gives a string. */
    kl_buf_t e = {0};
    kl_buf_printf(&e, "%s", "");
    assert_string_equal(e.p, "");
    free(e.p);
    free(b.p);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_empty_add_makes_a_string),
        cmocka_unit_test(test_buf_grows),
        cmocka_unit_test(test_buf_str_and_printf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
