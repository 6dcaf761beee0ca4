-- V24: Japanese kana and Korean hangul are indexed like Chinese (ADR 0022): as
-- overlapping bigrams plus the last character of each run. Japanese runs kanji and kana
-- together without spaces; Korean words carry their particles (비용을 = 비용 + 을), so
-- whole-word matching would miss them. The class adds Hiragana and Katakana
-- (U+3040–U+30FF) and Hangul syllables (U+AC00–U+D7AF) to the ranges of V13; it is the
-- same as `documents::cjk::CJK` (a unit test compares them).
CREATE OR REPLACE FUNCTION cloudlens_cjk_grams(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce(string_agg((SELECT string_agg(substr(run, i, 2), ' ' ORDER BY i)
                              FROM generate_series(1, char_length(run)) i), ' '), '')
  FROM regexp_matches(coalesce(t, ''), '[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+', 'g') m(a),
       LATERAL (SELECT a[1] AS run) r
$$;

CREATE OR REPLACE FUNCTION cloudlens_non_cjk(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT regexp_replace(coalesce(t, ''), '[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+', ' ', 'g')
$$;

CREATE OR REPLACE FUNCTION cloudlens_cjk_spaced(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT regexp_replace(coalesce(t, ''), '([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+)', ' \1 ', 'g')
$$;

-- The stored `search` columns of rows written before hold the old split: an update
-- computes them again. Only rows with kana or hangul change.
UPDATE documents SET title = title
 WHERE title || ' ' || cloudlens_words(tags) || ' ' || left(content, 100000) ~ '[\u3040-\u30ff\uac00-\ud7af]';
UPDATE search_entries SET title = title
 WHERE title || ' ' || left(description, 100000) ~ '[\u3040-\u30ff\uac00-\ud7af]';
