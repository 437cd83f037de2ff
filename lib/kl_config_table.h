/*
 * The one table of Kowloon's settings. Every KOWLOON_* variable any process
 * reads is one line here; docs/configuration.md is printed from it
 * (`kowloon-config --markdown`), and deploy checks test env files against it.
 *
 * X(id, type, default, min, max, choices, flags, processes, help)
 *   type     STR | INT | BOOL | LIST (comma-separated) | ENUM (one of choices)
 *   default  NULL: required
 *   min/max  INT: value bounds; STR/LIST: length bounds of the whole value
 *   flags    KL_CFG_SECRET: never printed, logged as "<redacted>"
 *   processes which processes read it (KL_PROC_* bits)
 */
#ifndef KL_CONFIG_TABLE_H
#define KL_CONFIG_TABLE_H

#define KL_PROC_GATEWAY 0x01u
#define KL_PROC_TENANT 0x02u
#define KL_PROC_FLAGS 0x04u
#define KL_PROC_WORKSPACE 0x08u
#define KL_PROC_BILLING 0x10u
#define KL_PROC_MIGRATION 0x20u
#define KL_PROC_SERVICES                                                       \
    (KL_PROC_TENANT | KL_PROC_FLAGS | KL_PROC_WORKSPACE | KL_PROC_BILLING |    \
     KL_PROC_MIGRATION)
#define KL_PROC_ALL (KL_PROC_GATEWAY | KL_PROC_SERVICES)

#define KL_CFG_SECRET 0x01u

#define KL_CONFIG_TABLE(X)                                                     \
    X(LOG_LEVEL, ENUM, "info", 0, 0, "debug|info|warn|error", 0, KL_PROC_ALL,  \
      "Minimum level of the JSON log lines written to stderr.")                \
    X(RPC_MAX_MESSAGE_BYTES, INT, "4194304", 1024, 268435456, NULL, 0,         \
      KL_PROC_ALL,                                                             \
      "Largest ZeroMQ message accepted; larger ones are refused unparsed.")    \
    X(CURVE_SECRET_KEY_FILE, STR, "", 0, 4096, NULL, 0, KL_PROC_ALL,           \
      "This process's Curve key pair (NAME.key_secret from kowloonctl "        \
      "keygen), its server and client key; empty: plaintext, loopback only.")  \
    X(CURVE_ALLOWED_CLIENTS_DIR, STR, "", 0, 4096, NULL, 0, KL_PROC_SERVICES,  \
      "Directory of the public certificates (NAME.key) of the clients "        \
      "allowed to call this service over Curve; re-read when it changes.")     \
    X(CURVE_SERVER_PUBLIC_KEY, STR, "", 0, 40, NULL, 0, KL_PROC_ALL,           \
      "Server public key (Z85) of *_ENDPOINTS entries written without "        \
      "?key=; empty: those are plaintext.")                                    \
    X(RPC_DRAIN_GRACE_MS, INT, "1000", 0, 60000, NULL, 0, KL_PROC_SERVICES,    \
      "On SIGTERM, how long a service keeps refusing new calls (not "          \
      "executed, so callers retry elsewhere) before it exits.")                \
    X(REDIS_URL, STR, "redis://127.0.0.1:6379/0", 0, 1024, NULL,               \
      KL_CFG_SECRET, KL_PROC_ALL,                                              \
      "Redis for the event channel and caches; empty disables Redis.")         \
    X(EVENTS_CHANNEL, STR, "kowloon:events", 1, 128, NULL, 0, KL_PROC_ALL,     \
      "Redis pub/sub channel carrying change events.")                         \
    X(DATABASE_URL, STR, NULL, 1, 4096, NULL, KL_CFG_SECRET, KL_PROC_SERVICES, \
      "libpq connection string of the control database.")                      \
    X(WORKERS, INT, "4", 1, 256, NULL, 0, KL_PROC_SERVICES,                    \
      "Worker threads of a service, each with its own database connection. "   \
      "For billing also the most webhook deliveries it holds at once, so the " \
      "largest batch of its group commit.")                                    \
    X(TENANT_BIND, STR, "tcp://127.0.0.1:7101", 1, 256, NULL, 0,               \
      KL_PROC_TENANT, "ZeroMQ endpoint the tenant service binds.")             \
    X(FLAGS_BIND, STR, "tcp://127.0.0.1:7102", 1, 256, NULL, 0, KL_PROC_FLAGS, \
      "ZeroMQ endpoint the flags service binds.")                              \
    X(WORKSPACE_BIND, STR, "tcp://127.0.0.1:7103", 1, 256, NULL, 0,            \
      KL_PROC_WORKSPACE, "ZeroMQ endpoint the workspace service binds.")       \
    X(DATA_OWNER_URL, STR, NULL, 1, 4096, NULL, KL_CFG_SECRET,                 \
      KL_PROC_WORKSPACE | KL_PROC_MIGRATION,                                   \
      "libpq URL of the role that owns the product's tables and runs their "   \
      "DDL.")                                                                  \
    X(RESERVED_SUBDOMAINS, LIST,                                               \
      "www,api,admin,app,mail,static,assets,cdn,status,docs,help,support,"     \
      "billing,auth,login,dashboard,blog,dev,test,staging,ftp,smtp,imap,pop,"  \
      "ns1,ns2,webhooks",                                                      \
      0, 8192, NULL, 0, KL_PROC_TENANT, "Subdomains no tenant may take.")      \
    X(DEFAULT_PLAN, STR, "starter", 1, 63, NULL, 0, KL_PROC_TENANT,            \
      "Plan of a tenant created without one.")                                 \
    X(DEFAULT_ISOLATION, ENUM, "row", 0, 0, "row|schema|database", 0,          \
      KL_PROC_TENANT, "Isolation model of a tenant created without one.")      \
    X(BASE_DOMAIN, STR, "localhost", 1, 253, NULL, 0, KL_PROC_GATEWAY,         \
      "Apex domain: tenants are <sub>.<base>, the admin API is on <base>.")    \
    X(PUBLIC_SCHEME, ENUM, "https", 0, 0, "http|https", 0, KL_PROC_GATEWAY,    \
      "Scheme of the links the gateway builds (upgrade_url, ...).")            \
    X(HTTP_LISTEN, STR, "127.0.0.1:8080", 1, 256, NULL, 0, KL_PROC_GATEWAY,    \
      "Address and port the gateway listens on (civetweb listening_ports).")   \
    X(HTTP_THREADS, INT, "128", 1, 1024, NULL, 0, KL_PROC_GATEWAY,             \
      "HTTP worker threads of the gateway; civetweb holds one per open "       \
      "keep-alive connection, so keep it above the connections at once.")      \
    X(HTTP_MAX_BODY_BYTES, INT, "1048576", 1, 67108864, NULL, 0,               \
      KL_PROC_GATEWAY, "Largest request body; larger ones are answered 413.")  \
    X(TRUSTED_PROXIES, LIST, "127.0.0.1/32,::1/128", 0, 4096, NULL, 0,         \
      KL_PROC_GATEWAY,                                                         \
      "Addresses (CIDR) whose X-Tenant-Subdomain header is believed.")         \
    X(ADMIN_TOKEN, STR, NULL, 16, 4096, NULL, KL_CFG_SECRET, KL_PROC_GATEWAY,  \
      "Bearer token of the admin API (at least 16 characters).")               \
    X(TENANT_ENDPOINTS, LIST, "tcp://127.0.0.1:7101", 1, 4096, NULL, 0,        \
      KL_PROC_GATEWAY | KL_PROC_BILLING | KL_PROC_MIGRATION,                   \
      "Every instance of the tenant service.")                                 \
    X(FLAGS_ENDPOINTS, LIST, "tcp://127.0.0.1:7102", 1, 4096, NULL, 0,         \
      KL_PROC_GATEWAY | KL_PROC_WORKSPACE | KL_PROC_BILLING,                   \
      "Every instance of the flags service.")                                  \
    X(WORKSPACE_ENDPOINTS, LIST, "tcp://127.0.0.1:7103", 1, 4096, NULL, 0,     \
      KL_PROC_GATEWAY, "Every instance of the workspace service.")             \
    X(RPC_TIMEOUT_MS, INT, "3000", 10, 600000, NULL, 0, KL_PROC_GATEWAY,       \
      "Deadline of a call from the gateway to a service.")                     \
    X(TENANT_CACHE_TTL_MS, INT, "30000", 0, 86400000, NULL, 0,                 \
      KL_PROC_GATEWAY,                                                         \
      "Longest a cached tenant or API key is used without asking again.")      \
    X(ENTITLEMENTS_TTL_MS, INT, "30000", 1, 86400000, NULL, 0,                 \
      KL_PROC_GATEWAY,                                                         \
      "Longest cached entitlements are used without asking the flags "         \
      "service again (longer when it is down: stale-if-error).")               \
    X(GATEWAY_INSTANCES, INT, "1", 1, 1024, NULL, 0, KL_PROC_GATEWAY,          \
      "Gateways sharing the traffic round-robin; each enforces 1/N of a "      \
      "plan's api_requests_per_minute.")                                       \
    X(TENANT_CACHE_MAX_ENTRIES, INT, "200000", 16, 10000000, NULL, 0,          \
      KL_PROC_GATEWAY, "Most tenants and API keys the gateway caches.")        \
    X(ROUTES_FILE, STR, "", 0, 4096, NULL, 0, KL_PROC_GATEWAY,                 \
      "Route file of the product's own routes (docs/routes.md); empty: none.") \
    X(BILLING_BIND, STR, "tcp://127.0.0.1:7104", 1, 256, NULL, 0,              \
      KL_PROC_BILLING, "ZeroMQ endpoint the billing service binds.")           \
    X(BILLING_ENDPOINTS, LIST, "tcp://127.0.0.1:7104", 1, 4096, NULL, 0,       \
      KL_PROC_GATEWAY, "Every instance of the billing service.")               \
    X(STRIPE_API_BASE, STR, "https://api.stripe.com", 8, 1024, NULL, 0,        \
      KL_PROC_BILLING, "Base URL of the Stripe API (a stand-in in tests).")    \
    X(STRIPE_SECRET_KEY, STR, NULL, 8, 1024, NULL, KL_CFG_SECRET,              \
      KL_PROC_BILLING, "Stripe secret API key (sk_live_... or sk_test_...).")  \
    X(STRIPE_WEBHOOK_SECRETS, LIST, NULL, 1, 4096, NULL, KL_CFG_SECRET,        \
      KL_PROC_BILLING,                                                         \
      "Webhook signing secrets (whsec_...); several while one rotates.")       \
    X(STRIPE_WEBHOOK_TOLERANCE_S, INT, "300", 1, 3600, NULL, 0,                \
      KL_PROC_BILLING,                                                         \
      "Largest difference between a webhook's timestamp and now.")             \
    X(STRIPE_API_VERSION, STR, "2024-06-20", 1, 64, NULL, 0, KL_PROC_BILLING,  \
      "Stripe-Version sent with every API request (pinned).")                  \
    X(TRIAL_DAYS, INT, "14", 0, 730, NULL, 0, KL_PROC_BILLING,                 \
      "Trial length of a new subscription.")                                   \
    X(CHECKOUT_SUCCESS_URL, STR, "https://localhost/billing/success", 8, 2048, \
      NULL, 0, KL_PROC_BILLING, "Where Checkout sends a payer who paid.")      \
    X(CHECKOUT_CANCEL_URL, STR, "https://localhost/billing/cancel", 8, 2048,   \
      NULL, 0, KL_PROC_BILLING, "Where Checkout sends a payer who gave up.")   \
    X(PORTAL_RETURN_URL, STR, "https://localhost/billing", 8, 2048, NULL, 0,   \
      KL_PROC_BILLING, "Where the Stripe Customer Portal links back to.")      \
    X(PAST_DUE_GRACE_S, INT, "604800", 0, 31536000, NULL, 0,                   \
      KL_PROC_GATEWAY | KL_PROC_BILLING,                                       \
      "How long a past_due tenant keeps access before the gateway answers "    \
      "402.")                                                                  \
    X(BILLING_RETENTION_DAYS, INT, "90", 7, 36500, NULL, 0, KL_PROC_BILLING,   \
      "Days billing keeps a webhook event in its inbox, and an outbox row "    \
      "after it was applied; older ones are deleted hourly. At least 7: "      \
      "Stripe retries a delivery for up to 3 days.")                           \
    X(MIGRATION_BIND, STR, "tcp://127.0.0.1:7105", 1, 256, NULL, 0,            \
      KL_PROC_MIGRATION, "ZeroMQ endpoint the migration service binds.")       \
    X(MIGRATION_ENDPOINTS, LIST, "tcp://127.0.0.1:7105", 1, 4096, NULL, 0,     \
      KL_PROC_TENANT,                                                          \
      "Every instance of the migration service (kowloonctl reads it too).")    \
    X(MIGRATIONS_DIR, STR, "services/workspace/migrations", 1, 4096, NULL, 0,  \
      KL_PROC_MIGRATION,                                                       \
      "Directory of the product's migrations, V0001__name.sql ...")            \
    X(MIGRATION_WORKERS, INT, "4", 1, 64, NULL, 0, KL_PROC_MIGRATION,          \
      "Tenants one migration-service instance migrates at once.")              \
    X(MIGRATION_SHARED_SCHEMA, STR, "workspace", 1, 63, NULL, 0,               \
      KL_PROC_MIGRATION,                                                       \
      "Schema of the row model's shared tables (and inside tenant "            \
      "databases).")                                                           \
    X(MIGRATION_POLL_MS, INT, "500", 10, 60000, NULL, 0, KL_PROC_MIGRATION,    \
      "How often an idle migration worker looks for claimable work.")          \
    X(TENANT_DB_SERVERS, LIST, "", 0, 8192, NULL, KL_CFG_SECRET,               \
      KL_PROC_WORKSPACE | KL_PROC_TENANT | KL_PROC_MIGRATION,                  \
      "Database servers of database-model tenants, name=libpq-url of the "     \
      "application role each; \"main\" defaults to DATABASE_URL's server.")    \
    X(TENANT_DB_OWNER_SERVERS, LIST, "", 0, 8192, NULL, KL_CFG_SECRET,         \
      KL_PROC_TENANT | KL_PROC_MIGRATION,                                      \
      "name=libpq-url of the owner role (CREATEDB) on each database server, "  \
      "\"main\" included: schema and database tenants are provisioned "        \
      "and moved with it.")                                                    \
    X(PLACEMENT_ENDPOINTS, LIST, "", 0, 4096, NULL, 0, KL_PROC_WORKSPACE,      \
      "Tenant service instances asked where a tenant's data lives; empty: "    \
      "row model only (schema and database tenants are refused).")             \
    X(TENANT_DB_MAX_OPEN, INT, "16", 1, 4096, NULL, 0, KL_PROC_WORKSPACE,      \
      "Tenant-database connections a worker keeps open (least recently "       \
      "used closed first).")                                                   \
    X(DATA_APP_ROLE, STR, "", 0, 63, NULL, 0,                                  \
      KL_PROC_TENANT | KL_PROC_MIGRATION,                                      \
      "Role product services connect as, granted on new tenant schemas and "   \
      "databases; empty: DATABASE_URL's user (tenant), no grants on tables "   \
      "added by migrations (migration).")

#endif
