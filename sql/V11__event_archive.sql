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

-- A deleted budget now leaves no alert rows (the projector deletes them with the view
-- row, so its stream can be archived): remove those of budgets deleted before.
DELETE FROM budget_alerts a
 WHERE NOT EXISTS (SELECT 1 FROM budgets_view v WHERE v.id = a.budget_id);

-- Finds the ends of streams without scanning the log (`eventstore::archive`); one partial
-- index per archivable end, like V8's for API keys.
CREATE INDEX events_budget_deleted ON events (position) WHERE event_type = 'BudgetDeleted';

-- The epoch check looks at archived transaction ids too: a checkpoint may point past
-- every live event.
CREATE OR REPLACE FUNCTION cloudlens_check_epoch() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    cur integer;
    top xid8;
BEGIN
    PERFORM pg_advisory_xact_lock(1668048000, 2);
    SELECT max(epoch) INTO cur FROM event_epochs;
    SELECT max(t) INTO top FROM (
        SELECT max(transaction_id) AS t FROM events WHERE epoch = cur
        UNION ALL
        SELECT max(transaction_id) FROM events_archive WHERE epoch = cur) m;
    IF top IS NOT NULL AND top >= pg_current_xact_id() THEN
        cur := cur + 1;
        INSERT INTO event_epochs (epoch, reason)
        VALUES (cur, format('transaction ids of this cluster (%s) are below the stored ones (%s): restored or moved database',
                            pg_current_xact_id(), top));
        EXECUTE format('ALTER TABLE events ALTER COLUMN epoch SET DEFAULT %s', cur);
    END IF;
    RETURN cur;
END $$;
