#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub use storehaus_derive::Cached;
pub use storehaus_runtime::*;

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
    pub use storehaus_runtime::key::record_key;
    pub use storehaus_runtime::{impl_bind_sqlite, Cached, PgQuery, Statements};
    pub use storehaus_runtime::{
        AssertCacheId, AssertClone, AssertColumn, AssertDeserialize, AssertFromRow, AssertSerialize, CacheId,
        CachedBounds, Column, ColumnBounds,
    };
}
