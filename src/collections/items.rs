//! What an item is and how a batch of them is read: a key (given or a new UUIDv7) and a
//! JSON object, checked before anything is written. No SQL here (`store` writes them).
//!
//! A batch body is NDJSON, one `{key?, data}` per line, read as it streams through the
//! shared `imports::NdjsonLines` into chunks of at most [`CHUNK_ITEMS`] items and
//! [`CHUNK_BYTES`] bytes; the first bad line refuses the whole batch (422 `invalid_row`
//! naming the line and the field). Within a chunk a repeated key keeps its last item; the
//! store's upserts give the same across chunks, so in a batch the last line of a key wins.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncRead;
use utoipa::ToSchema;

use crate::imports::{bad_row, ImportError, NdjsonLines};

/// Most bytes of an item's `data` (as JSON text).
pub const MAX_DATA_BYTES: usize = 1024 * 1024;
/// Most characters of a key.
pub const MAX_KEY_CHARS: usize = 200;
/// Most items in one batch request.
pub const MAX_BATCH_ITEMS: i64 = 100_000;
/// Items per statement of a batch.
pub const CHUNK_ITEMS: usize = 5_000;
/// Bytes of data per statement of a batch (large items make smaller chunks).
pub const CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// Most bytes of one NDJSON line: the data, its key and some room for the wrapping.
const MAX_LINE_BYTES: usize = MAX_DATA_BYTES + 64 * 1024;

/// An item as a client writes it (`POST …/items`: one JSON object, or one per NDJSON line).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemDraft {
    /// 1 to 200 printable characters, no `/`. Absent: a new UUIDv7. An existing key is
    /// written anew (its TTL starts again), like Redis `SET`.
    #[schema(min_length = 1, max_length = 200)]
    pub key: Option<String>,
    /// A JSON object of up to 1 MiB, without NUL characters.
    #[schema(value_type = Object)]
    pub data: Value,
}

/// An item's new data (`PUT …/items/{key}`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemData {
    /// A JSON object of up to 1 MiB, without NUL characters.
    #[schema(value_type = Object)]
    pub data: Value,
}

/// A checked item: its key and its data as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: String,
    pub data: String,
}

/// Why an item was refused: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub field: &'static str,
    pub message: String,
}

fn refused(field: &'static str, message: impl Into<String>) -> Refused {
    Refused {
        field,
        message: message.into(),
    }
}

/// A key: 1 to 200 characters, none of them a control character or `/`.
pub fn check_key(key: &str) -> Result<(), Refused> {
    if key.is_empty() || key.chars().count() > MAX_KEY_CHARS {
        return Err(refused("key", "must be 1 to 200 characters"));
    }
    if key.chars().any(|c| c.is_control() || c == '/') {
        return Err(refused(
            "key",
            "must be printable characters, without control characters or '/'",
        ));
    }
    Ok(())
}

/// Whether a JSON value holds a NUL character anywhere (PostgreSQL's `jsonb` refuses one).
pub fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Checks an item's key and data: the key as [`check_key`] (a new UUIDv7 when absent),
/// the data a JSON object of at most 1 MiB with no NUL character (PostgreSQL's `jsonb`
/// cannot hold one).
pub fn check(key: Option<String>, data: &Value) -> Result<Item, Refused> {
    let key = match key {
        Some(k) => {
            check_key(&k)?;
            k
        }
        None => uuid::Uuid::now_v7().to_string(),
    };
    if !data.is_object() {
        return Err(refused("data", "must be a JSON object"));
    }
    if has_nul(data) {
        return Err(refused("data", "must not contain NUL characters"));
    }
    let text = data.to_string();
    if text.len() > MAX_DATA_BYTES {
        return Err(refused("data", "must be at most 1 MiB of JSON"));
    }
    Ok(Item { key, data: text })
}

/// One NDJSON line as an item; errors name the line.
pub fn from_line(line: i64, text: &str) -> Result<Item, ImportError> {
    // serde would read a struct from an array too.
    if !text.trim_start().starts_with('{') {
        return Err(bad_row(line, "", "is not a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let draft: ItemDraft = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return bad_row(line, "", format!("is not valid JSON: {inner}"));
        }
        let message = inner.to_string();
        let field = match path.as_str() {
            "." => message
                .strip_prefix("missing field `")
                .or_else(|| message.strip_prefix("unknown field `"))
                .and_then(|rest| rest.split('`').next())
                .unwrap_or("")
                .to_owned(),
            p => p.to_owned(),
        };
        bad_row(line, &field, message)
    })?;
    de.end()
        .map_err(|e| bad_row(line, "", format!("is not one JSON object: {e}")))?;
    check(draft.key, &draft.data).map_err(|r| bad_row(line, r.field, r.message))
}

/// Items of a batch on their way to one statement: a repeated key keeps its last item.
#[derive(Debug, Default)]
pub struct Chunk {
    pub items: Vec<Item>,
    bytes: usize,
    at: HashMap<String, usize>,
}

impl Chunk {
    fn push(&mut self, item: Item) {
        self.bytes += item.data.len() + item.key.len();
        match self.at.get(&item.key) {
            Some(&i) => self.items[i] = item,
            None => {
                self.at.insert(item.key.clone(), self.items.len());
                self.items.push(item);
            }
        }
    }

    fn full(&self) -> bool {
        self.items.len() >= CHUNK_ITEMS || self.bytes >= CHUNK_BYTES
    }

    /// Keys and data as two arrays (the statement unnests them), in key order: within a
    /// chunk, concurrent batches lock the rows they share in the same order. Across
    /// chunks they may not (a batch streams), so two batches writing the same keys can
    /// still deadlock: one is rolled back whole and answers 503 with Retry-After.
    pub fn columns(mut self) -> (Vec<String>, Vec<String>) {
        self.items.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        self.items.into_iter().map(|i| (i.key, i.data)).unzip()
    }
}

/// A batch body as chunks, read as the body streams.
pub struct Batch<R> {
    lines: NdjsonLines<R>,
    /// Items read so far (lines that carried one).
    pub items: i64,
}

impl<R: AsyncRead + Unpin> Batch<R> {
    pub fn new(body: R) -> Self {
        Self {
            lines: NdjsonLines::new(body, MAX_LINE_BYTES),
            items: 0,
        }
    }

    /// The next chunk; `None` once the body is read to its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Chunk>, ImportError> {
        let mut chunk = Chunk::default();
        while !chunk.full() {
            let Some((line, text)) = self.lines.next().await? else {
                break;
            };
            if self.items >= MAX_BATCH_ITEMS {
                return Err(bad_row(
                    line,
                    "",
                    format!("at most {MAX_BATCH_ITEMS} items per request"),
                ));
            }
            chunk.push(from_line(line, text)?);
            self.items += 1;
        }
        Ok((!chunk.items.is_empty()).then_some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bad(line: i64, text: &str) -> (i64, String) {
        match from_line(line, text).unwrap_err() {
            ImportError::BadRow { row, column, .. } => (row, column),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_are_printable_and_without_slash() {
        for ok in [
            "a",
            "task-42",
            "日志:1",
            "with space",
            "50%",
            &"k".repeat(200),
        ] {
            assert!(check_key(ok).is_ok(), "{ok:?}");
        }
        for no in [
            "",
            "a/b",
            "tab\there",
            "nul\0",
            "line\nbreak",
            &"k".repeat(201),
        ] {
            assert_eq!(check_key(no).unwrap_err().field, "key", "{no:?}");
        }
    }

    #[test]
    fn data_is_an_object_without_nul_of_at_most_one_mib() {
        assert!(check(None, &json!({"level": "INFO"})).is_ok());
        let generated = check(None, &json!({})).unwrap().key;
        assert!(uuid::Uuid::parse_str(&generated).is_ok());
        for data in [json!([1]), json!("x"), json!(null), json!(3)] {
            assert_eq!(check(None, &data).unwrap_err().field, "data", "{data}");
        }
        for data in [
            json!({"a": "x\u{0}y"}),
            json!({"a\u{0}": 1}),
            json!({"a": [{"b": "\u{0}"}]}),
        ] {
            assert_eq!(check(None, &data).unwrap_err().field, "data", "{data}");
        }
        let big = "x".repeat(MAX_DATA_BYTES);
        assert_eq!(check(None, &json!({ "a": big })).unwrap_err().field, "data");
        let fits = "x".repeat(MAX_DATA_BYTES - 10);
        assert!(check(None, &json!({ "a": fits })).is_ok());
    }

    #[test]
    fn a_bad_line_names_its_line_and_field() {
        assert_eq!(bad(3, "{\"data\": [1]}"), (3, "data".into()));
        assert_eq!(bad(4, "{\"key\": 5, \"data\": {}}"), (4, "key".into()));
        assert_eq!(
            bad(5, "{\"key\": \"a/b\", \"data\": {}}"),
            (5, "key".into())
        );
        assert_eq!(bad(6, "{\"key\": \"a\"}"), (6, "data".into()));
        assert_eq!(bad(7, "{\"data\": {}, \"ttl\": 5}"), (7, "ttl".into()));
        assert_eq!(bad(8, "{\"data\": {"), (8, "".into()));
        assert_eq!(bad(9, "{\"data\": {}} {\"data\": {}}"), (9, "".into()));
        assert_eq!(bad(10, "[1, 2]"), (10, "".into()));
        assert_eq!(
            bad(11, "{\"data\": {\"a\": \"\\u0000\"}}"),
            (11, "data".into())
        );
        let item = from_line(1, "{\"key\": \"k\", \"data\": {\"n\": 1.50}}").unwrap();
        assert_eq!(item.key, "k");
        // Numbers keep their text (serde_json's arbitrary precision).
        assert_eq!(item.data, "{\"n\":1.50}");
    }

    #[tokio::test]
    async fn a_batch_keeps_the_last_item_of_a_key_and_counts_every_line() {
        let body: &[u8] = b"{\"key\":\"a\",\"data\":{\"v\":1}}\n{\"key\":\"b\",\"data\":{}}\n\n{\"key\":\"a\",\"data\":{\"v\":2}}\n";
        let mut batch = Batch::new(body);
        let chunk = batch.next_chunk().await.unwrap().unwrap();
        assert!(batch.next_chunk().await.unwrap().is_none());
        assert_eq!(batch.items, 3);
        let (keys, data) = chunk.columns();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(data, ["{\"v\":2}", "{}"]);
    }

    #[tokio::test]
    async fn a_batch_is_cut_into_chunks() {
        let mut body = String::new();
        for i in 0..(CHUNK_ITEMS + 3) {
            body.push_str(&format!("{{\"data\":{{\"i\":{i}}}}}\n"));
        }
        let mut batch = Batch::new(body.as_bytes());
        let first = batch.next_chunk().await.unwrap().unwrap();
        let second = batch.next_chunk().await.unwrap().unwrap();
        assert!(batch.next_chunk().await.unwrap().is_none());
        assert_eq!((first.items.len(), second.items.len()), (CHUNK_ITEMS, 3));
    }
}
