-- Projects: one row per tenant's project. Model-neutral: the migration
-- runner sets search_path to the target schema (the shared schema of the
-- row model, a tenant's "t_<hex>" schema, or the schema inside a tenant
-- database) and runs this as the owner role; nothing here names a schema.
-- Every model keeps tenant_id and the row-level security policy, so a move
-- between models is a plain row copy and a forgotten scope sees nothing.
CREATE TABLE projects (
    tenant_id uuid NOT NULL
        DEFAULT NULLIF(current_setting('app.tenant_id', true), '')::uuid,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    name text NOT NULL,
    description text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX projects_created ON projects (tenant_id, created_at, id);
ALTER TABLE projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE projects FORCE ROW LEVEL SECURITY;
-- current_setting(..., true) is NULL when unset: no row matches then.
CREATE POLICY tenant_isolation ON projects
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
