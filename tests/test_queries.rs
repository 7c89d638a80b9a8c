//! Cached queries with O(1) invalidation, change signals and tags.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use storehaus::prelude::*;
use storehaus::{CacheParams, ChangeOp, GenericStore, Order, Query, SignalManager};
use storehaus_testkit::*;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "items", prefix = "items")]
pub struct Item {
    pub id: i64,
    pub name: String,
    pub price: i32,
    pub note: Option<String>,
}

fn item(id: i64, name: &str, price: i32, note: Option<&str>) -> Item {
    Item {
        id,
        name: name.to_string(),
        price,
        note: note.map(str::to_string),
    }
}

async fn items_db() -> Db {
    let db = Db::new().await;
    db.exec("CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, price integer NOT NULL, note text)")
        .await;
    db
}

async fn seeded(store: &GenericStore<Item>) -> Vec<Item> {
    let rows = vec![
        item(1, "apple", 5, None),
        item(2, "banana", 12, Some("ripe")),
        item(3, "cherry", 30, None),
        item(4, "apricot", 12, Some("dry")),
    ];
    for r in &rows {
        store.create(r.clone(), None).await.unwrap();
    }
    rows
}

#[tokio::test]
async fn filters_ordering_and_paging_return_the_right_rows() {
    let db = items_db().await;
    let manager = manager();
    let store = GenericStore::<Item>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let rows = seeded(&store).await;
    let c = Item::columns();
    let ids = |v: Vec<Item>| v.into_iter().map(|i| i.id).collect::<Vec<_>>();
    let by_id = |q: Query<Item>| q.order_by(Item::columns().id, Order::Asc);

    assert_eq!(ids(store.find(by_id(Query::new())).await.unwrap()), vec![1, 2, 3, 4]);
    assert_eq!(
        ids(store.find(by_id(Query::new().filter(c.price.eq(12)))).await.unwrap()),
        vec![2, 4]
    );
    assert_eq!(
        ids(store.find(by_id(Query::new().filter(c.price.ne(12)))).await.unwrap()),
        vec![1, 3]
    );
    assert_eq!(
        ids(store.find(by_id(Query::new().filter(c.price.lt(12)))).await.unwrap()),
        vec![1]
    );
    assert_eq!(
        ids(store.find(by_id(Query::new().filter(c.price.le(12)))).await.unwrap()),
        vec![1, 2, 4]
    );
    assert_eq!(
        ids(store.find(by_id(Query::new().filter(c.price.gt(12)))).await.unwrap()),
        vec![3]
    );
    assert_eq!(
        ids(store.find(by_id(Query::new().filter(c.price.ge(12)))).await.unwrap()),
        vec![2, 3, 4]
    );
    assert_eq!(
        ids(store
            .find(by_id(Query::new().filter(c.id.is_in([3i64, 1]))))
            .await
            .unwrap()),
        vec![1, 3]
    );
    assert_eq!(
        ids(store
            .find(by_id(Query::new().filter(c.name.like("ap%"))))
            .await
            .unwrap()),
        vec![1, 4]
    );
    assert_eq!(
        ids(store.find(by_id(Query::new().filter(c.note.is_null()))).await.unwrap()),
        vec![1, 3]
    );
    assert_eq!(
        ids(store
            .find(by_id(Query::new().filter(c.note.is_not_null())))
            .await
            .unwrap()),
        vec![2, 4]
    );
    let either = c.price.eq(5).or(c.name.eq("cherry"));
    assert_eq!(
        ids(store.find(by_id(Query::new().filter(either))).await.unwrap()),
        vec![1, 3]
    );
    let both = c.price.eq(12).and(c.note.eq(Some("dry".to_string())));
    assert_eq!(
        ids(store.find(by_id(Query::new().filter(both))).await.unwrap()),
        vec![4]
    );
    let page = Query::new()
        .order_by(c.price, Order::Desc)
        .order_by(c.id, Order::Asc)
        .limit(2)
        .offset(1);
    assert_eq!(ids(store.find(page).await.unwrap()), vec![2, 4]);
    assert_eq!(
        store
            .find_one(Query::new().order_by(c.price, Order::Desc))
            .await
            .unwrap(),
        Some(rows[2].clone())
    );
    assert_eq!(
        store.find_one(Query::new().filter(c.price.gt(1000))).await.unwrap(),
        None
    );
    assert_eq!(store.count(Query::new().filter(c.price.eq(12))).await.unwrap(), 2);
    assert_eq!(store.count(Query::new()).await.unwrap(), 4);

    // What only the run time can check is a typed error.
    let empty: Vec<i64> = Vec::new();
    let err = store.find(Query::new().filter(c.id.is_in(empty))).await.unwrap_err();
    assert!(matches!(err, StorehausError::InvalidQuery(_)), "{err}");
    // A negative limit or offset does not compile (ui-tests/query/negative-limit.rs).
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[tokio::test]
async fn query_hit_is_served_from_cache_and_any_write_invalidates_it() {
    let db = items_db().await;
    let manager = manager();
    let store = GenericStore::<Item>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    seeded(&store).await;
    let c = Item::columns();
    let cheap = || Query::new().filter(c.price.le(12)).order_by(c.id, Order::Asc);

    let first = store.find(cheap()).await.unwrap();
    assert_eq!(first.len(), 3);
    eventually("the result was cached", || async {
        manager.get_stats().await.unwrap().fills == 1
    })
    .await;
    // Change rows behind the cache's back: the cached result is served.
    sqlx::query("UPDATE items SET price = 1000")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(store.find(cheap()).await.unwrap(), first);
    assert_eq!(manager.get_stats().await.unwrap().hits, 1);

    // Any store write to the table makes the next find go to the database.
    store.delete(&99).await.unwrap();
    assert!(store.find(cheap()).await.unwrap().is_empty());

    // So does invalidate_queries.
    let all = store.find(Query::new()).await.unwrap();
    eventually("cached", || async { manager.get_stats().await.unwrap().fills == 2 }).await;
    sqlx::query("DELETE FROM items WHERE id = 1")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(store.find(Query::new()).await.unwrap(), all, "still cached");
    manager.invalidate_queries("items").await.unwrap();
    assert_eq!(store.find(Query::new()).await.unwrap().len(), 3);
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_write_committed_while_a_query_runs_never_leaves_its_result_servable() {
    let db = items_db().await;
    let manager = manager();
    let store = GenericStore::<Item>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    seeded(&store).await;
    let q = || Query::new().filter(Item::columns().price.eq(5));
    // The query key is the namespace plus a hash; find it by pausing every
    // fill of this manager's query namespace through the first key we see.
    let before = store.find(q()).await.unwrap();
    assert_eq!(before.len(), 1);
    let mut redis = raw_redis(&redis_url()).await;
    let pattern = format!("{}:items:query:*", manager.global_prefix());
    let mut query_key = None;
    for _ in 0..500 {
        let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut redis).await.unwrap();
        query_key = keys.into_iter().find(|k| !k.ends_with(":gen"));
        if query_key.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let query_key = query_key.expect("the first result was cached");
    manager.invalidate_queries("items").await.unwrap();

    // The query reads the generation and the rows; its fill is held while a
    // write commits; the held fill must be dropped.
    let pause = manager.test_hooks().pause_fill(&query_key);
    assert_eq!(store.find(q()).await.unwrap(), before);
    reached(&pause).await;
    store.update(&1, item(1, "apple", 6, None), None).await.unwrap();
    pause.release();
    eventually("the held fill ran", || async {
        manager.get_stats().await.unwrap().fills_rejected >= 1
    })
    .await;
    assert!(store.find(q()).await.unwrap().is_empty(), "the new price is visible");
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[tokio::test]
async fn invalidate_queries_bumps_once_however_many_results_are_cached() {
    let server = RedisServer::start().await;
    let db = items_db().await;
    let manager = manager_on(&server.url(), |c| c);
    let store = GenericStore::<Item>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    seeded(&store).await;
    for p in 0..50 {
        store
            .find(Query::new().filter(Item::columns().price.ge(p)))
            .await
            .unwrap();
    }
    eventually("50 results cached", || async {
        manager.get_stats().await.unwrap().fills == 50
    })
    .await;

    let mut redis = raw_redis(&server.url()).await;
    reset_command_calls(&mut redis).await;
    // No record is cached: only the results, which the bump reaches at once.
    assert_eq!(manager.invalidate_queries("items").await.unwrap(), 0);
    assert_eq!(
        command_calls(&mut redis, "incr").await,
        1,
        "one bump (SET NX seed + INCR)"
    );
    assert_eq!(
        command_calls(&mut redis, "unlink").await,
        0,
        "the results are left to expire"
    );
    assert_eq!(command_calls(&mut redis, "keys").await, 0, "no KEYS");
    // The records are walked with SCAN, in as few steps as the keyspace needs.
    assert!(command_calls(&mut redis, "scan").await >= 1);
    for p in 0..50 {
        store
            .find(Query::new().filter(Item::columns().price.ge(p)))
            .await
            .unwrap();
    }
    assert_eq!(
        manager.get_stats().await.unwrap().misses,
        100,
        "every result was reached"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn every_committed_write_publishes_exactly_one_event() {
    let db = items_db().await;
    let signals = Arc::new(SignalManager::new(64));
    let mut rx = signals.subscribe();
    let store = GenericStore::<Item>::new(db.pool.clone(), Some(signals.clone()), None);

    store
        .create(item(1, "a", 1, None), Some(vec!["new".into(), "vip".into()]))
        .await
        .unwrap();
    store.create(item(2, "b", 2, None), None).await.unwrap();
    store
        .update(&1, item(1, "a2", 1, None), Some(vec!["edited".into()]))
        .await
        .unwrap();
    store
        .update_many(vec![(1, item(1, "a3", 1, None)), (2, item(2, "b3", 2, None))])
        .await
        .unwrap();
    store.delete(&1).await.unwrap();
    store.delete_many(&[2, 3]).await.unwrap();
    // A failed write publishes nothing.
    assert!(store.update(&7, item(7, "x", 0, None), None).await.is_err());

    let expected = [
        (ChangeOp::Create, vec!["1"], vec!["new", "vip"]),
        (ChangeOp::Create, vec!["2"], vec![]),
        (ChangeOp::Update, vec!["1"], vec!["edited"]),
        (ChangeOp::Update, vec!["1", "2"], vec![]),
        (ChangeOp::Delete, vec!["1"], vec![]),
        (ChangeOp::Delete, vec!["2", "3"], vec![]),
    ];
    for (op, ids, tags) in expected {
        let e = rx.try_recv().unwrap();
        assert_eq!(e.table, "items");
        assert_eq!(e.op, op);
        assert_eq!(e.ids, ids);
        assert_eq!(e.tags, tags);
    }
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    db.cleanup().await;
}

#[tokio::test]
async fn a_slow_subscriber_lags_without_blocking_writers() {
    let db = items_db().await;
    let signals = Arc::new(SignalManager::new(4));
    let mut slow = signals.subscribe();
    let store = GenericStore::<Item>::new(db.pool.clone(), Some(signals.clone()), None);
    for id in 0..10 {
        store.create(item(id, "x", 0, None), None).await.unwrap();
    }
    assert!(matches!(slow.recv().await, Err(RecvError::Lagged(6))));
    assert_eq!(
        slow.recv().await.unwrap().ids,
        vec!["6"],
        "then the oldest event still held"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn invalidate_tag_removes_only_the_tagged_entries() {
    let db = items_db().await;
    let manager = manager();
    let store = GenericStore::<Item>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    store
        .create(item(1, "a", 1, None), Some(vec!["vip".into()]))
        .await
        .unwrap();
    store.create(item(2, "b", 2, None), None).await.unwrap();
    store.create(item(3, "c", 3, None), None).await.unwrap();
    store
        .update(&3, item(3, "c", 4, None), Some(vec!["vip".into(), "*".into()]))
        .await
        .unwrap();
    let mut redis = raw_redis(&redis_url()).await;
    for id in 1..=3 {
        store.get_by_id(&id).await.unwrap();
        wait_for_value(&mut redis, &store.cache_key(&id)).await;
    }

    assert_eq!(manager.invalidate_tag("vip").await.unwrap(), 2);
    assert_eq!(raw_get(&mut redis, &store.cache_key(&1)).await, None);
    assert_eq!(raw_get(&mut redis, &store.cache_key(&3)).await, None);
    assert!(
        raw_get(&mut redis, &store.cache_key(&2)).await.is_some(),
        "untagged entry stays"
    );
    assert_eq!(manager.invalidate_tag("vip").await.unwrap(), 0, "the tag's set is gone");
    // A tag is a name, never a pattern: "*" only reaches its own set.
    store.get_by_id(&2).await.unwrap();
    assert_eq!(manager.invalidate_tag("*").await.unwrap(), 0);
    assert!(raw_get(&mut redis, &store.cache_key(&2)).await.is_some());
    assert!(manager.invalidate_tag("").await.is_err());
    clear_prefix(&manager).await;
    db.cleanup().await;
}
