-- V21: the event feed and its consumer groups (ADR 0029).
--
-- The feed reads `events` of one tenant in the global order: an index led by the tenant
-- keeps a small tenant's page from walking every other tenant's events.
CREATE INDEX events_tenant_order ON events (tenant_id, epoch, transaction_id, position);

-- Consumer groups are operational state, like Kafka's committed offsets: written on
-- every poll and acknowledgement, outside the log and outside any rebuild. Only the
-- owner role (the write pool) touches them; the query role has no grant.
CREATE TABLE consumer_groups (
    tenant_id    text        NOT NULL,
    name         text        NOT NULL,
    -- NULL: every stream type (event type) the feed shows.
    stream_types text[],
    event_types  text[],
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

-- One row per partition (stream id's last byte mod 16): the committed cursor (everything
-- of the partition at or before it is acknowledged), the end of the last batch handed to
-- the owner (an acknowledgement never commits past it), and the owner's lease.
CREATE TABLE consumer_partitions (
    tenant_id                text        NOT NULL,
    group_name               text        NOT NULL,
    partition                integer     NOT NULL CHECK (partition BETWEEN 0 AND 15),
    epoch                    integer     NOT NULL DEFAULT 0,
    transaction_id           xid8        NOT NULL DEFAULT '0',
    position                 bigint      NOT NULL DEFAULT 0,
    delivered_epoch          integer     NOT NULL DEFAULT 0,
    delivered_transaction_id xid8        NOT NULL DEFAULT '0',
    delivered_position       bigint      NOT NULL DEFAULT 0,
    owner                    text,
    lease_until              timestamptz,
    acked_at                 timestamptz,
    PRIMARY KEY (tenant_id, group_name, partition),
    FOREIGN KEY (tenant_id, group_name) REFERENCES consumer_groups (tenant_id, name) ON DELETE CASCADE
);

-- Members seen recently: how many share the partitions.
CREATE TABLE consumer_members (
    tenant_id  text        NOT NULL,
    group_name text        NOT NULL,
    member     text        NOT NULL,
    seen_until timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, group_name, member),
    FOREIGN KEY (tenant_id, group_name) REFERENCES consumer_groups (tenant_id, name) ON DELETE CASCADE
);
