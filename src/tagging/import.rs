//! Imports of a source table: a CSV or NDJSON body streamed row by row, checked against
//! the subject kind's schema, and appended as batched `RowsImported` events through a
//! staged bulk append (ADR 0007). The body is never held whole in memory; the first bad
//! row rejects the whole request and nothing of it reaches the log.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use uuid::Uuid;

use super::aggregate::SubjectImport;
use super::events::{
    sealing_context, ImportedRow, KindSchema, RowsImported, Sealed, SubjectImportEvent,
};
use super::keys::{self, KeyError};
use super::rules::{self, AttrType};
use crate::crypto::Vault;
use crate::eventstore::{codec, Appended, EventStore, StoreError};
pub use crate::imports::ImportError;
use crate::imports::{bad_row as bad, CsvRows, Staging, StreamedKey};
use crate::pipeline::EventSourced;

/// Rows per `RowsImported` event.
pub const ROWS_PER_EVENT: usize = 1_000;
/// The column that carries a row's own `updated_time`.
pub const UPDATED_TIME: &str = "updated_time";
/// At most this many rows per request.
pub const MAX_ROWS: i64 = 10_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Ndjson,
}

/// What an import appended.
#[derive(Debug, Clone, Copy)]
pub struct Imported {
    pub import_id: Uuid,
    pub rows: i64,
    pub appended: Appended,
}

/// One row as read from the body: the cells by column, `None` for an empty cell/null.
type Cells<'a> = Vec<(&'a str, Option<Value>)>;

/// Checks rows of one source and turns them into batches.
struct Batcher<'a> {
    schema: &'a KindSchema,
    source: &'a str,
    imported_at: DateTime<Utc>,
    seen: HashSet<Box<str>>,
    rows: Vec<ImportedRow>,
    /// The pending rows' sensitive values, by index in `rows`, until they are sealed.
    secrets: Vec<(usize, Map<String, Value>)>,
    columns: Vec<String>,
    count: i64,
}

impl<'a> Batcher<'a> {
    /// Checks a column name of the file.
    fn column(&mut self, row: i64, name: &str) -> Result<(), ImportError> {
        if name == self.schema.id_field || name == UPDATED_TIME {
            return Ok(());
        }
        match self.schema.attribute(name) {
            Some(a) if a.source == self.source => {
                if !self.columns.iter().any(|c| c == name) {
                    self.columns.push(name.to_owned());
                }
                Ok(())
            }
            Some(a) => Err(bad(
                row,
                name,
                format!("belongs to source {:?}, not {:?}", a.source, self.source),
            )),
            None => Err(bad(row, name, "is not a declared attribute")),
        }
    }

    /// Checks one row; `text` tells whether cells are CSV text (else JSON values).
    fn push(&mut self, cells: Cells<'_>, text: bool) -> Result<(), ImportError> {
        self.count += 1;
        let row = self.count;
        if row > MAX_ROWS {
            return Err(bad(row, "", format!("at most {MAX_ROWS} rows per request")));
        }
        let mut id = None;
        let mut updated_time = None;
        let mut attrs = Map::new();
        let mut secret = Map::new();
        for (name, cell) in cells {
            if name == self.schema.id_field {
                id = match cell {
                    Some(Value::String(s))
                        if !s.is_empty() && s.len() <= 200 && !s.contains('\0') =>
                    {
                        Some(s)
                    }
                    Some(Value::Number(n)) if !text => Some(n.to_string()),
                    None => None,
                    _ => {
                        return Err(bad(
                            row,
                            name,
                            "must be a non-empty string of at most 200 characters",
                        ))
                    }
                };
                continue;
            }
            let Some(cell) = cell else { continue };
            let (ty, sensitive) = if name == UPDATED_TIME {
                (AttrType::Date, false)
            } else {
                match self.schema.attribute(name) {
                    Some(a) => (a.ty, a.sensitive),
                    None => return Err(bad(row, name, "is not a declared attribute")),
                }
            };
            let value = if text {
                match &cell {
                    Value::String(s) => match ty {
                        AttrType::Number => rules::parse_number(s).map(rules::Value::Number),
                        AttrType::Date => rules::parse_date(s).map(rules::Value::Date),
                        AttrType::Boolean => rules::parse_bool(s).map(rules::Value::Bool),
                        AttrType::String => {
                            (!s.contains('\0')).then(|| rules::Value::Text(s.clone()))
                        }
                    },
                    _ => None,
                }
            } else {
                rules::parse_value(ty, &cell)
            };
            let Some(value) = value else {
                return Err(bad(row, name, format!("is not a valid {}", ty.name())));
            };
            if name == UPDATED_TIME {
                if let rules::Value::Date(t) = value {
                    updated_time = Some(t);
                }
            } else if sensitive {
                secret.insert(name.to_owned(), value.to_json());
            } else {
                attrs.insert(name.to_owned(), value.to_json());
            }
        }
        let id = id.ok_or_else(|| bad(row, &self.schema.id_field, "the subject id is missing"))?;
        if !self.seen.insert(id.clone().into_boxed_str()) {
            return Err(bad(
                row,
                &self.schema.id_field,
                format!("id {id:?} appears twice in this file"),
            ));
        }
        if !secret.is_empty() {
            self.secrets.push((self.rows.len(), secret));
        }
        self.rows.push(ImportedRow {
            id,
            updated_time: updated_time.unwrap_or(self.imported_at),
            attrs,
            sealed: None,
        });
        Ok(())
    }

    /// The pending rows as one event, their sensitive values sealed.
    async fn take_batch(&mut self, sealer: &Sealer<'_>) -> Result<SubjectImportEvent, ImportError> {
        let secrets = std::mem::take(&mut self.secrets);
        sealer.seal(self.source, &mut self.rows, secrets).await?;
        Ok(SubjectImportEvent::RowsImported(RowsImported {
            kind: self.schema.kind.clone(),
            source: self.source.to_owned(),
            primary: self.source == self.schema.primary_source,
            columns: self.columns.clone(),
            rows: std::mem::take(&mut self.rows),
        }))
    }
}

/// Seals rows' sensitive values with their subjects' data keys, made on first use. Keys
/// are committed before the events that need them; a failed import leaves unused keys.
struct Sealer<'a> {
    vault: &'a Vault,
    store: &'a EventStore,
    tenant: &'a str,
    kind: &'a str,
}

impl Sealer<'_> {
    async fn seal(
        &self,
        source: &str,
        rows: &mut [ImportedRow],
        secrets: Vec<(usize, Map<String, Value>)>,
    ) -> Result<(), ImportError> {
        if secrets.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = secrets.iter().map(|(i, _)| rows[*i].id.as_str()).collect();
        let client = self.store.pool().get().await.map_err(StoreError::from)?;
        let keys = keys::for_subjects(&**client, self.vault, (self.tenant, self.kind), &ids)
            .await
            .map_err(|e| match e {
                KeyError::Db(e) => ImportError::Store(e.into()),
                KeyError::Crypto(e) => ImportError::Crypto(e),
            })?;
        for (i, secret) in secrets {
            let row = &mut rows[i];
            let (key_id, key) = keys.get(row.id.as_str()).ok_or_else(|| {
                StoreError::Unavailable(format!("no data key for subject {:?}", row.id))
            })?;
            let context = sealing_context(self.tenant, self.kind, &row.id, source);
            let plain =
                serde_json::to_vec(&secret).map_err(|e| codec::CodecError::Shape(e.to_string()))?;
            row.sealed = Some(Sealed {
                key: *key_id,
                data: key.seal(&context, &plain)?,
            });
        }
        Ok(())
    }
}

/// What an import writes to: the kind's schema, the source table and the body's format,
/// and the vault that seals its sensitive values.
pub struct Target<'a> {
    pub schema: &'a KindSchema,
    pub source: &'a str,
    pub format: Format,
    pub vault: &'a Vault,
}

/// Streams `body` into the store as an import of `source` rows of `schema`'s kind.
pub async fn import<R: AsyncRead + Unpin + Send + 'static>(
    store: &EventStore,
    tenant: &str,
    target: Target<'_>,
    body: R,
    metadata: &Value,
    idempotency: Option<&StreamedKey>,
) -> Result<Imported, ImportError> {
    let Target {
        schema,
        source,
        format,
        vault,
    } = target;
    let sealer = Sealer {
        vault,
        store,
        tenant,
        kind: &schema.kind,
    };
    let import_id = Uuid::now_v7();
    let mut b = Batcher {
        schema,
        source,
        imported_at: Utc::now(),
        seen: HashSet::new(),
        rows: Vec::with_capacity(ROWS_PER_EVENT),
        secrets: Vec::new(),
        // CSV: the header's attribute columns. NDJSON: every attribute of the source (a
        // key left out of an object is null, whatever the other lines hold).
        columns: match format {
            Format::Csv => Vec::new(),
            Format::Ndjson => schema
                .attributes
                .iter()
                .filter(|a| a.source == source)
                .map(|a| a.name.clone())
                .collect(),
        },
        count: 0,
    };
    let mut staging = Staging::new(store, import_id);
    let read = async {
        match format {
            Format::Csv => read_csv(body, &mut b, &mut staging, &sealer).await?,
            Format::Ndjson => read_ndjson(body, &mut b, &mut staging, &sealer).await?,
        }
        if !b.rows.is_empty() {
            staging.push(&b.take_batch(&sealer).await?).await?;
        }
        Ok(codec::encode(&SubjectImportEvent::ImportCompleted {
            kind: schema.kind.clone(),
            source: source.to_owned(),
            rows: b.count,
        })?)
    }
    .await;
    let stream = (SubjectImport::STREAM_TYPE, import_id, 0);
    let appended = staging
        .finish(tenant, stream, read, metadata, idempotency)
        .await?;
    Ok(Imported {
        import_id,
        rows: b.count,
        appended,
    })
}

/// Stages the pending rows once they fill an event.
async fn stage_full(
    b: &mut Batcher<'_>,
    staging: &mut Staging<'_>,
    sealer: &Sealer<'_>,
) -> Result<(), ImportError> {
    if b.rows.len() < ROWS_PER_EVENT {
        return Ok(());
    }
    staging.push(&b.take_batch(sealer).await?).await
}

async fn read_csv<R: AsyncRead + Unpin + Send + 'static>(
    body: R,
    b: &mut Batcher<'_>,
    staging: &mut Staging<'_>,
    sealer: &Sealer<'_>,
) -> Result<(), ImportError> {
    let mut rows = CsvRows::open(body).await?;
    let headers = rows.headers().to_vec();
    for h in &headers {
        b.column(0, h)?;
    }
    if !headers.contains(&b.schema.id_field) {
        return Err(bad(0, &b.schema.id_field, "the header has no id column"));
    }
    while let Some(record) = rows.next().await? {
        let cells: Cells<'_> = headers
            .iter()
            .zip(record.iter())
            .map(|(h, v)| {
                (
                    h.as_str(),
                    (!v.is_empty()).then(|| Value::String(v.to_owned())),
                )
            })
            .collect();
        b.push(cells, true)?;
        stage_full(b, staging, sealer).await?;
    }
    Ok(())
}

async fn read_ndjson<R: AsyncRead + Unpin + Send>(
    body: R,
    b: &mut Batcher<'_>,
    staging: &mut Staging<'_>,
    sealer: &Sealer<'_>,
) -> Result<(), ImportError> {
    let mut lines = BufReader::new(body).lines();
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| crate::imports::body_error(&e))?
    {
        if line.trim().is_empty() {
            continue;
        }
        let row = b.count + 1;
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(&line) else {
            return Err(bad(row, "", "is not a JSON object"));
        };
        for name in object.keys() {
            b.column(row, name)?;
        }
        let cells: Cells<'_> = object
            .iter()
            .map(|(k, v)| (k.as_str(), (!v.is_null()).then(|| v.clone())))
            .collect();
        b.push(cells, false)?;
        stage_full(b, staging, sealer).await?;
    }
    Ok(())
}
