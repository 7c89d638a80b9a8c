//! What the code `#[derive(Cached)]` generates needs, and nothing else. Not
//! public API: the facade re-exports it as `storehaus::__private`, and
//! generated code names every item through that absolute path.

mod assert;

pub use assert::{
    AssertCacheId, AssertClone, AssertColumn, AssertDeserialize, AssertFromRow, AssertSerialize, CachedBounds,
    ColumnBounds,
};

/// Implements the SQLite value binder of a record (see the derive).
pub use crate::impl_bind_sqlite;
pub use crate::keys::record_key;
pub use crate::store::query::{Column, Indexed, Plain};

#[cfg(feature = "sqlite")]
pub use crate::record::sqlite::BindSqlite;
pub use crate::record::{index_value, IndexValue};
#[cfg(feature = "sqlite")]
pub use crate::SqliteQuery;
pub use crate::{CacheId, Cached, PgQuery, Statements};
