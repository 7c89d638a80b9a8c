//! Runtime of StoreHaus: the cache manager, the MessagePack codec, the cache
//! backends and [`GenericStore`], the typed store that `#[derive(Cached)]`
//! records plug into.
//!
//! Users depend on the `storehaus` facade crate, which re-exports everything
//! here together with the derive.
#![warn(missing_docs)]

mod assert;
mod backend;
mod batch;
mod breaker;
mod cached;
pub mod codec;
mod config;
mod dialect;
mod error;
mod find;
mod flight;
mod hooks;
pub mod key;
pub mod lease;
mod manager;
mod memory_backend;
mod pending;
mod pool;
pub mod query;
mod redis_backend;
mod signals;
mod stats;
mod store;
mod transaction;

#[doc(hidden)]
pub use assert::{
    AssertCacheId, AssertClone, AssertColumn, AssertDeserialize, AssertFromRow, AssertSerialize, CachedBounds,
    ColumnBounds,
};
#[cfg(feature = "sqlite")]
pub use cached::SqliteQuery;
pub use cached::{CacheId, Cached, PgQuery, Statements};
pub use config::CacheConfig;
pub use dialect::*;
pub use error::{CacheError, CacheResult, Result, StorehausError};
#[doc(hidden)]
pub use hooks::{FillPause, TestHooks};
pub use manager::{CacheManager, MAX_TTL_SECS};
pub use pool::DbPool;
pub use query::{Column, Filter, Order, Query, SqlValue};
/// The Lua source of the guarded fill (for benchmarks that rebuild it by hand).
#[doc(hidden)]
pub use redis_backend::FILL_SCRIPT;
pub use signals::{ChangeEvent, ChangeOp, SignalManager};
pub use stats::CacheStats;
pub use store::{CacheParams, GenericStore};
pub use transaction::StoreTransaction;
