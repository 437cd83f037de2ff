/*
 * tenant_apikey: the key format, parsing and hashing.
 */
#include "tenant_apikey.h"

#include <openssl/evp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

static bool
s_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static void
test_generate_format(void **state)
{
    char id[TENANT_APIKEY_ID_LEN + 1], key[TENANT_APIKEY_LEN + 1];
    uint8_t hash[TENANT_APIKEY_HASH_LEN];
    kl_status_t st;
    assert_int_equal(tenant_apikey_generate(id, key, hash, &st), 0);
    assert_int_equal(strlen(id), 16);
    assert_true(s_lower_hex(id, 16));
    assert_int_equal(strlen(key), 84);
    assert_memory_equal(key, "kl_", 3);
    assert_memory_equal(key + 3, id, 16);
    assert_int_equal(key[19], '_');
    assert_true(s_lower_hex(key + 20, 64));
    assert_true(tenant_apikey_id_valid(id));

    /* The stored hash is SHA-256 of the 32 secret bytes. */
    uint8_t secret[32], want[32];
    for (int i = 0; i < 32; i++) {
        unsigned v;
        sscanf(key + 20 + 2 * i, "%2x", &v);
        secret[i] = (uint8_t)v;
    }
    unsigned int len = 32;
    assert_true(EVP_Digest(secret, 32, want, &len, EVP_sha256(), NULL));
    assert_memory_equal(hash, want, 32);

    /* Parsing the key gives back the id and the same hash. */
    char pid[TENANT_APIKEY_ID_LEN + 1];
    uint8_t phash[TENANT_APIKEY_HASH_LEN];
    assert_true(tenant_apikey_parse(key, pid, phash));
    assert_string_equal(pid, id);
    assert_true(tenant_apikey_hash_equal(hash, phash));

    /* Two keys differ. */
    char id2[TENANT_APIKEY_ID_LEN + 1], key2[TENANT_APIKEY_LEN + 1];
    uint8_t hash2[TENANT_APIKEY_HASH_LEN];
    assert_int_equal(tenant_apikey_generate(id2, key2, hash2, &st), 0);
    assert_string_not_equal(key, key2);
    assert_false(tenant_apikey_hash_equal(hash, hash2));
}

static void
test_parse_rejects(void **state)
{
    char key[TENANT_APIKEY_LEN + 1], id[TENANT_APIKEY_ID_LEN + 1];
    uint8_t hash[TENANT_APIKEY_HASH_LEN];
    kl_status_t st;
    assert_int_equal(tenant_apikey_generate(id, key, hash, &st), 0);

    char bad[TENANT_APIKEY_LEN + 8];
    assert_false(tenant_apikey_parse(NULL, id, hash));
    assert_false(tenant_apikey_parse("", id, hash));
    assert_false(tenant_apikey_parse("kl_abc_def", id, hash));
    /* Too long, too short. */
    snprintf(bad, sizeof bad, "%sa", key);
    assert_false(tenant_apikey_parse(bad, id, hash));
    snprintf(bad, sizeof bad, "%.83s", key);
    assert_false(tenant_apikey_parse(bad, id, hash));
    /* Wrong prefix, separator, case, characters. */
    snprintf(bad, sizeof bad, "%s", key);
    bad[0] = 'K';
    assert_false(tenant_apikey_parse(bad, id, hash));
    snprintf(bad, sizeof bad, "%s", key);
    bad[19] = '-';
    assert_false(tenant_apikey_parse(bad, id, hash));
    snprintf(bad, sizeof bad, "%s", key);
    bad[5] = 'G';
    assert_false(tenant_apikey_parse(bad, id, hash));
    snprintf(bad, sizeof bad, "%s", key);
    bad[40] = 'A';
    assert_false(tenant_apikey_parse(bad, id, hash));

    assert_false(tenant_apikey_id_valid("0123456789ABCDEF"));
    assert_false(tenant_apikey_id_valid("0123456789abcde"));
    assert_false(tenant_apikey_id_valid(NULL));
    assert_true(tenant_apikey_id_valid("0123456789abcdef"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generate_format),
        cmocka_unit_test(test_parse_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
