-- V7: virtual tags recomputed step by step by a job (progress in the read model), the
-- daily tag rollup, coalescing jobs.

ALTER TABLE cost_virtual_tags
    ADD COLUMN revision         bigint      NOT NULL DEFAULT 0,   -- stream version of the save
    ADD COLUMN recompute_state  text        NOT NULL DEFAULT 'complete',  -- running | complete
    ADD COLUMN recomputed_lines bigint      NOT NULL DEFAULT 0,
    ADD COLUMN recompute_total  bigint      NOT NULL DEFAULT 0,
    ADD COLUMN recomputed_until timestamptz;

-- Daily cost by account × tag (key, value) × service × currency, kept by the `cost_lines`
-- projector beside `cost_daily`: budgets with a one-tag filter read it instead of the
-- lines. Only string-valued tags are counted (what `tags @> {"key": "value"}` matches).
CREATE TABLE cost_daily_tags (
    tenant_id text        NOT NULL,
    day       timestamptz NOT NULL,
    account   text        NOT NULL,
    key       text        NOT NULL,
    value     text        NOT NULL,
    service   text        NOT NULL,
    currency  text        NOT NULL,
    cost      numeric     NOT NULL,
    lines     bigint      NOT NULL,
    PRIMARY KEY (tenant_id, account, key, value, service, currency, day)
);
SELECT create_hypertable('cost_daily_tags', 'day', chunk_time_interval => interval '90 days',
                         create_default_indexes => false);
-- Budgets over every account.
CREATE INDEX cost_daily_tags_key ON cost_daily_tags (tenant_id, key, value, day);

-- Fill it from the lines already there (the projector keeps it from here on).
INSERT INTO cost_daily_tags
SELECT tenant_id, time_bucket('1 day', charge_start), account, t.key, t.value #>> '{}',
       service, currency, sum(cost), count(*)
  FROM cost_lines, jsonb_each(tags) AS t
 WHERE jsonb_typeof(t.value) = 'string'
 GROUP BY 1, 2, 3, 4, 5, 6, 7;

-- Coalescing job kinds (ADR 0007): a request that arrives while the job runs makes it
-- run once more afterwards.
ALTER TABLE jobs ADD COLUMN rerun boolean NOT NULL DEFAULT false;
