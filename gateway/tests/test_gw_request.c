/* gw_request: body + path parameters + query -> the rpc input object. */
#include "gw_request.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static gw_route_match_t
s_match(const char *name, const char *value)
{
    gw_route_match_t m;
    memset(&m, 0, sizeof m);
    if (name) {
        m.n_params = 1;
        m.params[0].name = name;
        strcpy(m.params[0].value, value);
    }
    return m;
}

static char *
s_dump(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(j);
    return s;
}

static void
test_empty_body_is_object(void **state)
{
    gw_route_match_t m = s_match(NULL, NULL);
    kl_status_t st;
    char *s = s_dump(gw_request_input("", 0, &m, NULL, false, &st));
    assert_string_equal(s, "{}");
    free(s);
}

static void
test_path_params_merged(void **state)
{
    gw_route_match_t m = s_match("id", "t-1");
    kl_status_t st;
    const char *body = "{\"name\":\"x\"}";
    char *s =
        s_dump(gw_request_input(body, strlen(body), &m, NULL, false, &st));
    assert_string_equal(s, "{\"id\":\"t-1\",\"name\":\"x\"}");
    free(s);
    /* the same value in body and path is fine */
    body = "{\"id\":\"t-1\"}";
    s = s_dump(gw_request_input(body, strlen(body), &m, NULL, false, &st));
    assert_string_equal(s, "{\"id\":\"t-1\"}");
    free(s);
    /* a different one is a 400 naming the field */
    body = "{\"id\":\"t-2\"}";
    assert_null(gw_request_input(body, strlen(body), &m, NULL, false, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_string_equal(st.message,
                        "field \"id\" differs from the path (\"t-1\")");
    body = "{\"id\":7}";
    assert_null(gw_request_input(body, strlen(body), &m, NULL, false, &st));
}

static void
test_query(void **state)
{
    gw_route_match_t m = s_match("id", "t-1");
    kl_status_t st;
    char *s = s_dump(gw_request_input("", 0, &m,
                                      "page_size=10&status=past%5Fdue&"
                                      "name=a+b",
                                      true, &st));
    assert_string_equal(s, "{\"id\":\"t-1\",\"name\":\"a b\",\"page_size\":"
                           "\"10\",\"status\":\"past_due\"}");
    free(s);
    /* ignored when the method takes none */
    s = s_dump(gw_request_input("", 0, &m, "page_size=10", false, &st));
    assert_string_equal(s, "{\"id\":\"t-1\"}");
    free(s);
    /* twice, or also in the path: 400 */
    assert_null(gw_request_input("", 0, &m, "a=1&a=2", true, &st));
    assert_string_equal(st.message, "query parameter \"a\" given twice or also "
                                    "in the path or body");
    assert_null(gw_request_input("", 0, &m, "id=t-2", true, &st));
    /* a NUL smuggled in by percent-encoding */
    assert_null(gw_request_input("", 0, &m, "a=%00", true, &st));
    assert_string_equal(st.message, "malformed query string");
    /* invalid UTF-8 cannot become a JSON string */
    assert_null(gw_request_input("", 0, &m, "a=%ff", true, &st));
    assert_string_equal(st.message, "query parameter \"a\" is not valid UTF-8");
}

static void
test_bad_bodies(void **state)
{
    gw_route_match_t m = s_match(NULL, NULL);
    kl_status_t st;
    assert_null(gw_request_input("{\"a\":", 5, &m, NULL, false, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_non_null(strstr(st.message, "malformed JSON at line 1"));
    assert_null(gw_request_input("[1]", 3, &m, NULL, false, &st));
    assert_string_equal(st.message, "request body must be a JSON object");
    assert_null(gw_request_input("\"x\"", 3, &m, NULL, false, &st));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_body_is_object),
        cmocka_unit_test(test_path_params_merged),
        cmocka_unit_test(test_query),
        cmocka_unit_test(test_bad_bodies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
