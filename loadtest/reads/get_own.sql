-- pgbench, second baseline of GET /api/v1/budgets/{id}: the server's own statement
-- (src/budgets/queries.rs GET_SQL: the row's stored JSON, its version and creation time;
-- ADR 0032), with the values it binds, on a random seeded id computed as in get.sql. The
-- issue's baseline (get.sql, SELECT *) reads every column, `doc` included.
\set n random(1, :budgets)
SELECT id, version, created_at, doc FROM budgets_view WHERE tenant_id = :tenant AND id = ('0193c000-0000-7000-8000-' || lpad(to_hex(:n::bigint), 12, '0'))::uuid;
