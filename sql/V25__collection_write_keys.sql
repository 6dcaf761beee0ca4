-- V25: Idempotency-Key for collection item writes (ADR 0023). Items are not events, so
-- their keys cannot live in `idempotency_keys` (which points at the events an append
-- wrote); a key here holds what the write did: the number of items of a batch, or the
-- item a single write stored. Written in the write's own transaction, so a write and its
-- key commit together or not at all; purged with the other idempotency keys after
-- CLOUDLENS_IDEMPOTENCY_RETENTION_HOURS. Outside the rebuild promise, like the items.
CREATE TABLE collection_write_keys (
    tenant_id    text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    collection   text        NOT NULL,
    result       jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX collection_write_keys_age ON collection_write_keys (created_at);

-- Written and read by the query role bound to the request's tenant, like the items.
ALTER TABLE collection_write_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_keys ON collection_write_keys FOR ALL TO cloudlens_query
    USING (tenant_id = current_setting('app.tenant', true))
    WITH CHECK (tenant_id = current_setting('app.tenant', true));
GRANT SELECT, INSERT ON collection_write_keys TO cloudlens_query;
