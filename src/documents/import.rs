//! `POST /api/v1/documents:batch`: NDJSON documents streamed into one `document_batch`
//! stream of `DocumentsImported` blocks (ADR 0007, 0022), all or nothing.
//!
//! A batch's documents have no streams of their own until their first change, so the
//! batch reserves their ids in `document_batch_ids` (write side, like the idempotency
//! keys) while it stages its blocks: an id is used once, whether by a batch or a document
//! of its own, and `PUT`/`DELETE` find a batch's document there once its batch is
//! committed (`imported`).

use std::collections::HashMap;

use serde_json::{Map, Value};
use tokio::io::AsyncRead;
use uuid::Uuid;

use super::aggregate::{check, Document, DocumentBatch, DocumentError, MAX_CONTENT_BYTES};
use super::events::{DocumentBatchEvent, DocumentDraft, ImportedDocument};
use crate::eventstore::{codec, Appended, EventStore, StoreError};
use crate::imports::{bad_row, ImportError, NdjsonLines, Staging, StreamedKey};
use crate::pipeline::EventSourced;

/// Most documents per `DocumentsImported` event.
pub const DOCUMENTS_PER_EVENT: usize = 500;
/// A block closes once its content reaches this many bytes.
const BYTES_PER_EVENT: usize = 4 * 1024 * 1024;
/// At most this many documents per request.
pub const MAX_DOCUMENTS: i64 = 1_000_000;
/// The longest line: a document of 1 MiB of content, escaped, with its other fields.
const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// What a batch appended.
#[derive(Debug, Clone, Copy)]
pub struct Imported {
    pub batch_id: Uuid,
    pub documents: i64,
    pub appended: Appended,
}

/// Reserves `ids` for `batch`; returns those another document or batch holds, and
/// whether that holder is a batch still in progress (not committed yet).
const RESERVE_SQL: &str = "\
WITH wanted AS (SELECT unnest($3::uuid[]) AS id),
own AS (SELECT stream_id FROM events
         WHERE stream_type = $4 AND stream_id IN (SELECT id FROM wanted)
        UNION ALL
        SELECT stream_id FROM events_archive
         WHERE stream_type = $4 AND stream_id IN (SELECT id FROM wanted)),
reserved AS (
    INSERT INTO document_batch_ids (id, tenant_id, batch_id)
    SELECT id, $1, $2 FROM wanted WHERE id NOT IN (SELECT stream_id FROM own)
    ON CONFLICT (id) DO NOTHING
    RETURNING id)
SELECT w.id,
       coalesce((SELECT NOT EXISTS (SELECT 1 FROM events e
                                     WHERE e.stream_type = $5 AND e.stream_id = r.batch_id)
                   FROM document_batch_ids r WHERE r.id = w.id), false)
  FROM wanted w WHERE w.id NOT IN (SELECT id FROM reserved)";

/// Releases a failed batch's ids, unless it committed after all (a commit whose answer
/// was lost).
const RELEASE_SQL: &str = "\
DELETE FROM document_batch_ids
 WHERE batch_id = $1
   AND NOT EXISTS (SELECT 1 FROM events WHERE stream_type = $2 AND stream_id = $1)";

/// Whether `id` is a document of a committed batch of `tenant`.
const IMPORTED_SQL: &str = "\
SELECT EXISTS (SELECT 1 FROM document_batch_ids d
                WHERE d.id = $1 AND d.tenant_id = $2
                  AND EXISTS (SELECT 1 FROM events e
                               WHERE e.stream_type = $3 AND e.stream_id = d.batch_id))";

/// Reservations of batches that never committed, older than `$1` seconds (their request
/// died before it could release them).
const PURGE_SQL: &str = "\
DELETE FROM document_batch_ids d
 WHERE d.reserved_at < now() - make_interval(secs => $1)
   AND NOT EXISTS (SELECT 1 FROM events e
                    WHERE e.stream_type = $2 AND e.stream_id = d.batch_id)";

/// Whether `id` is a document a committed batch of `tenant` created.
pub async fn imported(store: &EventStore, tenant: &str, id: Uuid) -> Result<bool, StoreError> {
    let client = store.pool().get().await?;
    let stmt = client.prepare_cached(IMPORTED_SQL).await?;
    let row = client
        .query_one(&stmt, &[&id, &tenant, &DocumentBatch::STREAM_TYPE])
        .await?;
    Ok(row.try_get(0)?)
}

/// Drops reservations left by batches that died `age` ago or more.
pub async fn purge_reservations(
    store: &EventStore,
    age: std::time::Duration,
) -> Result<u64, StoreError> {
    let client = store.pool().get().await?;
    Ok(client
        .execute(
            PURGE_SQL,
            &[&age.as_secs_f64(), &DocumentBatch::STREAM_TYPE],
        )
        .await?)
}

/// One line of the body: a document, with its own `id` if the client gave one.
fn parse_line(row: i64, line: &str, dimensions: usize) -> Result<ImportedDocument, ImportError> {
    let mut object: Map<String, Value> = match serde_json::from_str(line) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(bad_row(row, "", "a line is one JSON object")),
        Err(e) => return Err(bad_row(row, "", format!("not valid JSON: {e}"))),
    };
    let id = match object.remove("id") {
        None | Some(Value::Null) => Uuid::now_v7(),
        Some(Value::String(s)) => {
            Uuid::parse_str(&s).map_err(|_| bad_row(row, "id", "is not a UUID"))?
        }
        Some(_) => return Err(bad_row(row, "id", "is not a UUID")),
    };
    let document: DocumentDraft =
        serde_path_to_error::deserialize(Value::Object(object)).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            bad_row(row, &field, e.inner().to_string())
        })?;
    if document.content.len() > MAX_CONTENT_BYTES {
        return Err(bad_row(row, "content", "must be at most 1 MiB"));
    }
    check(&document, dimensions).map_err(|e| match e {
        DocumentError::Invalid { field, message } => bad_row(row, &field, message),
        other => bad_row(row, "", other.to_string()),
    })?;
    Ok(ImportedDocument { id, document })
}

/// The blocks of one batch, staged as they fill.
struct Blocks<'s> {
    store: &'s EventStore,
    tenant: &'s str,
    staging: Staging<'s>,
    block: Vec<ImportedDocument>,
    bytes: usize,
    /// Every id of the batch so far, with its line.
    seen: HashMap<Uuid, i64>,
    documents: i64,
}

impl Blocks<'_> {
    async fn add(&mut self, row: i64, d: ImportedDocument) -> Result<(), ImportError> {
        if let Some(first) = self.seen.insert(d.id, row) {
            return Err(bad_row(
                row,
                "id",
                format!("repeats the id of line {first}"),
            ));
        }
        self.bytes += d.document.content.len();
        self.block.push(d);
        if self.block.len() == DOCUMENTS_PER_EVENT || self.bytes >= BYTES_PER_EVENT {
            self.flush().await?;
        }
        Ok(())
    }

    /// Reserves the block's ids and stages it as one `DocumentsImported`.
    async fn flush(&mut self) -> Result<(), ImportError> {
        if self.block.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = self.block.iter().map(|d| d.id).collect();
        let client = self.store.pool().get().await.map_err(StoreError::from)?;
        let taken = client
            .query(
                RESERVE_SQL,
                &[
                    &self.tenant,
                    &self.staging.id,
                    &ids,
                    &Document::STREAM_TYPE,
                    &DocumentBatch::STREAM_TYPE,
                ],
            )
            .await
            .map_err(StoreError::from)?;
        if let Some(t) = taken.first() {
            let id: Uuid = t.try_get(0).map_err(StoreError::from)?;
            let in_progress: bool = t.try_get(1).map_err(StoreError::from)?;
            let row = self.seen.get(&id).copied().unwrap_or(0);
            if in_progress {
                // Perhaps this very batch, sent again while the first is still running.
                return Err(ImportError::Busy(format!(
                    "line {row}: id {id} is being imported by a batch still in progress; \
                     retry once it has ended"
                )));
            }
            return Err(bad_row(row, "id", "is the id of another document"));
        }
        self.documents += self.block.len() as i64;
        let documents = std::mem::take(&mut self.block);
        self.bytes = 0;
        self.staging
            .push(&DocumentBatchEvent::DocumentsImported { documents })
            .await
    }
}

/// Streams an NDJSON body of documents into a new `document_batch` stream.
pub async fn import<R: AsyncRead + Unpin + Send>(
    store: &EventStore,
    tenant: &str,
    body: R,
    dimensions: usize,
    metadata: &Value,
    key: Option<&StreamedKey>,
) -> Result<Imported, ImportError> {
    let batch_id = Uuid::now_v7();
    // Releases the ids if this request ends without a commit, even when it is dropped
    // mid-way (the client went away).
    let mut reservations = Reservations {
        store: store.clone(),
        batch_id,
        committed: false,
    };
    let mut blocks = Blocks {
        store,
        tenant,
        staging: Staging::new(store, batch_id),
        block: Vec::with_capacity(DOCUMENTS_PER_EVENT),
        bytes: 0,
        seen: HashMap::new(),
        documents: 0,
    };
    let read = async {
        let mut lines = NdjsonLines::new(body, MAX_LINE_BYTES);
        while let Some((row, line)) = lines.next().await? {
            if row > MAX_DOCUMENTS {
                return Err(bad_row(
                    row,
                    "",
                    format!("at most {MAX_DOCUMENTS} documents per request"),
                ));
            }
            blocks.add(row, parse_line(row, line, dimensions)?).await?;
        }
        blocks.flush().await?;
        if blocks.documents == 0 {
            return Err(bad_row(1, "", "the batch has no documents"));
        }
        Ok(codec::encode(
            &DocumentBatchEvent::DocumentBatchCompleted {
                documents: blocks.documents,
            },
        )?)
    }
    .await;
    let stream = (DocumentBatch::STREAM_TYPE, batch_id, 0);
    let appended = match blocks
        .staging
        .finish(tenant, stream, read, metadata, key)
        .await
    {
        Ok(appended) => appended,
        Err(e) => {
            reservations.release().await;
            return Err(e);
        }
    };
    reservations.committed = true;
    Ok(Imported {
        batch_id,
        documents: blocks.documents,
        appended,
    })
}

/// A batch's id reservations, released when it is dropped uncommitted.
struct Reservations {
    store: EventStore,
    batch_id: Uuid,
    committed: bool,
}

/// Deletes a batch's reservations (the purge job does it later if this fails).
async fn release(store: EventStore, batch_id: Uuid) {
    let released = async {
        let client = store.pool().get().await?;
        client
            .execute(RELEASE_SQL, &[&batch_id, &DocumentBatch::STREAM_TYPE])
            .await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = released {
        tracing::warn!(error = %e, "cannot release a failed batch's ids; the purge job does");
    }
}

impl Reservations {
    /// Releases the ids before the request answers (a refused batch leaves nothing).
    async fn release(mut self) {
        self.committed = true; // nothing left for `drop`
        release(self.store.clone(), self.batch_id).await;
    }
}

impl Drop for Reservations {
    /// A request dropped mid-way (the client went away) cannot await: the release runs
    /// in the background.
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(release(self.store.clone(), self.batch_id));
            }
            Err(_) => {
                tracing::warn!("no runtime to release a failed batch's ids; the purge job does")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(line: &str) -> (i64, String) {
        match parse_line(3, line, 2) {
            Err(ImportError::BadRow { row, column, .. }) => (row, column),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn a_line_takes_its_id_or_gets_one() {
        let id = "0190c7a9-4a5e-7c1d-9d0e-715300000001";
        let d = parse_line(
            1,
            &format!(r#"{{"id":"{id}","title":"t","content":"c"}}"#),
            2,
        )
        .unwrap();
        assert_eq!(d.id.to_string(), id);
        assert_eq!(d.document.title, "t");
        let d = parse_line(
            1,
            r#"{"title":"t","content":"c","tags":["a"],"embedding":[1,0]}"#,
            2,
        )
        .unwrap();
        assert_eq!(d.id.get_version_num(), 7);
    }

    #[test]
    fn bad_lines_name_their_field() {
        assert_eq!(field(r#"{"title":"t"}"#), (3, String::new()));
        assert_eq!(
            field(r#"{"title":"t","content":"c","id":"x"}"#),
            (3, "id".into())
        );
        assert_eq!(field(r#"{"title":"","content":"c"}"#), (3, "title".into()));
        assert_eq!(
            field(r#"{"title":"t","content":"c","tags":[1]}"#).1,
            "tags[0]"
        );
        assert_eq!(
            field(r#"{"title":"t","content":"c","nope":1}"#),
            (3, "nope".into())
        );
        assert_eq!(field("[1]"), (3, String::new()));
        let e = |v: &str| field(&format!(r#"{{"title":"t","content":"c","embedding":{v}}}"#));
        assert_eq!(e("[1]"), (3, "embedding".into()));
        assert_eq!(e("[0,0]"), (3, "embedding".into()));
        assert_eq!(e("[1e39,1]"), (3, "embedding".into()));
        assert_eq!(field("{"), (3, String::new()));
    }
}
