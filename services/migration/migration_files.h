/*
 * migration_files: the product's migrations as loaded from one directory.
 *
 * Every regular file whose name ends in ".sql" must be named
 * V<digits>__<name>.sql (name: letters, digits, '_' and '-'); versions run
 * 1, 2, 3 ... without gaps or duplicates. Each file's checksum is the
 * SHA-256 of its bytes, lowercase hex. Other files (README, dot files) are
 * ignored. A set is immutable once loaded and may be shared by threads.
 *
 * A file whose first line is "-- kowloon:no-transaction" runs outside any
 * transaction (CREATE INDEX CONCURRENTLY and the like; migration_apply_one).
 * It must hold exactly one statement, not a transaction-control or SET
 * one; the load fails otherwise, naming the file.
 */
#ifndef MIGRATION_FILES_H
#define MIGRATION_FILES_H

#include "kl_code.h"

#include <stddef.h>

#define MIGRATION_CHECKSUM_LEN 64

typedef struct {
    int version;
    char *file_name;                           /* "V0001__projects.sql" */
    char checksum[MIGRATION_CHECKSUM_LEN + 1]; /* sha-256, lowercase hex */
    char *sql;                                 /* the file's text */
    size_t sql_len;
    int batchable;      /* 1: may be sent in one string with the versions
                           after it (migration_files_batchable) */
    int no_transaction; /* 1: runs outside a transaction (first line
                           "-- kowloon:no-transaction"); never batchable */
} migration_file_t;

typedef struct migration_files migration_files_t;

/* Loads dir. NULL + status on error, naming the file: INVALID_ARGUMENT for
 *   "V1_projects.sql: not named V<digits>__<name>.sql"
 *   "V0004__idx.sql: a \"-- kowloon:no-transaction\" migration holds
 *    exactly one statement, this one holds 2"
 *   "V0002__b.sql and V0002__c.sql: duplicate version 2"
 *   "migration versions must be 1, 2, 3 ... without gaps: 3 follows 1"
 *   "V0001__a.sql: contains a NUL byte"
 * and NOT_FOUND / INTERNAL for a directory or file that cannot be read.
 * An empty directory is a valid, empty set. Caller owns the result. */
migration_files_t *migration_files_load(const char *dir, kl_status_t *status);
void migration_files_destroy(migration_files_t **self_p);

/* Number of files; the latest version equals it (versions are 1..n). */
size_t migration_files_count(const migration_files_t *self);
int migration_files_latest(const migration_files_t *self);

/* The file of version (1..count), or NULL. Borrowed from self. */
const migration_file_t *migration_files_get(const migration_files_t *self,
                                            int version);

/* Parses a file name: returns the version (>= 1), or -1 when the name is
 * not V<digits>__<name>.sql. */
int migration_files_parse_name(const char *file_name);

/* Whether sql may be sent together with other files, one after the other
 * in a single string, each in its own transaction (migration_batch_apply):
 * 1 when every
 * quote, quoted identifier, dollar quote and block comment it opens is
 * closed (so nothing of it reaches into the next file), and no statement of
 * it begins with a transaction-control or setting keyword: ABORT, BEGIN,
 * COMMIT, DISCARD, END, PREPARE, RELEASE, RESET, ROLLBACK, SAVEPOINT, SET,
 * START (statements inside quotes, dollar quotes and comments are not
 * statements: a DO block's BEGIN ... END is fine). Conservative: a file
 * this says 0 for is sent on its own, as every file was before
 * batching. Expects standard_conforming_strings on (PostgreSQL's
 * default): backslashes escape only inside E'...'. */
int migration_files_batchable(const char *sql, size_t len);

/* Whether sql's first line is "-- kowloon:no-transaction" (trailing
 * blanks allowed). */
int migration_files_no_transaction(const char *sql, size_t len);

/* SHA-256 of len bytes at data as 64 lowercase hex digits plus NUL. */
void migration_files_sha256(const void *data, size_t len,
                            char out[MIGRATION_CHECKSUM_LEN + 1]);

#endif
