//! Turning outbox entries into cache invalidations.

use std::collections::BTreeSet;

use sqlx::Row;

use crate::cache::CacheManager;
use crate::error::{Result, StorehausError};
use crate::keys;

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

/// What `entries` change for one watched store: the ids written, and
/// whether the whole table was (TRUNCATE).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Touched {
    pub ids: Vec<String>,
    pub whole_table: bool,
}

/// Groups `entries` by the watched `(table, prefix)` pairs they touch, in
/// `watches` order; untouched stores are left out.
pub(super) fn touched<'w>(entries: &[Entry], watches: &'w [(String, String)]) -> Vec<(&'w str, Touched)> {
    let mut out = Vec::new();
    for (table, prefix) in watches {
        let mut t = Touched::default();
        let mut any = false;
        for entry in entries.iter().filter(|e| &e.table == table) {
            any = true;
            match &entry.key {
                Some(id) => t.ids.push(id.clone()),
                None => t.whole_table = true,
            }
        }
        if any {
            out.push((prefix.as_str(), t));
        }
    }
    out
}

/// Deletes the keys of `entries` (under every prefix this deployment
/// watches their table with: each record's key and the side keys of the
/// record type's other versions registered now, see `cache::versions`) and
/// bumps those stores' query generations, in one round trip; a whole-table
/// entry (TRUNCATE) clears the store's key space. Any cache failure fails
/// the pass, which then moves nothing. `lsn`: a write-ahead log position
/// at or after every entry's commit, for the replica markers of stores read
/// from replicas (see `cache::markers`; `None`: unknown).
pub(crate) async fn deliver(
    manager: &CacheManager,
    entries: &[Entry],
    watches: &[(String, String)],
    lsn: Option<u64>,
) -> Result<()> {
    let global = manager.global_prefix();
    let mut changes = Vec::new();
    let mut cleared = BTreeSet::new();
    for (prefix, touched) in touched(entries, watches) {
        let keys = if touched.ids.is_empty() {
            Vec::new()
        } else {
            manager
                .record_keys_to_delete(prefix, &touched.ids)
                .await
                .map_err(StorehausError::Cache)?
        };
        if touched.whole_table {
            cleared.insert(keys::store_scope(global, prefix) + "*");
        }
        changes.push(crate::cache::Change {
            scope: keys::store_scope(global, prefix),
            keys,
            counters: vec![keys::generation_key(global, prefix)],
        });
    }
    manager
        .deliver_logged(&changes, lsn)
        .await
        .map_err(StorehausError::Cache)?;
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
    fn entries_are_grouped_by_every_watching_store() {
        let watches = [
            ("users".to_string(), "users".to_string()),
            ("users".to_string(), "people".to_string()),
            ("orders".to_string(), "orders".to_string()),
        ];
        let entries = [
            entry("users", Some("1")),
            entry("users", None),
            entry("other", Some("9")),
        ];
        let t = touched(&entries, &watches);
        let users = Touched {
            ids: vec!["1".to_string()],
            whole_table: true,
        };
        assert_eq!(
            t,
            vec![
                ("users", users),
                (
                    "people",
                    Touched {
                        ids: vec!["1".into()],
                        whole_table: true
                    }
                )
            ]
        );
        assert!(touched(&[entry("orders", Some("2"))], &watches)[0].1.ids == vec!["2".to_string()]);
    }
}
