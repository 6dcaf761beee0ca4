//! Envelope encryption of sensitive values (ADR 0018).
//!
//! Each subject whose sensitive attributes are stored gets a data key of its own (AES-256-
//! GCM). Values are sealed with the data key before they enter an event; the data key is
//! kept outside the log, wrapped (sealed) by the master key that the server is given
//! (`CLOUDLENS_MASTER_KEY` / `CLOUDLENS_MASTER_KEY_FILE`). Destroying a data key
//! (crypto-shredding) makes what it sealed unreadable forever, in every copy of the log,
//! without rewriting an event.

use std::path::Path;
use std::sync::Arc;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

/// Bytes of a key (AES-256).
pub const KEY_LEN: usize = 32;
/// Bytes of a GCM nonce, stored in front of each ciphertext.
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// No master key is configured: sensitive values cannot be stored or read.
    #[error("no master key is configured (CLOUDLENS_MASTER_KEY or CLOUDLENS_MASTER_KEY_FILE)")]
    NoMasterKey,
    /// A ciphertext or wrapped key does not open: another master key, or tampering.
    #[error("a sealed value does not open with this key (another master key, or tampered)")]
    DoesNotOpen,
}

/// The master key, parsed from base64; `{:?}` does not print it.
#[derive(Clone)]
pub struct MasterKey(Arc<Key<Aes256Gcm>>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

impl MasterKey {
    /// A key from its base64 text (32 bytes).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| anyhow::anyhow!("a master key is 32 bytes in base64"))?;
        anyhow::ensure!(
            bytes.len() == KEY_LEN,
            "a master key is 32 bytes in base64, this one has {}",
            bytes.len()
        );
        Ok(Self(Arc::new(*Key::<Aes256Gcm>::from_slice(&bytes))))
    }

    /// A new random key, as base64 text.
    pub fn generate() -> String {
        B64.encode(Aes256Gcm::generate_key(OsRng))
    }

    /// The key in `path`; with `create`, a new one is written there (mode 0600) first if
    /// the file does not exist.
    pub fn from_file(path: &Path, create: bool) -> anyhow::Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if create && !path.exists() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            writeln!(f, "{}", Self::generate())?;
            tracing::info!(path = %path.display(), "generated a master key for sensitive attributes");
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the master key {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

/// Wraps and unwraps data keys with the master key (if the server has one).
#[derive(Clone, Debug, Default)]
pub struct Vault {
    master: Option<MasterKey>,
}

/// A subject's data key, unwrapped.
pub struct DataKey(Key<Aes256Gcm>);

impl Vault {
    pub fn new(master: Option<MasterKey>) -> Self {
        Self { master }
    }

    pub fn is_enabled(&self) -> bool {
        self.master.is_some()
    }

    fn master(&self) -> Result<Aes256Gcm, CryptoError> {
        let key = self.master.as_ref().ok_or(CryptoError::NoMasterKey)?;
        Ok(Aes256Gcm::new(&key.0))
    }

    /// A new data key and its wrapped form, bound to `key_id` (a wrapped key moved to
    /// another id does not open).
    pub fn new_data_key(&self, key_id: &[u8]) -> Result<(DataKey, Vec<u8>), CryptoError> {
        let master = self.master()?;
        let key = Aes256Gcm::generate_key(OsRng);
        let wrapped = seal(&master, key_id, &key)?;
        Ok((DataKey(key), wrapped))
    }

    /// The data key `key_id` that `wrapped` holds.
    pub fn unwrap_key(&self, key_id: &[u8], wrapped: &[u8]) -> Result<DataKey, CryptoError> {
        let bytes = open(&self.master()?, key_id, wrapped)?;
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::DoesNotOpen);
        }
        Ok(DataKey(*Key::<Aes256Gcm>::from_slice(&bytes)))
    }
}

impl DataKey {
    /// `plaintext` sealed for `context` (associated data: it opens only for the same
    /// context), as base64 of nonce ‖ ciphertext.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<String, CryptoError> {
        Ok(B64.encode(seal(&Aes256Gcm::new(&self.0), context, plaintext)?))
    }

    pub fn open(&self, context: &[u8], sealed: &str) -> Result<Vec<u8>, CryptoError> {
        let bytes = B64.decode(sealed).map_err(|_| CryptoError::DoesNotOpen)?;
        open(&Aes256Gcm::new(&self.0), context, &bytes)
    }
}

fn seal(cipher: &Aes256Gcm, aad: &[u8], msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let ct = cipher
        .encrypt(&nonce, Payload { msg, aad })
        .map_err(|_| CryptoError::DoesNotOpen)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN {
        return Err(CryptoError::DoesNotOpen);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| CryptoError::DoesNotOpen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> Vault {
        Vault::new(Some(
            MasterKey::parse(&MasterKey::generate()).expect("a generated key parses"),
        ))
    }

    #[test]
    fn a_sealed_value_opens_with_its_key_and_context_only() {
        let v = vault();
        let (key, wrapped) = v.new_data_key(b"k1").expect("key");
        let sealed = key.seal(b"ctx", b"13800000000").expect("seal");
        assert!(!sealed.contains("13800000000"));
        let again = v.unwrap_key(b"k1", &wrapped).expect("unwrap");
        assert_eq!(again.open(b"ctx", &sealed).expect("open"), b"13800000000");
        assert_eq!(again.open(b"other", &sealed), Err(CryptoError::DoesNotOpen));
        assert!(v.unwrap_key(b"k2", &wrapped).is_err(), "bound to its id");
        assert!(
            vault().unwrap_key(b"k1", &wrapped).is_err(),
            "another master key"
        );
    }

    #[test]
    fn without_a_master_key_nothing_is_sealed() {
        assert_eq!(
            Vault::default().new_data_key(b"k").err(),
            Some(CryptoError::NoMasterKey)
        );
    }

    #[test]
    fn master_keys_must_be_32_bytes_of_base64() {
        assert!(MasterKey::parse("not base64!").is_err());
        assert!(MasterKey::parse(&B64.encode([0u8; 16])).is_err());
        assert!(MasterKey::parse(&B64.encode([7u8; 32])).is_ok());
    }
}
