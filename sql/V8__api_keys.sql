-- V8: API keys (the `api_keys` projector; events on `api_key` streams). Only an
-- argon2id hash of each key is kept; the secret is shown once when it is issued.
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
