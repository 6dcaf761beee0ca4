-- The horizon function's statements must be planned with their values: after five calls
-- PL/pgSQL may switch to a generic plan, and the generic plan of the `settled` check
-- (`transaction_id >= horizon AND position <= issued`) walked the whole log by position
-- (about 1 s on a log of a million events, against 2 ms planned with the values).
ALTER FUNCTION cloudlens_event_horizon() SET plan_cache_mode = force_custom_plan;

-- A projector that finds fewer events than a batch holds has read everything below the
-- horizon: its checkpoint moves there (ADR 0001), so events of types it does not read are
-- walked over once, not at every poll. The cursor's position is then 0 (the horizon's
-- transaction may hold any position), so the position shown by the status is kept apart:
-- the last event applied, or the last position handed out when everything up to it was
-- read.
ALTER TABLE projection_checkpoints ADD COLUMN position_seen bigint NOT NULL DEFAULT 0;
UPDATE projection_checkpoints SET position_seen = last_position;
