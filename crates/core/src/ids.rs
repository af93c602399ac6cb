//! Instance id formats of the dialects Stowage speaks.
//!
//! An instance's id follows the dialect it is registered under, so that each
//! cloud SDK sees ids of the shape it expects: `rm-` + 16 lowercase
//! alphanumerics (RDS), `pc-` + 17 (PolarDB), `dds-` + 16 (ApsaraDB for
//! MongoDB), `cmgo-` + 8 (Tencent MongoDB). Generation takes its randomness
//! from the caller so this stays pure.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    Rds,
    Polardb,
    Dds,
    TencentMongo,
}

impl Dialect {
    pub const ALL: [Dialect; 4] = [
        Dialect::Rds,
        Dialect::Polardb,
        Dialect::Dds,
        Dialect::TencentMongo,
    ];

    pub fn prefix(self) -> &'static str {
        match self {
            Dialect::Rds => "rm-",
            Dialect::Polardb => "pc-",
            Dialect::Dds => "dds-",
            Dialect::TencentMongo => "cmgo-",
        }
    }

    /// The engines an instance of this product can be (a `dds-` instance is
    /// MongoDB; an `rm-` one is a relational database).
    pub fn engines(self) -> &'static [&'static str] {
        match self {
            Dialect::Rds | Dialect::Polardb => &["postgresql", "mysql"],
            Dialect::Dds | Dialect::TencentMongo => &["mongodb"],
        }
    }

    /// Length of the random part of a generated id.
    pub fn random_len(self) -> usize {
        match self {
            Dialect::Rds | Dialect::Dds => 16,
            Dialect::Polardb => 17,
            Dialect::TencentMongo => 8,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Rds => "rds",
            Dialect::Polardb => "polardb",
            Dialect::Dds => "dds",
            Dialect::TencentMongo => "tencent_mongo",
        }
    }
}

impl FromStr for Dialect {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dialect::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| IdError::UnknownDialect(s.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error(
        "malformed instance id {0:?}: expected a prefix (rm-, pc-, dds-, cmgo-) and 4 to 32 lowercase letters or digits"
    )]
    Malformed(String),
    #[error("unknown dialect {0:?}: expected one of rds, polardb, dds, tencent_mongo")]
    UnknownDialect(String),
}

/// A validated instance id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct InstanceId(String);

impl InstanceId {
    /// A new id for `dialect`, with the random part taken from `random`
    /// (needs at least `dialect.random_len()` bytes).
    pub fn generate(dialect: Dialect, random: &[u8]) -> InstanceId {
        assert!(
            random.len() >= dialect.random_len(),
            "not enough randomness"
        );
        let mut s = String::from(dialect.prefix());
        // First character a letter, as the clouds' ids are.
        for (i, b) in random[..dialect.random_len()].iter().enumerate() {
            let n = if i == 0 { 26 } else { 36 };
            s.push(ALPHABET[(*b as usize) % n] as char);
        }
        InstanceId(s)
    }

    pub fn parse(s: &str) -> Result<InstanceId, IdError> {
        let dialect = Self::dialect_of(s).ok_or_else(|| IdError::Malformed(s.to_string()))?;
        let rest = &s[dialect.prefix().len()..];
        // Tencent shard ids carry a `_N` suffix (cmgo-xxxx_0); the instance id does not.
        let ok_len = (4..=32).contains(&rest.len());
        let ok_chars = rest
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if ok_len && ok_chars {
            Ok(InstanceId(s.to_string()))
        } else {
            Err(IdError::Malformed(s.to_string()))
        }
    }

    pub fn dialect(&self) -> Dialect {
        Self::dialect_of(&self.0).expect("validated at construction")
    }

    fn dialect_of(s: &str) -> Option<Dialect> {
        Dialect::ALL.into_iter().find(|d| s.starts_with(d.prefix()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for InstanceId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InstanceId::parse(s)
    }
}

impl<'de> Deserialize<'de> for InstanceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        InstanceId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_the_dialect_shape() {
        let r: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37)).collect();
        let id = InstanceId::generate(Dialect::Rds, &r);
        assert!(id.as_str().starts_with("rm-"));
        assert_eq!(id.as_str().len(), 3 + 16);
        assert_eq!(InstanceId::parse(id.as_str()).unwrap(), id);
        assert_eq!(id.dialect(), Dialect::Rds);
        for d in Dialect::ALL {
            let id = InstanceId::generate(d, &r);
            assert_eq!(id.as_str().len(), d.prefix().len() + d.random_len());
            assert_eq!(InstanceId::parse(id.as_str()).unwrap().dialect(), d);
        }
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "rm-",
            "rm-ABCDEFGH",
            "xx-abcdefgh",
            "rm-abc",
            "rm-abcd efgh",
            "rm-../../etc",
            "pc-é1234567",
        ] {
            assert!(InstanceId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(InstanceId::parse("rm-uf6wjk5xxxxxxx").is_ok());
        assert!(InstanceId::parse("cmgo-dygv1rnp").is_ok());
        assert!(InstanceId::parse("dds-2zeb2d64cb46xxxx").is_ok());
    }
}
