-- Each import of a further source rewrites a subject's record (`attrs` merged, and
-- `max_updated` often moves, which is indexed, so the update is not HOT). With free space
-- left on every page the new version stays on its page: no search of the free space map,
-- no extension of the table that both lanes of the projector wait for. Measured on
-- 100,000 merged rows of a 1,000,000-subject table: 1.93 s at fillfactor 100, 1.57 s at
-- 60 (and 1.10 s against 2.09 s where `max_updated` stays, now a HOT update). Rebuilds
-- keep the setting (the shadow copy takes the live table's storage parameters).
ALTER TABLE subject_attributes SET (fillfactor = 70);
