/*
 * billing_webhook: Stripe-Signature verification, every way it can fail.
 */
#include "billing_webhook.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#define S_NOW 1800000000LL
#define S_TOL 300

static const char *s_secret = "whsec_test_4eC39HqLyjWDarjtT1zdp7dc";
static const char *s_body =
    "{\"id\":\"evt_1\",\"object\":\"event\",\"type\":\"invoice.paid\","
    "\"created\":1800000000,\"data\":{\"object\":{}}}";

static void
s_header(char *out, size_t size, int64_t t, const char *secret,
         const char *body)
{
    char sig[65];
    billing_webhook_sign(secret, t, (const uint8_t *)body, strlen(body), sig);
    snprintf(out, size, "t=%lld,v1=%s", (long long)t, sig);
}

static int
s_verify(const char *header, const char *body, const char *const *secrets,
         size_t n, kl_status_t *st)
{
    return billing_webhook_verify(header, (const uint8_t *)body, strlen(body),
                                  secrets, n, S_NOW, S_TOL, st);
}

#define S_EXPECT_REJECT(header, body, secrets, n, msg)                         \
    do {                                                                       \
        kl_status_t st_;                                                       \
        assert_int_equal(s_verify(header, body, secrets, n, &st_),             \
                         -KL_INVALID_ARGUMENT);                                \
        assert_string_equal(st_.message, msg);                                 \
    } while (0)

/* Known answer: HMAC-SHA256("whsec_test", "1700000000.{}"), computed with
 * Python's hmac module (the stand-in signs the same way). */
static void
test_known_answer(void **state)
{
    char sig[65];
    billing_webhook_sign("whsec_test", 1700000000, (const uint8_t *)"{}", 2,
                         sig);
    assert_string_equal(
        sig,
        "35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91");
}

static void
test_tolerance(void **state)
{
    const char *secrets[] = {s_secret};
    char h[256];
    kl_status_t st;
    int64_t ok[] = {0, -299, 299, -300, 300};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        s_header(h, sizeof h, S_NOW + ok[i], s_secret, s_body);
        if (s_verify(h, s_body, secrets, 1, &st) != 0)
            fail_msg("offset %lld refused: %s", (long long)ok[i], st.message);
    }
    int64_t bad[] = {-301, 301, -86400, 86400};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s_header(h, sizeof h, S_NOW + bad[i], s_secret, s_body);
        S_EXPECT_REJECT(h, s_body, secrets, 1, "timestamp outside tolerance");
    }
}

static void
test_several_v1_and_v0(void **state)
{
    const char *secrets[] = {s_secret};
    char good[65], h[512];
    billing_webhook_sign(s_secret, S_NOW, (const uint8_t *)s_body,
                         strlen(s_body), good);
    const char *junk =
        "0000000000000000000000000000000000000000000000000000000000000000";
    kl_status_t st;
    /* Two v1, the second valid; and with a v0 and an unknown scheme. */
    snprintf(h, sizeof h, "t=%lld,v1=%s,v1=%s", S_NOW, junk, good);
    assert_int_equal(s_verify(h, s_body, secrets, 1, &st), 0);
    snprintf(h, sizeof h, "t=%lld,v1=%s,v1=%s", S_NOW, good, junk);
    assert_int_equal(s_verify(h, s_body, secrets, 1, &st), 0);
    snprintf(h, sizeof h, "t=%lld,v0=%s,v1=%s,v9=zz", S_NOW, junk, good);
    assert_int_equal(s_verify(h, s_body, secrets, 1, &st), 0);
    /* Upper-case hex still decodes to the same MAC. */
    char upper[65];
    for (int i = 0; i < 65; i++)
        upper[i] =
            (char)((good[i] >= 'a' && good[i] <= 'f') ? good[i] - 32 : good[i]);
    snprintf(h, sizeof h, "t=%lld,v1=%s", S_NOW, upper);
    assert_int_equal(s_verify(h, s_body, secrets, 1, &st), 0);
    /* Only v0, even carrying the right MAC: no downgrade. */
    snprintf(h, sizeof h, "t=%lld,v0=%s", S_NOW, good);
    S_EXPECT_REJECT(h, s_body, secrets, 1, "no v1 signature in header");
    snprintf(h, sizeof h, "t=%lld,v2=%s", S_NOW, good);
    S_EXPECT_REJECT(h, s_body, secrets, 1, "no v1 signature in header");
    /* Only wrong v1 values. */
    snprintf(h, sizeof h, "t=%lld,v1=%s,v1=abc", S_NOW, junk);
    S_EXPECT_REJECT(h, s_body, secrets, 1, "no matching signature");
}

static void
test_tampered_and_truncated(void **state)
{
    const char *secrets[] = {s_secret};
    char h[256];
    s_header(h, sizeof h, S_NOW, s_secret, s_body);
    char tampered[512];
    snprintf(tampered, sizeof tampered, "%s", s_body);
    tampered[10] ^= 1;
    S_EXPECT_REJECT(h, tampered, secrets, 1, "no matching signature");
    char truncated[512];
    snprintf(truncated, sizeof truncated, "%.*s", (int)strlen(s_body) - 1,
             s_body);
    S_EXPECT_REJECT(h, truncated, secrets, 1, "no matching signature");
    char longer[600];
    snprintf(longer, sizeof longer, "%s ", s_body);
    S_EXPECT_REJECT(h, longer, secrets, 1, "no matching signature");
    /* The timestamp is signed too. */
    char sig[65], h2[256];
    billing_webhook_sign(s_secret, S_NOW, (const uint8_t *)s_body,
                         strlen(s_body), sig);
    snprintf(h2, sizeof h2, "t=%lld,v1=%s", S_NOW + 1, sig);
    S_EXPECT_REJECT(h2, s_body, secrets, 1, "no matching signature");
}

static void
test_secrets_and_rotation(void **state)
{
    char h[256];
    kl_status_t st;
    const char *wrong[] = {"whsec_other"};
    s_header(h, sizeof h, S_NOW, s_secret, s_body);
    S_EXPECT_REJECT(h, s_body, wrong, 1, "no matching signature");
    /* The key is the whole whsec_ string, not what follows the prefix. */
    s_header(h, sizeof h, S_NOW, s_secret + 6, s_body);
    const char *one[] = {s_secret};
    S_EXPECT_REJECT(h, s_body, one, 1, "no matching signature");
    /* Rotation: either configured secret verifies. */
    const char *both[] = {"whsec_old_secret", s_secret};
    s_header(h, sizeof h, S_NOW, s_secret, s_body);
    assert_int_equal(s_verify(h, s_body, both, 2, &st), 0);
    s_header(h, sizeof h, S_NOW, "whsec_old_secret", s_body);
    assert_int_equal(s_verify(h, s_body, both, 2, &st), 0);
    S_EXPECT_REJECT(h, s_body, one, 1, "no matching signature");
    /* During a rotation Stripe signs with both. */
    char a[65], b[65], h3[256];
    billing_webhook_sign("whsec_old_secret", S_NOW, (const uint8_t *)s_body,
                         strlen(s_body), a);
    billing_webhook_sign("whsec_new_secret", S_NOW, (const uint8_t *)s_body,
                         strlen(s_body), b);
    snprintf(h3, sizeof h3, "t=%lld,v1=%s,v1=%s", S_NOW, a, b);
    const char *new_only[] = {"whsec_new_secret"};
    assert_int_equal(s_verify(h3, s_body, new_only, 1, &st), 0);
    /* No secrets at all: nothing matches. */
    S_EXPECT_REJECT(h3, s_body, NULL, 0, "no matching signature");
}

static void
test_malformed(void **state)
{
    const char *secrets[] = {s_secret};
    char sig[65], h[512];
    billing_webhook_sign(s_secret, S_NOW, (const uint8_t *)s_body,
                         strlen(s_body), sig);
    S_EXPECT_REJECT(NULL, s_body, secrets, 1, "no signature");
    S_EXPECT_REJECT("", s_body, secrets, 1, "no signature");
    const char *bad[] = {
        "garbage",
        "t=",
        "t=abc,v1=00",
        "v1=00",
        "t=1800000000,,v1=00",
        "t=1800000000,v1",
        "=5,t=1800000000",
        "t=-5,v1=00",
        "t=1800000000,t=1800000000,v1=00",
        "t=99999999999999999999,v1=00",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        S_EXPECT_REJECT(bad[i], s_body, secrets, 1,
                        "malformed signature header");
    /* No t at all even with a right v1. */
    snprintf(h, sizeof h, "v1=%s", sig);
    S_EXPECT_REJECT(h, s_body, secrets, 1, "malformed signature header");
    /* Spaces are not Stripe's format: " v1" is an unknown scheme. */
    snprintf(h, sizeof h, "t=%lld, v1=%s", S_NOW, sig);
    S_EXPECT_REJECT(h, s_body, secrets, 1, "no v1 signature in header");
    /* An empty body signed is still verified as such. */
    char e[65];
    billing_webhook_sign(s_secret, S_NOW, (const uint8_t *)"", 0, e);
    snprintf(h, sizeof h, "t=%lld,v1=%s", S_NOW, e);
    kl_status_t st;
    assert_int_equal(s_verify(h, "", secrets, 1, &st), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_answer),
        cmocka_unit_test(test_tolerance),
        cmocka_unit_test(test_several_v1_and_v0),
        cmocka_unit_test(test_tampered_and_truncated),
        cmocka_unit_test(test_secrets_and_rotation),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
