//! Keys and authenticated encryption.
//!
//! * The **master key** is 72 random bytes made at `init`: a 32-byte
//!   encryption key (XChaCha20-Poly1305), a 32-byte id key (keyed BLAKE3 of a
//!   chunk's plaintext is the chunk's id, so ids reveal nothing to someone
//!   without the key) and an 8-byte chunker seed (the gear table is keyed, so
//!   chunk boundaries do not fingerprint content).
//! * A **key file** wraps the master key with a key derived from the
//!   repository password by Argon2id. Several key files may wrap the same
//!   master key; changing a password rewrites a key file, never the data.
//! * Every encrypted object is `nonce (24) ‖ ciphertext ‖ tag (16)` with a
//!   fresh random nonce. The associated data names the object's role, so a
//!   chunk cannot be passed off as an index or a snapshot.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes an encrypted object is longer than its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// What an encrypted object is; bound into its MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Chunk,
    PackHeader,
    Index,
    Snapshot,
    Config,
    MasterKey,
    /// A secret kept in the service's catalog (access-key secrets, database passwords).
    CatalogSecret,
}

impl Role {
    fn aad(self) -> &'static [u8] {
        match self {
            Role::Chunk => b"stowage/1/chunk",
            Role::PackHeader => b"stowage/1/pack-header",
            Role::Index => b"stowage/1/index",
            Role::Snapshot => b"stowage/1/snapshot",
            Role::Config => b"stowage/1/config",
            Role::MasterKey => b"stowage/1/master-key",
            Role::CatalogSecret => b"stowage/1/catalog-secret",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("ciphertext too short")]
    Truncated,
    #[error("authentication failed (wrong key, or the data was modified)")]
    BadMac,
    #[error("key derivation failed: {0}")]
    Kdf(String),
    #[error("malformed key file: {0}")]
    KeyFile(String),
}

#[derive(Clone)]
pub struct MasterKey {
    enc: [u8; 32],
    id: [u8; 32],
    chunker_seed: u64,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("OS randomness");
    b
}

impl MasterKey {
    pub fn generate() -> MasterKey {
        let seed: [u8; 8] = random_bytes();
        MasterKey {
            enc: random_bytes(),
            id: random_bytes(),
            chunker_seed: u64::from_le_bytes(seed),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(72);
        v.extend_from_slice(&self.enc);
        v.extend_from_slice(&self.id);
        v.extend_from_slice(&self.chunker_seed.to_le_bytes());
        v
    }

    fn from_bytes(b: &[u8]) -> Option<MasterKey> {
        if b.len() != 72 {
            return None;
        }
        Some(MasterKey {
            enc: b[..32].try_into().ok()?,
            id: b[32..64].try_into().ok()?,
            chunker_seed: u64::from_le_bytes(b[64..72].try_into().ok()?),
        })
    }

    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }

    /// The id of a chunk: keyed BLAKE3 of its plaintext.
    pub fn chunk_id(&self, data: &[u8]) -> stowage_core::manifest::ChunkId {
        stowage_core::manifest::ChunkId(*blake3::keyed_hash(&self.id, data).as_bytes())
    }

    pub fn cipher(&self) -> Cipher {
        Cipher(XChaCha20Poly1305::new((&self.enc).into()))
    }
}

/// An AEAD ready to seal and open objects; cheap to clone per thread.
#[derive(Clone)]
pub struct Cipher(XChaCha20Poly1305);

impl Cipher {
    /// A cipher for a key the caller keeps (e.g. the server's catalog key).
    pub fn from_key(key: &[u8; 32]) -> Cipher {
        Cipher(XChaCha20Poly1305::new(key.into()))
    }

    pub fn seal(&self, role: Role, plaintext: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = random_bytes();
        let ct = self
            .0
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: role.aad(),
                },
            )
            .expect("encryption of in-memory data cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    pub fn open(&self, role: Role, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < OVERHEAD {
            return Err(CryptoError::Truncated);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: role.aad(),
                },
            )
            .map_err(|_| CryptoError::BadMac)
    }
}

/// Argon2id cost parameters, stored in each key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes: about a quarter second on one core.
    fn default() -> Self {
        KdfParams {
            m_cost: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

impl KdfParams {
    /// Cheap parameters for tests only.
    pub fn insecure_fast() -> Self {
        KdfParams {
            m_cost: 256,
            t_cost: 1,
            p_cost: 1,
        }
    }
}

/// `keys/<id>`: plaintext JSON holding the wrapped master key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u32,
    pub kdf: String,
    pub params: KdfParams,
    pub salt: String,
    pub created_ms: i64,
    pub hostname: String,
    /// hex(nonce ‖ ciphertext ‖ tag) of the master key.
    pub data: String,
}

fn derive(password: &[u8], salt: &[u8], p: KdfParams) -> Result<[u8; 32], CryptoError> {
    let params = argon2::Params::new(p.m_cost, p.t_cost, p.p_cost, Some(32))
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    a.hash_password_into(password, salt, &mut out)
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    Ok(out)
}

impl KeyFile {
    pub fn wrap(
        master: &MasterKey,
        password: &[u8],
        params: KdfParams,
        created_ms: i64,
        hostname: &str,
    ) -> Result<KeyFile, CryptoError> {
        let salt: [u8; 16] = random_bytes();
        let k = derive(password, &salt, params)?;
        let c = Cipher(XChaCha20Poly1305::new((&k).into()));
        Ok(KeyFile {
            version: 1,
            kdf: "argon2id".into(),
            params,
            salt: hex::encode(salt),
            created_ms,
            hostname: hostname.into(),
            data: hex::encode(c.seal(Role::MasterKey, &master.to_bytes())),
        })
    }

    pub fn unwrap(&self, password: &[u8]) -> Result<MasterKey, CryptoError> {
        if self.version != 1 || self.kdf != "argon2id" {
            return Err(CryptoError::KeyFile(format!(
                "unsupported key file version {} / kdf {}",
                self.version, self.kdf
            )));
        }
        let salt = hex::decode(&self.salt).map_err(|e| CryptoError::KeyFile(e.to_string()))?;
        let data = hex::decode(&self.data).map_err(|e| CryptoError::KeyFile(e.to_string()))?;
        let k = derive(password, &salt, self.params)?;
        let c = Cipher(XChaCha20Poly1305::new((&k).into()));
        let raw = c.open(Role::MasterKey, &data)?;
        MasterKey::from_bytes(&raw)
            .ok_or_else(|| CryptoError::KeyFile("bad master key length".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_file_round_trip_and_wrong_password() {
        let mk = MasterKey::generate();
        let kf = KeyFile::wrap(&mk, b"pw", KdfParams::insecure_fast(), 0, "h").unwrap();
        let json = serde_json::to_string(&kf).unwrap();
        let kf: KeyFile = serde_json::from_str(&json).unwrap();
        let back = kf.unwrap(b"pw").unwrap();
        assert_eq!(back.to_bytes(), mk.to_bytes());
        assert_eq!(kf.unwrap(b"wrong").unwrap_err(), CryptoError::BadMac);
    }

    #[test]
    fn roles_are_bound() {
        let c = MasterKey::generate().cipher();
        let s = c.seal(Role::Chunk, b"data");
        assert_eq!(c.open(Role::Chunk, &s).unwrap(), b"data");
        assert_eq!(c.open(Role::Index, &s).unwrap_err(), CryptoError::BadMac);
        assert_eq!(
            c.open(Role::Chunk, &s[..10]).unwrap_err(),
            CryptoError::Truncated
        );
    }

    proptest! {
        #[test]
        fn seal_open_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096), flip in any::<usize>()) {
            let c = MasterKey::generate().cipher();
            let mut s = c.seal(Role::Chunk, &data);
            prop_assert_eq!(s.len(), data.len() + OVERHEAD);
            prop_assert_eq!(c.open(Role::Chunk, &s).unwrap(), data);
            let i = flip % s.len();
            s[i] ^= 1;
            prop_assert!(c.open(Role::Chunk, &s).is_err());
        }
    }
}
