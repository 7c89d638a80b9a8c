//! Error types: [`CacheError`] for the cache layer, [`StorehausError`] for
//! store operations.

mod detail;
#[cfg(feature = "wal")]
mod wal;

use std::fmt;
use std::sync::Arc;

pub use detail::{ErrorDetail, ServerErrorKind};
#[cfg(feature = "wal")]
pub use wal::WalError;

/// An error of the cache layer.
///
/// Store operations never return these for Redis failures (they fall back to
/// the database); the manual operations of [`CacheManager`](crate::CacheManager)
/// and [`CacheManager::health_check`](crate::CacheManager::health_check) do.
///
/// The variants that come from somewhere else keep it:
/// `std::error::Error::source` of a `ConnectionError`,
/// `AuthenticationFailed` or `Command` from Redis is the `redis::RedisError`,
/// and of a `CircuitOpen` the failure that opened the breaker. A `Command`
/// the server refused carries its [`ServerErrorKind`]
/// ([`server_error_kind`](Self::server_error_kind)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CacheError {
    /// The cache server could not be reached, the connection dropped, or
    /// the server refused to set up the session (a database index it does
    /// not have, a replica where a primary was expected).
    ConnectionError(ErrorDetail),
    /// The server refused our credentials (wrong password, unknown ACL
    /// user). Not retried: another try would be refused the same way.
    AuthenticationFailed(ErrorDetail),
    /// A value could not be encoded, or a cached entry could not be decoded
    /// (corrupt, truncated, or written by another schema).
    SerializationError(ErrorDetail),
    /// The operation's time budget (`CacheConfig::with_timeout`) ran out.
    Timeout {
        /// The budget that ran out, in milliseconds.
        budget_ms: u64,
    },
    /// The configuration was rejected (bad URL, zero pool size, forbidden
    /// prefix, ...). Returned by [`CacheManager::new`](crate::CacheManager::new).
    InvalidConfig(String),
    /// A prefix, pattern, tag or TTL given to a manual operation was rejected.
    InvalidInput(String),
    /// The server answered with an error (out of memory, wrong type, ...):
    /// see [`server_error_kind`](Self::server_error_kind).
    Command(ErrorDetail),
    /// The circuit breaker is open after repeated failures: the cache is
    /// skipped until a probe succeeds.
    CircuitOpen {
        /// Consecutive failures that opened the breaker.
        failures: u32,
        /// Milliseconds until the next probe is allowed.
        retry_in_ms: u64,
        /// The last failure before the breaker opened or stayed open (its
        /// cause: a refused password, a refused connection, no answer);
        /// also the error's `source()`.
        last_error: Option<Arc<CacheError>>,
    },
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheError::ConnectionError(d) => write!(f, "cache connection error: {d}"),
            CacheError::AuthenticationFailed(d) => write!(f, "cache authentication failed: {d}"),
            CacheError::SerializationError(d) => write!(f, "cache serialization error: {d}"),
            CacheError::Timeout { budget_ms } => write!(f, "cache operation timed out after {budget_ms} ms"),
            CacheError::InvalidConfig(m) => write!(f, "invalid cache configuration: {m}"),
            CacheError::InvalidInput(m) => write!(f, "invalid cache input: {m}"),
            CacheError::Command(d) => write!(f, "cache command failed: {d}"),
            CacheError::CircuitOpen {
                failures,
                retry_in_ms,
                last_error,
            } => {
                write!(f, "cache circuit breaker is open after {failures} consecutive failures")?;
                if let Some(last) = last_error {
                    write!(f, " (last: {last})")?;
                }
                write!(f, "; next probe in {retry_in_ms} ms")
            }
        }
    }
}

/// Written by hand rather than derived, so that `source()` is the
/// underlying error itself (the `redis::RedisError`), not the
/// [`ErrorDetail`] around it, which would repeat its message.
impl std::error::Error for CacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CacheError::ConnectionError(d)
            | CacheError::AuthenticationFailed(d)
            | CacheError::SerializationError(d)
            | CacheError::Command(d) => d.source().map(|e| e as &(dyn std::error::Error + 'static)),
            CacheError::CircuitOpen {
                last_error: Some(last), ..
            } => Some(&**last),
            _ => None,
        }
    }
}

impl CacheError {
    /// Whether this error says the cache is unreachable or too slow (as
    /// opposed to a bad value or a rejected command).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            CacheError::ConnectionError(_)
                | CacheError::AuthenticationFailed(_)
                | CacheError::Timeout { .. }
                | CacheError::CircuitOpen { .. }
        )
    }

    /// The kind of the server's error reply, when this error is one
    /// (`OOM`, `WRONGTYPE`, `READONLY`, ...).
    pub fn server_error_kind(&self) -> Option<&ServerErrorKind> {
        match self {
            CacheError::ConnectionError(d) | CacheError::AuthenticationFailed(d) | CacheError::Command(d) => {
                d.server_kind()
            }
            _ => None,
        }
    }

    /// The detail of the variants that carry one.
    pub fn detail(&self) -> Option<&ErrorDetail> {
        match self {
            CacheError::ConnectionError(d)
            | CacheError::AuthenticationFailed(d)
            | CacheError::SerializationError(d)
            | CacheError::Command(d) => Some(d),
            _ => None,
        }
    }
}

/// A shorthand for results of cache operations.
pub type CacheResult<T> = std::result::Result<T, CacheError>;

/// An error of a store operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorehausError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The row to update does not exist.
    #[error("no row in {table} with id {id}")]
    NotFound {
        /// The table.
        table: &'static str,
        /// The id, rendered with `Display`.
        id: String,
    },
    /// A cache operation the caller asked for explicitly failed. Store reads
    /// and writes never return this for cache failures: they fall back.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A query was rejected before it reached the database.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The store was built without cache parameters.
    #[error("caching is disabled for this store (it was built without CacheParams)")]
    CacheDisabled,
    /// `update(&id, record)` was called with a record whose own id differs.
    #[error("id mismatch: update was called for id {expected} with a record whose id is {found}")]
    IdMismatch {
        /// The id passed to `update`.
        expected: String,
        /// The id the record carries.
        found: String,
    },
    /// The runtime shut down while a write was running: whether it
    /// committed is unknown. (A write keeps running when its caller stops
    /// waiting; only a runtime shutdown stops it.)
    #[error("the write was interrupted by a runtime shutdown; its outcome is unknown")]
    Interrupted,
    /// The store's database is not compiled in or not usable for this record type.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Invalidation from the write-ahead log cannot run here
    /// ([`GenericStore::watch_wal`](crate::GenericStore::watch_wal)).
    #[cfg(feature = "wal")]
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// A shorthand for results of store operations.
pub type Result<T, E = StorehausError> = std::result::Result<T, E>;
