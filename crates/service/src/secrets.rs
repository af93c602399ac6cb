//! Secrets at rest in the catalog.
//!
//! Access-key secrets must be recoverable (the cloud dialects' HMAC
//! signatures need the secret itself, a hash is not enough), and database
//! passwords must be sent to the database. Both are sealed with the server's
//! catalog key, a 32-byte random key in `<data-dir>/server.key` (mode 0600)
//! that never enters the catalog.

use crate::error::{ServiceError, ServiceResult};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use stowage_core::Secret;
use stowage_repo::crypto::{Cipher, Role, random_bytes};

pub struct SecretBox {
    cipher: Cipher,
    check: String,
    /// The key download links are signed with, derived from the server key:
    /// every node of a deployment signs and checks them alike.
    link_key: [u8; 32],
}

/// A 32-byte key kept hex-encoded in `path`, created (0600) on first use.
pub fn load_or_create_key(path: &Path) -> ServiceResult<[u8; 32]> {
    match std::fs::read(path) {
        Ok(b) => {
            let s = String::from_utf8_lossy(&b);
            let mut k = [0u8; 32];
            hex::decode_to_slice(s.trim(), &mut k).map_err(|_| {
                ServiceError::internal(format!("{} is not a valid key file", path.display()))
            })?;
            Ok(k)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k: [u8; 32] = random_bytes();
            write_private(path, hex::encode(k).as_bytes())?;
            Ok(k)
        }
        Err(e) => Err(ServiceError::internal(format!("{}: {e}", path.display()))),
    }
}

impl SecretBox {
    /// Loads the key file, creating it (0600) on first start.
    pub fn load_or_create(path: &Path) -> ServiceResult<SecretBox> {
        Ok(SecretBox::from_key(&load_or_create_key(path)?))
    }

    pub fn from_key(key: &[u8; 32]) -> SecretBox {
        SecretBox {
            cipher: Cipher::from_key(key),
            check: hex::encode(blake3::keyed_hash(key, b"stowage server key check v1").as_bytes()),
            link_key: *blake3::keyed_hash(key, b"stowage download link key v1").as_bytes(),
        }
    }

    /// The key download links are signed with (see `downloads`).
    pub fn link_key(&self) -> [u8; 32] {
        self.link_key
    }

    /// A value that tells keys apart and reveals nothing of them: the
    /// catalog keeps the one of the key its secrets are sealed with, so a
    /// node started with another key is refused (`Service::start`).
    pub fn check_value(&self) -> &str {
        &self.check
    }

    /// Loads an existing key file (never creates one).
    pub fn load(path: &Path) -> ServiceResult<SecretBox> {
        if !path.exists() {
            return Err(ServiceError::invalid(format!(
                "server key {}: no such file",
                path.display()
            )));
        }
        SecretBox::load_or_create(path)
    }

    /// `sealed` opened with this key and sealed with `to`'s.
    pub fn reseal(&self, sealed: &[u8], to: &SecretBox) -> Option<Vec<u8>> {
        let raw = self.cipher.open(Role::CatalogSecret, sealed).ok()?;
        Some(to.cipher.seal(Role::CatalogSecret, &raw))
    }

    pub fn seal(&self, s: &Secret) -> Vec<u8> {
        self.cipher.seal(Role::CatalogSecret, s.expose().as_bytes())
    }

    pub fn open(&self, sealed: &[u8]) -> ServiceResult<Secret> {
        let raw = self.cipher.open(Role::CatalogSecret, sealed).map_err(|_| {
            ServiceError::internal(
                "a stored secret does not open with this server's key (was server.key replaced?)",
            )
        })?;
        Ok(Secret::new(String::from_utf8_lossy(&raw).into_owned()))
    }
}

/// Writes a file readable by its owner only, atomically.
pub fn write_private(path: &Path, data: &[u8]) -> ServiceResult<()> {
    let tmp = path.with_extension("tmp");
    let res = (|| -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    res.map_err(|e| ServiceError::internal(format!("{}: {e}", path.display())))
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Random string over `[A-Za-z0-9]` (or uppercase+digits if `upper`).
pub fn random_token(len: usize, upper: bool) -> String {
    let alphabet = if upper {
        &b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[..]
    } else {
        ALNUM
    };
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let b: [u8; 64] = random_bytes();
        for x in b {
            // rejection sampling keeps the distribution uniform
            let lim = 256 - 256 % alphabet.len();
            if (x as usize) < lim && out.len() < len {
                out.push(alphabet[x as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

/// A random UUID (version 4 layout), upper-case, for request ids.
pub fn random_uuid() -> String {
    let mut b: [u8; 16] = random_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode_upper(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}
