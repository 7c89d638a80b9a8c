//! Turning outbox entries into cache invalidations.

use std::collections::BTreeSet;

use sqlx::Row;

use crate::cache::key;
use crate::cache::CacheManager;
use crate::error::{Result, StorehausError};

/// One logged change: a table and the id's text (`None`: the whole table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub table: String,
    pub key: Option<String>,
}

/// The entries of outbox rows whose table and key are the columns `at` and `at + 1`.
pub(super) fn entries<R>(rows: &[R], at: usize) -> std::result::Result<Vec<Entry>, sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|r| {
            Ok(Entry {
                table: r.try_get(at)?,
                key: r.try_get(at + 1)?,
            })
        })
        .collect()
}

/// What `entries` change in the cache, by store: for each watched
/// `(table, prefix)` its scope, the record keys of its ids and its query
/// generation; and the scopes of whole tables (TRUNCATE) to clear.
pub(super) fn changes(
    global: &str,
    entries: &[Entry],
    watches: &[(String, String)],
) -> (Vec<crate::cache::Change>, Vec<String>) {
    let mut changes = Vec::new();
    let mut cleared = BTreeSet::new();
    for (table, prefix) in watches {
        let mut keys = Vec::new();
        let mut touched = false;
        for entry in entries.iter().filter(|e| &e.table == table) {
            touched = true;
            match &entry.key {
                Some(id) => keys.push(key::record_key(global, prefix, id.as_str())),
                None => {
                    cleared.insert(key::store_scope(global, prefix) + "*");
                }
            }
        }
        if touched {
            changes.push(crate::cache::Change {
                scope: key::store_scope(global, prefix),
                keys,
                counters: vec![key::generation_key(global, prefix)],
            });
        }
    }
    (changes, cleared.into_iter().collect())
}

/// Deletes the keys of `entries` (under every prefix this deployment
/// watches their table with) and bumps those stores' query generations, in
/// one round trip; a whole-table entry (TRUNCATE) clears the store's key
/// space. Any cache failure fails the pass, which then moves nothing.
pub(crate) async fn deliver(manager: &CacheManager, entries: &[Entry], watches: &[(String, String)]) -> Result<()> {
    let (changes, cleared) = changes(manager.global_prefix(), entries, watches);
    manager.deliver_logged(&changes).await.map_err(StorehausError::Cache)?;
    for glob in &cleared {
        manager.clear_glob(glob).await.map_err(StorehausError::Cache)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(table: &str, key: Option<&str>) -> Entry {
        Entry {
            table: table.into(),
            key: key.map(Into::into),
        }
    }

    #[test]
    fn entries_become_keys_and_generations_of_every_watching_store() {
        let watches = [
            ("users".to_string(), "users".to_string()),
            ("users".to_string(), "people".to_string()),
            ("orders".to_string(), "orders".to_string()),
        ];
        let (changes, cleared) = changes(
            "app",
            &[
                entry("users", Some("1")),
                entry("users", Some("a:b")),
                entry("other", Some("9")),
            ],
            &watches,
        );
        assert_eq!(changes.len(), 2, "orders untouched: {changes:?}");
        assert_eq!(changes[0].scope, "app:users:");
        assert_eq!(
            changes[0].keys,
            vec!["app:users:1".to_string(), key::record_key("app", "users", "a:b")]
        );
        assert_eq!(changes[1].keys[0], "app:people:1");
        assert_eq!(changes[1].counters, vec![key::generation_key("app", "people")]);
        assert!(cleared.is_empty());
        let (_, cleared) = changes_of_truncate();
        assert_eq!(cleared, vec!["app:users:*".to_string()]);
    }

    fn changes_of_truncate() -> (Vec<crate::cache::Change>, Vec<String>) {
        changes("app", &[entry("users", None)], &[("users".into(), "users".into())])
    }
}
