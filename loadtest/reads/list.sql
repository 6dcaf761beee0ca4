-- pgbench, raw baseline of GET /api/v1/budgets?tag=team:team-<k>&limit=20: the server's
-- statement (src/budgets/queries.rs LIST_TAG_SQL) with the values it binds: tenant,
-- cursor (none: the nil uuid), the tag as jsonb, limit + 1. Under -M prepared all four are
-- plain parameters, as in the server, so the planner sees what it sees there. pgbench
-- has no string variables to pick a tag at random, so reads.sh runs 16 copies of this
-- script with equal weights, copy k with :tag = :tag<k> = {"team": "team-<k>"}.
\set lim 21
SELECT id, version, created_at, doc FROM budgets_view WHERE tenant_id = :tenant AND id > :after AND tag_filter @> :tag ORDER BY id LIMIT :lim;
