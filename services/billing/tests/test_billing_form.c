/*
 * billing_form: bodies exactly as Stripe reads them.
 */
#include "billing_form.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>

#include <cmocka.h>

static void
test_nested_and_arrays(void **state)
{
    billing_form_t *f = billing_form_new();
    assert_string_equal(billing_form_body(f), "");
    billing_form_add(f, "customer", "cus_123");
    billing_form_add(f, "metadata[tenant_id]",
                     "0b6f7c1e-3a1d-4a57-9c55-2f8f1d0e8a11");
    billing_form_add(f, "items[0][price]", "price_abc");
    billing_form_add(f, "payment_method_types[]", "card");
    billing_form_add(f, "payment_method_types[]", "alipay");
    billing_form_addf(f, "trial_period_days", "%d", 14);
    assert_string_equal(billing_form_body(f),
                        "customer=cus_123"
                        "&metadata[tenant_id]=0b6f7c1e-3a1d-4a57-9c55-"
                        "2f8f1d0e8a11"
                        "&items[0][price]=price_abc"
                        "&payment_method_types[]=card"
                        "&payment_method_types[]=alipay"
                        "&trial_period_days=14");
    billing_form_destroy(&f);
    assert_null(f);
    billing_form_destroy(&f); /* NULL is fine */
    billing_form_destroy(NULL);
}

static void
test_percent_encoding(void **state)
{
    billing_form_t *f = billing_form_new();
    billing_form_add(f, "email", "a+b@example.com");
    billing_form_add(f, "name", "Wong & Sons = 100% \"ok\"");
    billing_form_add(f, "description", "\xe4\xb9\x9d\xe9\xbe\x8d"); /* 九龍 */
    billing_form_add(f, "success_url",
                     "https://x.example/ok?session={CHECKOUT_SESSION_ID}#a");
    billing_form_add(f, "weird key&=", "line\nbreak");
    billing_form_add(f, "empty", "");
    billing_form_add(f, "null", NULL);
    billing_form_add(f, "keep", "A-Z_a-z.0-9~");
    assert_string_equal(
        billing_form_body(f),
        "email=a%2Bb%40example.com"
        "&name=Wong%20%26%20Sons%20%3D%20100%25%20%22ok%22"
        "&description=%E4%B9%9D%E9%BE%8D"
        "&success_url=https%3A%2F%2Fx.example%2Fok%3Fsession%3D%7BCHECKOUT_"
        "SESSION_ID%7D%23a"
        "&weird%20key%26%3D=line%0Abreak"
        "&empty="
        "&null="
        "&keep=A-Z_a-z.0-9~");
    billing_form_destroy(&f);
    char *e = billing_form_encode("[x] y");
    assert_string_equal(e, "%5Bx%5D%20y"); /* brackets kept in keys only */
    free(e);
}

static void
test_growth(void **state)
{
    billing_form_t *f = billing_form_new();
    for (int i = 0; i < 500; i++)
        billing_form_addf(f, "metadata[k]", "%d", i);
    const char *b = billing_form_body(f);
    size_t n = 0;
    for (const char *p = b; *p; p++)
        n += *p == '&';
    assert_int_equal(n, 499);
    billing_form_destroy(&f);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nested_and_arrays),
        cmocka_unit_test(test_percent_encoding),
        cmocka_unit_test(test_growth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
