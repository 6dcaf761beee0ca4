-- Budgets read model (JSONB filters with GIN), maintained by the `budgets` projector.
CREATE TABLE budgets_view (
    id               uuid        PRIMARY KEY,
    tenant_id        text        NOT NULL,
    version          bigint      NOT NULL,
    name             text        NOT NULL,
    amount           numeric     NOT NULL,
    currency         text        NOT NULL,
    period           text        NOT NULL,
    budget_type      text        NOT NULL,
    start_date       date        NOT NULL,
    end_date         date,
    tag_filter       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    service_filter   jsonb       NOT NULL DEFAULT '[]'::jsonb,
    alert_thresholds jsonb       NOT NULL DEFAULT '[]'::jsonb,
    account          text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    last_position    bigint      NOT NULL
);

CREATE INDEX budgets_view_tenant_id ON budgets_view (tenant_id, id);
CREATE INDEX budgets_view_tenant_account ON budgets_view (tenant_id, account, id);
CREATE INDEX budgets_view_tag_filter ON budgets_view USING gin (tag_filter jsonb_path_ops);

ALTER TABLE budgets_view SET (autovacuum_analyze_scale_factor = 0.02);
