-- V19: dashboards (issue 12), and the read-only role of the business Grafana dashboard.

-- The dashboards read model, kept by the `dashboards` projector. `created_by` is the
-- actor of the command that created it (the API key's name, or X-Actor): its owner, the
-- only one who may change or delete it. Others of the tenant see it when `is_shared`.
CREATE TABLE dashboards (
    tenant_id     text        NOT NULL,
    id            uuid        NOT NULL,
    name          text        NOT NULL,
    description   text        NOT NULL,
    layout        text        NOT NULL,
    widgets       jsonb       NOT NULL,
    is_shared     boolean     NOT NULL,
    created_by    text        NOT NULL,
    version       bigint      NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    last_position bigint      NOT NULL,
    PRIMARY KEY (id)
);
-- The list: keyset on id within the tenant, the caller's own and the shared ones.
CREATE INDEX dashboards_tenant_id ON dashboards (tenant_id, id);
-- "Which dashboards show budget X / metric Y" (`widgets @> '[{"data_source": …}]'`).
CREATE INDEX dashboards_widgets ON dashboards USING gin (widgets jsonb_path_ops);

SELECT cloudlens_secure_read_model('dashboards');

-- The business dashboard (grafana/dashboards/business.json) reads three read models
-- straight from PostgreSQL as `cloudlens_grafana` (ADR 0027). It owns nothing and may
-- only SELECT those tables. Row-level security stays on: its own policy shows it every
-- tenant's rows (it is an operator's view, like the Prometheus metrics; each panel
-- filters on the dashboard's `tenant` variable). NOLOGIN here: the operator enables it
-- with a password of their own (`ALTER ROLE cloudlens_grafana LOGIN PASSWORD …`, README).
-- Creating a role needs CREATEROLE; without it the migration still applies and the
-- business dashboard is simply not available.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cloudlens_grafana') THEN
        CREATE ROLE cloudlens_grafana NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
    WHEN insufficient_privilege THEN
        RAISE WARNING 'cannot create role cloudlens_grafana (no CREATEROLE): the business dashboard is not available';
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cloudlens_grafana') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO cloudlens_grafana', current_schema());
    END IF;
END
$$;

-- The read models the Grafana role may read. A rebuild swaps in new tables, which carry
-- no grants or policies; every read model is secured again through
-- `cloudlens_secure_read_model`, so that function now also gives these tables back to
-- the Grafana role. `alerts` is the alerts context's read model (V18, another branch):
-- granted here if it exists already, else when V18 secures it (it calls this function).
CREATE OR REPLACE FUNCTION cloudlens_grafana_tables() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$ SELECT ARRAY['cost_daily', 'budgets_view', 'alerts'] $$;

CREATE OR REPLACE FUNCTION cloudlens_secure_read_model(t regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
    IF EXISTS (SELECT 1 FROM pg_attribute
               WHERE attrelid = t AND attname = 'tenant_id' AND NOT attisdropped) THEN
        EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %s', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %s FOR SELECT TO cloudlens_query '
                       'USING (tenant_id = current_setting(''app.tenant'', true))', t);
        EXECUTE format('GRANT SELECT ON %s TO cloudlens_query', t);
    ELSE
        EXECUTE format('REVOKE ALL ON %s FROM cloudlens_query', t);
    END IF;
    IF (SELECT relname FROM pg_class WHERE oid = t) = ANY (cloudlens_grafana_tables())
       AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cloudlens_grafana') THEN
        EXECUTE format('DROP POLICY IF EXISTS grafana_read ON %s', t);
        EXECUTE format('CREATE POLICY grafana_read ON %s FOR SELECT TO cloudlens_grafana '
                       'USING (true)', t);
        EXECUTE format('GRANT SELECT ON %s TO cloudlens_grafana', t);
    END IF;
END
$$;

SELECT cloudlens_secure_read_model(to_regclass(t))
  FROM unnest(cloudlens_grafana_tables()) AS t
 WHERE to_regclass(t) IS NOT NULL;
