//! Runtime of StoreHaus: the cache manager, the MessagePack codec, the cache
//! backends and [`GenericStore`], the typed store that `#[derive(Cached)]`
//! records plug into.
//!
//! Users depend on the `storehaus` facade crate, which re-exports the public
//! items here together with the derive.
//!
//! The source is laid out by role:
//! - `store/`: [`GenericStore`] and everything that talks to the database
//!   (writes, queries, transactions, SQL per dialect);
//! - `cache/`: [`CacheManager`] and the read-through protocol (reads, leases,
//!   fills, single-flight, replay of invalidations, breaker, stats, codec,
//!   keys);
//! - `backend/`: the cache backends behind one contract (Redis, in-process);
//! - `outbox/`: invalidation from the database itself (triggers, a durable
//!   outbox, the worker that drains it);
//! - `wal/` (feature `wal`): invalidation from the write-ahead log (a
//!   replication slot per deployment, the reader that streams it);
//! - `private/`: what the code `#[derive(Cached)]` generates needs, nothing else;
//! - `fuzzing.rs` (the `fuzzing` feature): the properties `fuzz/` checks.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod backend;
mod cache;
mod config;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod keys;
mod outbox;
#[doc(hidden)]
pub mod private;
mod record;
mod store;
#[cfg(feature = "wal")]
mod wal;

pub use backend::ServerStats;
pub use cache::codec;
#[cfg(feature = "test-hooks")]
pub use cache::hooks as test_hooks;
pub use cache::markers::REPLICA_LAG_BUDGET;
pub use cache::server::{Health, HealthWarning};
pub use cache::stats::{CacheStats, LatencySummary};
pub use cache::{CacheManager, MAX_TTL_SECS};
pub use config::CacheConfig;
pub use error::{CacheError, CacheResult, ErrorDetail, Result, ServerErrorKind, StorehausError};
pub use outbox::DeploymentStatus;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use record::SqliteQuery;
pub use record::{CacheId, Cached, PgQuery, SqliteId, SqliteRecord, Statements};
pub use store::pool::DbPool;
pub use store::query::{Column, Filter, IndexColumn, Indexed, Order, Plain, Query, SqlValue};
pub use store::replica::ReplicaStats;
pub use store::signals::{ChangeEvent, ChangeOp, SignalManager};
pub use store::transaction::{InTransaction, StoreTransaction};
pub use store::{CacheParams, GenericStore, DEFAULT_NEGATIVE_TTL_SECS};
#[cfg(feature = "wal")]
pub use wal::{WalError, WalSlotStatus};
