-- Projector lanes for projectors that unpack their batches in PostgreSQL (ADR 0031):
-- the lane that owns a key, computed where the rows are. `hashtextextended` is the hash
-- behind hash partitioning, so it is stable across builds and pg_upgrade. A projector
-- decides ownership either in Rust (`Lane::owns`, FNV-1a) or with this function, the same
-- one for every key it writes, never a mix. Not STRICT, so that the planner inlines it
-- (a call per row would cost more than unpacking the row).
CREATE FUNCTION cloudlens_lane(key text, lanes integer) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN lanes <= 1 THEN 0
                ELSE ((hashtextextended(key, 0) % lanes + lanes) % lanes)::integer END;
