-- Projector lanes (ADR 0031): a projector may write its read model on several
-- connections at once, each lane with its own checkpoint row. Lane 0 keeps the
-- projector's name; lane i is `<name>#<i>`. `projector` names the projector a row
-- belongs to, so the status, read-your-writes, the replica check and archiving take the
-- least advanced of its lanes with one indexed lookup. (A rebuild's shadow rows
-- `<name>#rebuild` and `<name>#rebuild#<i>` belong to `<name>#rebuild`.)
ALTER TABLE projection_checkpoints
    ADD COLUMN projector text GENERATED ALWAYS AS (regexp_replace(name, '#[0-9]+$', '')) STORED;
CREATE INDEX projection_checkpoints_projector ON projection_checkpoints (projector);
