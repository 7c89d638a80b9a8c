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
//! The `Cached` impl itself is bounded by [`CachedBounds`] (see the derive),
//! so a missing trait is not reported a second time by the impl.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::postgres::PgRow;

use crate::dialect::SqliteRecord;

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
pub trait CachedBounds:
    Serialize + DeserializeOwned + Clone + for<'r> sqlx::FromRow<'r, PgRow> + SqliteRecord
{
}

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

#[cfg(feature = "sqlite")]
mod from_row {
    use sqlx::postgres::PgRow;
    use sqlx::sqlite::SqliteRow;

    use super::{sealed, Implemented, NotImplemented};

    /// Asserts `Self: FromRow` for every enabled database.
    #[doc(hidden)]
    #[diagnostic::on_unimplemented(
        message = "`{Self}` must implement sqlx::FromRow: add #[derive(sqlx::FromRow)]",
        label = "missing `sqlx::FromRow`",
        note = "records are read from PostgreSQL rows and, with storehaus' default `sqlite` feature, from SQLite rows; if FromRow is already derived, a field type cannot be decoded by one of them"
    )]
    pub trait AssertFromRow<M> {
        /// Compiles only when the trait is implemented.
        fn check() {}
    }
    impl<T> AssertFromRow<Implemented> for T where
        T: for<'r> sqlx::FromRow<'r, PgRow> + for<'r> sqlx::FromRow<'r, SqliteRow>
    {
    }
    impl<T: sealed::Never> AssertFromRow<NotImplemented> for T {}
}

#[cfg(not(feature = "sqlite"))]
mod from_row {
    use sqlx::postgres::PgRow;

    use super::{sealed, Implemented, NotImplemented};

    /// Asserts `Self: FromRow<PgRow>`.
    #[doc(hidden)]
    #[diagnostic::on_unimplemented(
        message = "`{Self}` must implement sqlx::FromRow: add #[derive(sqlx::FromRow)]",
        label = "missing `sqlx::FromRow`",
        note = "records are read from PostgreSQL rows; if FromRow is already derived, a field type cannot be decoded from PostgreSQL"
    )]
    pub trait AssertFromRow<M> {
        /// Compiles only when the trait is implemented.
        fn check() {}
    }
    impl<T: for<'r> sqlx::FromRow<'r, PgRow>> AssertFromRow<Implemented> for T {}
    impl<T: sealed::Never> AssertFromRow<NotImplemented> for T {}
}

pub use from_row::AssertFromRow;
