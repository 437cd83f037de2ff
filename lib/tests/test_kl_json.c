/*
 * Tests of kl_json: JSON <-> protobuf over the messages of
 * proto/test/json_test.proto and json_test_proto2.proto.
 */
#include "kl_json.h"

#include "test/json_test.pb-c.h"
#include "test/json_test_proto2.pb-c.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define ALL (&kowloon__test__all_types__descriptor)
#define TREE (&kowloon__test__tree__descriptor)
#define LEGACY (&kowloon__test__legacy__descriptor)

/* Parses text, failing the test if it is not valid JSON. */
static json_t *
s_parse(const char *text)
{
    kl_status_t st;
    json_t *j = kl_json_parse(text, strlen(text), &st);
    if (!j)
        fail_msg("kl_json_parse(%s): %s", text, st.message);
    return j;
}

/* Fails unless got (consumed) equals the JSON in want. */
static void
s_assert_json(json_t *got, const char *want_text)
{
    json_t *want = s_parse(want_text);
    assert_non_null(got);
    if (!json_equal(got, want)) {
        char *g = json_dumps(got, JSON_SORT_KEYS | JSON_COMPACT);
        char *w = json_dumps(want, JSON_SORT_KEYS | JSON_COMPACT);
        print_error("got  %s\nwant %s\n", g, w);
        free(g);
        free(w);
        /* Name the members that differ: the dumps are long. */
        const char *key;
        json_t *val;
        json_object_foreach(want, key, val)
        {
            if (!json_equal(val, json_object_get(got, key)))
                print_error("member %s differs\n", key);
        }
        json_object_foreach(got, key, val)
        {
            if (!json_object_get(want, key))
                print_error("member %s unexpected\n", key);
        }
        json_decref(got);
        json_decref(want);
        fail();
    }
    json_decref(got);
    json_decref(want);
}

/* text -> packed -> JSON with flags. */
static json_t *
s_round_trip(const ProtobufCMessageDescriptor *desc, const char *text,
             unsigned flags)
{
    kl_status_t st;
    uint8_t *buf = NULL;
    size_t len = 0;
    json_t *in = s_parse(text);
    int rc = kl_json_to_pb(desc, in, &buf, &len, &st);
    json_decref(in);
    if (rc != 0)
        fail_msg("kl_json_to_pb(%s): %s", text, st.message);
    json_t *out = kl_json_from_pb(desc, buf, len, flags, &st);
    free(buf);
    if (!out)
        fail_msg("kl_json_from_pb: %s", st.message);
    assert_int_equal(st.code, KL_OK);
    return out;
}

/* text -> unpacked message; caller frees. */
static ProtobufCMessage *
s_message(const ProtobufCMessageDescriptor *desc, const char *text)
{
    kl_status_t st;
    json_t *in = s_parse(text);
    ProtobufCMessage *msg = kl_json_to_message(desc, in, &st);
    json_decref(in);
    if (!msg)
        fail_msg("kl_json_to_message(%s): %s", text, st.message);
    return msg;
}

/* text must be refused by kl_json_to_pb and kl_json_to_message with
 * exactly want. */
static void
s_assert_error(const ProtobufCMessageDescriptor *desc, const char *text,
               const char *want)
{
    kl_status_t st;
    uint8_t *buf = (uint8_t *)"x";
    size_t len = 7;
    json_t *in = s_parse(text);
    int rc = kl_json_to_pb(desc, in, &buf, &len, &st);
    if (rc != -KL_INVALID_ARGUMENT || strcmp(st.message, want) != 0)
        fail_msg("%s: rc %d, message\n  got  %s\n  want %s", text, rc,
                 st.message, want);
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_null(buf);
    assert_int_equal(len, 0);
    memset(&st, 0, sizeof st);
    assert_null(kl_json_to_message(desc, in, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_string_equal(st.message, want);
    json_decref(in);
}

static void
s_assert_malformed(const char *text, size_t len, const char *want)
{
    kl_status_t st;
    assert_null(kl_json_parse(text, len, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_string_equal(st.message, want);
}

static void
test_camel_name(void **state)
{
    char buf[64];
    (void)state;
    static const char *const cases[][2] = {
        {"created_at", "createdAt"}, {"name", "name"},
        {"f_int32", "fInt32"},       {"foo_bar_baz", "fooBarBaz"},
        {"_leading", "Leading"},     {"a__b", "aB"},
        {"trailing_", "trailing"},   {"o_2fa", "o2fa"},
        {"already", "already"},      {"HTTPStatus", "HTTPStatus"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kl_json_camel_name(cases[i][0], buf, sizeof buf);
        assert_string_equal(buf, cases[i][1]);
    }
    kl_json_camel_name("created_at", buf, 4);
    assert_string_equal(buf, "cre");
    buf[0] = 'z';
    kl_json_camel_name("created_at", buf, 0);
    assert_int_equal(buf[0], 'z');
}

/* Every type through JSON -> packed -> JSON, in camelCase names. */
static const char s_all_in[] =
    "{\"fInt32\": -2147483648, \"fInt64\": \"-9223372036854775808\","
    " \"fUint32\": 4294967295, \"fUint64\": \"18446744073709551615\","
    " \"fSint32\": \"-17\", \"fSint64\": -9007199254740993,"
    " \"fFixed32\": 3000000000, \"fFixed64\": \"12345678901234567890\","
    " \"fSfixed32\": -5, \"fSfixed64\": 9223372036854775807,"
    " \"fFloat\": 0.1, \"fDouble\": 2.5e-300, \"fBool\": true,"
    " \"fString\": \"h\\u00e9llo \\u2603 \\ud83d\\ude00\","
    " \"fBytes\": \"AAEC/f7/\", \"fEnum\": \"COLOR_GREEN\","
    " \"project\": {\"name\": \"p\", \"tasks\": [{\"title\": \"a\"},"
    "   {\"title\": \"b\", \"priority\": 2, \"color\": 3}],"
    "   \"labels\": {\"env\": \"prod\", \"\": \"empty\"}},"
    " \"nested\": {\"big\": \"1\", \"small\": [1, 2, 3]},"
    " \"rInt32\": [1, -1, 0], \"rInt64\": [\"1\", -2, \"0\"],"
    " \"rUint32\": [4294967295], \"rUint64\": [\"18446744073709551615\"],"
    " \"rSint32\": [-1, 1], \"rSint64\": [\"-9223372036854775808\"],"
    " \"rFixed32\": [7], \"rFixed64\": [\"8\"], \"rSfixed32\": [-9],"
    " \"rSfixed64\": [\"-10\"], \"rFloat\": [1.5, -0.25],"
    " \"rDouble\": [0.1, 1e300], \"rBool\": [true, false, true],"
    " \"rString\": [\"x\", \"\", \"z\"], \"rBytes\": [\"\", \"YQ==\"],"
    " \"rEnum\": [\"COLOR_RED\", 2, 42], \"rTask\": [{}, {\"title\": \"t\"}],"
    " \"rUnpacked\": [5, 6],"
    " \"counts\": {\"a\": \"1\", \"b\": -2},"
    " \"names\": {\"1\": \"one\", \"-2147483648\": \"min\"},"
    " \"tasksById\": {\"t1\": {\"title\": \"x\"}, \"t2\": {}},"
    " \"flags\": {\"18446744073709551615\": true, \"0\": false},"
    " \"colors\": {\"true\": \"COLOR_BLUE\", \"false\": 0},"
    " \"blobs\": {\"-9\": \"__8=\"},"
    " \"oString\": \"chosen\"}";

static const char s_all_out[] =
    "{\"fInt32\": -2147483648, \"fInt64\": \"-9223372036854775808\","
    " \"fUint32\": 4294967295, \"fUint64\": \"18446744073709551615\","
    " \"fSint32\": -17, \"fSint64\": \"-9007199254740993\","
    " \"fFixed32\": 3000000000, \"fFixed64\": \"12345678901234567890\","
    " \"fSfixed32\": -5, \"fSfixed64\": \"9223372036854775807\","
    " \"fFloat\": 0.1, \"fDouble\": 2.5e-300, \"fBool\": true,"
    " \"fString\": \"h\\u00e9llo \\u2603 \\ud83d\\ude00\","
    " \"fBytes\": \"AAEC/f7/\", \"fEnum\": \"COLOR_GREEN\","
    " \"project\": {\"name\": \"p\", \"tasks\": [{\"title\": \"a\"},"
    "   {\"title\": \"b\", \"priority\": 2, \"color\": \"COLOR_BLUE\"}],"
    "   \"labels\": {\"env\": \"prod\", \"\": \"empty\"}},"
    " \"nested\": {\"big\": \"1\", \"small\": [1, 2, 3]},"
    " \"rInt32\": [1, -1, 0], \"rInt64\": [\"1\", \"-2\", \"0\"],"
    " \"rUint32\": [4294967295], \"rUint64\": [\"18446744073709551615\"],"
    " \"rSint32\": [-1, 1], \"rSint64\": [\"-9223372036854775808\"],"
    " \"rFixed32\": [7], \"rFixed64\": [\"8\"], \"rSfixed32\": [-9],"
    " \"rSfixed64\": [\"-10\"], \"rFloat\": [1.5, -0.25],"
    " \"rDouble\": [0.1, 1e300], \"rBool\": [true, false, true],"
    " \"rString\": [\"x\", \"\", \"z\"], \"rBytes\": [\"\", \"YQ==\"],"
    " \"rEnum\": [\"COLOR_RED\", \"COLOR_GREEN\", 42],"
    " \"rTask\": [{}, {\"title\": \"t\"}], \"rUnpacked\": [5, 6],"
    " \"counts\": {\"a\": \"1\", \"b\": \"-2\"},"
    " \"names\": {\"1\": \"one\", \"-2147483648\": \"min\"},"
    " \"tasksById\": {\"t1\": {\"title\": \"x\"}, \"t2\": {}},"
    " \"flags\": {\"18446744073709551615\": true, \"0\": false},"
    " \"colors\": {\"true\": \"COLOR_BLUE\", \"false\": "
    "\"COLOR_UNSPECIFIED\"},"
    " \"blobs\": {\"-9\": \"//8=\"},"
    " \"oString\": \"chosen\"}";

static void
test_round_trip_all_types(void **state)
{
    (void)state;
    s_assert_json(s_round_trip(ALL, s_all_in, 0), s_all_out);
}

/* The values land in the C struct exactly. */
static void
test_to_message_values(void **state)
{
    (void)state;
    Kowloon__Test__AllTypes *m =
        (Kowloon__Test__AllTypes *)s_message(ALL, s_all_in);
    assert_int_equal(m->f_int32, INT32_MIN);
    assert_true(m->f_int64 == INT64_MIN);
    assert_true(m->f_uint32 == UINT32_MAX);
    assert_true(m->f_uint64 == UINT64_MAX);
    assert_int_equal(m->f_sint32, -17);
    assert_true(m->f_sint64 == -9007199254740993LL);
    assert_true(m->f_fixed64 == 12345678901234567890ULL);
    assert_true(m->f_sfixed64 == INT64_MAX);
    assert_true(m->f_float == 0.1f);
    assert_true(m->f_double == 2.5e-300);
    assert_true(m->f_bool);
    assert_string_equal(m->f_string,
                        "h\xc3\xa9llo \xe2\x98\x83 \xf0\x9f\x98\x80");
    assert_int_equal(m->f_bytes.len, 6);
    assert_memory_equal(m->f_bytes.data, "\x00\x01\x02\xfd\xfe\xff", 6);
    assert_int_equal(m->f_enum, KOWLOON__TEST__COLOR__COLOR_GREEN);
    assert_non_null(m->project);
    assert_int_equal(m->project->n_tasks, 2);
    assert_string_equal(m->project->tasks[1]->title, "b");
    assert_int_equal(m->project->tasks[1]->color,
                     KOWLOON__TEST__COLOR__COLOR_BLUE);
    assert_int_equal(m->n_r_enum, 3);
    assert_int_equal(m->r_enum[2], 42);
    assert_int_equal(m->n_counts, 2);
    assert_int_equal(m->n_names, 2);
    assert_int_equal(m->n_blobs, 1);
    assert_true(m->blobs[0]->key == -9);
    assert_int_equal(m->blobs[0]->value.len, 2);
    assert_memory_equal(m->blobs[0]->value.data, "\xff\xff", 2);
    assert_int_equal(m->choice_case, KOWLOON__TEST__ALL_TYPES__CHOICE_O_STRING);
    assert_string_equal(m->o_string, "chosen");
    protobuf_c_message_free_unpacked(&m->base, NULL);
}

/* Proto names are accepted as well as JSON names, and written with
 * KL_JSON_ORIGINAL_NAMES. */
static void
test_original_names(void **state)
{
    (void)state;
    const char *in = "{\"f_int32\": 1, \"fInt64\": 2, \"tasks_by_id\":"
                     " {\"k\": {\"title\": \"t\"}}, \"o_int32\": 0,"
                     " \"r_task\": [{\"priority\": 1}]}";
    s_assert_json(s_round_trip(ALL, in, KL_JSON_ORIGINAL_NAMES),
                  "{\"f_int32\": 1, \"f_int64\": \"2\", \"tasks_by_id\":"
                  " {\"k\": {\"title\": \"t\"}}, \"o_int32\": 0,"
                  " \"r_task\": [{\"priority\": 1}]}");
    s_assert_json(s_round_trip(ALL, in, 0),
                  "{\"fInt32\": 1, \"fInt64\": \"2\", \"tasksById\":"
                  " {\"k\": {\"title\": \"t\"}}, \"oInt32\": 0,"
                  " \"rTask\": [{\"priority\": 1}]}");
}

/* Defaults are left out; KL_JSON_EMIT_DEFAULTS writes scalars at their
 * default and empty repeated fields and maps, but no unset sub-message. */
static void
test_defaults(void **state)
{
    (void)state;
    const char *zeros = "{\"fInt32\": 0, \"fInt64\": \"0\", \"fString\": \"\","
                        " \"fBool\": false, \"fEnum\": \"COLOR_UNSPECIFIED\","
                        " \"rInt32\": [], \"counts\": {}, \"project\": null,"
                        " \"fDouble\": 0.0, \"fBytes\": \"\"}";
    s_assert_json(s_round_trip(ALL, zeros, 0), "{}");
    s_assert_json(
        s_round_trip(ALL, "{}", KL_JSON_EMIT_DEFAULTS),
        "{\"fInt32\": 0, \"fInt64\": \"0\", \"fUint32\": 0, \"fUint64\": \"0\","
        " \"fSint32\": 0, \"fSint64\": \"0\", \"fFixed32\": 0,"
        " \"fFixed64\": \"0\", \"fSfixed32\": 0, \"fSfixed64\": \"0\","
        " \"fFloat\": 0.0, \"fDouble\": 0.0, \"fBool\": false,"
        " \"fString\": \"\", \"fBytes\": \"\", \"fEnum\": "
        "\"COLOR_UNSPECIFIED\","
        " \"rInt32\": [], \"rInt64\": [], \"rUint32\": [], \"rUint64\": [],"
        " \"rSint32\": [], \"rSint64\": [], \"rFixed32\": [], \"rFixed64\": [],"
        " \"rSfixed32\": [], \"rSfixed64\": [], \"rFloat\": [], \"rDouble\": "
        "[],"
        " \"rBool\": [], \"rString\": [], \"rBytes\": [], \"rEnum\": [],"
        " \"rTask\": [], \"rUnpacked\": [], \"counts\": {}, \"names\": {},"
        " \"tasksById\": {}, \"flags\": {}, \"colors\": {}, \"blobs\": {}}");
    /* A sub-message that is set but empty is written, as {}. */
    s_assert_json(s_round_trip(ALL, "{\"project\": {}}", 0),
                  "{\"project\": {}}");
}

static void
test_floats(void **state)
{
    (void)state;
    s_assert_json(
        s_round_trip(ALL,
                     "{\"fFloat\": \"NaN\", \"fDouble\": \"-Infinity\","
                     " \"rFloat\": [\"Infinity\", \"-Infinity\", 3, \"2.5\"],"
                     " \"rDouble\": [\"NaN\", \"1e-5\", -0.5]}",
                     0),
        "{\"fFloat\": \"NaN\", \"fDouble\": \"-Infinity\","
        " \"rFloat\": [\"Infinity\", \"-Infinity\", 3.0, 2.5],"
        " \"rDouble\": [\"NaN\", 1e-5, -0.5]}");
    /* Integral reals are integers; exponents too. */
    s_assert_json(s_round_trip(ALL, "{\"fInt32\": 1.0, \"fInt64\": 1e15}", 0),
                  "{\"fInt32\": 1, \"fInt64\": \"1000000000000000\"}");
    s_assert_json(s_round_trip(ALL, "{\"fFloat\": 3.4028234e38}", 0),
                  "{\"fFloat\": 3.4028235e38}");
}

static void
test_bytes(void **state)
{
    (void)state;
    /* URL-safe and unpadded input; standard padded output. */
    s_assert_json(
        s_round_trip(ALL,
                     "{\"rBytes\": [\"-_-_\", \"YWI\", \"YWJj\", \"YQ\","
                     " \"+/+/\", \"YWI=\"]}",
                     0),
        "{\"rBytes\": [\"+/+/\", \"YWI=\", \"YWJj\", \"YQ==\", \"+/+/\","
        " \"YWI=\"]}");
}

static void
test_oneof(void **state)
{
    (void)state;
    /* A member set to its default is still written: it says which. */
    s_assert_json(s_round_trip(ALL, "{\"oInt32\": 0}", 0), "{\"oInt32\": 0}");
    s_assert_json(s_round_trip(ALL, "{\"oTask\": {}}", 0), "{\"oTask\": {}}");
    /* null does not count as set. */
    s_assert_json(s_round_trip(ALL, "{\"oString\": null, \"oInt32\": 4}", 0),
                  "{\"oInt32\": 4}");
    s_assert_error(ALL, "{\"oString\": \"a\", \"oInt32\": 1}",
                   "field \"oInt32\": \"oString\" of the same oneof is "
                   "already set");
    s_assert_error(ALL, "{\"o_task\": {}, \"o_string\": \"\"}",
                   "field \"o_string\": \"oTask\" of the same oneof is "
                   "already set");
}

static void
test_enum_number_out(void **state)
{
    (void)state;
    s_assert_json(s_round_trip(ALL, "{\"fEnum\": 7, \"rEnum\": [1, 9]}", 0),
                  "{\"fEnum\": 7, \"rEnum\": [\"COLOR_RED\", 9]}");
}

static void
test_proto2(void **state)
{
    (void)state;
    /* has_ fields: a value equal to the default is still set. */
    s_assert_json(s_round_trip(LEGACY, "{\"num\": 7, \"flag\": false}", 0),
                  "{\"num\": 7, \"flag\": false, \"id\": \"0\"}");
    s_assert_json(s_round_trip(LEGACY, "{\"id\": 3}", 0), "{\"id\": \"3\"}");
    s_assert_json(s_round_trip(LEGACY, "{\"id\": 3}", KL_JSON_EMIT_DEFAULTS),
                  "{\"num\": 7, \"text\": \"hello\", \"id\": \"3\","
                  " \"blob\": \"\", \"flag\": false, \"items\": []}");
    s_assert_json(
        s_round_trip(LEGACY,
                     "{\"text\": \"\", \"blob\": \"\", \"next\": {\"id\": 1,"
                     " \"items\": [\"a\"]}}",
                     0),
        "{\"text\": \"\", \"id\": \"0\", \"blob\": \"\","
        " \"next\": {\"id\": \"1\", \"items\": [\"a\"]}}");
}

static void
test_from_message(void **state)
{
    (void)state;
    Kowloon__Test__Task t1 = KOWLOON__TEST__TASK__INIT;
    Kowloon__Test__Task *tasks[] = {&t1};
    Kowloon__Test__AllTypes__CountsEntry c1 =
        KOWLOON__TEST__ALL_TYPES__COUNTS_ENTRY__INIT;
    Kowloon__Test__AllTypes__CountsEntry *counts[] = {&c1};
    Kowloon__Test__AllTypes m = KOWLOON__TEST__ALL_TYPES__INIT;
    uint8_t raw[] = {0xde, 0xad, 0xbe, 0xef};

    t1.title = "one";
    t1.color = KOWLOON__TEST__COLOR__COLOR_RED;
    c1.key = "k";
    c1.value = INT64_MIN;
    m.f_int64 = 5;
    m.f_double = NAN;
    m.f_bytes.data = raw;
    m.f_bytes.len = sizeof raw;
    m.n_r_task = 1;
    m.r_task = tasks;
    m.n_counts = 1;
    m.counts = counts;
    m.choice_case = KOWLOON__TEST__ALL_TYPES__CHOICE_O_TASK;
    m.o_task = &t1;
    s_assert_json(kl_json_from_message(&m.base, 0),
                  "{\"fInt64\": \"5\", \"fDouble\": \"NaN\","
                  " \"fBytes\": \"3q2+7w==\","
                  " \"rTask\": [{\"title\": \"one\", \"color\": "
                  "\"COLOR_RED\"}],"
                  " \"counts\": {\"k\": \"-9223372036854775808\"},"
                  " \"oTask\": {\"title\": \"one\", \"color\": "
                  "\"COLOR_RED\"}}");
    assert_null(kl_json_from_message(NULL, 0));

    /* A string that is not UTF-8 cannot become JSON. */
    m.f_string = "bad \xff";
    assert_null(kl_json_from_message(&m.base, 0));
}

static void
test_errors(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"{\"colour\": 1}", "unknown field \"colour\""},
        {"{\"project\": {\"tasks\": [{}, {}, {\"titel\": \"x\"}]}}",
         "unknown field \"project.tasks[2].titel\""},
        {"{\"project\": {\"tasks\": [{}, {}, {\"title\": 5}]}}",
         "field \"project.tasks[2].title\": expected a string, got a number"},
        {"{\"project\": {\"labels\": {\"x\": 1}}}",
         "field \"project.labels[\"x\"]\": expected a string, got a "
         "number"},
        {"{\"fInt32\": 1.5}", "field \"fInt32\": 1.5 is not an integer"},
        {"{\"fInt32\": 2147483648}",
         "field \"fInt32\": 2147483648 is out of range for int32"},
        {"{\"fInt32\": -2147483649}",
         "field \"fInt32\": -2147483649 is out of range for int32"},
        {"{\"fSfixed32\": \"2147483648\"}",
         "field \"fSfixed32\": \"2147483648\" is out of range for sfixed32"},
        {"{\"fUint32\": -1}", "field \"fUint32\": -1 is out of range for "
                              "uint32"},
        {"{\"fFixed32\": 4294967296}",
         "field \"fFixed32\": 4294967296 is out of range for fixed32"},
        {"{\"fInt64\": \"9223372036854775808\"}",
         "field \"fInt64\": \"9223372036854775808\" is out of range for "
         "int64"},
        {"{\"fSint64\": \"-9223372036854775809\"}",
         "field \"fSint64\": \"-9223372036854775809\" is out of range for "
         "sint64"},
        {"{\"fUint64\": \"18446744073709551616\"}",
         "field \"fUint64\": \"18446744073709551616\" is out of range for "
         "uint64"},
        {"{\"fUint64\": \"-1\"}",
         "field \"fUint64\": \"-1\" is out of range for uint64"},
        {"{\"fInt64\": \"12a\"}", "field \"fInt64\": \"12a\" is not an "
                                  "integer"},
        {"{\"fInt64\": \" 12\"}", "field \"fInt64\": \" 12\" is not an "
                                  "integer"},
        {"{\"fInt64\": \"\"}", "field \"fInt64\": \"\" is not an integer"},
        {"{\"fInt64\": 1e300}",
         "field \"fInt64\": 1e+300 is too large to be exact as a JSON number; "
         "send it as a string"},
        {"{\"fSint32\": true}",
         "field \"fSint32\": expected an integer, got a boolean"},
        {"{\"fBool\": \"true\"}",
         "field \"fBool\": expected a boolean, got a string"},
        {"{\"fEnum\": \"COLOR_PURPLE\"}",
         "field \"fEnum\": \"COLOR_PURPLE\" is not a value of "
         "kowloon.test.Color"},
        {"{\"fEnum\": [1]}",
         "field \"fEnum\": expected an enum name or number, got an array"},
        {"{\"fEnum\": 2147483648}",
         "field \"fEnum\": 2147483648 is out of range for enum"},
        {"{\"fBytes\": \"not base64!\"}", "field \"fBytes\": invalid base64"},
        {"{\"fBytes\": \"YWJjZ\"}", "field \"fBytes\": invalid base64"},
        {"{\"fBytes\": \"YQ=\"}", "field \"fBytes\": invalid base64"},
        {"{\"fBytes\": \"Y=Q=\"}", "field \"fBytes\": invalid base64"},
        {"{\"fBytes\": 12}",
         "field \"fBytes\": expected a base64 string, got a number"},
        {"{\"fFloat\": 1e39}", "field \"fFloat\": 1e+39 is out of range for "
                               "float"},
        {"{\"fDouble\": \"abc\"}", "field \"fDouble\": \"abc\" is not a "
                                   "number"},
        {"{\"fDouble\": \"nan\"}", "field \"fDouble\": \"nan\" is not a "
                                   "number"},
        {"{\"fDouble\": \"1e999\"}",
         "field \"fDouble\": \"1e999\" is out of range for double"},
        {"{\"fDouble\": {}}", "field \"fDouble\": expected a number, got an "
                              "object"},
        {"{\"rInt32\": {}}", "field \"rInt32\": expected an array, got an "
                             "object"},
        {"{\"rInt32\": [1, null]}",
         "field \"rInt32[1]\": expected an integer, got null"},
        {"{\"rTask\": [{}, 3]}",
         "field \"rTask[1]\": expected an object, got a number"},
        {"{\"counts\": []}", "field \"counts\": expected an object, got an "
                             "array"},
        {"{\"counts\": {\"a\": \"x\"}}",
         "field \"counts[\"a\"]\": \"x\" is not an integer"},
        {"{\"counts\": {\"a\": null}}",
         "field \"counts[\"a\"]\": map values may not be null"},
        {"{\"names\": {\"one\": \"x\"}}",
         "field \"names[\"one\"]\": \"one\" is not an integer"},
        {"{\"names\": {\"2147483648\": \"x\"}}",
         "field \"names[\"2147483648\"]\": \"2147483648\" is out of range "
         "for int32"},
        {"{\"colors\": {\"yes\": 1}}",
         "field \"colors[\"yes\"]\": map key \"yes\" is not true or "
         "false"},
        {"{\"tasksById\": {\"a\": {\"bogus\": 1}}}",
         "unknown field \"tasksById[\"a\"].bogus\""},
        {"{\"project\": \"p\"}",
         "field \"project\": expected an object, got a string"},
        {"{\"f_int32\": 1, \"fInt32\": 2}",
         "field \"fInt32\": same field as \"f_int32\""},
        {"[]", "expected a JSON object, got an array"},
        {"null", "expected a JSON object, got null"},
        {"\"s\"", "expected a JSON object, got a string"},
        {"3", "expected a JSON object, got a number"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        s_assert_error(ALL, cases[i][0], cases[i][1]);

    kl_status_t st;
    uint8_t *buf;
    size_t len;
    assert_int_equal(kl_json_to_pb(ALL, NULL, &buf, &len, &st),
                     -KL_INVALID_ARGUMENT);
    assert_string_equal(st.message, "expected a JSON object, got nothing");
}

/* Error paths are cut, not overrun, when keys are long. */
static void
test_long_path(void **state)
{
    (void)state;
    char text[2048];
    char key[1001];
    kl_status_t st;
    uint8_t *buf;
    size_t len;
    memset(key, 'k', sizeof key - 1);
    key[sizeof key - 1] = '\0';
    snprintf(text, sizeof text, "{\"project\": {\"%s\": 1}}", key);
    json_t *in = s_parse(text);
    assert_int_equal(kl_json_to_pb(ALL, in, &buf, &len, &st),
                     -KL_INVALID_ARGUMENT);
    json_decref(in);
    assert_int_equal(strncmp(st.message, "unknown field \"project.kkk", 26), 0);
    assert_non_null(strstr(st.message, "...\""));
    assert_true(strlen(st.message) < 300);
}

static void
test_malformed(void **state)
{
    (void)state;
    s_assert_malformed("{\"a\": 1,}", 9,
                       "malformed JSON at line 1, column 9: string or '}' "
                       "expected near '}'");
    s_assert_malformed("{\n  \"a\": 1,\n  \"a\": 2\n}", 22,
                       "malformed JSON at line 3, column 5: duplicate object "
                       "key near '\"a\"'");
    s_assert_malformed("{} x", 4,
                       "malformed JSON at line 1, column 4: end of file "
                       "expected near 'x'");
    s_assert_malformed("{\"a\":1}\n{\"b\":2}", 15,
                       "malformed JSON at line 2, column 1: end of file "
                       "expected near '{'");
    s_assert_malformed("", 0,
                       "malformed JSON at line 1, column 0: unexpected token "
                       "near end of file");
    s_assert_malformed("{\"s\":\"\xff\"}", 9,
                       "malformed JSON at line 1, column 6: unable to decode "
                       "byte 0xff near '\"'");
    s_assert_malformed("{\"s\":\"a\\u0000b\"}", 16,
                       "malformed JSON at line 1, column 15: \\u0000 is not "
                       "allowed without JSON_ALLOW_NUL near '\"a\\u0000b\"'");
    s_assert_malformed("{\"a\":99999999999999999999}", 26,
                       "malformed JSON at line 1, column 25: too big integer "
                       "near '99999999999999999999'");
    /* len is honoured: the text is not read past it. */
    s_assert_malformed("{\"a\": 1}", 5,
                       "malformed JSON at line 1, column 5: unexpected token "
                       "near end of file");

    kl_status_t st;
    json_t *j = kl_json_parse("{\"a\": 1} trailing", 8, &st);
    assert_non_null(j);
    assert_int_equal(st.code, KL_OK);
    json_decref(j);
}

/* n nested Tree objects: {"child": {"child": ... {}}}. */
static char *
s_deep_text(int n)
{
    size_t len = (size_t)n * 11 + 8;
    char *t = malloc(len);
    char *p = t;
    for (int i = 1; i < n; i++)
        p += sprintf(p, "{\"child\":");
    p += sprintf(p, "{}");
    for (int i = 1; i < n; i++)
        *p++ = '}';
    *p = '\0';
    return t;
}

static void
test_depth(void **state)
{
    (void)state;
    kl_status_t st;
    uint8_t *buf = NULL;
    size_t len = 0;

    /* 64 levels are fine all the way round. */
    char *text = s_deep_text(64);
    json_t *in = kl_json_parse(text, strlen(text), &st);
    free(text);
    assert_non_null(in);
    assert_int_equal(kl_json_to_pb(TREE, in, &buf, &len, &st), 0);
    json_t *out = kl_json_from_pb(TREE, buf, len, 0, &st);
    assert_non_null(out);
    assert_true(json_equal(in, out));
    json_decref(out);
    free(buf);

    /* 65 levels: refused by the parser ... */
    text = s_deep_text(65);
    assert_null(kl_json_parse(text, strlen(text), &st));
    free(text);
    assert_string_equal(st.message,
                        "malformed JSON: nested deeper than 64 levels");
    /* ... and by kl_json_to_pb when the JSON was built another way. */
    json_t *deeper = json_pack("{s:O}", "child", in);
    assert_int_equal(kl_json_to_pb(TREE, deeper, &buf, &len, &st),
                     -KL_INVALID_ARGUMENT);
    assert_int_equal(strncmp(st.message, "field \"child.child.child", 24), 0);
    assert_non_null(strstr(st.message, "\": nested deeper than 64 levels"));
    json_decref(deeper);
    /* Arrays count as levels: 32 x children[{...}] is 65 levels. */
    json_t *arr = json_object();
    for (int i = 0; i < 32; i++)
        arr = json_pack("{s:[o]}", "children", arr);
    assert_int_equal(kl_json_to_pb(TREE, arr, &buf, &len, &st),
                     -KL_INVALID_ARGUMENT);
    assert_non_null(strstr(st.message, "nested deeper than 64 levels"));
    json_decref(arr);
    json_decref(in);

    /* Packed bytes nested 100 deep are refused before unpacking. Built
     * from the inside out: each level is tag 0x12 (field 2, child), the
     * varint length, then the level below. */
    uint8_t wire[400], tmp[400];
    size_t n = 0;
    for (int i = 0; i < 100; i++) {
        size_t hdr = 0;
        size_t l = n;
        tmp[hdr++] = 0x12;
        do {
            tmp[hdr++] = (uint8_t)((l & 0x7f) | (l > 0x7f ? 0x80 : 0));
            l >>= 7;
        } while (l);
        memcpy(tmp + hdr, wire, n);
        n += hdr;
        memcpy(wire, tmp, n);
    }
    assert_null(kl_json_from_pb(TREE, wire, n, 0, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_string_equal(st.message,
                        "kowloon.test.Tree: messages nested deeper than 64 "
                        "levels");

    /* A message built in C deeper than 64 levels is not written. */
    Kowloon__Test__Tree nodes[70];
    for (int i = 0; i < 70; i++) {
        kowloon__test__tree__init(&nodes[i]);
        nodes[i].child = i + 1 < 70 ? &nodes[i + 1] : NULL;
    }
    assert_null(kl_json_from_message(&nodes[0].base, 0));
    assert_non_null(out = kl_json_from_message(&nodes[6].base, 0));
    json_decref(out);
}

static void
test_bad_pb(void **state)
{
    (void)state;
    kl_status_t st;
    const uint8_t junk[] = {0x0a, 0xff, 0x01};
    assert_null(kl_json_from_pb(ALL, junk, sizeof junk, 0, &st));
    assert_int_equal(st.code, KL_INVALID_ARGUMENT);
    assert_string_equal(st.message,
                        "3 bytes do not unpack as kowloon.test.AllTypes");
    /* Empty bytes are the empty message. */
    json_t *j = kl_json_from_pb(ALL, (const uint8_t *)"", 0, 0, &st);
    s_assert_json(j, "{}");
}

static void
test_large_repeated(void **state)
{
    (void)state;
    enum { N = 100000 };
    json_t *in = json_object();
    json_t *ints = json_array();
    json_t *strs = json_array();
    json_t *tasks = json_array();
    json_t *map = json_object();
    for (int i = 0; i < N; i++) {
        json_array_append_new(ints, json_integer((json_int_t)i * 1000003));
        if (i % 10 == 0) {
            char key[32];
            snprintf(key, sizeof key, "k%d", i);
            json_array_append_new(strs, json_string(key));
            json_array_append_new(
                tasks, json_pack("{s:s,s:i}", "title", key, "priority", i + 1));
            json_object_set_new(map, key, json_integer(i));
        }
    }
    json_object_set_new(in, "rInt64", ints);
    json_object_set_new(in, "rString", strs);
    json_object_set_new(in, "rTask", tasks);
    json_object_set_new(in, "counts", map);

    kl_status_t st;
    Kowloon__Test__AllTypes *m =
        (Kowloon__Test__AllTypes *)kl_json_to_message(ALL, in, &st);
    assert_non_null(m);
    assert_int_equal(m->n_r_int64, N);
    assert_true(m->r_int64[N - 1] == (int64_t)(N - 1) * 1000003);
    assert_int_equal(m->n_r_string, N / 10);
    assert_int_equal(m->n_r_task, N / 10);
    assert_int_equal(m->r_task[N / 10 - 1]->priority, N - 9);
    assert_int_equal(m->n_counts, N / 10);

    json_t *out = kl_json_from_message(&m->base, 0);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    assert_non_null(out);
    assert_int_equal(json_array_size(json_object_get(out, "rInt64")), N);
    assert_string_equal(
        json_string_value(json_array_get(json_object_get(out, "rInt64"), 7)),
        "7000021");
    assert_int_equal(json_object_size(json_object_get(out, "counts")), N / 10);
    assert_true(json_equal(json_object_get(in, "rTask"),
                           json_object_get(out, "rTask")));
    json_decref(out);
    json_decref(in);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_camel_name),
        cmocka_unit_test(test_round_trip_all_types),
        cmocka_unit_test(test_to_message_values),
        cmocka_unit_test(test_original_names),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_floats),
        cmocka_unit_test(test_bytes),
        cmocka_unit_test(test_oneof),
        cmocka_unit_test(test_enum_number_out),
        cmocka_unit_test(test_proto2),
        cmocka_unit_test(test_from_message),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_long_path),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_bad_pb),
        cmocka_unit_test(test_large_repeated),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
