//! Error types: [`CacheError`] for the cache layer, [`StorehausError`] for
//! store operations.

/// An error of the cache layer.
///
/// Store operations never return these for Redis failures (they fall back to
/// the database); the manual operations of [`CacheManager`](crate::CacheManager)
/// and [`CacheManager::health_check`](crate::CacheManager::health_check) do.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The cache server could not be reached, the connection dropped, or it
    /// refused our credentials.
    #[error("cache connection error: {0}")]
    ConnectionError(String),
    /// The server refused our credentials (wrong password, unknown ACL
    /// user). Not retried: another try would be refused the same way.
    #[error("cache authentication failed: {0}")]
    AuthenticationFailed(String),
    /// A value could not be encoded, or a cached entry could not be decoded
    /// (corrupt, truncated, or written by another schema).
    #[error("cache serialization error: {0}")]
    SerializationError(String),
    /// The operation's time budget (`CacheConfig::with_timeout`) ran out.
    #[error("cache operation timed out after {budget_ms} ms")]
    Timeout {
        /// The budget that ran out, in milliseconds.
        budget_ms: u64,
    },
    /// The configuration was rejected (bad URL, zero pool size, forbidden
    /// prefix, ...). Returned by [`CacheManager::new`](crate::CacheManager::new).
    #[error("invalid cache configuration: {0}")]
    InvalidConfig(String),
    /// A prefix, pattern, tag or TTL given to a manual operation was rejected.
    #[error("invalid cache input: {0}")]
    InvalidInput(String),
    /// The server answered with an error (out of memory, wrong type, ...).
    #[error("cache command failed: {0}")]
    Command(String),
    /// The circuit breaker is open after repeated failures: the cache is
    /// skipped until a probe succeeds.
    #[error("cache circuit breaker is open after {failures} consecutive failures; next probe in {retry_in_ms} ms")]
    CircuitOpen {
        /// Consecutive failures that opened the breaker.
        failures: u32,
        /// Milliseconds until the next probe is allowed.
        retry_in_ms: u64,
    },
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
    Wal(#[from] crate::wal::WalError),
}

/// A shorthand for results of store operations.
pub type Result<T, E = StorehausError> = std::result::Result<T, E>;
