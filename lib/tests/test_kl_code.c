/*
 * Tests of kl_code: names, the HTTP mapping of kl_code.h, kl_strerror and
 * kl_status_set.
 */
#include "kl_code.h"

#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

/* The table of kl_code.h, written out by hand so that a change to the
 * X-macro has to be a change to this test too. */
static const struct {
    kl_code_t code;
    int number;
    const char *name;
    int http;
} s_table[] = {
    {KL_OK, 0, "OK", 200},
    {KL_CANCELLED, 1, "CANCELLED", 499},
    {KL_UNKNOWN, 2, "UNKNOWN", 500},
    {KL_INVALID_ARGUMENT, 3, "INVALID_ARGUMENT", 400},
    {KL_DEADLINE_EXCEEDED, 4, "DEADLINE_EXCEEDED", 504},
    {KL_NOT_FOUND, 5, "NOT_FOUND", 404},
    {KL_ALREADY_EXISTS, 6, "ALREADY_EXISTS", 409},
    {KL_PERMISSION_DENIED, 7, "PERMISSION_DENIED", 403},
    {KL_RESOURCE_EXHAUSTED, 8, "RESOURCE_EXHAUSTED", 429},
    {KL_FAILED_PRECONDITION, 9, "FAILED_PRECONDITION", 400},
    {KL_ABORTED, 10, "ABORTED", 409},
    {KL_OUT_OF_RANGE, 11, "OUT_OF_RANGE", 400},
    {KL_UNIMPLEMENTED, 12, "UNIMPLEMENTED", 501},
    {KL_INTERNAL, 13, "INTERNAL", 500},
    {KL_UNAVAILABLE, 14, "UNAVAILABLE", 503},
    {KL_DATA_LOSS, 15, "DATA_LOSS", 500},
    {KL_UNAUTHENTICATED, 16, "UNAUTHENTICATED", 401},
};
#define N_TABLE (sizeof s_table / sizeof s_table[0])

static void
test_table(void **state)
{
    (void)state;
    assert_int_equal(KL_CODE_COUNT, N_TABLE);
    for (size_t i = 0; i < N_TABLE; i++) {
        assert_int_equal((int)s_table[i].code, s_table[i].number);
        assert_string_equal(kl_code_name(s_table[i].code), s_table[i].name);
        assert_int_equal(kl_code_http_status(s_table[i].code), s_table[i].http);
        assert_int_equal(kl_code_from_int(s_table[i].number), s_table[i].code);
    }
}

static void
test_outside_the_set(void **state)
{
    (void)state;
    assert_string_equal(kl_code_name((kl_code_t)-1), "UNKNOWN");
    assert_string_equal(kl_code_name(KL_CODE_COUNT), "UNKNOWN");
    assert_string_equal(kl_code_name((kl_code_t)1000), "UNKNOWN");
    assert_int_equal(kl_code_http_status((kl_code_t)-1), 500);
    assert_int_equal(kl_code_http_status(KL_CODE_COUNT), 500);
    assert_int_equal(kl_code_from_int(-1), KL_UNKNOWN);
    assert_int_equal(kl_code_from_int(17), KL_UNKNOWN);
    assert_int_equal(kl_code_from_int(INT_MAX), KL_UNKNOWN);
    assert_int_equal(kl_code_from_int(INT_MIN), KL_UNKNOWN);
}

static void
test_strerror(void **state)
{
    (void)state;
    assert_string_equal(kl_strerror(0), "OK");
    for (size_t i = 1; i < N_TABLE; i++)
        assert_string_equal(kl_strerror(-s_table[i].number), s_table[i].name);
    /* Positive values are not codes. */
    assert_string_equal(kl_strerror(5), "UNKNOWN");
    assert_string_equal(kl_strerror(-17), "UNKNOWN");
    assert_string_equal(kl_strerror(-1000), "UNKNOWN");
    assert_string_equal(kl_strerror(INT_MAX), "UNKNOWN");
    /* -INT_MIN does not exist: must not be computed. */
    assert_string_equal(kl_strerror(INT_MIN), "UNKNOWN");
}

static void
test_status(void **state)
{
    (void)state;
    kl_status_t st;
    assert_int_equal(
        kl_status_set(&st, KL_NOT_FOUND, "tenant %s not found", "acme"),
        -KL_NOT_FOUND);
    assert_int_equal(st.code, KL_NOT_FOUND);
    assert_string_equal(st.message, "tenant acme not found");
    assert_string_equal(kl_strerror(-KL_NOT_FOUND), "NOT_FOUND");

    /* A NULL status still gives the return value. */
    assert_int_equal(kl_status_set(NULL, KL_UNAVAILABLE, "down"),
                     -KL_UNAVAILABLE);

    /* Long messages are cut, NUL-terminated. */
    char big[2 * KL_STATUS_MESSAGE_MAX];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    kl_status_set(&st, KL_INTERNAL, "%s", big);
    assert_int_equal(strlen(st.message), KL_STATUS_MESSAGE_MAX - 1);

    kl_status_clear(&st);
    assert_int_equal(st.code, KL_OK);
    assert_string_equal(st.message, "");
    kl_status_clear(NULL);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_outside_the_set),
        cmocka_unit_test(test_strerror),
        cmocka_unit_test(test_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
