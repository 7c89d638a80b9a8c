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

/// Renders an index column's value for its key and for the check of a hint
/// against a record: its `Display` form.
pub fn index_value<V: IndexValue + ?Sized>(value: &V) -> String {
    value.to_string()
}

/// What an index column's type needs beyond a column's bounds.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an index column",
    label = "an index column needs a `Display` form for its cache key",
    note = "index a unique column of a type such as String, i64 or uuid::Uuid"
)]
pub trait IndexValue: std::fmt::Display {}

impl<T: std::fmt::Display + ?Sized> IndexValue for T {}
#[cfg(feature = "sqlite")]
pub use crate::store::sqlite::BindSqlite;
#[cfg(feature = "sqlite")]
pub use crate::SqliteQuery;
pub use crate::{CacheId, Cached, PgQuery, Statements};
