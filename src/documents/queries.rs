//! Reads of `documents`: one document, and search ranked with `ts_rank_cd` (title
//! matches first: weights A > B > C), with snippets.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::cjk;
use crate::db::QueryError;

/// Marks around matches in `ts_headline`'s output, replaced after HTML escaping.
const START: char = '\u{1}';
const STOP: char = '\u{2}';

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DocumentView {
    pub id: Uuid,
    pub title: String,
    pub content: String,
    pub source: Option<String>,
    pub category: Option<String>,
    pub author: Option<String>,
    pub tags: Vec<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

pub const DOCUMENT_SQL: &str = "SELECT id, title, content, source, category, author, tags,
 metadata, created_at, updated_at, version FROM documents WHERE tenant_id = $1 AND id = $2";

pub fn document_view(r: &tokio_postgres::Row) -> Result<DocumentView, QueryError> {
    Ok(DocumentView {
        id: r.try_get(0)?,
        title: r.try_get(1)?,
        content: r.try_get(2)?,
        source: r.try_get(3)?,
        category: r.try_get(4)?,
        author: r.try_get(5)?,
        tags: r.try_get(6)?,
        metadata: r.try_get(7)?,
        created_at: r.try_get(8)?,
        updated_at: r.try_get(9)?,
        version: r.try_get(10)?,
    })
}

/// One search hit.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Hit {
    pub id: Uuid,
    /// `document` (the only type searched so far).
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: String,
    pub rank: f32,
    /// A piece of the content with the matched words in `<b>…</b>`, HTML-escaped.
    pub snippet: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SearchPage {
    pub hits: Vec<Hit>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// What a search asks for.
pub struct Search<'a> {
    pub q: &'a str,
    pub category: Option<&'a str>,
    pub tags: Vec<String>,
    pub metadata: &'a Value,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: i64,
    /// (rank, id) of the last hit of the previous page.
    pub after: Option<(f32, Uuid)>,
}

/// `$2` websearch text, `$3` single CJK characters as a `simple` tsquery (either may be
/// empty), filters `$4`–`$8`, keyset `$9`/`$10`, limit `$11`. Snippets only for the page.
const SEARCH_SQL: &str = "
WITH q AS (
    SELECT CASE WHEN $2 = '' THEN NULL ELSE websearch_to_tsquery('english', $2) END AS w,
           CASE WHEN $3 = '' THEN NULL ELSE to_tsquery('simple', $3) END AS s),
tq AS (SELECT w, CASE WHEN w IS NULL THEN s WHEN s IS NULL THEN w ELSE w && s END AS t FROM q),
page AS (
    SELECT d.id, d.title, d.content, d.created_at, ts_rank_cd(d.search, tq.t, 32) AS rank
    FROM documents d, tq
    WHERE d.tenant_id = $1 AND tq.t IS NOT NULL AND d.search @@ tq.t
      AND ($4::text IS NULL OR d.category = $4)
      AND d.tags @> $5::text[]
      AND d.metadata @> $6::jsonb
      AND ($7::timestamptz IS NULL OR d.created_at >= $7)
      AND ($8::timestamptz IS NULL OR d.created_at < $8)
      AND ($9::real IS NULL OR ts_rank_cd(d.search, tq.t, 32) < $9
           OR (ts_rank_cd(d.search, tq.t, 32) = $9 AND d.id > $10))
    ORDER BY rank DESC, d.id
    LIMIT $11)
SELECT p.id, p.title, p.rank, p.created_at, left(p.content, 100000),
       CASE WHEN tq.w IS NULL THEN NULL
            ELSE ts_headline('english', cloudlens_cjk_spaced(left(p.content, 100000)), tq.w,
                 'MaxFragments=2, MaxWords=30, MinWords=10, StartSel=\u{1}, StopSel=\u{2}') END
FROM page p, tq ORDER BY p.rank DESC, p.id";

pub async fn search<C: GenericClient + Sync>(
    client: &C,
    tenant: &str,
    s: &Search<'_>,
) -> Result<Vec<Hit>, QueryError> {
    let q = cjk::query(s.q);
    let single = cjk::single_tsquery(&q.single);
    let stmt = client.prepare_cached(SEARCH_SQL).await?;
    let (rank, after) = (s.after.map(|a| a.0), s.after.map(|a| a.1));
    let rows = client
        .query(
            &stmt,
            &[
                &tenant,
                &q.websearch,
                &single,
                &s.category,
                &s.tags,
                s.metadata,
                &s.from,
                &s.to,
                &rank,
                &after,
                &s.limit,
            ],
        )
        .await?;
    let mut terms: Vec<String> = q.runs.clone();
    terms.sort_by_key(|t| std::cmp::Reverse(t.chars().count()));
    rows.iter()
        .map(|r| {
            let content: String = r.try_get(4)?;
            let latin: Option<String> = r.try_get(5)?;
            let snippet = cjk::highlight(&content, &terms, 120)
                .or_else(|| latin.map(|h| marked(&h)))
                .unwrap_or_else(|| marked(&content.chars().take(120).collect::<String>()));
            Ok(Hit {
                id: r.try_get(0)?,
                kind: "document",
                title: r.try_get(1)?,
                rank: r.try_get(2)?,
                created_at: r.try_get(3)?,
                snippet,
            })
        })
        .collect()
}

/// `ts_headline` output with its marks: HTML-escaped, the marks as `<b>`/`</b>`.
fn marked(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            START => out.push_str("<b>"),
            STOP => out.push_str("</b>"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}
