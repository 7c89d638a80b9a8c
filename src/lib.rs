#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

/// `#[derive(Cached)]`: see [the derive's attributes](#the-derive).
pub use storehaus_derive::Cached;
pub use storehaus_runtime::codec;
pub use storehaus_runtime::Cached;
#[cfg(feature = "sqlite")]
pub use storehaus_runtime::SqliteQuery;
pub use storehaus_runtime::{
    CacheConfig, CacheError, CacheId, CacheManager, CacheParams, CacheResult, CacheStats, ChangeEvent, ChangeOp,
    Column, DbPool, DeploymentStatus, Filter, GenericStore, Health, HealthWarning, InTransaction, IndexColumn, Indexed,
    LatencySummary, Order, PgQuery, Plain, Query, ReplicaStats, Result, ServerStats, SignalManager, SqlValue, SqliteId,
    SqliteRecord, Statements, StoreTransaction, StorehausError, DEFAULT_NEGATIVE_TTL_SECS, MAX_TTL_SECS,
    REPLICA_LAG_BUDGET,
};
#[cfg(feature = "wal")]
pub use storehaus_runtime::{WalError, WalSlotStatus};

/// The names most programs need: `use storehaus::prelude::*;`.
pub mod prelude {
    pub use crate::{
        CacheConfig, CacheError, CacheManager, CacheParams, Cached, ChangeEvent, ChangeOp, DbPool, GenericStore,
        SignalManager, StorehausError,
    };
}

/// Items used by the code `#[derive(Cached)]` generates. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use storehaus_runtime::private::*;
}
