//! The names of the attributes and keys the derive reads (serde_derive's
//! `internals/symbol.rs`): `#[cache(table, prefix, ttl, id)]` and the keys of
//! `#[sqlx(...)]` and `#[serde(...)]` that decide columns and cached bytes.
//! Code compares paths and identifiers against these constants, never
//! against string literals.

use std::fmt::{self, Display};

use syn::{Ident, Path};

/// An attribute or key name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Symbol(&'static str);

/// `#[cache(...)]`, this derive's attribute.
pub const CACHE: Symbol = Symbol("cache");
/// `#[cache(table = "...")]` on the struct.
pub const TABLE: Symbol = Symbol("table");
/// `#[cache(prefix = "...")]` on the struct.
pub const PREFIX: Symbol = Symbol("prefix");
/// `#[cache(ttl = N)]` on the struct.
pub const TTL: Symbol = Symbol("ttl");
/// `#[cache(id)]` on the primary-key field; also the name of the field that
/// is the primary key when no field is marked.
pub const ID: Symbol = Symbol("id");
/// `#[cache(index)]` on a unique field: a cached lookup by that column.
pub const INDEX: Symbol = Symbol("index");

/// `#[sqlx(...)]`, read for column names only.
pub const SQLX: Symbol = Symbol("sqlx");
/// `#[sqlx(rename = "...")]` on a field.
pub const RENAME: Symbol = Symbol("rename");
/// `#[sqlx(rename_all = "...")]` on the struct.
pub const RENAME_ALL: Symbol = Symbol("rename_all");
/// `#[sqlx(skip)]` on a field: not a column.
pub const SKIP: Symbol = Symbol("skip");
/// `#[sqlx(flatten)]` on a field: rejected, a record maps to one table.
pub const FLATTEN: Symbol = Symbol("flatten");
/// `#[sqlx(json)]` on a field: rejected, the field is bound as it is.
pub const JSON: Symbol = Symbol("json");
/// `#[sqlx(try_from = "...")]` on a field: rejected, the field is bound as it is.
pub const TRY_FROM: Symbol = Symbol("try_from");

/// `#[serde(...)]`: hashed into the fingerprint, never interpreted.
pub const SERDE: Symbol = Symbol("serde");

/// The keys `#[cache(...)]` accepts on the struct.
pub const CONTAINER_KEYS: &[Symbol] = &[TABLE, PREFIX, TTL];

impl Symbol {
    /// The name as written in the source.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl PartialEq<Symbol> for Ident {
    fn eq(&self, word: &Symbol) -> bool {
        self == word.0
    }
}

impl PartialEq<Symbol> for &Ident {
    fn eq(&self, word: &Symbol) -> bool {
        *self == word.0
    }
}

impl PartialEq<Symbol> for Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl PartialEq<Symbol> for &Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl Display for Symbol {
    fn fmt(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str(self.0)
    }
}
