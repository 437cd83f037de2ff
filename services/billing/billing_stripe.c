/*
 * billing_stripe: libcurl requests to Stripe, retried as Stripe's own
 * libraries retry them, with Stripe's errors made into statuses.
 */
#include "billing_stripe.h"

#include "kl_alloc.h"
#include "kl_log.h"
#include "kl_rpc.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_MAX_RESPONSE (4 * 1024 * 1024)

struct billing_stripe {
    char *api_base;          /* owned */
    char *auth_header;       /* owned: "Authorization: Bearer sk_..." */
    char *version_header;    /* owned: "Stripe-Version: ..." */
    long connect_timeout_ms; /* per attempt */
    long request_timeout_ms; /* per attempt */
    int max_attempts;        /* >= 1 */
    long max_total_ms;       /* budget of a call */
    long backoff_ms;         /* first wait */
    pthread_mutex_t mu;      /* guards stats */
    billing_stripe_stats_t stats;
};

billing_stripe_t *
billing_stripe_new(const billing_stripe_opts_t *opts, kl_status_t *status)
{
    if (!opts->api_base || !*opts->api_base || !opts->secret_key ||
        !*opts->secret_key || !opts->api_version || !*opts->api_version) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "Stripe client needs an API base, a secret key and an "
                      "API version");
        return NULL;
    }
    if (strncmp(opts->api_base, "https://", 8) != 0 &&
        strncmp(opts->api_base, "http://", 7) != 0) {
        kl_status_set(status, KL_INVALID_ARGUMENT,
                      "Stripe API base \"%.128s\" is not an http(s) URL",
                      opts->api_base);
        return NULL;
    }
    billing_stripe_t *self = kl_calloc(1, sizeof *self);
    self->api_base = kl_strdup(opts->api_base);
    size_t n = strlen(self->api_base);
    while (n > 0 && self->api_base[n - 1] == '/')
        self->api_base[--n] = '\0';
    self->auth_header =
        kl_asprintf("Authorization: Bearer %s", opts->secret_key);
    self->version_header = kl_asprintf("Stripe-Version: %s", opts->api_version);
    self->connect_timeout_ms =
        opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 5000;
    self->request_timeout_ms =
        opts->request_timeout_ms > 0 ? opts->request_timeout_ms : 30000;
    self->max_attempts = opts->max_attempts > 0 ? opts->max_attempts : 4;
    self->max_total_ms = opts->max_total_ms > 0 ? opts->max_total_ms : 60000;
    self->backoff_ms = opts->backoff_ms > 0 ? opts->backoff_ms : 500;
    pthread_mutex_init(&self->mu, NULL);
    return self;
}

void
billing_stripe_destroy(billing_stripe_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    billing_stripe_t *self = *self_p;
    free(self->api_base);
    /* The key leaves no copy behind in freed memory. */
    memset(self->auth_header, 0, strlen(self->auth_header));
    free(self->auth_header);
    free(self->version_header);
    pthread_mutex_destroy(&self->mu);
    free(self);
    *self_p = NULL;
}

void
billing_stripe_stats(billing_stripe_t *self, billing_stripe_stats_t *stats)
{
    pthread_mutex_lock(&self->mu);
    *stats = self->stats;
    pthread_mutex_unlock(&self->mu);
}

/* --- one attempt ------------------------------------------------------- */

typedef struct {
    char *body;        /* response body, NUL-terminated */
    size_t len;        /* bytes */
    bool too_big;      /* exceeded S_MAX_RESPONSE */
    long retry_after;  /* Retry-After seconds, -1 when absent */
    bool should_retry; /* Stripe-Should-Retry: true */
    bool no_retry;     /* Stripe-Should-Retry: false */
} s_response_t;

static size_t
s_on_body(char *ptr, size_t size, size_t nmemb, void *user)
{
    s_response_t *r = user;
    size_t n = size * nmemb;
    if (r->len + n > S_MAX_RESPONSE) {
        r->too_big = true;
        return 0;
    }
    r->body = kl_realloc(r->body, r->len + n + 1);
    memcpy(r->body + r->len, ptr, n);
    r->len += n;
    r->body[r->len] = '\0';
    return n;
}

static size_t
s_on_header(char *buf, size_t size, size_t nitems, void *user)
{
    s_response_t *r = user;
    size_t n = size * nitems;
    if (n > 12 && strncasecmp(buf, "Retry-After:", 12) == 0) {
        char tmp[32];
        size_t m = n - 12 < sizeof tmp - 1 ? n - 12 : sizeof tmp - 1;
        memcpy(tmp, buf + 12, m);
        tmp[m] = '\0';
        char *end = NULL;
        long v = strtol(tmp, &end, 10);
        if (end != tmp && v >= 0)
            r->retry_after = v;
    } else if (n > 20 && strncasecmp(buf, "Stripe-Should-Retry:", 20) == 0) {
        const char *v = buf + 20;
        while (*v == ' ')
            v++;
        if (strncasecmp(v, "true", 4) == 0)
            r->should_retry = true;
        else if (strncasecmp(v, "false", 5) == 0)
            r->no_retry = true;
    }
    return n;
}

/* Returns the curl result; *http is the status (0 when none). */
static CURLcode
s_attempt(billing_stripe_t *self, const char *method, const char *path,
          const char *form, const char *idempotency_key, long timeout_ms,
          long *http, s_response_t *resp)
{
    bool post = strcmp(method, "POST") == 0;
    char *url = (!post && form && *form)
                    ? kl_asprintf("%s%s?%s", self->api_base, path, form)
                    : kl_asprintf("%s%s", self->api_base, path);
    CURL *c = curl_easy_init();
    if (!c) {
        free(url);
        return CURLE_FAILED_INIT;
    }
    struct curl_slist *h = NULL;
    h = curl_slist_append(h, self->auth_header);
    h = curl_slist_append(h, self->version_header);
    h = curl_slist_append(h, "Accept: application/json");
    char *idem = NULL;
    if (post) {
        h = curl_slist_append(
            h, "Content-Type: application/x-www-form-urlencoded");
        idem = kl_asprintf("Idempotency-Key: %s", idempotency_key);
        h = curl_slist_append(h, idem);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, self->connect_timeout_ms);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "kowloon-billing/0.1");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, resp);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, s_on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, resp);
    if (post) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, form ? form : "");
    }
    CURLcode rc = curl_easy_perform(c);
    *http = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, http);
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    free(idem);
    free(url);
    return rc;
}

/* --- errors ------------------------------------------------------------ */

/* Stripe's {"error":{...}} into status. */
static int
s_error(long http, json_t *doc, kl_status_t *status)
{
    json_t *err = json_object_get(doc, "error");
    const char *type = json_string_value(json_object_get(err, "type"));
    const char *code = json_string_value(json_object_get(err, "code"));
    const char *msg = json_string_value(json_object_get(err, "message"));
    const char *param = json_string_value(json_object_get(err, "param"));
    type = type ? type : "";
    msg = msg ? msg : "no message";
    char detail[300] = "";
    if (code && param)
        snprintf(detail, sizeof detail, " (%.64s, %.64s)", code, param);
    else if (code || param)
        snprintf(detail, sizeof detail, " (%.64s)", code ? code : param);

    if (strcmp(type, "card_error") == 0 || http == 402)
        return kl_status_set(status, KL_FAILED_PRECONDITION, "%.300s", msg);
    if (http == 401 || http == 403 || strcmp(type, "authentication_error") == 0)
        return kl_status_set(status, KL_INTERNAL,
                             "Stripe rejected the API key (check "
                             "KOWLOON_STRIPE_SECRET_KEY): %.200s",
                             msg);
    if (strcmp(type, "idempotency_error") == 0)
        return kl_status_set(status, KL_INTERNAL,
                             "Stripe idempotency error: %.300s", msg);
    if (http == 429)
        return kl_status_set(status, KL_UNAVAILABLE,
                             "Stripe rate limit: %.300s", msg);
    if (http >= 500 || http == 409)
        return kl_status_set(status, KL_UNAVAILABLE, "Stripe error %ld: %.300s",
                             http, msg);
    if (http == 404)
        return kl_status_set(status, KL_NOT_FOUND, "Stripe: %.300s%s", msg,
                             detail);
    return kl_status_set(status, KL_INVALID_ARGUMENT, "Stripe: %.300s%s", msg,
                         detail);
}

static bool
s_retryable_curl(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
        return true;
    default:
        return false;
    }
}

static void
s_sleep_ms(long ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

int
billing_stripe_request(billing_stripe_t *self, const char *method,
                       const char *path, const char *form,
                       const char *idempotency_key, json_t **out,
                       kl_status_t *status)
{
    *out = NULL;
    if (strcmp(method, "POST") == 0 && (!idempotency_key || !*idempotency_key ||
                                        strlen(idempotency_key) > 255))
        return kl_status_set(status, KL_INTERNAL,
                             "POST %s without a valid idempotency key", path);
    int64_t start = kl_now_mono_ms();
    unsigned seed = (unsigned)start ^ (unsigned)(uintptr_t)&start;
    long wait = self->backoff_ms;
    int rc = 0;
    for (int attempt = 1;; attempt++) {
        int64_t left = self->max_total_ms - (kl_now_mono_ms() - start);
        long timeout = self->request_timeout_ms < left
                           ? self->request_timeout_ms
                           : (long)(left > 1 ? left : 1);
        s_response_t resp = {.retry_after = -1};
        long http = 0;
        CURLcode cc = s_attempt(self, method, path, form, idempotency_key,
                                timeout, &http, &resp);
        pthread_mutex_lock(&self->mu);
        self->stats.requests++;
        pthread_mutex_unlock(&self->mu);

        bool retry = false;
        if (cc != CURLE_OK) {
            rc = resp.too_big ? kl_status_set(status, KL_INTERNAL,
                                              "Stripe answer too large")
                              : kl_status_set(status, KL_UNAVAILABLE,
                                              "Stripe unreachable: %s",
                                              curl_easy_strerror(cc));
            retry = !resp.too_big && s_retryable_curl(cc);
        } else {
            json_error_t jerr;
            json_t *doc =
                resp.body ? json_loadb(resp.body, resp.len, 0, &jerr) : NULL;
            if (http >= 200 && http < 300) {
                if (json_is_object(doc)) {
                    free(resp.body);
                    *out = doc;
                    return 0;
                }
                json_decref(doc);
                rc = kl_status_set(status, KL_INTERNAL,
                                   "Stripe answered %ld with no JSON object",
                                   http);
            } else {
                rc = json_is_object(doc)
                         ? s_error(http, doc, status)
                         : kl_status_set(status,
                                         http >= 500 ? KL_UNAVAILABLE
                                                     : KL_INTERNAL,
                                         "Stripe answered %ld", http);
                json_decref(doc);
                retry = http == 409 || http == 429 || http >= 500;
                if (resp.no_retry)
                    retry = false;
                else if (resp.should_retry)
                    retry = true;
            }
        }
        free(resp.body);
        if (!retry || attempt >= self->max_attempts)
            break;
        /* Exponential backoff with jitter, or Retry-After when longer. */
        long sleep_ms =
            wait / 2 + (long)(rand_r(&seed) % (unsigned)(wait / 2 + 1));
        if (resp.retry_after >= 0 && resp.retry_after * 1000 > sleep_ms)
            sleep_ms = resp.retry_after * 1000;
        left = self->max_total_ms - (kl_now_mono_ms() - start);
        if (sleep_ms >= left)
            break;
        KL_LOG(KL_WARN, "%s %s: %s; retrying in %ld ms (attempt %d of %d)",
               method, path, status->message, sleep_ms, attempt + 1,
               self->max_attempts);
        pthread_mutex_lock(&self->mu);
        self->stats.retries++;
        pthread_mutex_unlock(&self->mu);
        s_sleep_ms(sleep_ms);
        wait *= 2;
    }
    pthread_mutex_lock(&self->mu);
    self->stats.failures++;
    pthread_mutex_unlock(&self->mu);
    return rc;
}
