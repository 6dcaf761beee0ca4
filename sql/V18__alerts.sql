-- V18: alert rules, their episodes, notification channels and the notification outbox
-- (issue 12, ADR 0028).
--
-- `alert_rules`, `alerts` and `notification_channels` are read models (rebuilt from the
-- `alert_rule` and `notification_channel` streams). Two tables are not:
--
-- - `notification_channel_secrets`: a channel's webhook secret or SMTP password. Secrets
--   stay out of the event log, which is kept forever and copied into every backup and
--   feed. A new channel's secret is written before its creating event, a replacement's
--   after its event (a failed command changes nothing).
-- - `notification_outbox`: one row per notification to deliver, written by a trigger on
--   `events` in the same transaction as the `AlertFired`/`AlertResolved` event that
--   causes it. It is the delivery log too. A rebuild or a replay reads events and never
--   inserts into `events`, so it never queues a notification again.

CREATE TABLE alert_rules (
    tenant_id        text        NOT NULL,
    id               uuid        NOT NULL PRIMARY KEY,
    version          bigint      NOT NULL,
    name             text        NOT NULL,
    type             text        NOT NULL,
    condition        jsonb       NOT NULL,
    notify           jsonb       NOT NULL,
    severity         text        NOT NULL,
    enabled          boolean     NOT NULL,
    cooldown_seconds integer     NOT NULL,
    notify_resolved  boolean     NOT NULL,
    -- Open episodes: {"<key>": <episode>}; '' is the key of a rule with one series.
    firing           jsonb       NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX alert_rules_tenant ON alert_rules (tenant_id, id);
-- The evaluator reads the enabled rules of one type.
CREATE INDEX alert_rules_type ON alert_rules (type) WHERE enabled;

-- One row per episode of a rule: fired, then resolved.
CREATE TABLE alerts (
    tenant_id    text        NOT NULL,
    rule_id      uuid        NOT NULL,
    episode      integer     NOT NULL,
    key          text        NOT NULL,
    rule_name    text        NOT NULL,
    type         text        NOT NULL,
    severity     text        NOT NULL,
    state        text        NOT NULL,
    value        numeric,
    threshold    numeric,
    window_start timestamptz,
    window_end   timestamptz,
    fired_at     timestamptz NOT NULL,
    resolved_at  timestamptz,
    resolved_value numeric,
    details      jsonb       NOT NULL,
    PRIMARY KEY (rule_id, episode)
);
-- Newest first, keyset on (fired_at, rule_id, episode).
CREATE INDEX alerts_fired ON alerts (tenant_id, fired_at DESC, rule_id DESC, episode DESC);
CREATE INDEX alerts_firing ON alerts (tenant_id, fired_at DESC) WHERE state = 'firing';
-- `?rule=`: one rule's episodes, newest first.
CREATE INDEX alerts_rule ON alerts (tenant_id, rule_id, fired_at DESC, episode DESC);

CREATE TABLE notification_channels (
    tenant_id  text        NOT NULL,
    id         uuid        NOT NULL PRIMARY KEY,
    version    bigint      NOT NULL,
    name       text        NOT NULL,
    kind       text        NOT NULL,
    -- Without the secret (`has_secret` says whether there is one).
    config     jsonb       NOT NULL,
    has_secret boolean     NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX notification_channels_tenant ON notification_channels (tenant_id, id);

SELECT cloudlens_secure_read_model(t::regclass)
  FROM unnest(ARRAY['alert_rules', 'alerts', 'notification_channels']) AS t;

CREATE TABLE notification_channel_secrets (
    tenant_id  text        NOT NULL,
    channel_id uuid        NOT NULL PRIMARY KEY,
    secret     text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Never readable by the query role.
ALTER TABLE notification_channel_secrets ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON notification_channel_secrets FROM cloudlens_query;

CREATE TABLE notification_outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       text        NOT NULL,
    channel_id      uuid        NOT NULL,
    -- The event that caused it (NULL for a channel test).
    event_position  bigint,
    rule_id         uuid,
    episode         integer,
    -- firing | resolved | test
    kind            text        NOT NULL,
    message         jsonb       NOT NULL,
    -- pending | delivered | dead
    state           text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- A claimed row is not claimed again before this (a sender that died mid-send).
    lease_until     timestamptz,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (event_position, channel_id)
);
CREATE INDEX notification_outbox_due ON notification_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX notification_outbox_log ON notification_outbox (tenant_id, id DESC);
SELECT cloudlens_secure_read_model('notification_outbox');

-- The outbox rows of an alert event: one per channel in the event's `notify` list, in
-- the event's own transaction. ON CONFLICT: a reload of `events` with triggers enabled
-- (a data-only restore) finds the rows already there.
CREATE FUNCTION cloudlens_alert_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO notification_outbox (tenant_id, channel_id, event_position, rule_id, episode,
                                     kind, message)
    SELECT NEW.tenant_id, c.id::uuid, NEW.position, NEW.stream_id,
           (NEW.payload->>'episode')::integer, k.kind,
           (NEW.payload - 'notify')
               || jsonb_build_object('rule_id', NEW.stream_id, 'state', k.kind)
      FROM jsonb_array_elements_text(coalesce(NEW.payload->'notify', '[]')) AS c(id),
           (SELECT CASE NEW.event_type WHEN 'AlertFired' THEN 'firing'
                                       ELSE 'resolved' END AS kind) AS k
    ON CONFLICT (event_position, channel_id) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_alert_outbox AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.stream_type = 'alert_rule' AND NEW.event_type IN ('AlertFired', 'AlertResolved'))
    EXECUTE FUNCTION cloudlens_alert_outbox();
