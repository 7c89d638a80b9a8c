//! What the code `#[derive(Cached)]` generates needs, and nothing else. Not
//! public API: the facade re-exports it as `storehaus::__private`, and
//! generated code names every item through that absolute path.

mod assert;

pub use assert::{
    AssertCacheId, AssertClone, AssertColumn, AssertDeserialize, AssertFromRow, AssertSerialize, CachedBounds,
    ColumnBounds,
};

pub use crate::cache::key::record_key;
/// Implements the SQLite value binder of a record (see the derive).
pub use crate::impl_bind_sqlite;
pub use crate::store::query::Column;
#[cfg(feature = "sqlite")]
pub use crate::store::sqlite::BindSqlite;
#[cfg(feature = "sqlite")]
pub use crate::SqliteQuery;
pub use crate::{CacheId, Cached, PgQuery, Statements};
