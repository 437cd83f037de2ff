/* gw_reply: error bodies and JSON escaping. */
#include "gw_reply.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static void
test_error_body(void **state)
{
    char buf[GW_REPLY_ERROR_MAX];
    size_t n =
        gw_reply_error_body(buf, sizeof buf, KL_NOT_FOUND, "tenant not found");
    assert_string_equal(
        buf, "{\"error\":{\"code\":\"NOT_FOUND\",\"message\":\"tenant not "
             "found\"}}");
    assert_int_equal(n, strlen(buf));
    gw_reply_error_body(buf, sizeof buf, KL_FAILED_PRECONDITION,
                        "tenant is suspended");
    assert_string_equal(buf, "{\"error\":{\"code\":\"FAILED_PRECONDITION\","
                             "\"message\":\"tenant is suspended\"}}");
    gw_reply_error_body(buf, sizeof buf, KL_UNAUTHENTICATED, NULL);
    assert_string_equal(
        buf, "{\"error\":{\"code\":\"UNAUTHENTICATED\",\"message\":\"\"}}");
}

/* Whatever goes into a message, the body is one valid JSON object whose
 * message reads back as the input (for valid UTF-8). */
static void
test_escaping_round_trips(void **state)
{
    const char *msg =
        "no route for GET /a\"b\\c\n\t\x01 caf\xc3\xa9 \xe2\x82\xac";
    char buf[GW_REPLY_ERROR_MAX];
    size_t n = gw_reply_error_body(buf, sizeof buf, KL_NOT_FOUND, msg);
    json_error_t err;
    json_t *j = json_loadb(buf, n, 0, &err);
    assert_non_null(j);
    json_t *m = json_object_get(json_object_get(j, "error"), "message");
    assert_string_equal(json_string_value(m), msg);
    json_decref(j);
}

static void
test_invalid_utf8_replaced(void **state)
{
    char buf[GW_REPLY_ERROR_MAX];
    size_t n = gw_reply_error_body(buf, sizeof buf, KL_NOT_FOUND,
                                   "/x\xff\xc0\xafy\xed\xa0\x80");
    json_error_t err;
    json_t *j = json_loadb(buf, n, 0, &err);
    assert_non_null(j);
    assert_non_null(strstr(buf, "/x\\ufffd\\ufffd\\ufffdy"));
    json_decref(j);
}

static void
test_truncation_keeps_json_valid(void **state)
{
    char big[3000], buf[256];
    memset(big, '"', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    size_t n = gw_reply_error_body(buf, sizeof buf, KL_INVALID_ARGUMENT, big);
    assert_true(n < sizeof buf);
    json_error_t err;
    json_t *j = json_loadb(buf, n, 0, &err);
    assert_non_null(j);
    json_decref(j);

    /* the full-size buffer holds a maximal status message unescaped */
    char full[GW_REPLY_ERROR_MAX];
    big[KL_STATUS_MESSAGE_MAX - 1] = '\0';
    n = gw_reply_error_body(full, sizeof full, KL_INVALID_ARGUMENT, big);
    j = json_loadb(full, n, 0, &err);
    assert_non_null(j);
    assert_int_equal(strlen(json_string_value(json_object_get(
                         json_object_get(j, "error"), "message"))),
                     KL_STATUS_MESSAGE_MAX - 1);
    json_decref(j);
}

static void
test_escape_append(void **state)
{
    char buf[16];
    size_t len = 0;
    gw_reply_json_escape(buf, &len, sizeof buf, "ab");
    gw_reply_json_escape(buf, &len, sizeof buf, "\"c");
    assert_string_equal(buf, "ab\\\"c");
    assert_int_equal(len, 5);
    /* a full buffer stops cleanly, NUL-terminated */
    gw_reply_json_escape(buf, &len, sizeof buf, "0123456789abcdef");
    assert_true(len < sizeof buf);
    assert_int_equal(strlen(buf), len);
}

static void
test_feature_body_exact(void **state)
{
    (void)state;
    char buf[GW_REPLY_ERROR_MAX];
    size_t len = gw_reply_feature_body(buf, sizeof buf, "advanced_reports",
                                       "https://acme.example.com/upgrade");
    assert_string_equal(
        buf, "{\"error\":{\"code\":\"PERMISSION_DENIED\",\"message\":"
             "\"Feature not available on your plan\",\"feature\":"
             "\"advanced_reports\",\"upgrade_url\":"
             "\"https://acme.example.com/upgrade\"}}");
    assert_int_equal(len, strlen(buf));
    /* Escaped, and valid JSON whatever the input. */
    len = gw_reply_feature_body(buf, sizeof buf, "a\"b", "x\\y");
    json_error_t err;
    json_t *j = json_loadb(buf, len, 0, &err);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(j, "error"), "feature")),
                        "a\"b");
    json_decref(j);
    assert_int_equal(gw_reply_feature_body(buf, 8, "x", "y"), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_feature_body_exact),
        cmocka_unit_test(test_error_body),
        cmocka_unit_test(test_escaping_round_trips),
        cmocka_unit_test(test_invalid_utf8_replaced),
        cmocka_unit_test(test_truncation_keeps_json_valid),
        cmocka_unit_test(test_escape_append),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
