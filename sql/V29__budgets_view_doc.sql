-- V29: each budget's JSON as the API serves it, kept in its read-model row (ADR 0032).
-- A read returns `doc` as it is stored and adds the two fields that change without the
-- projector rewriting the row: `version` (a threshold crossing moves it) and `created_at`
-- (an update keeps it). The projector writes `doc` from the same event as the columns.

-- The rendering of rows written before this migration. The projector renders `doc` in
-- Rust (`budgets::queries::BudgetDoc`); this function gives the same JSON value (a test
-- compares them), with PostgreSQL's spacing.
CREATE FUNCTION cloudlens_json_time(t timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  -- RFC 3339 in UTC with 0, 3 or 6 fractional digits, as chrono's `SecondsFormat::AutoSi`.
  SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
      || CASE WHEN extract(microseconds FROM t AT TIME ZONE 'UTC')::bigint % 1000000 = 0 THEN ''
              WHEN extract(microseconds FROM t AT TIME ZONE 'UTC')::bigint % 1000 = 0
                   THEN to_char(t AT TIME ZONE 'UTC', '.MS')
              ELSE to_char(t AT TIME ZONE 'UTC', '.US') END
      || 'Z'
$$;

-- Scalar arguments, not the row type: a rebuild swaps the table, and a function on its
-- row type would keep the old table from being dropped.
CREATE FUNCTION cloudlens_budget_doc(
    id uuid, name text, amount numeric, currency text, period text, budget_type text,
    start_date date, end_date date, tag_filter jsonb, service_filter jsonb,
    alert_thresholds jsonb, account text, updated_at timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT json_build_object(
           'id', id, 'name', name, 'amount', amount::text, 'currency', currency,
           'period', period, 'type', budget_type,
           'start_date', to_char(start_date, 'YYYY-MM-DD'),
           'end_date', to_char(end_date, 'YYYY-MM-DD'),
           'tag_filter', tag_filter, 'service_filter', service_filter,
           'alert_thresholds', alert_thresholds, 'account', account,
           'updated_at', cloudlens_json_time(updated_at))::text
$$;

ALTER TABLE budgets_view ADD COLUMN doc text;
UPDATE budgets_view SET doc = cloudlens_budget_doc(
    id, name, amount, currency, period, budget_type, start_date, end_date, tag_filter,
    service_filter, alert_thresholds, account, updated_at);
ALTER TABLE budgets_view ALTER COLUMN doc SET NOT NULL,
    ADD CONSTRAINT budgets_view_doc_object CHECK (doc LIKE '{%}');
