-- Shared infrastructure for long work (ADR 0007) and the tagging context's read models.

-- Background jobs. A job is requested by an event; the `jobs` projector enqueues it here
-- (exactly once, under its checkpoint) and the one elected job runner executes it,
-- recording state and live progress. Not a read model of its own: rebuilds leave it alone.
CREATE TABLE jobs (
    id           uuid        PRIMARY KEY,
    tenant_id    text        NOT NULL,
    kind         text        NOT NULL,
    params       jsonb       NOT NULL,
    position     bigint      NOT NULL,
    state        text        NOT NULL DEFAULT 'queued'
                             CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    progress     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    result       jsonb,
    error        text,
    attempts     integer     NOT NULL DEFAULT 0,
    restarts     integer     NOT NULL DEFAULT 0,
    requested_at timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz
);
CREATE INDEX jobs_pending ON jobs (position) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_recent ON jobs (tenant_id, kind, requested_at DESC);

-- Staged bulk appends: the events of a large request (an import of a million rows) are
-- written here while the request streams in, then moved into `events` by one statement,
-- so the writer lock is held for the move only, never for the upload (ADR 0007). Rows of
-- an abandoned request are purged by the elected purge job.
CREATE UNLOGGED TABLE staged_events (
    batch_id       uuid        NOT NULL,
    seq            integer     NOT NULL,
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL,
    payload        jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, seq)
);

-- Batch events are large (1,000 rows: 50-100 kB): lz4 compresses them several times
-- faster than the default pglz (about 5 s less per million imported rows and per million
-- tagged subjects, measured), for a little more space. Values written before keep their
-- compression. A server built without lz4 keeps pglz.
DO $$
BEGIN
    ALTER TABLE events ALTER COLUMN payload SET COMPRESSION lz4;
    ALTER TABLE staged_events ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 is not available here (%): event payloads stay pglz-compressed', SQLERRM;
END $$;

-- Tag ids are small integers (tag id arrays stay compact); gaps are harmless.
CREATE SEQUENCE tag_ids AS integer;

-- Subject kinds and their attribute schemas.
CREATE TABLE subject_kinds (
    tenant_id      text        NOT NULL,
    kind           text        NOT NULL,
    id_field       text        NOT NULL,
    primary_source text        NOT NULL,
    attributes     jsonb       NOT NULL,
    version        bigint      NOT NULL,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, kind)
);

-- One merged record per subject id: attributes of every source (a null is an absent
-- key), whether the id is in the kind's primary source (only then is it a subject), each
-- source's `updated_time`, and the latest of them ever seen (`max_updated`, which only
-- grows): the index that finds the subjects an incremental run covers.
CREATE TABLE subject_attributes (
    tenant_id    text        NOT NULL,
    kind         text        NOT NULL,
    subject_id   text        NOT NULL,
    is_subject   boolean     NOT NULL,
    attrs        jsonb       NOT NULL,
    source_times jsonb       NOT NULL,
    max_updated  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, kind, subject_id)
);
CREATE INDEX subject_attributes_updated ON subject_attributes (tenant_id, kind, max_updated);

CREATE TABLE tag_categories (
    tenant_id  text        NOT NULL,
    code       text        NOT NULL,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, code)
);

CREATE TABLE tags (
    tenant_id    text        NOT NULL,
    id           integer     NOT NULL,
    code         text        NOT NULL,
    name         text        NOT NULL,
    category     text        NOT NULL,
    tag_kind     text        NOT NULL,
    subject_kind text        NOT NULL,
    description  text,
    rule         jsonb,
    rule_version integer     NOT NULL,
    retired      boolean     NOT NULL,
    version      bigint      NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX tags_by_kind ON tags (tenant_id, subject_kind, id);

-- Tags per subject: `tag_ids` a sorted JSONB array of ints (GIN for the tag filters),
-- `assigned` the position of the event that assigned each (`{"<id>": position}`): the
-- tag details (code, name, category, rule version, time) are those of that event, kept
-- once per event in `tag_change_sets`, not copied into every subject.
CREATE TABLE subject_tags (
    tenant_id   text        NOT NULL,
    kind        text        NOT NULL,
    subject_id  text        NOT NULL,
    tag_ids     jsonb       NOT NULL,
    assigned    jsonb       NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, kind, subject_id)
);
-- A larger pending list: a run's bulk upsert appends to it and merges it in big sorted
-- steps instead of every 4 MB.
CREATE INDEX subject_tags_ids ON subject_tags USING gin (tag_ids jsonb_path_ops)
    WITH (gin_pending_list_limit = 32768);

-- Every change of a subject's tags, with its cause: one row per subject and event.
CREATE TABLE subject_tag_history (
    tenant_id  text        NOT NULL,
    kind       text        NOT NULL,
    subject_id text        NOT NULL,
    position   bigint      NOT NULL,
    at         timestamptz NOT NULL,
    run_id     uuid,
    added      integer[]   NOT NULL,
    removed    integer[]   NOT NULL
);
CREATE INDEX subject_tag_history_subject ON subject_tag_history (tenant_id, kind, subject_id, position);

-- The tags (code, name, category, rule version) as each change event applied them.
CREATE TABLE tag_change_sets (
    tenant_id text        NOT NULL,
    position  bigint      PRIMARY KEY,
    at        timestamptz NOT NULL,
    run_id    uuid,
    tags      jsonb       NOT NULL
);
