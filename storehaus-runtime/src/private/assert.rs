//! Compile-time checks emitted by `#[derive(Cached)]`. Not public API.
//!
//! The derive asserts that the record implements each trait the user has to
//! derive (`Clone`, `Serialize`, `Deserialize`, `FromRow`) with one
//! `<User as AssertX<_>>::check()` per trait. Each `AssertX` trait has two
//! candidate impls: the real one, bounded by the trait it stands for, and one
//! bounded by a trait nothing implements. With two candidates rustc reports
//! the unmet `AssertX` itself, once, with its `on_unimplemented` message
//! ("`User` must implement serde::Serialize: add #[derive(serde::Serialize)]"),
//! instead of the nested bound and a chain of notes pointing into this file.
//!
//! The `Cached` impl itself is bounded by [`CachedBounds`], `Id: CacheId`
//! and [`ColumnBounds`] for each value column, and the `FromRow` check
//! assumes every column type is fine (see the derive): a missing trait or a
//! bad column type is reported once, by its own check, not again by the impl
//! or by the `FromRow` check.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::postgres::PgRow;

use crate::record::sqlite::SqliteRecord;
use crate::record::CacheId;

/// The marker of the real impl of an `Assert*` trait.
#[doc(hidden)]
pub struct Implemented;

/// The marker of the impl that never applies.
#[doc(hidden)]
pub struct NotImplemented;

mod sealed {
    /// Implemented by no type: the bound of the second candidate impl.
    pub trait Never {}
}

/// The traits `Cached` needs beyond the auto traits, as one bound for the
/// generated impl's where clause.
#[doc(hidden)]
pub trait CachedBounds: Serialize + DeserializeOwned + Clone + for<'r> sqlx::FromRow<'r, PgRow> + SqliteRecord {}

impl<T> CachedBounds for T where
    T: Serialize + DeserializeOwned + Clone + for<'r> sqlx::FromRow<'r, PgRow> + SqliteRecord
{
}

/// Asserts `Self: Clone`.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` must implement Clone: add #[derive(Clone)]",
    label = "missing `Clone`",
    note = "the store hands out clones of the records it caches"
)]
pub trait AssertClone<M> {
    /// Compiles only when the trait is implemented.
    fn check() {}
}
impl<T: Clone> AssertClone<Implemented> for T {}
impl<T: sealed::Never> AssertClone<NotImplemented> for T {}

/// Asserts `Self: serde::Serialize`.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` must implement serde::Serialize: add #[derive(serde::Serialize)]",
    label = "missing `serde::Serialize`",
    note = "StoreHaus writes records to the cache with serde (as MessagePack)"
)]
pub trait AssertSerialize<M> {
    /// Compiles only when the trait is implemented.
    fn check() {}
}
impl<T: Serialize> AssertSerialize<Implemented> for T {}
impl<T: sealed::Never> AssertSerialize<NotImplemented> for T {}

/// Asserts `Self: serde::de::DeserializeOwned`.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` must implement serde::Deserialize: add #[derive(serde::Deserialize)]",
    label = "missing `serde::Deserialize`",
    note = "StoreHaus reads records back from the cache with serde (the record must be serde::de::DeserializeOwned)"
)]
pub trait AssertDeserialize<M> {
    /// Compiles only when the trait is implemented.
    fn check() {}
}
impl<T: DeserializeOwned> AssertDeserialize<Implemented> for T {}
impl<T: sealed::Never> AssertDeserialize<NotImplemented> for T {}

/// Asserts `Self: CacheId` for the id field's type, and builds the record
/// key of such an id (so that `cache_key` of a record with a bad id type
/// repeats this error instead of adding its own).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the id of a cached record",
    label = "this id type is not supported",
    note = "an id must implement Display, Clone, Eq, Hash, Send, Sync and be bindable by sqlx (for example i32, i64, uuid::Uuid or String)"
)]
pub trait AssertCacheId<M> {
    /// Compiles only when the trait is implemented.
    fn check() {}

    /// [`record_key`](crate::keys::record_key) for this id type.
    fn record_key(global_prefix: &str, prefix: &str, id: &Self) -> String;
}
impl<T: CacheId> AssertCacheId<Implemented> for T {
    #[inline]
    fn record_key(global_prefix: &str, prefix: &str, id: &Self) -> String {
        crate::keys::record_key(global_prefix, prefix, id)
    }
}
impl<T: sealed::Never> AssertCacheId<NotImplemented> for T {
    fn record_key(_: &str, _: &str, _: &Self) -> String {
        unreachable!("no type implements the sealed Never trait")
    }
}

#[cfg(feature = "sqlite")]
mod db {
    use sqlx::postgres::PgRow;
    use sqlx::sqlite::SqliteRow;
    use sqlx::{Decode, Encode, Postgres, Sqlite, Type};

    use super::{sealed, Implemented, NotImplemented};

    /// Asserts `Self: FromRow` for every enabled database.
    #[doc(hidden)]
    #[diagnostic::on_unimplemented(
        message = "`{Self}` must implement sqlx::FromRow: add #[derive(sqlx::FromRow)]",
        label = "missing `sqlx::FromRow`",
        note = "StoreHaus reads records from PostgreSQL and (with the default `sqlite` feature) SQLite rows with sqlx"
    )]
    pub trait AssertFromRow<M> {
        /// Compiles only when the trait is implemented.
        fn check() {}
    }
    impl<T> AssertFromRow<Implemented> for T where T: for<'r> sqlx::FromRow<'r, PgRow> + for<'r> sqlx::FromRow<'r, SqliteRow>
    {}
    impl<T: sealed::Never> AssertFromRow<NotImplemented> for T {}

    /// What a column's type needs: read and written by every enabled database.
    #[doc(hidden)]
    pub trait ColumnBounds:
        Type<Postgres>
        + for<'q> Encode<'q, Postgres>
        + for<'r> Decode<'r, Postgres>
        + Type<Sqlite>
        + for<'q> Encode<'q, Sqlite>
        + for<'r> Decode<'r, Sqlite>
    {
    }
    impl<T> ColumnBounds for T where
        T: Type<Postgres>
            + for<'q> Encode<'q, Postgres>
            + for<'r> Decode<'r, Postgres>
            + Type<Sqlite>
            + for<'q> Encode<'q, Sqlite>
            + for<'r> Decode<'r, Sqlite>
    {
    }

    /// Asserts that a field's type can be a column.
    #[doc(hidden)]
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a column: it must implement sqlx::Type, sqlx::Encode and sqlx::Decode for PostgreSQL and SQLite",
        label = "not a column type",
        note = "derive sqlx::Type for enums and newtypes, store other values as sqlx::types::Json<...>, or mark the field #[sqlx(skip)]",
        note = "for PostgreSQL-only types, turn off the default `sqlite` feature of storehaus"
    )]
    pub trait AssertColumn<M> {
        /// Compiles only when the trait is implemented.
        fn check() {}
    }
    impl<T: ColumnBounds> AssertColumn<Implemented> for T {}
    impl<T: sealed::Never> AssertColumn<NotImplemented> for T {}
}

#[cfg(not(feature = "sqlite"))]
mod db {
    use sqlx::postgres::PgRow;
    use sqlx::{Decode, Encode, Postgres, Type};

    use super::{sealed, Implemented, NotImplemented};

    /// Asserts `Self: FromRow<PgRow>`.
    #[doc(hidden)]
    #[diagnostic::on_unimplemented(
        message = "`{Self}` must implement sqlx::FromRow: add #[derive(sqlx::FromRow)]",
        label = "missing `sqlx::FromRow`",
        note = "StoreHaus reads records from PostgreSQL rows with sqlx"
    )]
    pub trait AssertFromRow<M> {
        /// Compiles only when the trait is implemented.
        fn check() {}
    }
    impl<T: for<'r> sqlx::FromRow<'r, PgRow>> AssertFromRow<Implemented> for T {}
    impl<T: sealed::Never> AssertFromRow<NotImplemented> for T {}

    /// What a column's type needs: read and written by PostgreSQL.
    #[doc(hidden)]
    pub trait ColumnBounds: Type<Postgres> + for<'q> Encode<'q, Postgres> + for<'r> Decode<'r, Postgres> {}
    impl<T> ColumnBounds for T where T: Type<Postgres> + for<'q> Encode<'q, Postgres> + for<'r> Decode<'r, Postgres> {}

    /// Asserts that a field's type can be a column.
    #[doc(hidden)]
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a column: it must implement sqlx::Type, sqlx::Encode and sqlx::Decode for PostgreSQL",
        label = "not a column type",
        note = "derive sqlx::Type for enums and newtypes, store other values as sqlx::types::Json<...>, or mark the field #[sqlx(skip)]"
    )]
    pub trait AssertColumn<M> {
        /// Compiles only when the trait is implemented.
        fn check() {}
    }
    impl<T: ColumnBounds> AssertColumn<Implemented> for T {}
    impl<T: sealed::Never> AssertColumn<NotImplemented> for T {}
}

pub use db::{AssertColumn, AssertFromRow, ColumnBounds};
