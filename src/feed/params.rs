//! Checking what clients send the feed: every refusal names its field (422).

use std::time::Duration;

use crate::eventstore::global::Cursor;
use crate::http::error::ApiError;

/// Most names in one filter.
const MAX_NAMES: usize = 50;
/// Longest long poll.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// `[a-z][a-z0-9_]{0,63}`: how stream types are spelled (`budget`, `bill_import`).
pub fn is_stream_type(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `[A-Za-z][A-Za-z0-9_]{0,127}`: how event types are spelled (`BudgetCreated`).
pub fn is_event_type(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A comma-separated list of names (`None`/empty: no filter).
pub fn names(
    field: &str,
    text: Option<&str>,
    valid: fn(&str) -> bool,
) -> Result<Option<Vec<String>>, ApiError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    list(
        field,
        text.split(',').map(str::trim).map(str::to_owned).collect(),
        valid,
    )
}

/// A list of names, checked.
pub fn list(
    field: &str,
    names: Vec<String>,
    valid: fn(&str) -> bool,
) -> Result<Option<Vec<String>>, ApiError> {
    if names.is_empty() {
        return Ok(None);
    }
    if names.len() > MAX_NAMES {
        return Err(ApiError::validation(
            field,
            format!("at most {MAX_NAMES} names"),
        ));
    }
    if let Some(bad) = names.iter().find(|n| !valid(n)) {
        return Err(ApiError::validation(
            field,
            format!("{bad:?} is not a valid name"),
        ));
    }
    Ok(Some(names))
}

/// The cursor to read after.
pub fn after(field: &str, text: Option<&str>) -> Result<Cursor, ApiError> {
    match text {
        None => Ok(Cursor::default()),
        Some(t) => super::cursor::decode(t).ok_or_else(|| {
            ApiError::validation(field, "not a cursor of this feed (use 0 for the start)")
        }),
    }
}

/// A whole number in `min..=max`, `default` when absent.
pub fn number(
    field: &str,
    text: Option<&str>,
    min: i64,
    max: i64,
    default: i64,
) -> Result<i64, ApiError> {
    let Some(text) = text else {
        return Ok(default);
    };
    match text.trim().parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::validation(
            field,
            format!("must be a whole number from {min} to {max}"),
        )),
    }
}

/// `wait`: seconds (fractions allowed) from 0 to 30.
pub fn wait(text: Option<&str>) -> Result<Duration, ApiError> {
    let Some(text) = text else {
        return Ok(Duration::ZERO);
    };
    match text.trim().parse::<f64>() {
        Ok(s) if (0.0..=MAX_WAIT.as_secs_f64()).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(ApiError::validation("wait", "must be seconds from 0 to 30")),
    }
}

/// A consumer group's or member's name: `[A-Za-z0-9_.-]{1,64}`.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_named_in_the_refusal() {
        assert_eq!(
            names("stream_types", Some(""), is_stream_type).unwrap(),
            None
        );
        assert_eq!(
            names("stream_types", Some("budget, bill_import"), is_stream_type).unwrap(),
            Some(vec!["budget".into(), "bill_import".into()])
        );
        let e = names("stream_types", Some("budget,Bad-Name"), is_stream_type).unwrap_err();
        assert!(matches!(e, ApiError::Validation { ref field, .. } if field == "stream_types"));
        assert!(is_event_type("BudgetCreated") && !is_event_type("1x") && !is_event_type("a b"));
        assert!(number("limit", Some("0"), 1, 1000, 100).is_err());
        assert_eq!(number("limit", None, 1, 1000, 100).unwrap(), 100);
        assert!(wait(Some("31")).is_err() && wait(Some("x")).is_err());
        assert_eq!(wait(Some("0.5")).unwrap(), Duration::from_millis(500));
        assert!(is_name("orders-1.v2") && !is_name("a/b") && !is_name(""));
    }
}
