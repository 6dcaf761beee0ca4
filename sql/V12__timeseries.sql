-- V12: time series (ADR 0021). Points and their series catalog, projector-kept rollups,
-- 1-minute bars, per-metric retention and the record of what retention removed.

-- One row per (series, metric) of a tenant: its id (derived from the names, see
-- `timeseries::series_id`), its tags (merged from its points, a later value of a key
-- replacing an earlier one) and its newest point. The GIN index answers tag filters;
-- the points themselves carry only the id.
CREATE TABLE metric_series (
    tenant_id   text             NOT NULL,
    id          bigint           NOT NULL,
    series      text             NOT NULL,
    metric      text             NOT NULL,
    tags        jsonb            NOT NULL DEFAULT '{}',
    first_time  timestamptz      NOT NULL,
    last_time   timestamptz      NOT NULL,
    last_value  double precision NOT NULL,
    PRIMARY KEY (id)
);
CREATE UNIQUE INDEX metric_series_names ON metric_series (tenant_id, metric, series);
CREATE INDEX metric_series_by_series ON metric_series (tenant_id, series);
CREATE INDEX metric_series_tags ON metric_series USING gin (tags jsonb_path_ops);

-- Raw points. Seven-day chunks: a week of 1,000 series at one point a minute is 10 M
-- rows (about 1.1 GB with its index, inside memory on the machines this runs on), few
-- enough chunks that a query with its range as parameters plans as fast as on a plain
-- table (measured: loadtest/RESULTS.md), and a chunk is the unit retention drops.
CREATE TABLE metric_points (
    tenant_id  text             NOT NULL,
    series_id  bigint           NOT NULL,
    time       timestamptz      NOT NULL,
    value      double precision NOT NULL
);
SELECT create_hypertable('metric_points', 'time', chunk_time_interval => interval '7 days',
                         create_default_indexes => false);
CREATE UNIQUE INDEX metric_points_key ON metric_points (series_id, time DESC);

-- Rollups per series and hour / day, kept by the projector in the batch transaction.
CREATE TABLE metric_points_1h (
    tenant_id   text             NOT NULL,
    series_id   bigint           NOT NULL,
    bucket      timestamptz      NOT NULL,
    count       bigint           NOT NULL,
    sum         double precision NOT NULL,
    min         double precision NOT NULL,
    max         double precision NOT NULL,
    first_time  timestamptz      NOT NULL,
    first_value double precision NOT NULL,
    last_time   timestamptz      NOT NULL,
    last_value  double precision NOT NULL
);
SELECT create_hypertable('metric_points_1h', 'bucket', chunk_time_interval => interval '30 days',
                         create_default_indexes => false);
CREATE UNIQUE INDEX metric_points_1h_key ON metric_points_1h (series_id, bucket DESC);

CREATE TABLE metric_points_1d (LIKE metric_points_1h INCLUDING DEFAULTS);
SELECT create_hypertable('metric_points_1d', 'bucket', chunk_time_interval => interval '365 days',
                         create_default_indexes => false);
CREATE UNIQUE INDEX metric_points_1d_key ON metric_points_1d (series_id, bucket DESC);

-- Seed 001's `stock_minute`: exact decimals.
CREATE TABLE bars_1m (
    tenant_id text        NOT NULL,
    symbol    text        NOT NULL,
    time      timestamptz NOT NULL,
    open      numeric     NOT NULL,
    high      numeric     NOT NULL,
    low       numeric     NOT NULL,
    close     numeric     NOT NULL,
    volume    numeric     NOT NULL
);
SELECT create_hypertable('bars_1m', 'time', chunk_time_interval => interval '30 days',
                         create_default_indexes => false);
CREATE UNIQUE INDEX bars_1m_key ON bars_1m (tenant_id, symbol, time DESC);

-- Raw-point retention per metric of a tenant (absent: the server's default).
CREATE TABLE metric_retention (
    tenant_id  text        NOT NULL,
    metric     text        NOT NULL,
    raw_days   integer     NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, metric)
);

-- Where each metric's raw points start (kept by the point projector from the
-- `RawPointsExpired` events): raw points before `before` are dropped and not written
-- again; it only moves forward. What the projector removed is counted here.
CREATE TABLE metric_raw_horizon (
    tenant_id      text        NOT NULL,
    metric         text        NOT NULL,
    before         timestamptz NOT NULL,
    points_deleted bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, metric)
);

-- Each retention run, also one that found nothing due (operations, not a read model:
-- what it requested is in the log, as events).
CREATE TABLE metric_retention_runs (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ran_at    timestamptz NOT NULL DEFAULT now(),
    trigger   text        NOT NULL,
    tenants   integer     NOT NULL,
    metrics   integer     NOT NULL,
    position  bigint      NOT NULL
);

SELECT cloudlens_secure_read_model(t::regclass) FROM unnest(ARRAY[
    'metric_series', 'metric_points', 'metric_points_1h', 'metric_points_1d', 'bars_1m',
    'metric_retention', 'metric_raw_horizon']) AS t;
