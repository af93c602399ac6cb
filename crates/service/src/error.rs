//! The service's one error type at its boundary.
//!
//! Each error has a kind (what the API maps to a status and a dialect code)
//! and a message written for the person reading it. Internal failures keep
//! their detail in the log; the message stays useful without leaking secrets.

use serde::Serialize;
use stowage_catalog::CatalogError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorKind {
    /// A parameter is missing or malformed.
    InvalidParameter,
    /// No such object for this account.
    NotFound,
    /// The object exists already.
    Conflict,
    /// The instance already has a backup in progress.
    InstanceBusy,
    /// The restore target is not empty.
    TargetNotEmpty,
    /// The restore target is outside the folders the caller may restore into.
    TargetNotAllowed,
    /// The restore target holds something that must never be removed (a
    /// live database, Stowage's own data, a system folder).
    UnsafeTarget,
    /// Missing, unknown or wrong access key.
    Unauthorized,
    /// The access key exists but is disabled.
    KeyDisabled,
    /// Authenticated, but not allowed to do this.
    Forbidden,
    /// The operation cannot be done in the object's current state.
    InvalidState,
    /// The database refused or failed (unreachable, wrong password, missing
    /// privilege …): the engine's own kind, kept for the API to answer precisely.
    Database(stowage_engines::ErrorKind),
    /// Something on our side failed.
    Internal,
}

#[derive(Debug, Clone, thiserror::Error, Serialize)]
#[error("{message}")]
pub struct ServiceError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ServiceError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ServiceError {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParameter, message)
    }
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::NotFound, format!("{what} not found"))
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl From<CatalogError> for ServiceError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::NotFound(w) => ServiceError::not_found(w),
            CatalogError::Conflict(m) => ServiceError::new(ErrorKind::Conflict, m),
            CatalogError::InstanceBusy(i) => ServiceError::new(
                ErrorKind::InstanceBusy,
                format!(
                    "instance {i} already has a backup task in progress; wait for it or cancel it"
                ),
            ),
            CatalogError::LeaseLost(m) => ServiceError::new(ErrorKind::Conflict, m),
            CatalogError::Transition(t) => {
                ServiceError::new(ErrorKind::InvalidState, t.to_string())
            }
            CatalogError::Db(m) => {
                tracing::error!(error = %m, "catalog error");
                ServiceError::internal("catalog error (see the server log)")
            }
        }
    }
}

impl From<stowage_engines::EngineError> for ServiceError {
    fn from(e: stowage_engines::EngineError) -> Self {
        ServiceError::new(ErrorKind::Database(e.kind), e.message)
    }
}

impl From<stowage_repo::RepoError> for ServiceError {
    fn from(e: stowage_repo::RepoError) -> Self {
        use stowage_repo::RepoError as R;
        match e {
            R::SnapshotNotFound(s) => ServiceError::not_found(format!("snapshot {s}")),
            R::Locked(l) => ServiceError::new(ErrorKind::InvalidState, l.to_string()),
            e => ServiceError::internal(format!("repository: {e}")),
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;
