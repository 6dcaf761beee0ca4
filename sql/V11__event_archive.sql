-- Event archiving (ADR 0020): streams that ended (a deleted budget) move out of the live
-- log into `events_archive`, in one transaction. Replays and rebuilds read `events`
-- only; the stream API and aggregate loads read both. Only streams whose end leaves no
-- trace in any read model are archived, so a rebuild equals the live read models.
CREATE TABLE events_archive (
    position        bigint      PRIMARY KEY,
    transaction_id  xid8        NOT NULL,
    tenant_id       text        NOT NULL,
    stream_type     text        NOT NULL,
    stream_id       uuid        NOT NULL,
    stream_version  bigint      NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL,
    epoch           integer     NOT NULL,
    archived_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_archive_stream_version_unique UNIQUE (stream_id, stream_type, stream_version)
);
ALTER TABLE events_archive ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON events_archive FROM cloudlens_query;

-- The log stays append-only; the one way out of it is the archive's move, which sets
-- `cloudlens.archiving` for its own transaction only.
CREATE OR REPLACE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'events' AND TG_OP = 'DELETE'
       AND current_setting('cloudlens.archiving', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% are append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER events_archive_no_update_delete BEFORE UPDATE OR DELETE ON events_archive
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
CREATE TRIGGER events_archive_no_truncate BEFORE TRUNCATE ON events_archive
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();
