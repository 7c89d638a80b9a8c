//! [`Item`]: an `i64` id and a version. Used by `tests/test_faults.rs`,
//! `tests/test_budget.rs` and `benches/faults.rs`.

use serde::{Deserialize, Serialize};
use storehaus::Cached;

use crate::Db;

/// An item row in the `items` table, cached under the `items` prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "items", prefix = "items")]
pub struct Item {
    /// The id.
    pub id: i64,
    /// `item-<id>-v<version>` when made by [`item`].
    pub name: String,
    /// Bumped by every write a test makes, so a stale read shows.
    pub version: i32,
}

/// The `items` table (PostgreSQL).
pub const CREATE_TABLE: &str =
    "CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, version integer NOT NULL)";

/// The item `id` at `version`, named `item-<id>-v<version>`.
pub fn item(id: i64, version: i32) -> Item {
    Item {
        id,
        name: format!("item-{id}-v{version}"),
        version,
    }
}

/// A fresh schema with `items` rows `0..n` at version 0 (each equal to
/// `item(id, 0)`).
pub async fn items_db(n: i64) -> Db {
    let db = Db::new().await;
    db.exec(CREATE_TABLE).await;
    db.exec(&format!(
        "INSERT INTO items SELECT g, 'item-' || g || '-v0', 0 FROM generate_series(0, {}) g",
        n - 1
    ))
    .await;
    db
}

/// The row as the database holds it, bypassing StoreHaus.
pub async fn db_row(db: &Db, id: i64) -> Option<Item> {
    sqlx::query_as::<_, Item>("SELECT id, name, version FROM items WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
}
