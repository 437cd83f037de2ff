/* gw_request: body + path parameters + query -> the rpc input object. */
#include "gw_request.h"

#include "kowloon/billing.pb-c.h"
#include "kowloon/flags.pb-c.h"
#include "kowloon/workspace.pb-c.h"

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

static void
test_force_field_overwrites_tenant(void **state)
{
    (void)state;
    kl_status_t st;
    const char *body = "{\"tenantId\":\"other\",\"tenant_id\":\"other2\","
                       "\"plan\":\"enterprise\"}";
    gw_route_match_t m = s_match(NULL, NULL);
    json_t *in = gw_request_input(body, strlen(body), &m, NULL, false, &st);
    assert_non_null(in);
    assert_true(gw_request_force_field(
        in, &kowloon__flags__usage_request__descriptor, "tenant_id", "t1"));
    assert_true(gw_request_force_field(
        in, &kowloon__flags__usage_request__descriptor, "plan", "starter"));
    char *s = s_dump(in);
    assert_string_equal(s, "{\"plan\":\"starter\",\"tenant_id\":\"t1\"}");
    free(s);

    /* A message without such fields is left alone. */
    const char *b2 = "{\"name\":\"p\"}";
    in = gw_request_input(b2, strlen(b2), &m, NULL, false, &st);
    assert_false(gw_request_force_field(
        in, &kowloon__workspace__create_project_request__descriptor,
        "tenant_id", "t1"));
    s = s_dump(in);
    assert_string_equal(s, "{\"name\":\"p\"}");
    free(s);

    /* Also when the client tried the query string. */
    gw_route_match_t m2 = s_match(NULL, NULL);
    in = gw_request_input("", 0, &m2, "tenant_id=other", true, &st);
    assert_non_null(in);
    assert_true(gw_request_force_field(
        in, &kowloon__flags__usage_request__descriptor, "tenant_id", "t1"));
    s = s_dump(in);
    assert_string_equal(s, "{\"tenant_id\":\"t1\"}");
    free(s);
}

static void
test_webhook_input_is_the_raw_body(void **state)
{
    (void)state;
    kl_status_t st;
    uint8_t *out = NULL;
    size_t len = 0;
    /* Not JSON, not UTF-8, with a NUL: passed on byte for byte. */
    static const char body[] = "{\"id\": \"evt_1\",\n \"x\":\"\xff\"}\0tail ";
    const char *sig = "t=1700000000,v1=abc,v0=def";

    assert_int_equal(
        gw_request_webhook_input(&kowloon__billing__webhook_request__descriptor,
                                 body, sizeof body - 1, sig, &out, &len, &st),
        0);
    Kowloon__Billing__WebhookRequest *req =
        kowloon__billing__webhook_request__unpack(NULL, len, out);
    assert_non_null(req);
    assert_int_equal(req->payload.len, sizeof body - 1);
    assert_memory_equal(req->payload.data, body, sizeof body - 1);
    assert_string_equal(req->signature, sig);
    kowloon__billing__webhook_request__free_unpacked(req, NULL);
    free(out);

    /* No header and an empty body: both fields empty. */
    assert_int_equal(
        gw_request_webhook_input(&kowloon__billing__webhook_request__descriptor,
                                 NULL, 0, NULL, &out, &len, &st),
        0);
    req = kowloon__billing__webhook_request__unpack(NULL, len, out);
    assert_non_null(req);
    assert_int_equal(req->payload.len, 0);
    assert_string_equal(req->signature, "");
    kowloon__billing__webhook_request__free_unpacked(req, NULL);
    free(out);

    /* A message without the two fields is refused. */
    assert_int_equal(gw_request_webhook_input(
                         &kowloon__billing__checkout_request__descriptor, body,
                         3, sig, &out, &len, &st),
                     -KL_INVALID_ARGUMENT);
    assert_null(out);
    assert_string_equal(st.message, "kowloon.billing.CheckoutRequest has no "
                                    "bytes payload and string signature");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_force_field_overwrites_tenant),
        cmocka_unit_test(test_webhook_input_is_the_raw_body),
        cmocka_unit_test(test_empty_body_is_object),
        cmocka_unit_test(test_path_params_merged),
        cmocka_unit_test(test_query),
        cmocka_unit_test(test_bad_bodies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
