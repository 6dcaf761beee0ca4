-- V13: documents and their full-text search (ADR 0022). CJK text is indexed as overlapping
-- bigrams plus the last character of each run, in the same tsvector as the English
-- words (there is no zhparser on Debian): a two-character Chinese word is one token.

-- The CJK ranges here and in `documents::cjk::CJK` are the same (a unit test compares
-- them).
CREATE FUNCTION cloudlens_cjk_grams(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce(string_agg((SELECT string_agg(substr(run, i, 2), ' ' ORDER BY i)
                              FROM generate_series(1, char_length(run)) i), ' '), '')
  FROM regexp_matches(coalesce(t, ''), '[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+', 'g') m(a),
       LATERAL (SELECT a[1] AS run) r
$$;

CREATE FUNCTION cloudlens_non_cjk(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT regexp_replace(coalesce(t, ''), '[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+', ' ', 'g')
$$;

-- The text with spaces around its CJK runs: for snippets of Latin matches that keep the
-- CJK text around them.
CREATE FUNCTION cloudlens_cjk_spaced(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT regexp_replace(coalesce(t, ''), '([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)', ' \1 ', 'g')
$$;

-- array_to_string is only STABLE; a generated column needs IMMUTABLE.
CREATE FUNCTION cloudlens_words(t text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT array_to_string(t, ' ') $$;

CREATE TABLE documents (
    tenant_id   text        NOT NULL,
    id          uuid        NOT NULL,
    title       text        NOT NULL,
    content     text        NOT NULL,
    source      text,
    category    text,
    author      text,
    tags        text[]      NOT NULL DEFAULT '{}',
    metadata    jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    version     bigint      NOT NULL,
    -- Title, tags, content in that order (positions stop at 16,383: the title's stay
    -- exact). Bounded so that no document can pass the 1 MB limit of a tsvector: the
    -- first 100,000 characters of the content are searched, CJK text in its first 30,000.
    search      tsvector GENERATED ALWAYS AS (
           setweight(to_tsvector('english', cloudlens_non_cjk(title)), 'A')
        || setweight(to_tsvector('simple', cloudlens_cjk_grams(title)), 'A')
        || setweight(to_tsvector('english', cloudlens_non_cjk(cloudlens_words(tags))), 'B')
        || setweight(to_tsvector('simple', cloudlens_cjk_grams(cloudlens_words(tags))), 'B')
        || setweight(to_tsvector('english', cloudlens_non_cjk(left(content, 100000))), 'C')
        || setweight(to_tsvector('simple', cloudlens_cjk_grams(left(content, 30000))), 'C')) STORED,
    PRIMARY KEY (id)
);
CREATE INDEX documents_search ON documents USING gin (search);
CREATE INDEX documents_metadata ON documents USING gin (metadata jsonb_path_ops);
CREATE INDEX documents_tags ON documents USING gin (tags);
CREATE INDEX documents_by_time ON documents (tenant_id, created_at DESC, id DESC);

SELECT cloudlens_secure_read_model('documents');
