-- V20: cost anomalies (ADR 0026), kept by the `cost_anomalies` projector from the
-- `cost_anomaly` streams (one per tenant × account × service): one row per episode.

CREATE TABLE cost_anomalies (
    tenant_id    text             NOT NULL,
    id           uuid             NOT NULL,
    account_id   text             NOT NULL,
    service      text             NOT NULL,
    currency     text             NOT NULL,
    -- The first anomalous day, the last one known, and the first normal day after it.
    first_day    date             NOT NULL,
    last_day     date             NOT NULL,
    ended_day    date,
    -- Of the worst day (the first, or the last `CostAnomalyUpdated`).
    actual       numeric          NOT NULL,
    expected     numeric          NOT NULL,
    deviation    double precision NOT NULL,
    severity     text             NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    contributors jsonb            NOT NULL,
    state        text             NOT NULL CHECK (state IN ('open', 'ended')),
    -- A restated bill removed the first anomalous day.
    restated     boolean          NOT NULL DEFAULT false,
    detected_at  timestamptz      NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
-- The list: newest first, keyset on (first_day, id), filtered by account and service.
CREATE INDEX cost_anomalies_list ON cost_anomalies (tenant_id, first_day DESC, id DESC);
CREATE INDEX cost_anomalies_series ON cost_anomalies (tenant_id, account_id, service, first_day DESC);

SELECT cloudlens_secure_read_model('cost_anomalies');
