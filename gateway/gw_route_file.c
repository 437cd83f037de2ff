/*
 * gw_route_file: a line-oriented parser. A line is split into
 * whitespace-separated words; '#' at the start of a word starts a comment.
 * The first three words are the method, the pattern and the target, the
 * rest are options. Every check is done here, with the line number, so
 * that the table compiler behind it never has to report a file error
 * without one.
 */
#include "gw_route_file.h"

#include "kl_alloc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Words on a line beyond which the line is refused. */
#define S_MAX_WORDS 16

struct gw_route_file {
    gw_route_t *routes;              /* n lines; strings owned */
    gw_route_file_target_t *targets; /* parallel to routes */
    size_t n;                        /* routes parsed */
    size_t cap;                      /* allocated slots */
};

static const char *const s_methods[] = {"GET",   "HEAD",   "POST",   "PUT",
                                        "PATCH", "DELETE", "OPTIONS"};

/* ---- messages --------------------------------------------------------- */

typedef struct {
    const char *name;    /* file name, for messages */
    int line;            /* current line number */
    kl_status_t *status; /* where the error goes; may be NULL */
} s_ctx_t;

static int s_fail(s_ctx_t *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int
s_fail(s_ctx_t *c, const char *fmt, ...)
{
    char msg[KL_STATUS_MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return kl_status_set(c->status, KL_INVALID_ARGUMENT, "%s:%d: %s", c->name,
                         c->line, msg);
}

/* ---- character classes ------------------------------------------------ */

static bool
s_name_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_';
}

/* RFC 3986 pchar without '%': what a literal path segment may hold. The
 * gateway matches decoded paths, so a percent sign in a pattern would
 * only mislead. */
static bool
s_path_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch >= '0' && ch <= '9') || (ch && strchr("-._~!$&'()*+,;=:@", ch));
}

/* ---- pattern ---------------------------------------------------------- */

/* Writes the pattern's shape into shape (params become "{}", a catch-all
 * "{...}"), so that /x/{a} and /x/{b} are seen as the same route. Checks
 * the syntax on the way; *catch_all says whether the last segment is
 * one. */
static int
s_check_pattern(s_ctx_t *c, const char *pat, char *shape, size_t shape_cap,
                bool *catch_all)
{
    const char *names[GW_ROUTE_MAX_PARAMS];
    size_t name_lens[GW_ROUTE_MAX_PARAMS];
    size_t n_params = 0, out = 0;
    const char *p = pat;

    *catch_all = false;
    if (pat[0] != '/')
        return s_fail(c, "pattern \"%s\" must start with /", pat);
    if (pat[1] == '\0')
        return s_fail(c, "pattern \"/\" names no path (mount a whole app "
                         "with /{rest...})");
    while (*p == '/') {
        const char *seg = ++p;
        size_t len = strcspn(seg, "/");
        const char *lit = seg; /* the literal part to check */
        size_t lit_len = len;

        if (*catch_all)
            return s_fail(c,
                          "pattern \"%s\": a {name...} segment must be "
                          "the last one",
                          pat);
        if (len == 0)
            return s_fail(c, "pattern \"%s\": empty segment", pat);
        if ((len == 1 && seg[0] == '.') ||
            (len == 2 && seg[0] == '.' && seg[1] == '.'))
            return s_fail(c,
                          "pattern \"%s\": \".\" and \"..\" segments are "
                          "not allowed",
                          pat);
        if (out + len + 2 >= shape_cap)
            return s_fail(c, "pattern \"%s\" is too long", pat);
        shape[out++] = '/';
        if (seg[0] == '{') {
            const char *close = memchr(seg, '}', len);
            size_t nlen = close ? (size_t)(close - seg - 1) : 0;
            bool rest = nlen > 3 && memcmp(seg + 1 + nlen - 3, "...", 3) == 0;
            if (rest)
                nlen -= 3;
            bool ok = close && nlen > 0;
            for (size_t i = 0; ok && i < nlen; i++)
                ok = s_name_char(seg[1 + i]);
            if (!ok)
                return s_fail(c,
                              "pattern \"%s\": bad parameter \"%.*s\" (want "
                              "{name} or {name...}, name of a-z 0-9 _)",
                              pat, (int)(close ? close - seg + 1 : (long)len),
                              seg);
            for (size_t i = 0; i < n_params; i++)
                if (name_lens[i] == nlen &&
                    memcmp(names[i], seg + 1, nlen) == 0)
                    return s_fail(c,
                                  "pattern \"%s\": parameter \"%.*s\" appears "
                                  "twice",
                                  pat, (int)nlen, seg + 1);
            if (n_params == GW_ROUTE_MAX_PARAMS)
                return s_fail(c, "pattern \"%s\": more than %d parameters", pat,
                              GW_ROUTE_MAX_PARAMS);
            names[n_params] = seg + 1;
            name_lens[n_params++] = nlen;
            lit = close + 1;
            lit_len = len - (size_t)(lit - seg);
            if (rest) {
                if (lit_len != 0)
                    return s_fail(c,
                                  "pattern \"%s\": a {name...} segment must "
                                  "be the last one",
                                  pat);
                *catch_all = true;
                memcpy(shape + out, "{...}", 5);
                out += 5;
            } else {
                memcpy(shape + out, "{}", 2);
                out += 2;
            }
        }
        for (size_t i = 0; i < lit_len; i++) {
            unsigned char ch = (unsigned char)lit[i];
            if (ch == '{' || ch == '}')
                return s_fail(c,
                              "pattern \"%s\": a parameter must be a whole "
                              "segment, \"{name}\", optionally followed by a "
                              "verb",
                              pat);
            if (!s_path_char((char)ch)) {
                if (ch > 0x20 && ch < 0x7f)
                    return s_fail(c,
                                  "pattern \"%s\": character '%c' not "
                                  "allowed",
                                  pat, ch);
                return s_fail(c, "pattern \"%s\": byte 0x%02x not allowed", pat,
                              ch);
            }
        }
        if (out + lit_len + 1 >= shape_cap)
            return s_fail(c, "pattern \"%s\" is too long", pat);
        memcpy(shape + out, lit, lit_len);
        out += lit_len;
        p = seg + len;
    }
    shape[out] = '\0';
    return 0;
}

/* Shape of a built-in pattern (already validated by gw_routes). */
static void
s_shape_of(const char *pat, char *shape, size_t cap)
{
    size_t out = 0;
    for (const char *p = pat; *p && out + 6 < cap;) {
        if (*p == '{') {
            const char *close = strchr(p, '}');
            if (!close)
                break;
            bool rest = close - p > 4 && memcmp(close - 3, "...", 3) == 0;
            const char *rep = rest ? "{...}" : "{}";
            memcpy(shape + out, rep, strlen(rep));
            out += strlen(rep);
            p = close + 1;
        } else {
            shape[out++] = *p++;
        }
    }
    shape[out] = '\0';
}

/* ---- targets ---------------------------------------------------------- */

static bool
s_dns_name(const char *h, size_t len)
{
    size_t label = 0;
    if (len == 0 || len > 253)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = h[i];
        if (ch == '.') {
            if (label == 0 || h[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        bool alnum = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                     (ch >= '0' && ch <= '9');
        if (!alnum && !(ch == '-' && label > 0))
            return false;
        if (++label > 63)
            return false;
    }
    return label > 0 && h[len - 1] != '-';
}

/* "http://host:port[/prefix]" -> *norm (caller frees), prefix without a
 * trailing slash. */
static int
s_check_upstream(s_ctx_t *c, const char *t, char **norm)
{
    static const char http[] = "http://";
    const char *auth, *colon, *end, *prefix;
    char host[256];
    size_t host_len;

    if (strncmp(t, "https://", 8) == 0)
        return s_fail(c,
                      "upstream \"%s\": https to upstreams is not supported; "
                      "use http:// to a host on the same machine or private "
                      "network",
                      t);
    if (strncmp(t, http, sizeof http - 1) != 0)
        goto bad;
    auth = t + sizeof http - 1;
    end = auth + strcspn(auth, "/");
    prefix = end;
    if (auth[0] == '[') {
        const char *close = memchr(auth, ']', (size_t)(end - auth));
        if (!close || close[1] != ':')
            goto bad;
        host_len = (size_t)(close - auth - 1);
        if (host_len == 0 || host_len >= sizeof host)
            goto bad;
        memcpy(host, auth + 1, host_len);
        host[host_len] = '\0';
        unsigned char a6[16];
        if (inet_pton(AF_INET6, host, a6) != 1)
            goto bad;
        colon = close + 1;
    } else {
        colon = memchr(auth, ':', (size_t)(end - auth));
        if (!colon)
            goto bad;
        host_len = (size_t)(colon - auth);
        if (host_len == 0 || host_len >= sizeof host)
            goto bad;
        memcpy(host, auth, host_len);
        host[host_len] = '\0';
        /* A name made only of digits and dots must be a valid IPv4
         * address: "1.2.3" or "999.1.1.1" is a mistake, not a name. */
        if (strspn(host, "0123456789.") == host_len) {
            unsigned char a4[4];
            if (inet_pton(AF_INET, host, a4) != 1)
                goto bad;
        } else if (!s_dns_name(host, host_len)) {
            goto bad;
        }
    }
    /* Port: 1..65535, digits only. */
    const char *port = colon + 1;
    size_t port_len = (size_t)(end - port);
    if (port_len == 0 || port_len > 5 || strspn(port, "0123456789") < port_len)
        goto bad;
    long pn = strtol(port, NULL, 10);
    if (pn < 1 || pn > 65535)
        goto bad;
    /* Prefix: literal path characters; "/" alone is no prefix. */
    size_t prefix_len = strlen(prefix);
    while (prefix_len > 0 && prefix[prefix_len - 1] == '/')
        prefix_len--;
    for (size_t i = 0; i < prefix_len; i++)
        if (prefix[i] != '/' && !s_path_char(prefix[i]))
            goto bad;
    if (prefix_len > 0 && strstr(prefix, "//"))
        goto bad;
    *norm = kl_strndup(t, (size_t)(prefix - t) + prefix_len);
    return 0;
bad:
    return s_fail(c, "upstream \"%s\" is not http://host:port[/prefix]", t);
}

const ProtobufCServiceDescriptor *
gw_route_file_find_service(const char *name,
                           const ProtobufCServiceDescriptor *const *services,
                           size_t n_services)
{
    for (size_t i = 0; i < n_services; i++)
        if (services[i] && strcmp(services[i]->name, name) == 0)
            return services[i];
    return NULL;
}

/* "zmq:package.Service/Rpc" -> *service and *rpc (caller frees). */
static int
s_check_zmq(s_ctx_t *c, const char *t, const gw_route_file_opts_t *opts,
            const ProtobufCServiceDescriptor **service, char **rpc)
{
    const char *svc = t + 4;
    const char *slash = strchr(svc, '/');
    char name[256];

    if (!slash || slash == svc || slash[1] == '\0' || strchr(slash + 1, '/') ||
        (size_t)(slash - svc) >= sizeof name)
        return s_fail(c, "target \"%s\" is not zmq:package.Service/Rpc", t);
    memcpy(name, svc, (size_t)(slash - svc));
    name[slash - svc] = '\0';
    *service = gw_route_file_find_service(name, opts ? opts->services : NULL,
                                          opts ? opts->n_services : 0);
    if (!*service)
        return s_fail(c, "unknown service \"%s\"", name);
    if (!protobuf_c_service_descriptor_get_method_by_name(*service, slash + 1))
        return s_fail(c, "rpc %s not found in %s", slash + 1, name);
    *rpc = kl_strdup(slash + 1);
    return 0;
}

/* ---- options ---------------------------------------------------------- */

typedef struct {
    bool has_auth, has_host, has_feature, has_timeout, has_idem;
    gw_auth_kind_t auth;
    gw_host_kind_t host;
    const char *feature; /* points into the line */
    long timeout_ms;
} s_opts_t;

static int
s_option(s_ctx_t *c, const char *word, s_opts_t *o)
{
    const char *eq = strchr(word, '=');
    size_t klen = eq ? (size_t)(eq - word) : strlen(word);
    const char *v = eq ? eq + 1 : NULL;
    bool *seen;

#define S_IS(k) (klen == sizeof(k) - 1 && memcmp(word, k, klen) == 0)
    if (S_IS("auth"))
        seen = &o->has_auth;
    else if (S_IS("host"))
        seen = &o->has_host;
    else if (S_IS("feature"))
        seen = &o->has_feature;
    else if (S_IS("timeout"))
        seen = &o->has_timeout;
    else if (S_IS("idempotent"))
        seen = &o->has_idem;
    else
        return s_fail(c, "unknown option \"%.*s\"", (int)klen, word);
    if (*seen)
        return s_fail(c, "option \"%.*s\" given twice", (int)klen, word);
    *seen = true;

    if (S_IS("idempotent")) {
        if (v)
            return s_fail(c, "option \"idempotent\" takes no value");
        return 0;
    }
    if (!v)
        return s_fail(c, "option \"%.*s\" needs a value (%.*s=...)", (int)klen,
                      word, (int)klen, word);
    if (S_IS("auth")) {
        if (strcmp(v, "none") == 0)
            o->auth = GW_AUTH_NONE;
        else if (strcmp(v, "apikey") == 0)
            o->auth = GW_AUTH_API_KEY;
        else if (strcmp(v, "admin") == 0)
            o->auth = GW_AUTH_ADMIN_TOKEN;
        else
            return s_fail(c, "auth \"%s\" is not none, apikey or admin", v);
    } else if (S_IS("host")) {
        if (strcmp(v, "tenant") == 0)
            o->host = GW_HOST_TENANT;
        else if (strcmp(v, "apex") == 0)
            o->host = GW_HOST_APEX;
        else
            return s_fail(c, "host \"%s\" is not tenant or apex", v);
    } else if (S_IS("feature")) {
        size_t n = strlen(v);
        bool ok = n >= 1 && n <= 63;
        for (size_t i = 0; ok && i < n; i++)
            ok = s_name_char(v[i]);
        if (!ok)
            return s_fail(c,
                          "feature \"%s\" is not a feature name (1 to 63 of "
                          "a-z 0-9 _)",
                          v);
        o->feature = v;
    } else { /* timeout */
        char *endp;
        errno = 0;
        long ms = strtol(v, &endp, 10);
        if (!*v || *endp || errno || v[0] == '-' || v[0] == '+' ||
            ms < GW_ROUTE_FILE_TIMEOUT_MIN || ms > GW_ROUTE_FILE_TIMEOUT_MAX)
            return s_fail(c,
                          "timeout \"%s\" is not a number of milliseconds in "
                          "%d..%d",
                          v, GW_ROUTE_FILE_TIMEOUT_MIN,
                          GW_ROUTE_FILE_TIMEOUT_MAX);
        o->timeout_ms = ms;
    }
#undef S_IS
    return 0;
}

/* ---- lines ------------------------------------------------------------ */

static const char *
s_method(const char *w)
{
    for (size_t i = 0; i < sizeof s_methods / sizeof s_methods[0]; i++)
        if (strcmp(w, s_methods[i]) == 0)
            return s_methods[i];
    return NULL;
}

static const char *
s_host_name(gw_host_kind_t h)
{
    return h == GW_HOST_APEX ? "apex" : h == GW_HOST_TENANT ? "tenant" : "any";
}

/* Whether the route (host, method, shape) is already defined: by the
 * built-in table or an earlier line. Fails with the message then. */
static int
s_check_duplicate(s_ctx_t *c, const gw_route_file_t *self,
                  const gw_route_file_opts_t *opts, gw_host_kind_t host,
                  const char *method, const char *pattern, const char *shape)
{
    char other[1024];

    for (size_t i = 0; opts && i < opts->n_builtin; i++) {
        const gw_route_t *b = &opts->builtin[i];
        if ((b->host != host && b->host != GW_HOST_ANY) ||
            strcmp(b->method, method) != 0)
            continue;
        s_shape_of(b->pattern, other, sizeof other);
        if (strcmp(other, shape) == 0)
            return s_fail(c,
                          "duplicate route %s %s: the gateway serves it "
                          "itself",
                          method, pattern);
    }
    for (size_t i = 0; i < self->n; i++) {
        const gw_route_t *r = &self->routes[i];
        if (r->host != host || strcmp(r->method, method) != 0)
            continue;
        s_shape_of(r->pattern, other, sizeof other);
        if (strcmp(other, shape) == 0)
            return s_fail(
                c, "duplicate route %s %s (host %s): first on line %d", method,
                pattern, s_host_name(host), self->targets[i].line);
    }
    return 0;
}

/* Parses one line (a NUL-terminated, writable copy without its newline). */
static int
s_parse_line(s_ctx_t *c, gw_route_file_t *self, char *line,
             const gw_route_file_opts_t *opts)
{
    char *words[S_MAX_WORDS];
    size_t n = 0;
    char *p = line;
    char shape[1024];
    bool catch_all;
    s_opts_t o = {.host = GW_HOST_TENANT};

    for (char *q = line; *q; q++) {
        unsigned char ch = (unsigned char)*q;
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return s_fail(c, "control character 0x%02x in line", ch);
    }
    for (;;) {
        p += strspn(p, " \t");
        if (!*p || *p == '#')
            break;
        if (n == S_MAX_WORDS)
            return s_fail(c, "more than %d words on one line", S_MAX_WORDS);
        words[n++] = p;
        p += strcspn(p, " \t");
        if (*p)
            *p++ = '\0';
    }
    if (n == 0)
        return 0;

    const char *method = s_method(words[0]);
    if (!method)
        return s_fail(c,
                      "unknown method \"%s\" (want GET, HEAD, POST, PUT, "
                      "PATCH, DELETE or OPTIONS)",
                      words[0]);
    if (n < 2)
        return s_fail(c, "missing pattern and target after %s", method);
    if (s_check_pattern(c, words[1], shape, sizeof shape, &catch_all) < 0)
        return -KL_INVALID_ARGUMENT;
    if (n < 3)
        return s_fail(c, "missing target after %s %s", method, words[1]);
    for (size_t i = 3; i < n; i++)
        if (s_option(c, words[i], &o) < 0)
            return -KL_INVALID_ARGUMENT;
    if (!o.has_auth)
        return s_fail(c, "missing auth= (none, apikey or admin)");
    if (o.auth == GW_AUTH_API_KEY && o.host != GW_HOST_TENANT)
        return s_fail(c, "auth=apikey needs host=tenant (API keys belong to "
                         "tenants)");
    if (o.has_feature && o.host != GW_HOST_TENANT)
        return s_fail(c, "feature= needs host=tenant (features belong to "
                         "tenants' plans)");

    const char *target = words[2];
    bool zmq = strncmp(target, "zmq:", 4) == 0;
    char *upstream = NULL, *rpc = NULL;
    const ProtobufCServiceDescriptor *service = NULL;
    if (zmq) {
        if (catch_all)
            return s_fail(c,
                          "pattern \"%s\": a {name...} segment is for http "
                          "upstream routes only",
                          words[1]);
        if (s_check_zmq(c, target, opts, &service, &rpc) < 0)
            return -KL_INVALID_ARGUMENT;
    } else if (s_check_upstream(c, target, &upstream) < 0) {
        return -KL_INVALID_ARGUMENT;
    }
    if (s_check_duplicate(c, self, opts, o.host, method, words[1], shape) < 0) {
        free(upstream);
        free(rpc);
        return -KL_INVALID_ARGUMENT;
    }

    if (self->n == self->cap) {
        self->cap = self->cap ? self->cap * 2 : 8;
        self->routes = kl_realloc(self->routes, self->cap * sizeof(gw_route_t));
        self->targets = kl_realloc(self->targets,
                                   self->cap * sizeof(gw_route_file_target_t));
    }
    self->routes[self->n] = (gw_route_t){
        .method = method,
        .pattern = kl_strdup(words[1]),
        .host = o.host,
        .service = service,
        .local = GW_LOCAL_NONE,
        .rpc = rpc,
        .idempotent = o.has_idem,
        .feature = o.has_feature ? kl_strdup(o.feature) : NULL,
        .auth = o.auth,
    };
    self->targets[self->n] = (gw_route_file_target_t){
        .upstream = upstream,
        .timeout_ms = o.has_timeout ? (int)o.timeout_ms
                      : zmq         ? 0
                                    : GW_ROUTE_FILE_UPSTREAM_TIMEOUT_DEFAULT,
        .line = c->line,
    };
    self->n++;
    return 0;
}

gw_route_file_t *
gw_route_file_parse(const char *name, const char *text, size_t len,
                    const gw_route_file_opts_t *opts, kl_status_t *status)
{
    gw_route_file_t *self = kl_calloc(1, sizeof *self);
    s_ctx_t c = {name, 0, status};
    size_t pos = 0;

    while (pos < len) {
        const char *start = text + pos;
        const char *nl = memchr(start, '\n', len - pos);
        size_t line_len = nl ? (size_t)(nl - start) : len - pos;
        pos += line_len + (nl ? 1 : 0);
        c.line++;
        if (line_len > 0 && start[line_len - 1] == '\r')
            line_len--; /* a file saved with CRLF line ends */
        if (memchr(start, '\0', line_len)) {
            s_fail(&c, "NUL byte in line");
            goto fail;
        }
        char *line = kl_strndup(start, line_len);
        int rc = s_parse_line(&c, self, line, opts);
        free(line);
        if (rc < 0)
            goto fail;
    }
    return self;
fail:
    gw_route_file_destroy(&self);
    return NULL;
}

gw_route_file_t *
gw_route_file_load(const char *path, const gw_route_file_opts_t *opts,
                   kl_status_t *status)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        kl_status_set(status, KL_INVALID_ARGUMENT, "%s: cannot open: %s", path,
                      strerror(errno));
        return NULL;
    }
    char *buf = kl_malloc(GW_ROUTE_FILE_MAX_BYTES + 1);
    size_t n = fread(buf, 1, GW_ROUTE_FILE_MAX_BYTES + 1, f);
    bool err = ferror(f);
    fclose(f);
    gw_route_file_t *self = NULL;
    if (err)
        kl_status_set(status, KL_INVALID_ARGUMENT, "%s: cannot read", path);
    else if (n > GW_ROUTE_FILE_MAX_BYTES)
        kl_status_set(status, KL_INVALID_ARGUMENT, "%s: larger than %d bytes",
                      path, GW_ROUTE_FILE_MAX_BYTES);
    else
        self = gw_route_file_parse(path, buf, n, opts, status);
    free(buf);
    return self;
}

void
gw_route_file_destroy(gw_route_file_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    gw_route_file_t *self = *self_p;
    for (size_t i = 0; i < self->n; i++) {
        free((char *)self->routes[i].pattern);
        free((char *)self->routes[i].rpc);
        free((char *)self->routes[i].feature);
        free((char *)self->targets[i].upstream);
    }
    free(self->routes);
    free(self->targets);
    KL_FREE(self_p);
}

const gw_route_t *
gw_route_file_routes(const gw_route_file_t *self, size_t *n)
{
    *n = self ? self->n : 0;
    return self ? self->routes : NULL;
}

const gw_route_file_target_t *
gw_route_file_target(const gw_route_file_t *self, size_t index)
{
    return self && index < self->n ? &self->targets[index] : NULL;
}
