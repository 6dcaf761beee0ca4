-- Crypto-shredding of sensitive subject attributes (ADR 0018).
--
-- The data key of each subject with sensitive values, wrapped by the server's master key.
-- It lives outside the append-only log on purpose: destroying it (wrapped := NULL) makes
-- every sealed value of the subject unreadable in the log, in replays and in backups
-- taken afterwards, without rewriting an event. Not a read model: never rebuilt, never
-- dropped by a rebuild. One live key per subject; a subject forgotten and imported again
-- gets a new key.
CREATE TABLE subject_keys (
    key_id       uuid        PRIMARY KEY,
    tenant_id    text        NOT NULL,
    kind         text        NOT NULL,
    subject_id   text        NOT NULL,
    wrapped      bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    destroyed_at timestamptz,
    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL))
);
CREATE UNIQUE INDEX subject_keys_live ON subject_keys (tenant_id, kind, subject_id)
    WHERE destroyed_at IS NULL;
CREATE INDEX subject_keys_subject ON subject_keys (tenant_id, kind, subject_id);
-- The query role never reads keys: RLS on, no policy, no grant.
ALTER TABLE subject_keys ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON subject_keys FROM cloudlens_query;

-- What a forget erased, and when.
ALTER TABLE subject_attributes ADD COLUMN erased text[], ADD COLUMN erased_at timestamptz;
