-- V9: tenants isolated by row-level security (ADR 0015).
--
-- Queries run as the role `cloudlens_query` (the server switches to it with SET ROLE on
-- its query connections), which owns nothing: RLS applies to it. Every read model has a
-- policy that shows it only the rows of the tenant in the setting `app.tenant`; without
-- the setting it sees nothing. Projectors and migrations run as the owner, which RLS does
-- not restrict (no FORCE), so the write side is unchanged.

-- The role itself is global to the cluster: `db::migrate` creates it (and lets the
-- owner switch to it) before any migration runs, at every start, so a restore into a
-- new cluster or a new login user gets it too: see `db::ENSURE_QUERY_ROLE_SQL`.

GRANT USAGE ON SCHEMA public TO cloudlens_query;

-- Secures one read-model table: RLS on, the tenant policy, SELECT for the query role. A
-- table without `tenant_id` (api_keys: admin only) gets RLS and no grant, so the query
-- role cannot read it at all. Rebuilds call it on their shadow copies before the swap
-- (LIKE … INCLUDING ALL carries neither policies nor grants).
CREATE FUNCTION cloudlens_secure_read_model(t regclass) RETURNS void
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
END
$$;

SELECT cloudlens_secure_read_model(t::regclass) FROM unnest(ARRAY[
    'budgets_view', 'jobs',
    'subject_kinds', 'subject_attributes', 'tag_categories', 'tags', 'subject_tags',
    'subject_tag_history', 'tag_change_sets',
    'cost_accounts', 'cost_imports', 'cost_lines', 'cost_daily', 'cost_daily_tags',
    'budget_alerts', 'cost_virtual_tags', 'cost_allocation_rules',
    'api_keys']) AS t;

-- The jsonb operators are marked LEAKPROOF by `db::migrate` at every start (a restored
-- database does not carry that mark): see `db::mark_operators_leakproof`.
