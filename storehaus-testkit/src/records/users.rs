//! [`User`]: a uuid id, a TTL and a prefix of its own. Used by the behaviour
//! suite (`tests/behaviour`, run by `tests/test_core.rs`) and by
//! `tests/test_sqlite.rs`.

use serde::{Deserialize, Serialize};
use storehaus::Cached;
use uuid::Uuid;

/// A user row in the `users` table, cached under the `users` prefix for
/// 1800 s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "users", ttl = 1800, prefix = "users")]
pub struct User {
    /// The id (`uuid` in PostgreSQL, a 16-byte `blob` in SQLite).
    #[cache(id)]
    pub id: Uuid,
    /// The name.
    pub name: String,
    /// `<name>@example.com` when made by [`user`].
    pub email: String,
}

/// The `users` table on PostgreSQL.
pub const CREATE_TABLE_POSTGRES: &str =
    "CREATE TABLE users (id uuid PRIMARY KEY, name text NOT NULL, email text NOT NULL)";

/// The `users` table on SQLite, where a uuid is a 16-byte blob.
pub const CREATE_TABLE_SQLITE: &str =
    "CREATE TABLE users (id blob PRIMARY KEY, name text NOT NULL, email text NOT NULL)";

/// A user with a fresh random id, `name` and `<name>@example.com`.
pub fn user(name: &str) -> User {
    User {
        id: Uuid::new_v4(),
        name: name.to_string(),
        email: format!("{name}@example.com"),
    }
}
