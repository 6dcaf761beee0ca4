-- The ordering protocol lives in the database (ADR 0005): whoever inserts into `events`
-- takes the writer lock through a trigger, the horizon is one function, and an epoch
-- keeps the order intact when the database moves to a cluster with other transaction ids.
-- Idempotency records keep what the store knows (stream, version, position), not HTTP.

-- Epochs: `transaction_id` values only order events written in the same cluster. When
-- the database is restored or moved into a cluster whose transaction ids are lower than
-- the stored ones, `cloudlens_check_epoch()` (run at every start) opens a new epoch, and
-- the global order becomes (epoch, transaction_id, position).
CREATE TABLE event_epochs (
    epoch      integer     PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    reason     text        NOT NULL
);
INSERT INTO event_epochs (epoch, reason) VALUES (1, 'initial');

ALTER TABLE events ADD COLUMN epoch integer NOT NULL DEFAULT 1;
DROP INDEX events_global_order;
CREATE INDEX events_global_order ON events (epoch, transaction_id, position);

ALTER TABLE projection_checkpoints ADD COLUMN last_epoch integer NOT NULL DEFAULT 0;
UPDATE projection_checkpoints SET last_epoch = 1 WHERE last_position > 0;

-- Opens a new epoch when this cluster's transaction ids are not above the stored ones.
-- The new default of `events.epoch` stamps every later event, whoever writes it.
CREATE FUNCTION cloudlens_check_epoch() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    cur integer;
    top xid8;
BEGIN
    PERFORM pg_advisory_xact_lock(1668048000, 2);
    SELECT max(epoch) INTO cur FROM event_epochs;
    SELECT max(transaction_id) INTO top FROM events WHERE epoch = cur;
    IF top IS NOT NULL AND top >= pg_current_xact_id() THEN
        cur := cur + 1;
        INSERT INTO event_epochs (epoch, reason)
        VALUES (cur, format('transaction ids of this cluster (%s) are below the stored ones (%s): restored or moved database',
                            pg_current_xact_id(), top));
        EXECUTE format('ALTER TABLE events ALTER COLUMN epoch SET DEFAULT %s', cur);
    END IF;
    RETURN cur;
END $$;

-- The writer lock, taken by every INSERT or COPY into `events` before the statement gets
-- a transaction id (statement triggers fire before the first row is written). Readers
-- find in-flight writers through it (ADR 0001). A transaction that wrote something else
-- first already has a transaction id, so the lock would come too late: refused, loudly
-- (unless it took the lock itself before that).
-- A writer's transaction may not sit idle: it would hold back every projector.
CREATE FUNCTION cloudlens_event_writer_lock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('cloudlens.event_writer', true) IS DISTINCT FROM 'on' THEN
        IF pg_current_xact_id_if_assigned() IS NOT NULL AND NOT EXISTS (
               -- (a writer may also take the lock itself, before anything else)
               SELECT 1 FROM pg_locks
                WHERE pid = pg_backend_pid() AND locktype = 'advisory' AND granted
                  AND classid = 1668048001::oid AND objid BETWEEN 1 AND 16 AND objsubid = 2) THEN
            RAISE EXCEPTION 'events must be the first write of their transaction'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'write events in a transaction of their own (see ARCHITECTURE.md, "Writing events from outside the server")';
        END IF;
        PERFORM pg_advisory_xact_lock_shared(1668048001, 1 + pg_backend_pid() % 16);
        PERFORM set_config('cloudlens.event_writer', 'on', true);
        -- Only ever shortened: a stricter setting of the session stays.
        IF current_setting('idle_in_transaction_session_timeout')::interval
               NOT BETWEEN interval '1 millisecond' AND interval '10 seconds' THEN
            PERFORM set_config('idle_in_transaction_session_timeout', '10s', true);
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER events_writer_lock BEFORE INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION cloudlens_event_writer_lock();

-- Transactions that may still add events: holders of the writer lock in this database,
-- and prepared transactions (which pg_stat_activity does not show; counted conservatively).
CREATE VIEW event_writers AS
SELECT a.pid, a.backend_xid, a.xact_start, a.state
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted
   AND l.classid = 1668048001::oid AND l.objid BETWEEN 1 AND 16 AND l.objsubid = 2
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
UNION ALL
SELECT NULL, p.transaction, p.prepared, 'prepared'
  FROM pg_prepared_xacts p
 WHERE p.database = current_database();

-- The horizon (ADR 0001): the current epoch, the smallest transaction id an in-flight
-- writer may hold, and `settled`: the last position handed out when every position up to
-- it is committed (or rolled back) below the horizon, else NULL.
-- `settled` needs care: positions are taken (under the writer lock) before the writer's
-- transaction id, so `issued` is read first, and any writer that could hold a position up
-- to it already holds the lock when the writers are looked at. A writer may still take its
-- transaction id after the horizon's snapshot and finish before its lock is looked for:
-- then its event lies at or above the horizon although no writer shows. The last check
-- (a new snapshot, which sees every such writer committed) looks for exactly those. Only
-- under READ COMMITTED does each statement here get a snapshot of its own; under another
-- isolation level `settled` stays NULL.
CREATE FUNCTION cloudlens_event_horizon(OUT epoch integer, OUT horizon xid8, OUT settled bigint)
LANGUAGE plpgsql AS $$
DECLARE
    cur     integer;
    issued  bigint;
    writers bigint;
BEGIN
    SELECT CASE WHEN s.is_called THEN s.last_value ELSE 0 END INTO issued FROM events_position_seq s;
    -- pg_stat_activity is otherwise cached for the rest of the transaction.
    PERFORM pg_stat_clear_snapshot();
    SELECT max(x.epoch) INTO cur FROM event_epochs x;
    WITH snap AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS nx),
    w AS MATERIALIZED (SELECT backend_xid FROM event_writers),
    dist AS (
        SELECT s.nx, ((s.nx % 4294967296) - x.x32 + 4294967296) % 4294967296 AS d
          FROM snap s
          LEFT JOIN (SELECT backend_xid::text::bigint AS x32 FROM w WHERE backend_xid IS NOT NULL) x ON true)
    SELECT LEAST(min(nx), min(nx - d) FILTER (WHERE d BETWEEN 1 AND 2147483648))::text::xid8,
           (SELECT count(*) FROM w)
      INTO horizon, writers
      FROM dist;
    epoch := cur;
    settled := NULL;
    -- The proof needs a new snapshot per statement: only under READ COMMITTED.
    IF writers = 0 AND current_setting('transaction_isolation') = 'read committed' AND NOT EXISTS (
           SELECT 1 FROM events e
            WHERE e.epoch = cur AND e.transaction_id >= horizon AND e.position <= issued) THEN
        settled := issued;
    END IF;
END $$;

-- Idempotency records: what the append produced; the route that answers decides the rest.
ALTER TABLE idempotency_keys
    ADD COLUMN stream_id uuid,
    ADD COLUMN stream_version bigint,
    ADD COLUMN position bigint;
UPDATE idempotency_keys
   SET stream_id = (response_body->>'id')::uuid,
       stream_version = (response_body->>'version')::bigint,
       position = (response_body->>'position')::bigint;
ALTER TABLE idempotency_keys
    ALTER COLUMN stream_id SET NOT NULL,
    ALTER COLUMN stream_version SET NOT NULL,
    ALTER COLUMN position SET NOT NULL,
    DROP COLUMN response_status,
    DROP COLUMN response_body;
-- The retention purge deletes by age.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
