#!/usr/bin/env bash
# Creates (or updates the password of) the PostgreSQL roles and database
# named in KOWLOON_DATABASE_URL of tenant.env (the owner role) and of
# workspace.env beside it (the application role), on the PostgreSQL server
# where it runs. Idempotent: run it again after rotating a password.
#
#   deploy/stages/create-db.sh                       # /etc/kowloon/tenant.env, as user postgres
#   deploy/stages/create-db.sh --env /root/tenant.env
#
# The superuser connection is psql's usual one: as root it runs
# `runuser -u postgres -- psql` (peer authentication on the local socket);
# set KL_PSQL to another command to connect elsewhere, for example
#   KL_PSQL="psql -h 127.0.0.1 -p 5433 -U postgres" deploy/stages/create-db.sh
# The role gets LOGIN and CREATEDB (the tenant service creates databases
# for tenants in the `database` isolation model) and nothing else: no
# superuser, no BYPASSRLS, no CREATEROLE. The application role (the one
# product services such as kowloon-workspace serve with) gets LOGIN and
# CONNECT on the database and nothing else: it owns nothing, so row-level
# security holds for it; the services grant it what it needs.
set -euo pipefail

env_file=/etc/kowloon/tenant.env
while [ $# -gt 0 ]; do
    case $1 in
    --env) env_file=${2:?--env needs a file}; shift 2 ;;
    *) echo "usage: $0 [--env TENANT_ENV_FILE]" >&2; exit 2 ;;
    esac
done
[ -r "$env_file" ] || { echo "$0: cannot read $env_file" >&2; exit 1; }
url=$(sed -n 's|^KOWLOON_DATABASE_URL=||p' "$env_file" | tail -n 1)
[ -n "$url" ] || { echo "$0: no KOWLOON_DATABASE_URL in $env_file" >&2; exit 1; }
# postgresql://USER:PASSWORD@HOST[:PORT]/DBNAME[?params]
re='^postgres(ql)?://([^:/@]+):([^@]+)@[^/]+/([^?]+)'
[[ $url =~ $re ]] || { echo "$0: KOWLOON_DATABASE_URL is not postgresql://user:password@host/dbname" >&2; exit 1; }
export KL_DB_ROLE=${BASH_REMATCH[2]} KL_DB_PASSWORD=${BASH_REMATCH[3]} KL_DB_NAME=${BASH_REMATCH[4]}
app_env=$(dirname "$env_file")/workspace.env
KL_APP_ROLE="" KL_APP_PASSWORD=""
if [ -r "$app_env" ]; then
    app_url=$(sed -n 's|^KOWLOON_DATABASE_URL=||p' "$app_env" | tail -n 1)
    [[ $app_url =~ $re ]] || { echo "$0: KOWLOON_DATABASE_URL of $app_env is not postgresql://user:password@host/dbname" >&2; exit 1; }
    KL_APP_ROLE=${BASH_REMATCH[2]} KL_APP_PASSWORD=${BASH_REMATCH[3]}
    [ "${BASH_REMATCH[4]}" = "$KL_DB_NAME" ] || { echo "$0: $app_env names database ${BASH_REMATCH[4]}, tenant.env $KL_DB_NAME" >&2; exit 1; }
    [ "$KL_APP_ROLE" != "$KL_DB_ROLE" ] || { echo "$0: $app_env must use another role than the owner $KL_DB_ROLE" >&2; exit 1; }
fi
export KL_APP_ROLE KL_APP_PASSWORD
case $KL_DB_PASSWORD$KL_APP_PASSWORD in *CHANGE_ME*) echo "$0: $env_file still holds the placeholder password; run deploy/stages/install.sh first" >&2; exit 1 ;; esac

if [ -n "${KL_PSQL:-}" ]; then
    read -r -a psql <<<"$KL_PSQL"
elif [ "$(id -u)" -eq 0 ]; then
    psql=(runuser -u postgres -- psql)
else
    psql=(psql)
fi
# The password travels in the environment (\getenv), never on a command
# line (runuser without --login keeps the environment).
"${psql[@]}" -X -q -v ON_ERROR_STOP=1 -d postgres <<'SQL'
\getenv role KL_DB_ROLE
\getenv pw KL_DB_PASSWORD
\getenv db KL_DB_NAME
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE CREATEDB', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE CREATEDB PASSWORD %L', :'role', :'pw') \gexec
SELECT format('CREATE DATABASE %I OWNER %I ENCODING ''UTF8'' TEMPLATE template0', :'db', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db') \gexec
\getenv app KL_APP_ROLE
\getenv apppw KL_APP_PASSWORD
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB', :'app')
 WHERE :'app' <> '' AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB PASSWORD %L', :'app', :'apppw')
 WHERE :'app' <> '' \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', :'db', :'app') WHERE :'app' <> '' \gexec
SQL
echo "kowloon: role $KL_DB_ROLE${KL_APP_ROLE:+, application role $KL_APP_ROLE} and database $KL_DB_NAME ready" >&2
