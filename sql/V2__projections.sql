-- Projection checkpoints: advanced in the same transaction as the read-model writes
-- of a batch (ADR 0002).
CREATE TABLE projection_checkpoints (
    name               text        PRIMARY KEY,
    last_xid           xid8        NOT NULL DEFAULT '0'::xid8,
    last_position      bigint      NOT NULL DEFAULT 0,
    events_applied     bigint      NOT NULL DEFAULT 0,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    heartbeat_at       timestamptz,
    owner              text,
    last_error         text,
    rebuild_state      text,
    rebuild_position   bigint,
    rebuild_started_at timestamptz,
    rebuild_finished_at timestamptz
);
