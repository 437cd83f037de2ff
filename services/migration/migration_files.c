/*
 * migration_files: loading, naming rules, ordering and checksums.
 */
#include "migration_files.h"

#include "kl_alloc.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* Versions above this are refused: they would not fit the ledger's int. */
#define S_MAX_VERSION 999999

struct migration_files {
    migration_file_t *files; /* sorted by version, files[i].version = i+1 */
    size_t n;                /* number of files */
};

int
migration_files_parse_name(const char *name)
{
    if (name[0] != 'V')
        return -1;
    const char *p = name + 1;
    long version = 0;
    int digits = 0;
    while (isdigit((unsigned char)*p)) {
        version = version * 10 + (*p - '0');
        if (version > S_MAX_VERSION)
            return -1;
        p++;
        digits++;
    }
    if (digits == 0 || version < 1 || p[0] != '_' || p[1] != '_')
        return -1;
    p += 2;
    const char *dot = strrchr(p, '.');
    if (!dot || dot == p || strcmp(dot, ".sql") != 0)
        return -1;
    for (const char *q = p; q < dot; q++)
        if (!isalnum((unsigned char)*q) && *q != '_' && *q != '-')
            return -1;
    return (int)version;
}

void
migration_files_sha256(const void *data, size_t len,
                       char out[MIGRATION_CHECKSUM_LEN + 1])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    /* EVP_Digest fails only when the library is broken (out of memory);
     * an empty checksum then never matches anything recorded. */
    if (!EVP_Digest(data, len, md, &md_len, EVP_sha256(), NULL)) {
        out[0] = '\0';
        return;
    }
    static const char hex[] = "0123456789abcdef";
    for (unsigned int i = 0; i < md_len && i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[MIGRATION_CHECKSUM_LEN] = '\0';
}

/* --- batching ------------------------------------------------------------ */

/* Keywords that, leading a statement, keep a file out of a shared
 * transaction: they end or nest the transaction, or change settings that
 * would outlast the file and reach the next one (docs/migrations.md). */
static const char *const s_solo_keywords[] = {
    "abort",   "begin", "commit",   "discard",   "end", "prepare",
    "release", "reset", "rollback", "savepoint", "set", "start"};

static int
s_ident_start(unsigned char c)
{
    return isalpha(c) || c == '_' || c >= 0x80;
}

static int
s_ident_char(unsigned char c)
{
    return s_ident_start(c) || isdigit(c) || c == '$';
}

static int
s_solo(const char *word, size_t len)
{
    for (size_t k = 0; k < sizeof s_solo_keywords / sizeof *s_solo_keywords;
         k++)
        if (strlen(s_solo_keywords[k]) == len &&
            strncasecmp(word, s_solo_keywords[k], len) == 0)
            return 1;
    return 0;
}

/* Skips the quoted run opened by q at sql[*i]: a doubled q stands for one,
 * and with backslash set a backslash escapes the next byte (E'...').
 * Returns 0 past the closing quote, or -1 when it never closes. */
static int
s_skip_quoted(const char *sql, size_t len, size_t *i, char q, int backslash)
{
    size_t k = *i + 1;
    while (k < len) {
        if (backslash && sql[k] == '\\') {
            k += 2;
            continue;
        }
        if (sql[k] == q) {
            if (k + 1 < len && sql[k + 1] == q) {
                k += 2;
                continue;
            }
            *i = k + 1;
            return 0;
        }
        k++;
    }
    return -1;
}

/* At sql[*i] == '$': skips a dollar-quoted string ($$...$$, $tag$...$tag$)
 * and returns 0, or returns 1 (one byte skipped) when this '$' opens none
 * (a parameter such as $1), or -1 when the quote never closes. */
static int
s_skip_dollar(const char *sql, size_t len, size_t *i)
{
    size_t k = *i + 1;
    if (k < len && sql[k] != '$' && !s_ident_start((unsigned char)sql[k])) {
        (*i)++;
        return 1;
    }
    while (k < len && sql[k] != '$' && s_ident_char((unsigned char)sql[k]))
        k++;
    if (k >= len || sql[k] != '$') {
        (*i)++;
        return 1;
    }
    size_t tag_len = k - *i + 1; /* "$tag$" */
    const char *tag = sql + *i;
    for (size_t j = k + 1; j + tag_len <= len; j++)
        if (sql[j] == '$' && memcmp(sql + j, tag, tag_len) == 0) {
            *i = j + tag_len;
            return 0;
        }
    return -1;
}

/* Reads sql as PostgreSQL's lexer splits statements: *statements gets
 * how many there are (comments and empty statements not counted) and
 * *solo whether one of them begins with a keyword of s_solo_keywords.
 * Returns 0, or -1 when a quote, quoted identifier, dollar quote or block
 * comment is never closed. */
static int
s_scan(const char *sql, size_t len, int *statements, int *solo)
{
    size_t i = 0;
    int stmt_start = 1; /* the next token begins a statement */
    *statements = 0;
    *solo = 0;
    while (i < len) {
        unsigned char c = (unsigned char)sql[i];
        if (isspace(c)) {
            i++;
        } else if (c == '-' && i + 1 < len && sql[i + 1] == '-') {
            while (i < len && sql[i] != '\n')
                i++;
        } else if (c == '/' && i + 1 < len && sql[i + 1] == '*') {
            /* Block comments nest. */
            int depth = 0;
            do {
                if (i + 1 < len && sql[i] == '/' && sql[i + 1] == '*') {
                    depth++;
                    i += 2;
                } else if (i + 1 < len && sql[i] == '*' && sql[i + 1] == '/') {
                    depth--;
                    i += 2;
                } else {
                    i++;
                }
            } while (depth > 0 && i < len);
            if (depth > 0)
                return -1;
        } else if (c == ';') {
            stmt_start = 1;
            i++;
        } else {
            *statements += stmt_start;
            if (c == '\'' || c == '"') {
                if (s_skip_quoted(sql, len, &i, (char)c, 0) < 0)
                    return -1;
            } else if (c == '$') {
                if (s_skip_dollar(sql, len, &i) < 0)
                    return -1;
            } else if (s_ident_start(c)) {
                size_t w = i;
                while (i < len && s_ident_char((unsigned char)sql[i]))
                    i++;
                if (i - w == 1 && (sql[w] == 'E' || sql[w] == 'e') && i < len &&
                    sql[i] == '\'') {
                    if (s_skip_quoted(sql, len, &i, '\'', 1) < 0)
                        return -1;
                } else if (stmt_start && s_solo(sql + w, i - w)) {
                    *solo = 1;
                }
            } else {
                i++;
            }
            stmt_start = 0;
        }
    }
    return 0;
}

int
migration_files_batchable(const char *sql, size_t len)
{
    int statements, solo;
    return s_scan(sql, len, &statements, &solo) == 0 && !solo;
}

int
migration_files_no_transaction(const char *sql, size_t len)
{
    static const char directive[] = "-- kowloon:no-transaction";
    size_t n = sizeof directive - 1;
    if (len < n || memcmp(sql, directive, n) != 0)
        return 0;
    for (size_t i = n; i < len && sql[i] != '\n'; i++)
        if (sql[i] != ' ' && sql[i] != '\t' && sql[i] != '\r')
            return 0;
    return 1;
}

/* A no-transaction file must be exactly one statement that neither
 * controls transactions nor changes settings. */
static int
s_check_no_transaction(const migration_file_t *f, kl_status_t *status)
{
    int statements, solo;
    if (s_scan(f->sql, f->sql_len, &statements, &solo) < 0)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "%s: a quote, quoted identifier, dollar quote "
                             "or comment is never closed",
                             f->file_name);
    if (statements != 1)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "%s: a \"-- kowloon:no-transaction\" migration "
                             "holds exactly one statement, this one holds %d",
                             f->file_name, statements);
    if (solo)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "%s: a \"-- kowloon:no-transaction\" migration "
                             "may not be a transaction-control or SET "
                             "statement",
                             f->file_name);
    return 0;
}

/* Reads the whole of path into a new buffer (NUL-terminated). */
static int
s_read_file(const char *path, const char *name, char **out, size_t *out_len,
            kl_status_t *status)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return kl_status_set(status, KL_INTERNAL, "%s: cannot open: %s", name,
                             strerror(errno));
    size_t cap = 4096, len = 0;
    char *buf = kl_malloc(cap);
    for (;;) {
        if (len + 1 >= cap) {
            cap *= 2;
            buf = kl_realloc(buf, cap);
        }
        size_t got = fread(buf + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0)
            break;
    }
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        return kl_status_set(status, KL_INTERNAL, "%s: read error", name);
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;
}

static int
s_by_version(const void *a, const void *b)
{
    const migration_file_t *x = a, *y = b;
    if (x->version != y->version)
        return x->version < y->version ? -1 : 1;
    return strcmp(x->file_name, y->file_name);
}

static void
s_free_files(migration_file_t *files, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(files[i].file_name);
        free(files[i].sql);
    }
    free(files);
}

migration_files_t *
migration_files_load(const char *dir, kl_status_t *status)
{
    DIR *d = opendir(dir);
    if (!d) {
        kl_status_set(status, errno == ENOENT ? KL_NOT_FOUND : KL_INTERNAL,
                      "migrations directory %s: %s", dir, strerror(errno));
        return NULL;
    }
    migration_file_t *files = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        size_t name_len = strlen(name);
        if (name[0] == '.' || name_len < 4 ||
            strcmp(name + name_len - 4, ".sql") != 0)
            continue;
        char *path = kl_asprintf("%s/%s", dir, name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
            free(path);
            continue;
        }
        int version = migration_files_parse_name(name);
        if (version < 0) {
            rc = kl_status_set(status, KL_INVALID_ARGUMENT,
                               "%s: not named V<digits>__<name>.sql "
                               "(name: letters, digits, _ and -)",
                               name);
            free(path);
            break;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            files = kl_realloc(files, cap * sizeof *files);
        }
        migration_file_t *f = &files[n];
        memset(f, 0, sizeof *f);
        f->version = version;
        f->file_name = kl_strdup(name);
        rc = s_read_file(path, name, &f->sql, &f->sql_len, status);
        free(path);
        if (rc < 0) {
            free(f->file_name);
            break;
        }
        n++;
        if (memchr(f->sql, '\0', f->sql_len)) {
            rc = kl_status_set(status, KL_INVALID_ARGUMENT,
                               "%s: contains a NUL byte", name);
            break;
        }
        migration_files_sha256(f->sql, f->sql_len, f->checksum);
        f->no_transaction = migration_files_no_transaction(f->sql, f->sql_len);
        if (f->no_transaction) {
            rc = s_check_no_transaction(f, status);
            if (rc < 0)
                break;
        }
        f->batchable =
            !f->no_transaction && migration_files_batchable(f->sql, f->sql_len);
    }
    closedir(d);
    if (rc < 0) {
        s_free_files(files, n);
        return NULL;
    }
    if (n > 1)
        qsort(files, n, sizeof *files, s_by_version);
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && files[i].version == files[i - 1].version) {
            kl_status_set(
                status, KL_INVALID_ARGUMENT, "%s and %s: duplicate version %d",
                files[i - 1].file_name, files[i].file_name, files[i].version);
            s_free_files(files, n);
            return NULL;
        }
        if (files[i].version != (int)i + 1) {
            if (i == 0)
                kl_status_set(status, KL_INVALID_ARGUMENT,
                              "migration versions must start at 1: the first "
                              "is %s",
                              files[i].file_name);
            else
                kl_status_set(status, KL_INVALID_ARGUMENT,
                              "migration versions must be 1, 2, 3 ... without "
                              "gaps: %s follows %s",
                              files[i].file_name, files[i - 1].file_name);
            s_free_files(files, n);
            return NULL;
        }
    }
    migration_files_t *self = kl_calloc(1, sizeof *self);
    self->files = files;
    self->n = n;
    return self;
}

void
migration_files_destroy(migration_files_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    migration_files_t *self = *self_p;
    s_free_files(self->files, self->n);
    free(self);
    *self_p = NULL;
}

size_t
migration_files_count(const migration_files_t *self)
{
    return self->n;
}

int
migration_files_latest(const migration_files_t *self)
{
    return (int)self->n;
}

const migration_file_t *
migration_files_get(const migration_files_t *self, int version)
{
    if (version < 1 || (size_t)version > self->n)
        return NULL;
    return &self->files[version - 1];
}
