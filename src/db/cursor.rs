//! Opaque page cursors: a JSON value (the last row's sort key), base64url without
//! padding. What a cursor holds is the query's business; a cursor that does not decode
//! to it was not given by this server.

use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Serialize;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The cursor of `key`.
pub fn encode(key: &impl Serialize) -> String {
    B64.encode(serde_json::to_vec(key).unwrap_or_default())
}

/// The key of a cursor [`encode`] gave, or `None`.
pub fn decode<T: DeserializeOwned>(cursor: &str) -> Option<T> {
    serde_json::from_slice(&B64.decode(cursor).ok()?).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cursor_decodes_to_its_key_and_nothing_else() {
        let c = super::encode(&(0.5_f32, "document", "x"));
        assert_eq!(
            super::decode::<(f32, String, String)>(&c),
            Some((0.5, "document".into(), "x".into()))
        );
        assert_eq!(super::decode::<(f32, String, String)>("nope!"), None);
        assert_eq!(super::decode::<(String, String)>(&c), None);
    }
}
