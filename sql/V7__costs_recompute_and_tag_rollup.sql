-- V7: virtual tags are recomputed step by step by a job (progress in the read model).

ALTER TABLE cost_virtual_tags
    ADD COLUMN revision         bigint      NOT NULL DEFAULT 0,   -- stream version of the save
    ADD COLUMN recompute_state  text        NOT NULL DEFAULT 'complete',  -- running | complete
    ADD COLUMN recomputed_lines bigint      NOT NULL DEFAULT 0,
    ADD COLUMN recompute_total  bigint      NOT NULL DEFAULT 0,
    ADD COLUMN recomputed_until timestamptz;
