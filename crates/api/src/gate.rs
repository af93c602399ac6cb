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
    /// The shared catalog could not record the nonce (the request may be
    /// retried).
    Unavailable,
}

/// How long a nonce is remembered: a request's timestamp is accepted up to
/// `MAX_SKEW_MS` either side of the server's clock.
const NONCE_KEEP_MS: i64 = 2 * crate::alibaba::signature::MAX_SKEW_MS;

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
    /// carries one) with a nonce not seen in the window: by this node, and
    /// with a shared catalog by any node (recorded in the catalog).
    pub async fn admit(
        &self,
        key_id: &str,
        nonce: Option<&str>,
        now_ms: i64,
    ) -> Result<(), Refused> {
        self.limiter
            .lock()
            .expect("rate limiter")
            .take(key_id, now_ms)
            .map_err(Refused::Throttled)?;
        let Some(n) = nonce else {
            return Ok(());
        };
        if !self.svc.shared_catalog() {
            let fresh = self
                .nonces
                .lock()
                .expect("nonce cache")
                .check_and_insert(key_id, n, now_ms);
            return if fresh {
                Ok(())
            } else {
                Err(Refused::NonceUsed)
            };
        }
        // Only the catalog remembers (by its clock): a request refused
        // because it could not be recorded may be retried as it is.
        let now = self.svc.catalog_now_ms();
        match self
            .svc
            .remember_nonce(key_id, n, now, now + NONCE_KEEP_MS)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Refused::NonceUsed),
            Err(e) => {
                tracing::warn!(error = %e.message, "could not record a request's nonce");
                Err(Refused::Unavailable)
            }
        }
    }
}
