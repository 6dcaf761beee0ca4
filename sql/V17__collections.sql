-- V17: TTL collections (ADR 0023), the MongoDB/Redis replacement of issue 11.
--
-- `collections` is a read model like any other: the `collections` projector fills it from
-- `CollectionDeclared` events, and a rebuild gives it back. `collection_items` is not:
-- items are written straight to it by the API and never pass through the event log (a
-- firehose of log lines and a status cache must not grow the log forever). It is
-- operational state, like the idempotency keys, outside the promise that every read model
-- can be rebuilt from the events; backups carry it like every other table.

CREATE TABLE collections (
    tenant_id   text        NOT NULL,
    name        text        NOT NULL,
    -- NULL: items never expire.
    ttl_seconds integer,
    -- The fields items may be sorted by (`sort=`).
    indexes     text[]      NOT NULL,
    -- The stream's version of the declaration (the ETag).
    version     bigint      NOT NULL,
    declared_at timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- A plain table, not a hypertable: an item's PUT moves its `expires_at`, and items of
-- collections without a TTL have none, so expiry cannot be the partitioning column; and a
-- unique key per (tenant, collection, key) needs one table.
CREATE TABLE collection_items (
    tenant_id  text        NOT NULL,
    collection text        NOT NULL,
    -- Byte order whatever the database's collation: pages sorted by key are keyset
    -- paginated, and the order must be the same everywhere.
    key        text        COLLATE "C" NOT NULL,
    data       jsonb       NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    -- NULL: never expires. Reads skip items with expires_at <= now(); the purge job
    -- deletes them later.
    expires_at timestamptz,
    PRIMARY KEY (tenant_id, collection, key)
);

-- Time ranges (`from`, `to`) and the default newest-first order, keyset on (created_at, key).
CREATE INDEX collection_items_created ON collection_items (tenant_id, collection, created_at, key);
-- `filter=` (containment, `data @> $filter`) on any field.
CREATE INDEX collection_items_data ON collection_items USING gin (data jsonb_path_ops);
-- The purge: the oldest expired items first, never the items without a TTL.
CREATE INDEX collection_items_expiry ON collection_items (expires_at) WHERE expires_at IS NOT NULL;
-- Every purged item is a dead tuple: vacuum early rather than at 20 % of the table.
ALTER TABLE collection_items SET (autovacuum_vacuum_scale_factor = 0.02,
                                  autovacuum_analyze_scale_factor = 0.02);

SELECT cloudlens_secure_read_model(t::regclass)
  FROM unnest(ARRAY['collections', 'collection_items']) AS t;

-- Items are written by the query role too (`collections::store`: SET LOCAL ROLE, bound
-- to the request's tenant), so row-level security holds for writes as it does for reads:
-- a write can neither see nor touch another tenant's items, whatever its SQL says.
CREATE POLICY tenant_writes ON collection_items FOR ALL TO cloudlens_query
    USING (tenant_id = current_setting('app.tenant', true))
    WITH CHECK (tenant_id = current_setting('app.tenant', true));
GRANT INSERT, UPDATE, DELETE ON collection_items TO cloudlens_query;
