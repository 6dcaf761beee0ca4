//! Reads of collections and their items, on connections bound to the request's tenant
//! (row-level security). Every read skips expired items (`expires_at > now()`), whether
//! the purge has removed them yet or not.
//!
//! A page of items is one statement with only the conditions asked for (filter, time
//! range, keyset), built from constant fragments with every value, the sort field
//! included, as a parameter (`data->>$n`); prepared once per shape and connection.

use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::Row;
use utoipa::ToSchema;

use super::aggregate::{self, Declaration};
use crate::db::{QueryError, ReadConnection};

/// A collection as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CollectionView {
    pub name: String,
    /// Seconds an item lives after each write; `null`: items never expire.
    pub ttl_seconds: Option<i32>,
    /// The fields items may be sorted by.
    pub indexes: Vec<String>,
    /// Whether it was declared (`false`: a seed collection's default).
    pub declared: bool,
    /// The declaration's version (the ETag; 0 for a seed's default).
    pub version: i64,
}

impl CollectionView {
    pub fn declaration(&self) -> Declaration {
        Declaration {
            name: self.name.clone(),
            ttl_seconds: self.ttl_seconds,
            indexes: self.indexes.clone(),
        }
    }

    fn seed(d: Declaration) -> Self {
        Self {
            name: d.name,
            ttl_seconds: d.ttl_seconds,
            indexes: d.indexes,
            declared: false,
            version: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CollectionList {
    /// The tenant's collections (declared and the seed's), by name.
    pub items: Vec<CollectionView>,
}

/// An item as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemView {
    pub key: String,
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    pub created_at: DateTime<Utc>,
    /// The last write.
    pub updated_at: DateTime<Utc>,
    /// When the item stops being returned; `null`: never.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ItemPage {
    pub items: Vec<ItemView>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

const COLLECTION_SQL: &str = "SELECT name, ttl_seconds, indexes, version FROM collections
 WHERE tenant_id = $1 AND name = $2";

const COLLECTIONS_SQL: &str = "SELECT name, ttl_seconds, indexes, version FROM collections
 WHERE tenant_id = $1 ORDER BY name";

const ITEM_SQL: &str = "SELECT key, data, created_at, updated_at, expires_at FROM collection_items
 WHERE tenant_id = $1 AND collection = $2 AND key = $3
   AND (expires_at IS NULL OR expires_at > now())";

fn collection_view(r: &Row) -> Result<CollectionView, tokio_postgres::Error> {
    Ok(CollectionView {
        name: r.try_get(0)?,
        ttl_seconds: r.try_get(1)?,
        indexes: r.try_get(2)?,
        declared: true,
        version: r.try_get(3)?,
    })
}

fn item_view(r: &Row) -> Result<ItemView, tokio_postgres::Error> {
    Ok(ItemView {
        key: r.try_get(0)?,
        data: r.try_get::<_, Json<Box<RawValue>>>(1)?.0,
        created_at: r.try_get(2)?,
        updated_at: r.try_get(3)?,
        expires_at: r.try_get(4)?,
    })
}

fn declared_or_seed(
    row: Option<Row>,
    name: &str,
) -> Result<Option<CollectionView>, tokio_postgres::Error> {
    Ok(match row {
        Some(r) => Some(collection_view(&r)?),
        None => aggregate::seed(name).map(CollectionView::seed),
    })
}

/// The collection `name` of the tenant as the `collections` read model has it, else the
/// seed's default; `None` when it is neither.
pub async fn collection(
    conn: &ReadConnection,
    tenant: &str,
    name: &str,
) -> Result<Option<CollectionView>, QueryError> {
    if aggregate::check_name(name).is_err() {
        return Ok(None);
    }
    let row = conn.query_opt(COLLECTION_SQL, &[&tenant, &name]).await?;
    Ok(declared_or_seed(row, name)?)
}

/// [`collection`] on a pooled (scan) connection.
pub async fn collection_on<C: GenericClient + Sync>(
    client: &C,
    tenant: &str,
    name: &str,
) -> Result<Option<CollectionView>, QueryError> {
    if aggregate::check_name(name).is_err() {
        return Ok(None);
    }
    let stmt = client.prepare_cached(COLLECTION_SQL).await?;
    let row = client.query_opt(&stmt, &[&tenant, &name]).await?;
    Ok(declared_or_seed(row, name)?)
}

/// The tenant's collections: the declared ones and the seed's (unless declared), by name.
pub async fn collections(
    conn: &ReadConnection,
    tenant: &str,
) -> Result<CollectionList, QueryError> {
    let mut items = conn
        .query(COLLECTIONS_SQL, &[&tenant])
        .await?
        .iter()
        .map(collection_view)
        .collect::<Result<Vec<_>, _>>()?;
    for s in &aggregate::SEEDS {
        if !items.iter().any(|c| c.name == s.name) {
            if let Some(d) = aggregate::seed(s.name) {
                items.push(CollectionView::seed(d));
            }
        }
    }
    items.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(CollectionList { items })
}

/// One live item.
pub async fn item(
    conn: &ReadConnection,
    tenant: &str,
    collection: &str,
    key: &str,
) -> Result<Option<ItemView>, QueryError> {
    Ok(conn
        .query_opt(ITEM_SQL, &[&tenant, &collection, &key])
        .await?
        .as_ref()
        .map(item_view)
        .transpose()?)
}

/// What a page is sorted by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortBy {
    Created,
    Updated,
    Key,
    /// A declared index field of `data`, compared as text.
    Field(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sort {
    pub by: SortBy,
    pub descending: bool,
}

impl Sort {
    /// Newest first: the default.
    pub const NEWEST: Sort = Sort {
        by: SortBy::Created,
        descending: true,
    };

    /// `created_at`, `-created_at`, `updated_at`, `-updated_at`, `key`, `-key`, or a
    /// field of `collection.indexes` (with `-` for descending).
    pub fn parse(s: &str, collection: &Declaration) -> Option<Sort> {
        let (descending, name) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let by = match name {
            "created_at" => SortBy::Created,
            "updated_at" => SortBy::Updated,
            "key" => SortBy::Key,
            f if collection.sorts_by(f) => SortBy::Field(f.to_owned()),
            _ => return None,
        };
        Some(Sort { by, descending })
    }

    fn spec(&self) -> String {
        let name = match &self.by {
            SortBy::Created => "created_at",
            SortBy::Updated => "updated_at",
            SortBy::Key => "key",
            SortBy::Field(f) => f,
        };
        format!("{}{name}", if self.descending { "-" } else { "" })
    }
}

/// Where the previous page ended: its last item's sort value and key.
#[derive(Debug, Clone, PartialEq)]
pub enum After {
    Time(DateTime<Utc>, String),
    Text(String, String),
    Key(String),
}

/// An opaque cursor: base64url of `[sort, value, key]`, so that a cursor used with
/// another sort is refused rather than misread.
pub fn encode_cursor(sort: &Sort, after: &After) -> String {
    let v = match after {
        After::Time(t, k) => {
            serde_json::json!([
                sort.spec(),
                t.to_rfc3339_opts(SecondsFormat::Micros, true),
                k
            ])
        }
        After::Text(s, k) => serde_json::json!([sort.spec(), s, k]),
        After::Key(k) => serde_json::json!([sort.spec(), null, k]),
    };
    crate::db::cursor::encode(&v)
}

/// A cursor of [`encode_cursor`] for `sort`, else `None`.
pub fn decode_cursor(cursor: &str, sort: &Sort) -> Option<After> {
    let (spec, value, key): (String, Value, String) = crate::db::cursor::decode(cursor)?;
    if spec != sort.spec() || key.contains('\0') {
        return None;
    }
    match (&sort.by, value) {
        (SortBy::Created | SortBy::Updated, Value::String(t)) => {
            let t = DateTime::parse_from_rfc3339(&t).ok()?.with_timezone(&Utc);
            Some(After::Time(t, key))
        }
        (SortBy::Field(_), Value::String(s)) if !s.contains('\0') => Some(After::Text(s, key)),
        (SortBy::Key, Value::Null) => Some(After::Key(key)),
        _ => None,
    }
}

/// What a page asks for, checked.
pub struct ListQuery<'a> {
    pub filter: Option<&'a Value>,
    /// Created at or after.
    pub from: Option<DateTime<Utc>>,
    /// Created before.
    pub to: Option<DateTime<Utc>>,
    pub sort: Sort,
    pub after: Option<After>,
    pub limit: i64,
}

type Param = Box<dyn ToSql + Sync + Send>;

/// The statement for `q` and its parameters after `$1` tenant and `$2` collection.
fn list_sql(q: &ListQuery<'_>, params: &mut Vec<Param>) -> String {
    fn next(v: Param, params: &mut Vec<Param>) -> String {
        params.push(v);
        format!("${}", params.len())
    }
    // The sort value as selected, and as compared (byte order whatever the database's
    // collation). Items without the field sort as the empty text.
    let (selected, sort_expr) = match &q.sort.by {
        SortBy::Created => ("NULL::text".to_owned(), "created_at".to_owned()),
        SortBy::Updated => ("NULL::text".to_owned(), "updated_at".to_owned()),
        SortBy::Key => ("NULL::text".to_owned(), "key".to_owned()),
        SortBy::Field(f) => {
            let p = next(Box::new(f.clone()), params);
            let value = format!("coalesce(data->>{p}, '')");
            let compared = format!("({value} COLLATE \"C\")");
            (value, compared)
        }
    };
    let mut sql = format!(
        "SELECT key, data, created_at, updated_at, expires_at, {selected}
           FROM collection_items
          WHERE tenant_id = $1 AND collection = $2
            AND (expires_at IS NULL OR expires_at > now())"
    );
    if let Some(f) = q.filter {
        let p = next(Box::new(f.clone()), params);
        sql.push_str(&format!(" AND data @> {p}::jsonb"));
    }
    if let Some(t) = q.from {
        let p = next(Box::new(t), params);
        sql.push_str(&format!(" AND created_at >= {p}"));
    }
    if let Some(t) = q.to {
        let p = next(Box::new(t), params);
        sql.push_str(&format!(" AND created_at < {p}"));
    }
    let (cmp, dir) = if q.sort.descending {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    match &q.after {
        None => {}
        Some(After::Key(k)) => {
            let p = next(Box::new(k.clone()), params);
            sql.push_str(&format!(" AND key {cmp} {p}"));
        }
        Some(After::Time(t, k)) => {
            let v = next(Box::new(*t), params);
            let p = next(Box::new(k.clone()), params);
            sql.push_str(&format!(" AND ({sort_expr}, key) {cmp} ({v}, {p})"));
        }
        Some(After::Text(s, k)) => {
            let v = next(Box::new(s.clone()), params);
            let p = next(Box::new(k.clone()), params);
            sql.push_str(&format!(
                " AND ({sort_expr}, key) {cmp} ({v}::text COLLATE \"C\", {p})"
            ));
        }
    }
    let order = match q.sort.by {
        SortBy::Key => format!("key {dir}"),
        _ => format!("{sort_expr} {dir}, key {dir}"),
    };
    let limit = next(Box::new(q.limit + 1), params);
    sql.push_str(&format!(" ORDER BY {order} LIMIT {limit}"));
    sql
}

/// A page of live items of `collection`, with the cursor of the next one.
pub async fn list<C: GenericClient + Sync>(
    client: &C,
    tenant: &str,
    collection: &str,
    q: &ListQuery<'_>,
) -> Result<ItemPage, QueryError> {
    let mut params: Vec<Param> = vec![Box::new(tenant.to_owned()), Box::new(collection.to_owned())];
    let sql = list_sql(q, &mut params);
    let stmt = client.prepare_cached(&sql).await?;
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client.query(&stmt, &refs).await?;
    let more = rows.len() as i64 > q.limit;
    let mut items = Vec::with_capacity(rows.len());
    let mut last: Option<After> = None;
    for r in rows.iter().take(usize::try_from(q.limit).unwrap_or(0)) {
        let item = item_view(r)?;
        last = Some(match &q.sort.by {
            SortBy::Created => After::Time(item.created_at, item.key.clone()),
            SortBy::Updated => After::Time(item.updated_at, item.key.clone()),
            SortBy::Key => After::Key(item.key.clone()),
            SortBy::Field(_) => After::Text(r.try_get(5)?, item.key.clone()),
        });
        items.push(item);
    }
    let next_cursor = if more {
        last.map(|a| encode_cursor(&q.sort, &a))
    } else {
        None
    };
    Ok(ItemPage { items, next_cursor })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs() -> Declaration {
        aggregate::seed("system_logs").unwrap()
    }

    #[test]
    fn sorts_are_the_built_ins_and_the_declared_fields() {
        let d = logs();
        assert_eq!(Sort::parse("-created_at", &d), Some(Sort::NEWEST));
        assert_eq!(
            Sort::parse("level", &d),
            Some(Sort {
                by: SortBy::Field("level".into()),
                descending: false
            })
        );
        for bad in ["", "-", "levels", "--key", "data", "-host", "level;drop"] {
            assert!(Sort::parse(bad, &d).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_cursor_reads_back_for_its_own_sort_only() {
        let d = logs();
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let cases = [
            (Sort::NEWEST, After::Time(t, "k1".into())),
            (
                Sort::parse("updated_at", &d).unwrap(),
                After::Time(t, "k".into()),
            ),
            (Sort::parse("-key", &d).unwrap(), After::Key("a/b?".into())),
            (
                Sort::parse("-level", &d).unwrap(),
                After::Text("ERROR".into(), "k".into()),
            ),
        ];
        for (sort, after) in &cases {
            let c = encode_cursor(sort, after);
            assert_eq!(decode_cursor(&c, sort).as_ref(), Some(after));
            let other = Sort::parse("service", &d).unwrap();
            assert!(decode_cursor(&c, &other).is_none());
        }
        assert!(decode_cursor("not a cursor", &Sort::NEWEST).is_none());
        assert!(decode_cursor("", &Sort::NEWEST).is_none());
    }

    #[test]
    fn the_statement_holds_only_what_was_asked_and_no_input_text() {
        let d = logs();
        let filter = serde_json::json!({"level": "x'; DROP TABLE collection_items; --"});
        let q = ListQuery {
            filter: Some(&filter),
            from: None,
            to: Some(Utc::now()),
            sort: Sort::parse("-level", &d).unwrap(),
            after: Some(After::Text("x' OR 1=1".into(), "k".into())),
            limit: 10,
        };
        let mut params: Vec<Param> = vec![Box::new("t".to_owned()), Box::new("c".to_owned())];
        let sql = list_sql(&q, &mut params);
        assert!(!sql.contains("DROP") && !sql.contains("OR 1=1") && !sql.contains("level"));
        assert!(sql.contains("data @> $4::jsonb") && sql.contains("created_at < $5"));
        assert!(!sql.contains("created_at >="));
        assert!(sql.contains("coalesce(data->>$3, '')"));
        assert!(sql.contains(" DESC, key DESC LIMIT $8"), "{sql}");
        assert_eq!(params.len(), 8);
        let plain = ListQuery {
            filter: None,
            from: None,
            to: None,
            sort: Sort::NEWEST,
            after: None,
            limit: 10,
        };
        let mut params: Vec<Param> = vec![Box::new("t".to_owned()), Box::new("c".to_owned())];
        let sql = list_sql(&plain, &mut params);
        assert!(!sql.contains("@>") && !sql.contains("coalesce"));
        assert!(
            sql.ends_with("ORDER BY created_at DESC, key DESC LIMIT $3"),
            "{sql}"
        );
    }
}
