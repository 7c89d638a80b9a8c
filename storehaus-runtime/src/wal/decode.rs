//! Turning decoded pgoutput events into the outbox's entries: the id of
//! each inserted, updated (old and new, when the key changed) or deleted
//! row of a watched table, a whole-table entry for TRUNCATE; and the
//! position the slot may be confirmed at once they are delivered.

use std::collections::HashMap;

use pg_walstream::{ChangeEvent, ColumnValue, EventType, RowData};

use crate::outbox::Entry;

/// A published relation of a watched table (the table itself, or one of
/// its partitions, published under its own name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relation {
    /// The watched table (`schema.name`) whose store it belongs to.
    pub root: String,
    /// The table's id column.
    pub id_column: String,
}

/// Qualified relation name → what it belongs to.
pub(crate) type Relations = HashMap<String, Relation>;

/// Entries waiting for delivery, and what their delivery lets the reader
/// confirm.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub entries: Vec<Entry>,
    /// The slot position to confirm once `entries` are delivered: the end
    /// of the last complete transaction (or heartbeat) taken in.
    pub confirm: Option<u64>,
    /// Heartbeats taken in (their contents): every change committed before
    /// they were emitted is in this batch or was delivered before it.
    pub heartbeats: Vec<String>,
    /// Inside a transaction (a BEGIN without its COMMIT yet).
    pub in_transaction: bool,
}

/// What an event asks of the reader before it can be taken in.
pub(crate) enum Needs {
    /// Nothing: take it in.
    Nothing,
    /// A change to a table missing from the reader's watches (registered
    /// by another process since they were read): read them again first.
    Watches,
}

impl Batch {
    /// Whether `event` names a relation `ids` does not know.
    pub fn needs(event: &ChangeEvent, ids: &Relations) -> Needs {
        let known = |schema: &str, table: &str| ids.contains_key(&format!("{schema}.{table}"));
        let unknown = match &event.event_type {
            EventType::Insert { schema, table, .. }
            | EventType::Update { schema, table, .. }
            | EventType::Delete { schema, table, .. } => !known(schema, table),
            EventType::Truncate { tables, .. } => tables.iter().any(|t| !ids.contains_key(&**t)),
            _ => false,
        };
        if unknown {
            Needs::Watches
        } else {
            Needs::Nothing
        }
    }

    /// Takes `event` in: its entries (for the relations in `ids`, keyed
    /// by their watched table), and where the slot may be confirmed after
    /// them. `heartbeat` is this slot's message prefix.
    pub fn add(&mut self, event: &ChangeEvent, ids: &Relations, heartbeat: &str) {
        match &event.event_type {
            EventType::Begin { .. } => self.in_transaction = true,
            EventType::Commit { end_lsn, .. } => {
                self.in_transaction = false;
                self.confirm = Some(end_lsn.0);
            }
            EventType::Insert {
                schema, table, data, ..
            } => self.row(ids, schema, table, [Some(data), None]),
            EventType::Update {
                schema,
                table,
                old_data,
                new_data,
                ..
            } => self.row(ids, schema, table, [Some(new_data), old_data.as_ref()]),
            EventType::Delete {
                schema,
                table,
                old_data,
                ..
            } => self.row(ids, schema, table, [Some(old_data), None]),
            EventType::Truncate { tables, .. } => {
                for table in tables {
                    if let Some(relation) = ids.get(&**table) {
                        self.entries.push(Entry {
                            table: relation.root.clone(),
                            key: None,
                        });
                    }
                }
            }
            EventType::Message { prefix, content, .. } => {
                if &**prefix == heartbeat {
                    self.heartbeats.push(String::from_utf8_lossy(content).into_owned());
                }
                // A heartbeat is not transactional: nothing of a
                // transaction under way is in it, so outside one it is a
                // position to confirm (anyone's heartbeat, or any message).
                if !self.in_transaction {
                    self.confirm = Some(event.lsn.0);
                }
            }
            _ => {}
        }
    }

    /// The entries of one row change: the id of each tuple given (the new
    /// row, and the old key when it came along and differs). A tuple
    /// without its id (it cannot happen under the replica identities
    /// `watch_wal` accepts) clears the whole table instead.
    fn row(&mut self, ids: &Relations, schema: &str, table: &str, tuples: [Option<&RowData>; 2]) {
        let Some(Relation { root, id_column }) = ids.get(&format!("{schema}.{table}")) else {
            return;
        };
        let mut seen: Option<String> = None;
        for tuple in tuples.into_iter().flatten() {
            let key = match tuple.get(id_column) {
                Some(ColumnValue::Text(text)) => Some(String::from_utf8_lossy(text).into_owned()),
                _ => None,
            };
            if key.is_some() && key == seen {
                continue;
            }
            self.entries.push(Entry {
                table: root.clone(),
                key: key.clone(),
            });
            seen = key;
        }
    }

    /// Hands over what is to be delivered, keeping whether a transaction
    /// is under way.
    pub fn take(&mut self) -> Batch {
        Batch {
            entries: std::mem::take(&mut self.entries),
            confirm: self.confirm.take(),
            heartbeats: std::mem::take(&mut self.heartbeats),
            in_transaction: self.in_transaction,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pg_walstream::{Lsn, ReplicaIdentity};

    use super::*;

    fn row(id: &str) -> RowData {
        let mut r = RowData::new();
        r.push(Arc::from("id"), ColumnValue::text(id));
        r.push(Arc::from("balance"), ColumnValue::text("5"));
        r
    }

    fn event(event_type: EventType, lsn: u64) -> ChangeEvent {
        ChangeEvent {
            event_type,
            lsn: Lsn(lsn),
            metadata: None,
        }
    }

    fn ids() -> Relations {
        let relation = |root: &str| Relation {
            root: root.into(),
            id_column: "id".into(),
        };
        [
            ("s.accounts".to_string(), relation("s.accounts")),
            ("s.accounts_p1".to_string(), relation("s.accounts")),
        ]
        .into()
    }

    fn update(old: Option<&str>, new: &str) -> EventType {
        EventType::Update {
            schema: "s".into(),
            table: "accounts".into(),
            relation_oid: 1,
            old_data: old.map(row),
            new_data: row(new),
            replica_identity: ReplicaIdentity::Default,
            key_columns: vec!["id".into()],
        }
    }

    fn keys(batch: &Batch) -> Vec<Option<&str>> {
        batch.entries.iter().map(|e| e.key.as_deref()).collect()
    }

    #[test]
    fn a_key_change_invalidates_old_and_new_and_the_commit_is_the_position() {
        let mut b = Batch::default();
        let now = chrono::Utc::now();
        b.add(
            &event(
                EventType::Begin {
                    transaction_id: 7,
                    final_lsn: Lsn(90),
                    commit_timestamp: now,
                },
                10,
            ),
            &ids(),
            "hb",
        );
        b.add(&event(update(None, "1"), 20), &ids(), "hb");
        b.add(&event(update(Some("2"), "3"), 30), &ids(), "hb");
        b.add(&event(update(Some("4"), "4"), 35), &ids(), "hb");
        assert!(b.in_transaction);
        assert_eq!(b.confirm, None, "nothing to confirm inside a transaction");
        b.add(
            &event(
                EventType::Commit {
                    commit_timestamp: now,
                    commit_lsn: Lsn(90),
                    end_lsn: Lsn(100),
                },
                90,
            ),
            &ids(),
            "hb",
        );
        assert_eq!(keys(&b), vec![Some("1"), Some("3"), Some("2"), Some("4")]);
        assert_eq!(b.confirm, Some(100));
    }

    #[test]
    fn truncate_clears_watched_tables_and_others_are_ignored() {
        let mut b = Batch::default();
        b.add(
            &event(
                EventType::Truncate {
                    tables: vec!["s.accounts_p1".into(), "s.other".into()],
                    cascade: false,
                    restart_identity: false,
                },
                5,
            ),
            &ids(),
            "hb",
        );
        let mut other = update(None, "1");
        if let EventType::Update { table, .. } = &mut other {
            *table = "other".into();
        }
        b.add(&event(other, 6), &ids(), "hb");
        assert_eq!(b.entries.len(), 1);
        assert_eq!(b.entries[0].table, "s.accounts");
        assert_eq!(b.entries[0].key, None);
        assert!(matches!(
            Batch::needs(&event(update(None, "1"), 1), &ids()),
            Needs::Nothing
        ));
        let mut unknown = update(None, "1");
        if let EventType::Update { table, .. } = &mut unknown {
            *table = "new_one".into();
        }
        assert!(matches!(Batch::needs(&event(unknown, 1), &ids()), Needs::Watches));
    }

    #[test]
    fn heartbeats_are_positions_only_outside_transactions() {
        let message = |prefix: &str| EventType::Message {
            flags: 0,
            message_lsn: Lsn(50),
            prefix: prefix.into(),
            content: match ColumnValue::text("42") {
                ColumnValue::Text(b) => b,
                _ => unreachable!("a text value"),
            },
        };
        let mut b = Batch {
            in_transaction: true,
            ..Batch::default()
        };
        b.add(&event(message("hb"), 50), &ids(), "hb");
        assert_eq!(b.heartbeats, vec!["42".to_string()]);
        assert_eq!(b.confirm, None);
        b.in_transaction = false;
        b.add(&event(message("someone else"), 60), &ids(), "hb");
        assert_eq!(b.heartbeats.len(), 1);
        assert_eq!(b.confirm, Some(60));
    }
}
