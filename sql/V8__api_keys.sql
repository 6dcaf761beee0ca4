-- V8: API keys (the `api_keys` projector; events on `api_key` streams; only an
-- argon2id hash of each key is kept, the secret is shown once when it is issued), and
-- pg_stat_statements for the assessment where it can be created.
CREATE TABLE api_keys (
    id         uuid        PRIMARY KEY,
    name       text        NOT NULL,
    role       text        NOT NULL CHECK (role IN ('admin', 'writer', 'reader')),
    tenant     text        NOT NULL,
    prefix     text        NOT NULL UNIQUE,
    hash       text        NOT NULL,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz,
    position   bigint      NOT NULL
);
-- Whether any key was ever issued, answered from the log (not from the read model, which
-- may lag or be rebuilt): a tiny index of the `api_key` events only.
CREATE INDEX events_api_keys ON events (position) WHERE stream_type = 'api_key';

-- The assessment (`cloudlens assess`) reports the top statements when pg_stat_statements
-- is loaded (the local cluster preloads it). Where it cannot be created, it is left out.
DO $$
BEGIN
    IF current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%'
       AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements') THEN
        CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'pg_stat_statements not created: %', SQLERRM;
END
$$;
