-- The event store: one append-only log for every aggregate (ADR 0001, 0003).
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE events (
    position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Top-level transaction id of the writer. Readers order by (transaction_id, position)
    -- and only read below a horizon no in-flight writer can fall under (ADR 0001).
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    tenant_id       text        NOT NULL,
    stream_type     text        NOT NULL,
    stream_id       uuid        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL CHECK (schema_version > 0),
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    -- stream_id leads: an index led by stream_type would tempt the planner into scanning
    -- every event of a type when it filters the global read by type.
    CONSTRAINT events_stream_version_unique UNIQUE (stream_id, stream_type, stream_version)
);

CREATE INDEX events_global_order ON events (transaction_id, position);

-- An append-only log grows fast: keep planner statistics fresh well before 10 % growth.
ALTER TABLE events SET (autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.05);

-- Events are facts: the application never changes or removes them.
CREATE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only (% refused)', TG_OP USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();

-- Responses of commands sent with an Idempotency-Key, written in the same statement as
-- the command's events so a retry can never append twice.
CREATE TABLE idempotency_keys (
    tenant_id       text        NOT NULL,
    key             text        NOT NULL,
    request_hash    bytea       NOT NULL,
    response_status integer     NOT NULL,
    response_body   jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
