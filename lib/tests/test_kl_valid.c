/*
 * Tests of kl_valid: the shared request checks and their exact messages,
 * and the keyset page tokens.
 */
#include "kl_valid.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#define S_UUID "6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"

/* rc must be -KL_INVALID_ARGUMENT with message want. */
static void
s_expect(int rc, const kl_status_t *st, const char *want)
{
    assert_int_equal(rc, -KL_INVALID_ARGUMENT);
    assert_int_equal(st->code, KL_INVALID_ARGUMENT);
    assert_string_equal(st->message, want);
}

static void
test_empty_and_one_of(void **state)
{
    static const char *const set[] = {"row", "schema", "database", NULL};
    assert_true(kl_valid_empty(NULL));
    assert_true(kl_valid_empty(""));
    assert_false(kl_valid_empty(" "));
    assert_true(kl_valid_one_of("schema", set));
    assert_false(kl_valid_one_of("Schema", set));
    assert_false(kl_valid_one_of("", set));
}

static void
test_uuid(void **state)
{
    kl_status_t st;
    char out[37];
    assert_true(kl_valid_uuid(S_UUID));
    assert_true(kl_valid_uuid("6F1C2A7E-3b4d-4e5f-8a9b-0c1d2e3f4a5b"));
    assert_false(kl_valid_uuid(NULL));
    assert_false(kl_valid_uuid("6f1c2a7e3b4d4e5f8a9b0c1d2e3f4a5b"));
    assert_false(kl_valid_uuid("6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5g"));
    assert_false(kl_valid_uuid("6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b0"));
    assert_false(kl_valid_uuid("6f1c2a7e+3b4d-4e5f-8a9b-0c1d2e3f4a5b"));
    kl_valid_uuid_lower("6F1C2A7E-3B4D-4E5F-8A9B-0C1D2E3F4A5B", out);
    assert_string_equal(out, S_UUID);

    assert_int_equal(kl_valid_check_uuid("id", S_UUID, &st), 0);
    s_expect(kl_valid_check_uuid("id", NULL, &st), &st, "id is required");
    s_expect(kl_valid_check_uuid("tenant_id", "", &st), &st,
             "tenant_id is required");
    s_expect(kl_valid_check_uuid("id", "abc", &st), &st,
             "id \"abc\" is not a UUID");
    /* The value is cut at 64 bytes in the message. */
    char long_id[100];
    memset(long_id, 'x', 99);
    long_id[99] = '\0';
    kl_valid_check_uuid("id", long_id, &st);
    assert_int_equal(strlen(st.message), strlen("id \"\" is not a UUID") + 64);
}

static void
test_utf8(void **state)
{
    assert_int_equal(kl_valid_utf8_chars(""), 0);
    assert_int_equal(kl_valid_utf8_chars("abc"), 3);
    assert_int_equal(kl_valid_utf8_chars("h\xc3\xa9llo"), 5);     /* é */
    assert_int_equal(kl_valid_utf8_chars("\xe2\x82\xac"), 1);     /* € */
    assert_int_equal(kl_valid_utf8_chars("\xf0\x9f\x98\x80"), 1); /* 😀 */
    assert_int_equal(kl_valid_utf8_chars("\xc0\xaf"), -1);        /* overlong */
    assert_int_equal(kl_valid_utf8_chars("\xe0\x80\xaf"), -1);    /* overlong */
    assert_int_equal(kl_valid_utf8_chars("\xed\xa0\x80"), -1); /* surrogate */
    assert_int_equal(kl_valid_utf8_chars("\xf4\x90\x80\x80"),
                     -1);                              /* > U+10FFFF */
    assert_int_equal(kl_valid_utf8_chars("\xc3"), -1); /* truncated */
    assert_int_equal(kl_valid_utf8_chars("a\xff"), -1);
}

static void
test_text(void **state)
{
    kl_status_t st;
    assert_int_equal(kl_valid_check_text("name", "Acme", 4, true, &st), 0);
    assert_int_equal(
        kl_valid_check_text("name", "\xc3\xa9\xc3\xa9", 2, true, &st), 0);
    assert_int_equal(kl_valid_check_text("notes", NULL, 10, false, &st), 0);
    assert_int_equal(kl_valid_check_text("notes", "", 10, false, &st), 0);
    s_expect(kl_valid_check_text("name", "", 10, true, &st), &st,
             "name is required");
    s_expect(kl_valid_check_text("name", NULL, 10, true, &st), &st,
             "name is required");
    s_expect(kl_valid_check_text("name", "a\xff", 10, false, &st), &st,
             "name must be valid UTF-8");
    s_expect(kl_valid_check_text("display_name", "abcde", 4, false, &st), &st,
             "display_name must be at most 4 characters, got 5");
}

static void
test_charset_and_plan(void **state)
{
    kl_status_t st;
    assert_true(kl_valid_charset("a_b", 63, "_"));
    assert_false(kl_valid_charset("a-b", 63, "_"));
    assert_false(kl_valid_charset("", 63, "_"));
    assert_false(kl_valid_charset(NULL, 63, "_"));
    assert_false(kl_valid_charset("abcd", 3, ""));
    assert_false(kl_valid_charset("Abc", 3, ""));

    char p63[64], p64[65];
    memset(p63, 'p', 63);
    p63[63] = '\0';
    memset(p64, 'p', 64);
    p64[64] = '\0';
    assert_true(kl_valid_plan("pro-2_x"));
    assert_true(kl_valid_plan(p63));
    assert_false(kl_valid_plan(p64));
    assert_false(kl_valid_plan("Pro"));
    assert_false(kl_valid_plan("pro!"));

    assert_int_equal(kl_valid_check_plan("plan", "pro", &st), 0);
    s_expect(kl_valid_check_plan("plan", "", &st), &st, "plan is required");
    s_expect(kl_valid_check_plan("name", NULL, &st), &st, "name is required");
    s_expect(kl_valid_check_plan("plan", "Pro!", &st), &st,
             "plan \"Pro!\" is invalid: want 1 to 63 of a-z, 0-9, _ and -");
}

static void
test_page_size(void **state)
{
    kl_status_t st;
    int n = -1;
    assert_int_equal(kl_valid_check_page_size(0, 500, 50, &n, &st), 0);
    assert_int_equal(n, 50);
    assert_int_equal(kl_valid_check_page_size(1, 500, 50, &n, &st), 0);
    assert_int_equal(n, 1);
    assert_int_equal(kl_valid_check_page_size(500, 500, 50, &n, &st), 0);
    assert_int_equal(n, 500);
    n = 7;
    s_expect(kl_valid_check_page_size(501, 500, 50, &n, &st), &st,
             "page_size must be 1 to 500, got 501");
    assert_int_equal(n, 7);
    s_expect(kl_valid_check_page_size(-1, 100, 20, &n, &st), &st,
             "page_size must be 1 to 100, got -1");
}

static void
test_page_token(void **state)
{
    kl_status_t st;
    char token[KL_VALID_PAGE_TOKEN_SIZE], id[37];
    int64_t usec = 0;

    kl_valid_page_token_encode(1700000000123456LL, S_UUID, token, sizeof token);
    assert_true(strlen(token) > 0);
    /* base64url without padding. */
    assert_null(strpbrk(token, "+/="));
    assert_int_equal(kl_valid_page_token_decode(token, &usec, id, &st), 0);
    assert_int_equal(usec, 1700000000123456LL);
    assert_string_equal(id, S_UUID);

    /* Negative keys survive too. */
    kl_valid_page_token_encode(-5, S_UUID, token, sizeof token);
    assert_int_equal(kl_valid_page_token_decode(token, &usec, id, &st), 0);
    assert_int_equal(usec, -5);

    /* Too small a buffer: no token. */
    char small[8] = "x";
    kl_valid_page_token_encode(1, S_UUID, small, sizeof small);
    assert_string_equal(small, "");

    /* Not base64url, padding, stray bits, no colon, not a UUID, long. */
    const char *bad[] = {"",     "!!!!",       "YWJj=", "YWJjZA",
                         "MTIz", "MTIzOmFiYw", NULL};
    for (int i = 0; bad[i]; i++)
        s_expect(kl_valid_page_token_decode(bad[i], &usec, id, &st), &st,
                 "invalid page_token");
    char longtok[120];
    memset(longtok, 'A', sizeof longtok - 1);
    longtok[sizeof longtok - 1] = '\0';
    s_expect(kl_valid_page_token_decode(longtok, &usec, id, &st), &st,
             "invalid page_token");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_and_one_of),
        cmocka_unit_test(test_uuid),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_text),
        cmocka_unit_test(test_charset_and_plan),
        cmocka_unit_test(test_page_size),
        cmocka_unit_test(test_page_token),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
