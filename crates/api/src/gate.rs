//! What every cloud dialect does to a signed request besides checking its
//! signature, in one place: the key lookup, the per-key rate limit, and
//! replay protection by nonce. Each dialect verifies its own signatures
//! and maps a refusal to its own error shape and code.

use crate::alibaba::rpc::RateLimiter;
use crate::alibaba::signature::NonceCache;
use std::sync::{Arc, Mutex};
use stowage_core::Secret;
use stowage_service::{Principal, Service, ServiceResult};

/// Why the gate turned a correctly signed request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Over the key's rate: wait this many ms.
    Throttled(u64),
    /// The nonce was used within the timestamp window: a replay.
    NonceUsed,
}

/// Shared by the dialects of one server.
pub struct Gate {
    pub svc: Arc<Service>,
    nonces: Mutex<NonceCache>,
    limiter: Mutex<RateLimiter>,
}

impl Gate {
    pub fn new(svc: Arc<Service>, rate_per_key: u32) -> Gate {
        Gate {
            svc,
            nonces: Mutex::new(NonceCache::default()),
            limiter: Mutex::new(RateLimiter::new(rate_per_key)),
        }
    }

    /// The key's principal and secret (unknown or disabled: the service's
    /// error, which each dialect words its own way).
    pub async fn key(&self, key_id: &str) -> ServiceResult<(Principal, Secret)> {
        self.svc.key_secret(key_id).await
    }

    /// Lets a verified request through: within its key's rate, and (when it
    /// carries one) with a nonce not seen in the window.
    pub fn admit(&self, key_id: &str, nonce: Option<&str>, now_ms: i64) -> Result<(), Refused> {
        self.limiter
            .lock()
            .expect("rate limiter")
            .take(key_id, now_ms)
            .map_err(Refused::Throttled)?;
        if let Some(n) = nonce
            && !self
                .nonces
                .lock()
                .expect("nonce cache")
                .check_and_insert(key_id, n, now_ms)
        {
            return Err(Refused::NonceUsed);
        }
        Ok(())
    }
}
