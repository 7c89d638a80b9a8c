//! A Redis cache in front of PostgreSQL or SQLite, with one derive.
//!
//! `#[derive(Cached)]` on a [`sqlx::FromRow`](https://docs.rs/sqlx/0.8/sqlx/trait.FromRow.html) struct makes it a [`Cached`]
//! record; a [`GenericStore`] of it reads through the cache and invalidates
//! after each write's commit. A [`CacheManager`] holds the cache (Redis,
//! Redis Cluster, Sentinel, or the in-process `memory://`) and is shared by
//! every store of a process.
//!
//! ```
//! use std::sync::Arc;
//!
//! use storehaus::prelude::*;
//!
//! #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
//! #[cache(table = "users", ttl = 1800)]
//! pub struct User {
//!     pub id: i64,
//!     pub name: String,
//! }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let db_pool = sqlx::sqlite::SqlitePoolOptions::new()
//!         .max_connections(1)
//!         .connect("sqlite::memory:")
//!         .await?;
//!     sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
//!         .execute(&db_pool)
//!         .await?;
//!     let cache_manager = Arc::new(CacheManager::new(CacheConfig::new("memory://", 3600, "myapp"))?);
//!     let users = GenericStore::<User>::new(db_pool, None, Some(CacheParams::new(cache_manager)));
//!
//!     users.create(User { id: 1, name: "Ada".into() }, None).await?;
//!     let ada = users.get_by_id(&1).await?; // a miss: the database, then cached
//!     assert_eq!(ada.map(|u| u.name).as_deref(), Some("Ada"));
//!     Ok(())
//! }
//! ```
//!
//! # Where to read on
//!
//! - [`CacheConfig`]: every setting and its default; [`CacheManager`]:
//!   statistics, health checks, manual operations.
//! - [`GenericStore`]: reads, writes, queries, transactions, lookups by a
//!   unique column, explicit controls.
//! - The guides in the `docs/` directory of the source (shipped in the
//!   package): consistency and its limits, the outbox, Redis Cluster and
//!   Sentinel, the near cache, operations and monitoring, faults,
//!   performance.
//!
//! # Features
//!
//! - `sqlite` (default): SQLite pools beside PostgreSQL.
//! - `redis` (default): the Redis backends and the near cache; without it
//!   only the in-process `memory://` cache.
//! - `cluster` (default): Redis Cluster, found out from one node's URL.
//! - `metrics` (default): metrics through the `metrics` facade.
//! - `tls`: `rediss://` through rustls with the ring provider; certificates
//!   are always verified.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

/// `#[derive(Cached)]`: makes a struct a [`Cached`] record. Attributes:
/// `#[cache(table = "..", prefix = "..", ttl = N)]` on the struct,
/// `#[cache(id)]` and `#[cache(index)]` on fields.
pub use storehaus_derive::Cached;
pub use storehaus_runtime::codec;
pub use storehaus_runtime::Cached;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use storehaus_runtime::SqliteQuery;
pub use storehaus_runtime::{
    CacheConfig, CacheError, CacheId, CacheManager, CacheParams, CacheResult, CacheStats, ChangeEvent, ChangeOp,
    Column, DbPool, DeploymentStatus, ErrorDetail, Filter, GenericStore, Health, HealthWarning, InTransaction,
    IndexColumn, Indexed, LatencySummary, Order, PgQuery, Plain, Query, ReplicaStats, Result, ServerErrorKind,
    ServerStats, SignalManager, SqlValue, SqliteId, SqliteRecord, Statements, StoreTransaction, StorehausError,
    DEFAULT_NEGATIVE_TTL_SECS, MAX_TTL_SECS, REPLICA_LAG_BUDGET,
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

/// The README and the guides under `docs/`: their code blocks compile and
/// run as doc tests (`cargo test --doc`).
#[cfg(doctest)]
mod guides {
    #[doc = include_str!("../README.md")]
    mod readme {}
    #[doc = include_str!("../docs/consistency.md")]
    mod consistency {}
    #[doc = include_str!("../docs/derive-and-keys.md")]
    mod derive_and_keys {}
    #[doc = include_str!("../docs/configuration.md")]
    mod configuration {}
    #[doc = include_str!("../docs/queries-and-transactions.md")]
    mod queries_and_transactions {}
    #[doc = include_str!("../docs/outbox.md")]
    mod outbox {}
    #[doc = include_str!("../docs/read-replicas.md")]
    mod read_replicas {}
    #[doc = include_str!("../docs/cluster-and-sentinel.md")]
    mod cluster_and_sentinel {}
    #[doc = include_str!("../docs/near-cache.md")]
    mod near_cache {}
    #[doc = include_str!("../docs/operations-and-monitoring.md")]
    mod operations_and_monitoring {}
    #[doc = include_str!("../docs/faults.md")]
    mod faults {}
    #[doc = include_str!("../docs/performance.md")]
    mod performance {}
    #[doc = include_str!("../docs/development.md")]
    mod development {}
}
