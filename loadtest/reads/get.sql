-- pgbench, raw baseline of GET /api/v1/budgets/{id}: the point SELECT of the issue, on a
-- random seeded id. The id text is computed from the integer as budgets.lua does
-- (immutable functions on the parameter; a few microseconds per query).
\set n random(1, :budgets)
SELECT * FROM budgets_view WHERE id = ('0193c000-0000-7000-8000-' || lpad(to_hex(:n::bigint), 12, '0'))::uuid;
