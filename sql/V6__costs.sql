-- V6: the costs context (cloud accounts, bill imports, cost lines and their daily rollup).
-- Every table here is a read model, kept by the `cost_accounts` and `cost_lines`
-- projectors and rebuilt from the `cost_account` and `bill_import` streams.

CREATE TABLE cost_accounts (
    tenant_id     text        NOT NULL,
    name          text        NOT NULL,
    provider      text        NOT NULL,
    external_id   text,
    currency      text        NOT NULL,
    created_at    timestamptz NOT NULL,
    last_position bigint      NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- One row per import (its stream): what the file held and how far it is visible.
CREATE TABLE cost_imports (
    import_id     uuid        PRIMARY KEY,
    tenant_id     text        NOT NULL,
    account       text        NOT NULL,
    format        text        NOT NULL,
    sha256        text        NOT NULL,
    periods       date[]      NOT NULL,
    lines         bigint      NOT NULL,
    lines_loaded  bigint      NOT NULL,
    totals        jsonb       NOT NULL,
    state         text        NOT NULL,   -- loading | complete
    started_at    timestamptz NOT NULL,
    completed_at  timestamptz,
    position      bigint      NOT NULL,   -- of the import's last event once complete
    restated_by   uuid                    -- a later import of the same account and periods
);
CREATE INDEX cost_imports_account ON cost_imports (tenant_id, account, started_at DESC);

-- One row per bill line. Empty text means the bill had no value for the column.
CREATE TABLE cost_lines (
    tenant_id       text        NOT NULL,
    charge_start    timestamptz NOT NULL,
    charge_end      timestamptz,
    billing_period  date        NOT NULL,
    account         text        NOT NULL,
    provider        text        NOT NULL,
    import_id       uuid        NOT NULL,
    line_no         integer     NOT NULL,
    currency        text        NOT NULL,
    cost            numeric     NOT NULL,
    effective_cost  numeric,
    list_cost       numeric,
    service         text        NOT NULL,
    service_name    text        NOT NULL,
    category        text        NOT NULL,
    region          text        NOT NULL,
    resource        text        NOT NULL,
    sub_account     text        NOT NULL,
    charge_category text        NOT NULL,
    tags            jsonb       NOT NULL,
    vtags           jsonb       NOT NULL DEFAULT '{}',
    extra           jsonb       NOT NULL
);
SELECT create_hypertable('cost_lines', 'charge_start', chunk_time_interval => interval '7 days',
                         create_default_indexes => false);
-- Restatement deletes an account's periods; drill-down pages in charge order.
CREATE INDEX cost_lines_period ON cost_lines (tenant_id, account, billing_period);
CREATE INDEX cost_lines_page ON cost_lines (tenant_id, charge_start, import_id, line_no);
CREATE INDEX cost_lines_tags ON cost_lines USING gin (tags jsonb_path_ops)
    WITH (gin_pending_list_limit = 32768);

-- Daily cost by account × service × region × currency, kept by the `cost_lines`
-- projector in the same transaction as the lines (continuous aggregates are not in the
-- Debian build of TimescaleDB). A restatement subtracts the lines it supersedes.
CREATE TABLE cost_daily (
    tenant_id text        NOT NULL,
    day       timestamptz NOT NULL,
    account   text        NOT NULL,
    service   text        NOT NULL,
    region    text        NOT NULL,
    currency  text        NOT NULL,
    cost      numeric     NOT NULL,
    lines     bigint      NOT NULL,
    PRIMARY KEY (tenant_id, account, service, region, currency, day)
);
SELECT create_hypertable('cost_daily', 'day', chunk_time_interval => interval '90 days',
                         create_default_indexes => false);
CREATE INDEX cost_daily_day ON cost_daily (tenant_id, day);

-- Threshold crossings of budgets (`BudgetThresholdCrossed`, written by the costs
-- context's process manager into the budget's stream), kept by the `budgets` projector.
CREATE TABLE budget_alerts (
    tenant_id        text        NOT NULL,
    budget_id        uuid        NOT NULL,
    period_start     date        NOT NULL,
    period_end       date        NOT NULL,
    percent          numeric     NOT NULL,
    basis            text        NOT NULL,
    observed_percent numeric     NOT NULL,
    spent            numeric     NOT NULL,
    forecast         numeric,
    as_of            date        NOT NULL,
    import_id        uuid,
    crossed_at       timestamptz NOT NULL,
    position         bigint      NOT NULL,
    PRIMARY KEY (budget_id, period_start, percent, basis)
);
CREATE INDEX budget_alerts_budget ON budget_alerts (tenant_id, budget_id, position);

-- Virtual tags as saved (kept by the `cost_lines` projector, which computes them for
-- every line it writes and recomputes every line of the tenant when one is saved).
CREATE TABLE cost_virtual_tags (
    tenant_id  text        NOT NULL,
    name       text        NOT NULL,
    definition jsonb       NOT NULL,
    saved_at   timestamptz NOT NULL,
    position   bigint      NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- Shared-cost allocation rules (kept by the `cost_allocation_rules` projector).
CREATE TABLE cost_allocation_rules (
    tenant_id  text   NOT NULL,
    name       text   NOT NULL,
    definition jsonb  NOT NULL,
    position   bigint NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
