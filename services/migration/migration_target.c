/*
 * migration_target: targets from tenants.
 */
#include "migration_target.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

static int
s_valid_schema(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63 || isdigit((unsigned char)s[0]))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) ||
              s[i] == '_'))
            return 0;
    return 1;
}

int
migration_target_shared(const char *shared_schema, migration_target_t *out,
                        kl_status_t *status)
{
    memset(out, 0, sizeof *out);
    if (!shared_schema || !s_valid_schema(shared_schema))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "shared schema \"%s\" is not a lower-case SQL "
                             "identifier",
                             shared_schema ? shared_schema : "");
    snprintf(out->target, sizeof out->target, "shared:%s", shared_schema);
    snprintf(out->isolation, sizeof out->isolation, "row");
    snprintf(out->schema, sizeof out->schema, "%s", shared_schema);
    return 0;
}

/* Lowercase uuid into id, its 32 hex digits into hex; 0 or -1. */
static int
s_uuid(const char *in, char id[37], char hex[33])
{
    if (strlen(in) != 36)
        return -1;
    int h = 0;
    for (int i = 0; i < 36; i++) {
        char c = (char)tolower((unsigned char)in[i]);
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return -1;
        } else {
            if (!isxdigit((unsigned char)c))
                return -1;
            hex[h++] = c;
        }
        id[i] = c;
    }
    id[36] = '\0';
    hex[32] = '\0';
    return 0;
}

int
migration_target_for_tenant(const char *tenant_id, const char *isolation,
                            const char *db_server, const char *shared_schema,
                            migration_target_t *out, kl_status_t *status)
{
    if (isolation && strcmp(isolation, "row") == 0)
        return migration_target_shared(shared_schema, out, status);
    memset(out, 0, sizeof *out);
    char id[37], hex[33];
    if (!tenant_id || s_uuid(tenant_id, id, hex) < 0)
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "tenant id \"%s\" is not a uuid",
                             tenant_id ? tenant_id : "");
    if (!isolation || (strcmp(isolation, "schema") != 0 &&
                       strcmp(isolation, "database") != 0))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "tenant %s: unknown isolation \"%s\"", id,
                             isolation ? isolation : "");
    if (strcmp(isolation, "database") == 0 && !s_valid_schema(shared_schema))
        return kl_status_set(status, KL_INVALID_ARGUMENT,
                             "shared schema \"%s\" is not a lower-case SQL "
                             "identifier",
                             shared_schema);
    snprintf(out->target, sizeof out->target, "tenant:%s", id);
    snprintf(out->tenant_id, sizeof out->tenant_id, "%s", id);
    snprintf(out->isolation, sizeof out->isolation, "%s", isolation);
    if (strcmp(isolation, "schema") == 0) {
        snprintf(out->schema, sizeof out->schema, "t_%s", hex);
    } else {
        snprintf(out->schema, sizeof out->schema, "%s", shared_schema);
        snprintf(out->db_name, sizeof out->db_name, "kowloon_t_%s", hex);
        snprintf(out->db_server, sizeof out->db_server, "%s",
                 db_server && *db_server ? db_server : "main");
    }
    return 0;
}

void
migration_target_location(const migration_target_t *t, char *buf, size_t size)
{
    if (t->db_name[0] && strcmp(t->db_server, "main") != 0)
        snprintf(buf, size, "%s:%s/%s", t->db_server, t->db_name, t->schema);
    else if (t->db_name[0])
        snprintf(buf, size, "%s/%s", t->db_name, t->schema);
    else
        snprintf(buf, size, "%s", t->schema);
}
