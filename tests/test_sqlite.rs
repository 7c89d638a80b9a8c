//! SQLite as the store's database: every store method, the column types
//! sqlx-sqlite stores for uuids and chrono values, long id lists, and file
//! databases. Runs anywhere: SQLite is in-process and the cache is `memory://`.
//!
//! The cache behaviours themselves run on SQLite as well, in the shared
//! suite (`behaviour::memory_sqlite::*` in `test_core`).
#![cfg(feature = "sqlite")]

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use storehaus::prelude::*;
use storehaus::{CacheManager, Cached};
use storehaus_testkit::records::users::{self, user, User};
use storehaus_testkit::*;
use uuid::Uuid;

/// One column of each type SQLite gets from sqlx: uuid, chrono, bool, float,
/// an optional column and raw bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "events", prefix = "events")]
pub struct Event {
    pub id: Uuid,
    pub title: String,
    pub at: DateTime<Utc>,
    pub day: NaiveDate,
    pub done: bool,
    pub score: f64,
    pub note: Option<String>,
    pub attendees: i64,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "counters", prefix = "counters")]
pub struct Counter {
    pub id: i64,
    pub hits: i64,
}

const SCHEMA: &[&str] = &[
    users::CREATE_TABLE_SQLITE,
    "CREATE TABLE events (id BLOB PRIMARY KEY, title TEXT NOT NULL, at TEXT NOT NULL, day TEXT NOT NULL, \
     done BOOLEAN NOT NULL, score REAL NOT NULL, note TEXT, attendees INTEGER NOT NULL, payload BLOB NOT NULL)",
    "CREATE TABLE counters (id INTEGER PRIMARY KEY, hits INTEGER NOT NULL)",
];

async fn setup() -> (SqlitePool, Arc<CacheManager>) {
    let pool = sqlite_memory().await;
    for ddl in SCHEMA {
        sqlx::query(ddl).execute(&pool).await.unwrap();
    }
    (pool, memory_manager())
}

fn event(title: &str) -> Event {
    Event {
        id: Uuid::new_v4(),
        title: title.to_string(),
        at: Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 58).unwrap() + chrono::Duration::microseconds(123_456),
        day: NaiveDate::from_ymd_opt(1999, 12, 31).unwrap(),
        done: true,
        score: -0.25,
        note: None,
        attendees: i64::MAX,
        payload: vec![0, 0xC1, 0xFF],
    }
}

#[tokio::test]
async fn the_seed_constructor_compiles_for_a_sqlite_pool() {
    let (sqlite_pool, cache_manager) = setup().await;
    let params = CacheParams::new(cache_manager.clone());
    // Exactly as for PostgreSQL: no turbofish on the pool, no annotation on None.
    let store = GenericStore::<User>::new(sqlite_pool, None, Some(params));
    assert_eq!(store.pool().kind(), "sqlite");
    let ada = store.create(user("ada"), None).await.unwrap();
    assert_eq!(store.get_by_id(&ada.id).await.unwrap(), Some(ada));
}

#[tokio::test]
async fn every_store_method_works_on_sqlite() {
    let (pool, manager) = setup().await;
    let store = GenericStore::<User>::new(pool.clone(), None, Some(CacheParams::new(manager.clone())));

    // create
    let a = store.create(user("a"), None).await.unwrap();
    let b = store.create(user("b"), None).await.unwrap();
    let c = store.create(user("c"), None).await.unwrap();
    let err = store.create(a.clone(), None).await.unwrap_err();
    assert!(matches!(err, StorehausError::Database(_)), "duplicate id: {err}");

    // get_by_id: a miss, then a hit (the row changed behind the cache's back)
    assert_eq!(store.get_by_id(&a.id).await.unwrap(), Some(a.clone()));
    wait_for_fills(&manager, 1).await;
    sqlx::query("UPDATE users SET name = 'behind' WHERE id = ?1")
        .bind(a.id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(store.get_by_id(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_by_id(&Uuid::new_v4()).await.unwrap(), None);

    // get_many: one `IN (...)` query for the misses, in the order asked
    let ghost = Uuid::new_v4();
    let many = store.get_many(&[c.id, ghost, b.id, a.id]).await.unwrap();
    assert_eq!(many, vec![Some(c.clone()), None, Some(b.clone()), Some(a.clone())]);

    // update
    let a2 = User {
        name: "a2".into(),
        ..a.clone()
    };
    assert_eq!(store.update(&a.id, a2.clone(), None).await.unwrap(), a2);
    assert_eq!(store.get_by_id(&a.id).await.unwrap(), Some(a2.clone()));
    let stranger = user("stranger");
    let err = store.update(&stranger.id, stranger.clone(), None).await.unwrap_err();
    assert!(matches!(err, StorehausError::NotFound { .. }), "{err}");
    let err = store.update(&a.id, stranger.clone(), None).await.unwrap_err();
    assert!(matches!(err, StorehausError::IdMismatch { .. }), "{err}");

    // update_many: one transaction, all or nothing
    let b2 = User {
        name: "b2".into(),
        ..b.clone()
    };
    let c2 = User {
        name: "c2".into(),
        ..c.clone()
    };
    let out = store
        .update_many(vec![(b.id, b2.clone()), (c.id, c2.clone())])
        .await
        .unwrap();
    assert_eq!(out, vec![b2.clone(), c2.clone()]);
    let b3 = User {
        name: "b3".into(),
        ..b.clone()
    };
    let err = store
        .update_many(vec![(b.id, b3), (stranger.id, stranger.clone())])
        .await
        .unwrap_err();
    assert!(matches!(err, StorehausError::NotFound { .. }), "{err}");
    assert_eq!(store.get_by_id(&b.id).await.unwrap(), Some(b2.clone()), "rolled back");

    // delete
    assert!(store.delete(&a.id).await.unwrap());
    assert!(!store.delete(&a.id).await.unwrap());
    assert_eq!(store.get_by_id(&a.id).await.unwrap(), None);

    // delete_many
    assert_eq!(store.delete_many(&[b.id, c.id, ghost]).await.unwrap(), 2);
    assert_eq!(store.get_many(&[b.id, c.id]).await.unwrap(), vec![None, None]);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let stats = manager.get_stats().await.unwrap();
    assert!(stats.hits > 0 && stats.misses > 0, "{stats:?}");
}

#[tokio::test]
async fn uuids_are_stored_as_16_byte_blobs() {
    let (pool, manager) = setup().await;
    let store = GenericStore::<User>::new(pool.clone(), None, Some(CacheParams::new(manager)));
    let u = store.create(user("blob"), None).await.unwrap();
    let (kind, len, hex): (String, i64, String) = sqlx::query_as("SELECT typeof(id), length(id), hex(id) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((kind.as_str(), len), ("blob", 16));
    assert_eq!(hex, u.id.simple().to_string().to_uppercase());
    // So a uuid written as TEXT is a different value: SQL that inserts rows
    // for the store binds uuids (or writes X'...' blobs), never strings.
    let as_text = Uuid::new_v4();
    sqlx::query("INSERT INTO users (id, name, email) VALUES (?1, 'text', 'text@example.com')")
        .bind(as_text.to_string())
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(store.get_by_id(&as_text).await.unwrap(), None);
}

#[tokio::test]
async fn chrono_and_other_column_types_round_trip_through_sqlite_and_the_cache() {
    let (pool, manager) = setup().await;
    let store = GenericStore::<Event>::new(pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let e = event("launch");
    let with_note = Event {
        note: Some("bring snacks".into()),
        done: false,
        ..event("party")
    };
    assert_eq!(store.create(e.clone(), None).await.unwrap(), e);
    assert_eq!(store.create(with_note.clone(), None).await.unwrap(), with_note);

    // chrono values are TEXT in SQLite, microseconds included.
    let (at_kind, at, day): (String, String, String) =
        sqlx::query_as("SELECT typeof(at), at, day FROM events WHERE id = ?1")
            .bind(e.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(at_kind, "text");
    assert!(at.starts_with("2024-02-29") && at.contains("59:58.123456"), "{at}");
    assert_eq!(day, "1999-12-31");

    // Miss (from SQLite), then hit (from the cache's MessagePack): both equal.
    assert_eq!(store.get_by_id(&e.id).await.unwrap(), Some(e.clone()));
    assert_eq!(
        store.get_many(&[with_note.id]).await.unwrap(),
        vec![Some(with_note.clone())]
    );
    wait_for_fills(&manager, 2).await;
    assert_eq!(store.get_by_id(&e.id).await.unwrap(), Some(e.clone()));
    assert_eq!(store.get_by_id(&with_note.id).await.unwrap(), Some(with_note));
    assert_eq!(manager.get_stats().await.unwrap().hits, 2);

    let later = Event {
        at: e.at + chrono::Duration::days(1),
        day: e.day.succ_opt().unwrap(),
        ..e.clone()
    };
    assert_eq!(store.update(&e.id, later.clone(), None).await.unwrap(), later);
    assert_eq!(store.get_by_id(&e.id).await.unwrap(), Some(later));
}

#[tokio::test]
async fn long_id_lists_are_read_and_deleted_in_chunks() {
    let (pool, manager) = setup().await;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1200) \
         INSERT INTO counters SELECT i, i * 10 FROM n",
    )
    .execute(&pool)
    .await
    .unwrap();
    let store = GenericStore::<Counter>::new(pool.clone(), None, Some(CacheParams::new(manager)));
    let ids: Vec<i64> = (1..=1300).rev().collect();
    let rows = store.get_many(&ids).await.unwrap();
    assert_eq!(rows.len(), 1300);
    for (id, row) in ids.iter().zip(&rows) {
        if *id <= 1200 {
            assert_eq!(row, &Some(Counter { id: *id, hits: id * 10 }));
        } else {
            assert_eq!(row, &None);
        }
    }
    assert_eq!(store.delete_many(&ids).await.unwrap(), 1200);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM counters")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert!(store.get_many(&ids[..700]).await.unwrap().iter().all(Option::is_none));
}

#[tokio::test]
async fn a_file_database_outlives_its_pool_and_is_shared_by_two_pools() {
    let path = std::env::temp_dir().join(format!("{}.sqlite", random_name("storehaus")));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let manager = memory_manager();
    let first = SqlitePool::connect(&url).await.unwrap();
    sqlx::query(SCHEMA[0]).execute(&first).await.unwrap();
    let writer = GenericStore::<User>::new(first.clone(), None, Some(CacheParams::new(manager.clone())));
    let kept = writer.create(user("kept"), None).await.unwrap();

    // Another pool (as another process would) sees the row.
    let second = SqlitePool::connect(&url).await.unwrap();
    let reader = GenericStore::<User>::new(second.clone(), None, None);
    assert_eq!(reader.get_by_id(&kept.id).await.unwrap(), Some(kept.clone()));
    first.close().await;
    second.close().await;

    // And it is still there after every connection closed.
    let again = SqlitePool::connect(&url).await.unwrap();
    let store = GenericStore::<User>::new(again.clone(), None, None);
    assert_eq!(store.get_by_id(&kept.id).await.unwrap(), Some(kept));
    again.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
