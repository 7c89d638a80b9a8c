//! `#[derive(Cached)]` for StoreHaus. Use it through the `storehaus` crate
//! (`storehaus::Cached` or `storehaus::prelude::*`), never directly: the
//! generated code refers to `::storehaus::__private`.
//!
//! Layout (after thiserror's `impl/` and serde_derive's `internals/`), each
//! module importing only modules listed before it:
//!
//! - groundwork: `symbol` names the attributes and keys, `ctxt` collects
//!   errors, `case` converts names as sqlx does;
//! - reading: `attr` reads the attributes, `ast` is the parsed struct,
//!   `check` validates it;
//! - pure helpers of the output: `sql` builds the statements, `fingerprint`
//!   hashes the schema, `private` is the path generated code goes through;
//! - writing: `bound` the where clauses, `assert` the trait checks, `handles`
//!   the column handles, `fallback` what a failed derive still emits, and
//!   `expand` the whole output of a valid one.

mod assert;
mod ast;
mod attr;
mod bound;
mod case;
mod check;
mod ctxt;
mod expand;
mod fallback;
mod fingerprint;
mod handles;
mod private;
mod sql;
mod symbol;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Implements `storehaus::Cached` for a struct with named fields, and adds
/// `Type::cache_key(global_prefix, &id) -> String`.
///
/// ```
/// use storehaus::prelude::*;
///
/// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
/// #[cache(table = "users", prefix = "users", ttl = 1800)]
/// pub struct User {
///     #[cache(id)]
///     pub id: i64,
///     pub name: String,
///     #[sqlx(rename = "email_address")]
///     pub email: String,
///     #[sqlx(skip)]
///     pub cached_at: Option<i64>, // not a column; needs Default
/// }
///
/// assert_eq!(User::TABLE, "users");
/// assert_eq!(User::COLUMNS, ["id", "name", "email_address"]);
/// assert_eq!(User::cache_key("myapp", &42), "myapp:users:42");
/// ```
///
/// # Struct keys: `#[cache(...)]` above the struct, all optional
///
/// - `table = "users"`: the SQL table. Default: the struct name in
///   snake_case (`UserProfile` -> `user_profile`). A `.` separates schema and
///   table (`"public.users"`).
/// - `prefix = "users"`: the store's segment in cache keys
///   (`{global_prefix}:{prefix}:{id}`). Default: the table.
///   `CacheParams::with_prefix` overrides it at run time.
/// - `ttl = 1800`: seconds a cached record lives, an integer literal from 1
///   to 31_536_000 (one year, `storehaus::MAX_TTL_SECS`). Default: the
///   `CacheConfig` TTL. `CacheParams::with_ttl` overrides it.
///
/// Tables and prefixes hold only `[A-Za-z0-9_.-]`; prefixes starting with
/// `__` are reserved for StoreHaus.
///
/// # Field key
///
/// - `#[cache(id)]`: the primary key. Without it, the field named `id` is the
///   primary key. Exactly one field is the key; it must be a column. Any type
///   that implements `storehaus::CacheId` works: `i32`, `i64`, `uuid::Uuid`,
///   `String`.
///
/// # Columns
///
/// Column names come from sqlx's own attributes, so the mapping is declared
/// once: `#[sqlx(rename = "...")]` on a field, `#[sqlx(skip)]` (not a column;
/// the field is filled with `Default` when read), and
/// `#[sqlx(rename_all = "...")]` on the struct. `#[sqlx(flatten)]` is
/// rejected (a record maps to one table), and so are `#[sqlx(json)]` and
/// `#[sqlx(try_from)]`, because the store also writes every field as it is:
/// declare a JSON column as `sqlx::types::Json<T>`.
///
/// # Requirements
///
/// The struct must derive (or implement) `Clone`, `serde::Serialize`,
/// `serde::Deserialize` and `sqlx::FromRow`, be `Send + Sync + Unpin`, and
/// have no generic parameters. Every column type must be readable and
/// writable by sqlx for PostgreSQL (and SQLite, with the default `sqlite`
/// feature). Every misuse is a compile error pointing at the offending token,
/// and all of them are reported in one build.
///
/// # Generated items
///
/// `impl storehaus::Cached` (the id type, `TABLE`, `PREFIX`, `TTL`,
/// `COLUMNS`, `ID_COLUMN`, a schema `FINGERPRINT`, the SQL statements for
/// PostgreSQL and SQLite with quoted identifiers and bound parameters, the id
/// accessor and the value binders) and the inherent `cache_key`.
#[proc_macro_derive(Cached, attributes(cache))]
pub fn derive_cached(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
