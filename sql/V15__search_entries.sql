-- V15: the global search's entries besides documents: budgets, tags and cost accounts by
-- name and description, each fed by its own events (`documents::entries`). Indexed like
-- documents (English words and CJK bigrams, ADR 0022): name A, description B.
CREATE TABLE search_entries (
    tenant_id   text        NOT NULL,
    -- The stream the entry comes from.
    key         uuid        NOT NULL,
    type        text        NOT NULL,
    -- The id the entry's own API knows it by.
    ref_id      text        NOT NULL,
    title       text        NOT NULL,
    description text        NOT NULL,
    created_at  timestamptz NOT NULL,
    version     bigint      NOT NULL,
    search      tsvector GENERATED ALWAYS AS (
           setweight(to_tsvector('english', cloudlens_non_cjk(title)), 'A')
        || setweight(to_tsvector('simple', cloudlens_cjk_grams(title)), 'A')
        || setweight(to_tsvector('english', cloudlens_non_cjk(left(description, 100000))), 'B')
        || setweight(to_tsvector('simple', cloudlens_cjk_grams(left(description, 30000))), 'B')) STORED,
    PRIMARY KEY (key)
);
CREATE INDEX search_entries_search ON search_entries USING gin (search);
CREATE INDEX search_entries_by_ref ON search_entries (tenant_id, type, ref_id);

SELECT cloudlens_secure_read_model('search_entries');
