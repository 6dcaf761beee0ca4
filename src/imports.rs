//! Bulk imports, shared by every context that takes large files (ADR 0007).
//!
//! - [`CsvRows`] reads a streamed CSV body record by record, with a checked header; the
//!   body is never held whole in memory.
//! - [`NdjsonLines`] reads a streamed NDJSON body line by line, numbered, each line
//!   capped in length.
//! - [`ImportError::BadRow`] names the row (data rows count from 1, the header is row 0)
//!   and the column of the first bad cell; the route answers 422 `invalid_row`.
//! - [`Staging`] stages the events of one import while the body streams in and commits
//!   them to one stream in one statement at the end, or discards them: an import is all or
//!   nothing. Batch events stay batches (one event per N rows, never one per row). An
//!   idempotency key is recorded in the commit statement.
//! - [`Hashed`] hashes a body while it streams (a bill's identity; the request an
//!   idempotency key stands for).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, ReadBuf};
use uuid::Uuid;

use crate::eventstore::{codec, Appended, EventStore, IdempotencyRecord, NewEvent, StoreError};

/// An idempotency key whose request hash is completed by the body as it streams: the
/// request line and headers are hashed first (`http::extract`), then every byte read
/// through [`StreamedKey::reader`].
pub struct StreamedKey {
    pub key: String,
    hasher: Arc<Mutex<Sha256>>,
}

impl StreamedKey {
    /// `hasher` holds the hash of the request without its body.
    pub fn new(key: String, hasher: Sha256) -> Self {
        Self {
            key,
            hasher: Arc::new(Mutex::new(hasher)),
        }
    }

    /// `body`, hashed into this key's request hash as it is read.
    pub fn reader<R>(&self, body: R) -> Hashed<R> {
        Hashed::new(body, self.hasher.clone())
    }

    /// The record of the whole request, once its body has been read.
    pub fn record(&self) -> IdempotencyRecord {
        let hash = self
            .hasher
            .lock()
            .map(|h| h.clone().finalize().to_vec())
            .unwrap_or_default();
        IdempotencyRecord {
            key: self.key.clone(),
            request_hash: hash,
        }
    }
}

/// A reader that feeds what passes through it to a SHA-256 hasher shared with the caller.
pub struct Hashed<R> {
    inner: R,
    hasher: Arc<Mutex<Sha256>>,
}

impl<R> Hashed<R> {
    pub fn new(inner: R, hasher: Arc<Mutex<Sha256>>) -> Self {
        Self { inner, hasher }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Hashed<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if let Ok(mut h) = self.hasher.lock() {
                h.update(&buf.filled()[before..]);
            }
        }
        polled
    }
}

/// Why an import was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("row {row}, column {column}: {message}")]
    BadRow {
        row: i64,
        column: String,
        message: String,
    },
    /// The body could not be read (the client went away, the stream broke).
    #[error("cannot read the body: {0}")]
    Body(String),
    /// The body passed the route's limit (`http::extract::streamed_body`): 413.
    #[error(transparent)]
    TooLarge(#[from] BodyTooLarge),
    /// Another request still in progress holds what this one needs (409
    /// `command_refused`; a retry once it has ended gets a definite answer).
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    /// Sensitive values could not be sealed (no master key: 503).
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
}

/// A bad row or cell.
pub fn bad_row(row: i64, column: &str, message: impl Into<String>) -> ImportError {
    ImportError::BadRow {
        row,
        column: column.to_owned(),
        message: message.into(),
    }
}

/// The records of a CSV body after its header row.
pub struct CsvRows<R: AsyncRead + Unpin + Send> {
    records: csv_async::StringRecordsIntoStream<'static, R>,
    headers: Vec<String>,
    row: i64,
}

impl<R: AsyncRead + Unpin + Send + 'static> CsvRows<R> {
    /// Reads the header row: names trimmed, each at most once.
    pub async fn open(body: R) -> Result<Self, ImportError> {
        let mut reader = csv_async::AsyncReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .create_reader(body);
        let headers: Vec<String> = reader
            .headers()
            .await
            .map_err(|e| csv_error(0, e))?
            .iter()
            .map(|h| h.trim().to_owned())
            .collect();
        let mut seen = HashSet::new();
        for h in &headers {
            if !seen.insert(h.as_str()) {
                return Err(bad_row(0, h, "appears twice in the header"));
            }
        }
        Ok(Self {
            records: reader.into_records(),
            headers,
            row: 0,
        })
    }

    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// The number of the last record returned (1 for the first data row).
    pub fn row(&self) -> i64 {
        self.row
    }

    /// The next record, `None` at the end of the body.
    pub async fn next(&mut self) -> Result<Option<csv_async::StringRecord>, ImportError> {
        match self.records.next().await {
            None => Ok(None),
            Some(r) => {
                self.row += 1;
                r.map(Some).map_err(|e| csv_error(self.row, e))
            }
        }
    }
}

/// A broken stream is the body's fault (400); anything else is the row's (422).
fn csv_error(row: i64, e: csv_async::Error) -> ImportError {
    match e.kind() {
        csv_async::ErrorKind::Io(io) => body_error(io),
        _ => bad_row(row, "", format!("not valid CSV: {e}")),
    }
}

/// The lines of a streamed NDJSON body, numbered from 1 as they stand in the body (blank
/// lines are skipped but counted, so a reported line is the line an editor shows). A line
/// longer than its cap, or one that is not UTF-8, is a bad row (422) rather than a reason
/// to hold the body in memory; a broken stream is [`body_error`].
pub struct NdjsonLines<R> {
    reader: BufReader<R>,
    line: i64,
    max_line: usize,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> NdjsonLines<R> {
    /// Lines of at most `max_line` bytes (without the line break).
    pub fn new(body: R, max_line: usize) -> Self {
        Self {
            reader: BufReader::with_capacity(256 * 1024, body),
            line: 0,
            max_line,
            buf: Vec::new(),
        }
    }

    /// The next line that is not blank, with its number; `None` at the end of the body.
    pub async fn next(&mut self) -> Result<Option<(i64, &str)>, ImportError> {
        loop {
            self.buf.clear();
            if !self.read_line().await? {
                return Ok(None);
            }
            self.line += 1;
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return match std::str::from_utf8(&self.buf) {
                Ok(text) => Ok(Some((self.line, text))),
                Err(_) => Err(bad_row(self.line, "", "is not UTF-8")),
            };
        }
    }

    /// Reads up to the next line break (dropped) or the end of the body into `buf`;
    /// false when the body had nothing left.
    async fn read_line(&mut self) -> Result<bool, ImportError> {
        let mut any = false;
        loop {
            let (found, used) = {
                let available = self.reader.fill_buf().await.map_err(|e| body_error(&e))?;
                if available.is_empty() {
                    return Ok(any);
                }
                match available.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        self.buf.extend_from_slice(&available[..i]);
                        (true, i + 1)
                    }
                    None => {
                        self.buf.extend_from_slice(available);
                        (false, available.len())
                    }
                }
            };
            self.reader.consume(used);
            any = true;
            if self.buf.len() > self.max_line {
                return Err(bad_row(
                    self.line + 1,
                    "",
                    format!("is longer than {} bytes", self.max_line),
                ));
            }
            if found {
                return Ok(true);
            }
        }
    }
}

/// The events of one import, staged while its body streams in. Sequence 1 is kept for a
/// head event that can only be written at the end (totals, the periods a file covers) but
/// must come first in the stream.
///
/// One staging write runs in the background while the caller reads and checks the next
/// rows (the database and the server work at the same time); the next write, the commit
/// and the discard wait for it first. Commit through [`Staging::commit`], never
/// `EventStore::commit_staged` directly, so that the last write is in. (A request dropped
/// mid-way may leave a write that lands after it; the purge job removes such stages.)
pub struct Staging<'a> {
    store: &'a EventStore,
    pub id: Uuid,
    next: i32,
    in_flight: Option<tokio::task::JoinHandle<Result<(), StoreError>>>,
}

impl<'a> Staging<'a> {
    pub fn new(store: &'a EventStore, id: Uuid) -> Self {
        Self {
            store,
            id,
            next: 1,
            in_flight: None,
        }
    }

    /// Waits for the staging write in the background, if any.
    async fn settle(&mut self) -> Result<(), StoreError> {
        match self.in_flight.take() {
            None => Ok(()),
            Some(h) => h
                .await
                .map_err(|e| StoreError::Unavailable(format!("staging task failed: {e}")))?,
        }
    }

    /// Stages an event after the ones staged before.
    pub async fn push<E: serde::Serialize + cqrs_es::DomainEvent>(
        &mut self,
        event: &E,
    ) -> Result<(), ImportError> {
        let event = codec::encode(event)?;
        self.settle().await?;
        let (store, id, seq) = (self.store.clone(), self.id, self.next);
        self.in_flight = Some(tokio::spawn(
            async move { store.stage(id, seq, &[event]).await },
        ));
        self.next += 1;
        Ok(())
    }

    /// Stages the head event: it comes before every other staged event.
    pub async fn head<E: serde::Serialize + cqrs_es::DomainEvent>(
        &mut self,
        event: &E,
    ) -> Result<(), ImportError> {
        let event = codec::encode(event)?;
        self.settle().await?;
        self.store.stage(self.id, 0, &[event]).await?;
        Ok(())
    }

    /// Moves the staged events, then `tail`, into the stream (type, id, expected
    /// version) in one statement.
    pub async fn commit(
        &mut self,
        tenant: &str,
        stream: (&'static str, Uuid, i64),
        tail: &[NewEvent],
        metadata: &Value,
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<Appended, StoreError> {
        self.settle().await?;
        let (appended, _) = self
            .store
            .commit_staged(tenant, stream, self.id, tail, metadata, idempotency)
            .await?;
        Ok(appended)
    }

    /// Ends a streamed import: `read` is the outcome of reading the body (staging its
    /// blocks) and gives the completion event. Commits the staged events and that event
    /// with the Idempotency-Key's record (the body has been read whole, so its hash is
    /// complete); a failure to read or to commit discards what was staged.
    pub async fn finish(
        &mut self,
        tenant: &str,
        stream: (&'static str, Uuid, i64),
        read: Result<NewEvent, ImportError>,
        metadata: &Value,
        key: Option<&StreamedKey>,
    ) -> Result<Appended, ImportError> {
        let committed = match read {
            Ok(tail) => {
                let record = key.map(StreamedKey::record);
                self.commit(tenant, stream, &[tail], metadata, record.as_ref())
                    .await
                    .map_err(ImportError::from)
            }
            Err(e) => Err(e),
        };
        if committed.is_err() {
            self.discard().await;
        }
        committed
    }

    /// Drops what was staged (after a failure). A failure to drop is only logged: the
    /// elected purge job removes stale stages.
    pub async fn discard(&mut self) {
        if let Err(e) = self.settle().await {
            tracing::debug!(error = %e, "a staging write failed before the discard");
        }
        if let Err(e) = self.store.discard_staged(self.id).await {
            tracing::warn!(error = %e, "cannot discard staged events; the purge job removes them");
        }
    }
}

/// The body's size cap, as the error a streamed body reports when a request passes it.
#[derive(Debug, thiserror::Error)]
#[error("the body is larger than {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// An error reading a streamed body: 413 when it passed its limit, else 400.
pub fn body_error(e: &std::io::Error) -> ImportError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<BodyTooLarge>())
    {
        Some(BodyTooLarge(limit)) => BodyTooLarge(*limit).into(),
        None => ImportError::Body(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(body: &'static [u8], max: usize) -> Result<Vec<(i64, String)>, ImportError> {
        let mut l = NdjsonLines::new(body, max);
        let mut out = Vec::new();
        while let Some((n, text)) = l.next().await? {
            out.push((n, text.to_owned()));
        }
        Ok(out)
    }

    #[tokio::test]
    async fn ndjson_lines_are_numbered_as_they_stand_in_the_body() {
        let got = lines(b"{\"a\":1}\n\n  \r\n{\"b\":2}\r\n{\"c\":3}", 100)
            .await
            .unwrap();
        assert_eq!(
            got,
            [
                (1, "{\"a\":1}".to_owned()),
                (4, "{\"b\":2}".to_owned()),
                (5, "{\"c\":3}".to_owned())
            ]
        );
        assert!(lines(b"", 100).await.unwrap().is_empty());
        assert!(lines(b"\n\n", 100).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_long_or_non_utf8_line_is_a_bad_row() {
        let err = lines(b"{}\n{\"x\":\"0123456789\"}\n", 10)
            .await
            .unwrap_err();
        assert!(matches!(err, ImportError::BadRow { row: 2, .. }), "{err:?}");
        assert_eq!(lines(b"0123456789\n", 10).await.unwrap().len(), 1);
        let err = lines(b"{}\n\n\xff\xfe\n", 10).await.unwrap_err();
        assert!(matches!(err, ImportError::BadRow { row: 3, .. }), "{err:?}");
    }
}
