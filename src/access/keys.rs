//! API key secrets: generation, the public prefix, and the slow hash (argon2id) that is
//! all the server keeps. Pure functions.
//!
//! A key reads `clk_<prefix>_<secret>`: `prefix` is 12 hex digits (public: it finds the
//! key), `secret` 64 hex digits (244 random bits from two UUIDv4s).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use uuid::Uuid;

/// A new key: the whole secret (shown once) and its prefix.
pub struct NewKey {
    pub key: String,
    pub prefix: String,
}

pub fn generate() -> NewKey {
    let prefix = Uuid::new_v4().simple().to_string()[..12].to_owned();
    let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    NewKey {
        key: format!("clk_{prefix}_{secret}"),
        prefix,
    }
}

/// The prefix of a well-formed key, `None` for anything else.
pub fn prefix_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("clk_")?;
    let (prefix, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(prefix, 12) && hex(secret, 64)).then_some(prefix)
}

/// Argon2id (the crate's defaults: 19 MiB, 2 passes) with a random salt, as a PHC string.
pub fn hash(key: &str) -> anyhow::Result<String> {
    let salt = SaltString::encode_b64(Uuid::new_v4().as_bytes())
        .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(key.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hash: {e}"))?
        .to_string())
}

/// Whether `key` matches the stored hash.
pub fn verify(key: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(key.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_verifies_against_its_hash_and_nothing_else_does() {
        let k = generate();
        assert_eq!(prefix_of(&k.key), Some(k.prefix.as_str()));
        let h = hash(&k.key).unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify(&k.key, &h));
        let other = generate();
        assert!(!verify(&other.key, &h));
        assert!(!verify(&k.key, "not a hash"));
        // Two keys never share a prefix or a secret (random, 48 + 244 bits).
        assert_ne!(k.prefix, other.prefix);
    }

    #[test]
    fn only_well_formed_keys_have_a_prefix() {
        for bad in [
            "",
            "clk_",
            "clk_abc_def",
            "Bearer x",
            "clk_0123456789ab_short",
        ] {
            assert_eq!(prefix_of(bad), None, "{bad}");
        }
        let good = format!("clk_0123456789ab_{}", "f".repeat(64));
        assert_eq!(prefix_of(&good), Some("0123456789ab"));
    }
}
