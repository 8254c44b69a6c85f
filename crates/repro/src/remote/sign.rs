//! ed25519 signatures over cache entries (and `SHA256SUMS`): key pairs, the trusted-keys
//! file, and the signature record stored beside every entry.
//!
//! Keys are written `ed25519:<64 hex digits>`. A signature record is a small TOML document
//! naming the object, its blake3 hash and size, the signing key and the signature over all of
//! that, so a record can never vouch for another object or other bytes.

use std::fs;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::error::{bail, Context, Error, Result};

const PREFIX: &str = "ed25519:";
/// The first line of every signed message: a signature for something else never verifies here.
const DOMAIN: &str = "static-nginx cache entry v1";

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A public key, as it is written in the trusted-keys file and in signature records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey> {
        let bytes = text
            .trim()
            .strip_prefix(PREFIX)
            .and_then(unhex::<32>)
            .ok_or_else(|| Error::new(format!("{text:?} is not a public key (expected {PREFIX}<64 hex digits>)")))?;
        VerifyingKey::from_bytes(&bytes).map(PublicKey).map_err(|e| Error::new(format!("{text:?} is not a valid ed25519 public key: {e}")))
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}", hex(self.0.as_bytes()))
    }
}

/// A writer's secret key.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<SecretKey> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| Error::new(format!("cannot read the system's random source: {e}")))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The secret key file: `secret = "ed25519:<hex>"`.
    pub fn to_file_text(&self) -> String {
        format!(
            "# A static-nginx cache signing key: keep it secret (CI secrets, mode 0600).\n# public = \"{}\"\nsecret = \"{PREFIX}{}\"\n",
            self.public(),
            hex(&self.0.to_bytes())
        )
    }

    pub fn read(path: &Path) -> Result<SecretKey> {
        let text = fs::read_to_string(path).context(|| format!("cannot read the cache secret key {}", path.display()))?;
        let doc: toml_edit::DocumentMut = text.parse().context(|| format!("{} is not TOML", path.display()))?;
        let secret = doc
            .get("secret")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::new(format!("{}: no `secret = \"{PREFIX}...\"` line (write one with `cargo xtask cache keygen`)", path.display())))?;
        let bytes = secret
            .strip_prefix(PREFIX)
            .and_then(unhex::<32>)
            .ok_or_else(|| Error::new(format!("{}: the secret is not {PREFIX}<64 hex digits>", path.display())))?;
        Ok(SecretKey(SigningKey::from_bytes(&bytes)))
    }

    pub fn sign(&self, message: &[u8]) -> String {
        hex(&self.0.sign(message).to_bytes())
    }
}

/// The trusted-keys file: `trusted = ["ed25519:...", ...]`.
pub fn read_trusted(path: &Path) -> Result<Vec<PublicKey>> {
    let text = fs::read_to_string(path).context(|| format!("cannot read the trusted cache keys {}", path.display()))?;
    let doc: toml_edit::DocumentMut = text.parse().context(|| format!("{} is not TOML", path.display()))?;
    let Some(list) = doc.get("trusted") else { return Ok(Vec::new()) };
    let Some(list) = list.as_array() else { bail!("{}: `trusted` must be a list of \"{PREFIX}<hex>\" strings", path.display()) };
    list.iter()
        .map(|v| v.as_str().ok_or_else(|| Error::new(format!("{}: `trusted` holds a value that is not a string", path.display()))).and_then(PublicKey::parse))
        .collect::<Result<Vec<_>>>()
        .map_err(|e| Error::new(format!("{}: {e}", path.display())))
}

/// What a signature record vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub object: String,
    pub blake3: String,
    pub size: u64,
    pub key: String,
    pub signature: String,
}

impl Record {
    fn message(object: &str, blake3: &str, size: u64) -> String {
        format!("{DOMAIN}\nobject={object}\nblake3={blake3}\nsize={size}\n")
    }

    pub fn sign(object: &str, bytes: &[u8], key: &SecretKey) -> Record {
        let blake3 = blake3::hash(bytes).to_hex().to_string();
        let size = bytes.len() as u64;
        let signature = key.sign(Self::message(object, &blake3, size).as_bytes());
        Record { object: object.to_owned(), blake3, size, key: key.public().to_string(), signature }
    }

    /// The record as TOML (strings escaped the way TOML escapes them).
    pub fn to_text(&self) -> String {
        let mut doc = toml_edit::DocumentMut::new();
        doc["object"] = toml_edit::value(&self.object);
        doc["blake3"] = toml_edit::value(&self.blake3);
        doc["size"] = toml_edit::value(i64::try_from(self.size).unwrap_or(i64::MAX));
        doc["key"] = toml_edit::value(&self.key);
        doc["signature"] = toml_edit::value(&self.signature);
        doc.to_string()
    }

    pub fn parse(text: &str) -> Result<Record, String> {
        let doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("the signature record is not TOML: {e}"))?;
        let field = |name: &str| doc.get(name).and_then(|v| v.as_str()).map(str::to_owned).ok_or_else(|| format!("the signature record has no `{name}`"));
        let size = doc.get("size").and_then(|v| v.as_integer()).and_then(|s| u64::try_from(s).ok()).ok_or("the signature record has no `size`")?;
        Ok(Record { object: field("object")?, blake3: field("blake3")?, size, key: field("key")?, signature: field("signature")? })
    }

    /// Checks the record against `object` and `bytes` and its signature against `trusted`.
    /// The error says why, in words that stand after "refused: ".
    pub fn verify(&self, object: &str, bytes: &[u8], trusted: &[PublicKey]) -> Result<(), String> {
        if self.object != object {
            return Err(format!("its signature record is for another object ({})", self.object));
        }
        let key = PublicKey::parse(&self.key).map_err(|e| e.to_string())?;
        if !trusted.contains(&key) {
            return Err(format!("it is signed by {}, which is not a trusted key", self.key));
        }
        let actual = blake3::hash(bytes).to_hex().to_string();
        if bytes.len() as u64 != self.size {
            return Err(format!("it is {} bytes, but {} signed {} bytes (truncated or altered)", bytes.len(), self.key, self.size));
        }
        if actual != self.blake3 {
            return Err(format!("its content hashes to blake3:{actual}, but {} signed blake3:{} (altered)", self.key, self.blake3));
        }
        let signature = unhex::<64>(&self.signature).map(|b| Signature::from_bytes(&b)).ok_or("its signature is not 128 hex digits")?;
        key.0
            .verify(Self::message(object, &self.blake3, self.size).as_bytes(), &signature)
            .map_err(|_| format!("the signature does not verify under {}", self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_entries_verify_and_altered_ones_do_not() {
        let key = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let record = Record::sign("steps/a-1.tar.gz", b"bytes", &key);
        let parsed = Record::parse(&record.to_text()).unwrap();
        assert_eq!(parsed, record);
        let trusted = [key.public()];
        parsed.verify("steps/a-1.tar.gz", b"bytes", &trusted).unwrap();
        assert!(parsed.verify("steps/a-1.tar.gz", b"bytez", &trusted).unwrap_err().contains("altered"));
        assert!(parsed.verify("steps/a-1.tar.gz", b"byte", &trusted).unwrap_err().contains("truncated"));
        assert!(parsed.verify("steps/b-1.tar.gz", b"bytes", &trusted).unwrap_err().contains("another object"));
        assert!(parsed.verify("steps/a-1.tar.gz", b"bytes", &[other.public()]).unwrap_err().contains("not a trusted key"));
        let mut forged = parsed.clone();
        forged.signature = other.sign(b"whatever");
        assert!(forged.verify("steps/a-1.tar.gz", b"bytes", &trusted).unwrap_err().contains("does not verify"));
    }

    #[test]
    fn keys_round_trip_through_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        fs::write(dir.path().join("k"), key.to_file_text()).unwrap();
        assert_eq!(SecretKey::read(&dir.path().join("k")).unwrap().public(), key.public());
        fs::write(dir.path().join("t"), format!("trusted = [\"{}\"]\n", key.public())).unwrap();
        assert_eq!(read_trusted(&dir.path().join("t")).unwrap(), vec![key.public()]);
    }
}
