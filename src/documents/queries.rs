//! Reads of `documents`: one document, and search ranked with `ts_rank_cd` (title
//! matches first: weights A > B > C), with snippets.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::types::ToSql;
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
    /// The id the hit's own API knows it by (a document's or budget's UUID, a tag's
    /// number, an account's UUID).
    pub id: String,
    /// `document`, `budget`, `tag` or `account`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub rank: f32,
    /// A piece of the content (a document's) or description with the matched words in
    /// `<b>…</b>`, HTML-escaped.
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
    /// The types of hit wanted (`entries::TYPES`).
    pub types: Vec<String>,
    pub category: Option<&'a str>,
    pub tags: Vec<String>,
    pub metadata: Option<&'a Value>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: i64,
    /// (rank, type, id) of the last hit of the previous page.
    pub after: Option<(f32, String, String)>,
}

impl Search<'_> {
    /// Whether a filter that only documents have is set (then only documents match).
    pub fn filters_documents(&self) -> bool {
        self.category.is_some()
            || !self.tags.is_empty()
            || self.metadata.is_some()
            || self.from.is_some()
            || self.to.is_some()
    }
}

/// The query as a tsquery: `$2` websearch text, `$3` single CJK characters as a `simple`
/// tsquery (either may be empty).
const QUERY_CTE: &str = "
WITH q AS (
    SELECT CASE WHEN $2 = '' THEN NULL ELSE websearch_to_tsquery('english', $2) END AS w,
           CASE WHEN $3 = '' THEN NULL ELSE to_tsquery('simple', $3) END AS s),
tq AS (SELECT w, CASE WHEN w IS NULL THEN s WHEN s IS NULL THEN w ELSE w && s END AS t FROM q)";

/// Snippets only for the page: a document's content, an entry's description. Each is
/// read by its key in a subquery per hit: a join would be planned for a page of unknown
/// size (a parameter) and could read the whole table. The key is the document's `uuid`
/// (`doc_id`), not its id as text: a cast in the condition is not leakproof, and row-level
/// security would then keep the condition off the primary key.
const PAGE_SQL: &str = "
SELECT p.type, p.id, p.title, p.rank, p.created_at, p.body,
       CASE WHEN tq.w IS NULL THEN NULL
            ELSE ts_headline('english', cloudlens_cjk_spaced(p.body), tq.w,
                 'MaxFragments=2, MaxWords=30, MinWords=10, StartSel=\u{1}, StopSel=\u{2}') END
FROM (SELECT h.type, h.id, h.title, h.rank, h.created_at,
             coalesce(CASE WHEN h.doc_id IS NOT NULL
                           THEN (SELECT left(d.content, 100000) FROM documents d
                                  WHERE d.id = h.doc_id AND d.tenant_id = $1)
                           ELSE (SELECT e.description FROM search_entries e
                                  WHERE e.tenant_id = $1 AND e.type = h.type AND e.ref_id = h.id)
                      END, '') AS body
        FROM page h) p, tq
ORDER BY p.rank DESC, p.type, p.id";

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// Adds a parameter; returns its placeholder.
fn next(v: Box<dyn ToSql + Sync + Send>, params: &mut Params) -> String {
    params.push(v);
    format!("${}", params.len())
}

/// The document filters `s` sets, as conditions on `d` (only those it sets, so that
/// every plan can use the GIN indexes it needs: an always-true `metadata @> '{}'` would
/// read the whole metadata index). The fragments are constants; every value is a
/// parameter.
fn document_filters(s: &Search<'_>, params: &mut Params) -> String {
    let mut docs = String::new();
    if let Some(c) = s.category {
        let p = next(Box::new(c.to_owned()), params);
        docs.push_str(&format!(" AND d.category = {p}"));
    }
    if !s.tags.is_empty() {
        let p = next(Box::new(s.tags.clone()), params);
        docs.push_str(&format!(" AND d.tags @> {p}::text[]"));
    }
    if let Some(m) = s.metadata {
        let p = next(Box::new(m.clone()), params);
        docs.push_str(&format!(" AND d.metadata @> {p}::jsonb"));
    }
    if let Some(t) = s.from {
        let p = next(Box::new(t), params);
        docs.push_str(&format!(" AND d.created_at >= {p}"));
    }
    if let Some(t) = s.to {
        let p = next(Box::new(t), params);
        docs.push_str(&format!(" AND d.created_at < {p}"));
    }
    docs
}

/// The statement of a text search for `s`.
fn search_sql(s: &Search<'_>, params: &mut Params) -> String {
    let docs = format!(
        "SELECT 'document'::text AS type, d.id::text AS id, d.id AS doc_id, d.title,
                d.created_at, ts_rank_cd(d.search, tq.t, 32) AS rank
           FROM documents d, tq
          WHERE d.tenant_id = $1 AND tq.t IS NOT NULL AND d.search @@ tq.t{}",
        document_filters(s, params)
    );
    let mut branches = Vec::new();
    if s.types.iter().any(|t| t == "document") {
        branches.push(docs);
    }
    let others: Vec<String> = s
        .types
        .iter()
        .filter(|t| *t != "document")
        .cloned()
        .collect();
    if !others.is_empty() && !s.filters_documents() {
        let p = next(Box::new(others), params);
        branches.push(format!(
            "SELECT e.type, e.ref_id AS id, NULL::uuid AS doc_id, e.title, e.created_at,
                    ts_rank_cd(e.search, tq.t, 32) AS rank
               FROM search_entries e, tq
              WHERE e.tenant_id = $1 AND tq.t IS NOT NULL AND e.search @@ tq.t
                AND e.type = ANY({p}::text[])"
        ));
    }
    if branches.is_empty() {
        branches.push(
            "SELECT NULL::text AS type, NULL::text AS id, NULL::uuid AS doc_id, NULL::text AS title,
                    NULL::timestamptz AS created_at, NULL::real AS rank WHERE false"
                .into(),
        );
    }
    let keyset = match &s.after {
        Some((rank, kind, id)) => {
            let r = next(Box::new(*rank), params);
            let k = next(Box::new(kind.clone()), params);
            let i = next(Box::new(id.clone()), params);
            format!(
                "WHERE h.rank < {r} OR (h.rank = {r} AND (h.type, h.id) > ({k}::text, {i}::text))"
            )
        }
        None => String::new(),
    };
    let limit = next(Box::new(s.limit), params);
    format!(
        "{QUERY_CTE},
hits AS ({}),
page AS (SELECT * FROM hits h {keyset} ORDER BY h.rank DESC, h.type, h.id LIMIT {limit})
{PAGE_SQL}",
        branches.join("\nUNION ALL\n")
    )
}

/// A vector or hybrid search: the query vector (pgvector text), the deployment's size,
/// and whether the text query's ranking is fused in.
pub struct VectorQuery {
    pub vector: String,
    pub dimensions: usize,
    pub hybrid: bool,
}

/// Candidates each list contributes to a hybrid search's fusion (and the most hits a
/// vector search returns): the HNSW scan's `ef_search` is set to this.
pub const CANDIDATES: i64 = 200;
/// Reciprocal rank fusion's constant (Cormack et al. 2009).
const RRF_K: i64 = 60;

/// The statement of a vector search (documents only, nearest first, rank = cosine
/// similarity) or of a hybrid one (rank = reciprocal rank fusion of the text ranking and
/// the vector distance, each over its best `CANDIDATES`).
fn vector_sql(s: &Search<'_>, v: &VectorQuery, params: &mut Params) -> String {
    let filters = document_filters(s, params);
    let expr = super::vector::expression(v.dimensions);
    let vector = next(Box::new(v.vector.clone()), params);
    let target = format!("{vector}::text::vector({})", v.dimensions);
    let candidates = next(Box::new(CANDIDATES), params);
    let limit = next(Box::new(s.limit), params);
    let nearest = format!(
        "SELECT d.id, d.title, d.created_at, {expr} <=> {target} AS distance
           FROM documents d
          WHERE d.tenant_id = $1 AND {indexed}{filters}
          ORDER BY {expr} <=> {target} LIMIT {candidates}",
        indexed = super::vector::predicate(v.dimensions, "d.")
    );
    let page = if v.hybrid {
        format!(
            "text_list AS (
    SELECT d.id, d.title, d.created_at,
           row_number() OVER (ORDER BY ts_rank_cd(d.search, tq.t, 32) DESC, d.id) AS r
      FROM documents d, tq
     WHERE d.tenant_id = $1 AND tq.t IS NOT NULL AND d.search @@ tq.t{filters}
     ORDER BY ts_rank_cd(d.search, tq.t, 32) DESC, d.id LIMIT {candidates}),
nearest AS MATERIALIZED ({nearest}),
vector_list AS (SELECT n.*, row_number() OVER (ORDER BY n.distance, n.id) AS r FROM nearest n),
page AS (
    SELECT 'document'::text AS type, coalesce(t.id, v.id)::text AS id, coalesce(t.id, v.id) AS doc_id,
           coalesce(t.title, v.title) AS title, coalesce(t.created_at, v.created_at) AS created_at,
           (coalesce(1.0 / ({RRF_K} + t.r), 0) + coalesce(1.0 / ({RRF_K} + v.r), 0))::real AS rank
      FROM text_list t FULL JOIN vector_list v ON v.id = t.id
     ORDER BY rank DESC, id LIMIT {limit})"
        )
    } else {
        format!(
            "nearest AS MATERIALIZED ({nearest}),
page AS (
    SELECT 'document'::text AS type, n.id::text AS id, n.id AS doc_id, n.title, n.created_at,
           (1 - n.distance)::real AS rank
      FROM nearest n ORDER BY n.distance, n.id LIMIT {limit})"
        )
    };
    format!("{QUERY_CTE},\n{page}\n{PAGE_SQL}")
}

pub async fn search<C: GenericClient + Sync>(
    client: &C,
    tenant: &str,
    s: &Search<'_>,
    vector: Option<&VectorQuery>,
) -> Result<Vec<Hit>, QueryError> {
    if vector.is_some() {
        // More candidates than the default 40, and an index scan that goes on past rows
        // other tenants' or the filters drop (pgvector 0.8 iterative scans).
        client
            .batch_execute(&format!(
                "SET hnsw.ef_search = {CANDIDATES}; SET hnsw.iterative_scan = relaxed_order"
            ))
            .await?;
    }
    let q = cjk::query(s.q);
    let single = cjk::single_tsquery(&q.single);
    let mut params: Params = vec![
        Box::new(tenant.to_owned()),
        Box::new(q.websearch.clone()),
        Box::new(single),
    ];
    let sql = match vector {
        None => search_sql(s, &mut params),
        Some(v) => vector_sql(s, v, &mut params),
    };
    let stmt = client.prepare_cached(&sql).await?;
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client.query(&stmt, &refs).await?;
    let mut terms: Vec<String> = q.runs.clone();
    terms.sort_by_key(|t| std::cmp::Reverse(t.chars().count()));
    rows.iter()
        .map(|r| {
            let body: String = r.try_get(5)?;
            let latin: Option<String> = r.try_get(6)?;
            let snippet = cjk::highlight(&body, &terms, 120)
                .or_else(|| latin.map(|h| marked(&h)))
                .unwrap_or_else(|| marked(&body.chars().take(120).collect::<String>()));
            Ok(Hit {
                kind: r.try_get(0)?,
                id: r.try_get(1)?,
                title: r.try_get(2)?,
                rank: r.try_get(3)?,
                created_at: r.try_get(4)?,
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
