//! Read replicas (`GenericStore::with_read_replica`): misses load from a
//! PostgreSQL hot standby only when it has replayed the writes they could
//! see stale. Each test starts a private primary and a standby of it
//! (`PgServer::standby_of`: `pg_basebackup -R`) and pauses the standby's
//! replay (`pg_wal_replay_pause()`) to make lag on demand; a control read on
//! the paused standby shows the old row, so every check below can fail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use storehaus::prelude::*;
use storehaus::{CacheParams, GenericStore, Query, ReplicaStats, REPLICA_LAG_BUDGET};
use storehaus_testkit::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "notes", prefix = "notes")]
pub struct Note {
    pub id: i64,
    #[cache(index)]
    pub slug: String,
    pub body: String,
}

fn note(id: i64, body: &str) -> Note {
    Note {
        id,
        slug: format!("n{id}"),
        body: body.to_string(),
    }
}

/// Rows 1..=ROWS exist at body "v0" before the standby is made.
const ROWS: i64 = 40;
/// A row no test writes: the warm-up reads it.
const PROBE: i64 = ROWS;

/// A private primary with `notes`, and a hot standby of it.
struct Pair {
    pool: PgPool,
    replica: PgPool,
    standby: PgServer,
    _primary: PgServer,
}

impl Pair {
    async fn start() -> Pair {
        let primary = PgServer::start();
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&primary.url())
            .await
            .expect("connect to the primary");
        sqlx::query("CREATE TABLE notes (id bigint PRIMARY KEY, slug text NOT NULL UNIQUE, body text NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO notes SELECT g, 'n' || g, 'v0' FROM generate_series(1, $1) g")
            .bind(ROWS)
            .execute(&pool)
            .await
            .unwrap();
        let standby = PgServer::standby_of(&primary);
        let replica = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(1))
            .connect(&standby.url())
            .await
            .expect("connect to the standby");
        Pair {
            pool,
            replica,
            standby,
            _primary: primary,
        }
    }

    fn store(&self, manager: &Arc<CacheManager>) -> GenericStore<Note> {
        GenericStore::<Note>::new(self.pool.clone(), None, Some(CacheParams::new(manager.clone())))
            .with_read_replica(self.replica.clone())
    }

    /// Pauses the standby's replay and waits until it has stopped.
    async fn pause(&self) {
        sqlx::query("SELECT pg_wal_replay_pause()")
            .execute(&self.replica)
            .await
            .unwrap();
        eventually("replay paused", || async {
            let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
                .fetch_one(&self.replica)
                .await
                .unwrap();
            state == "paused"
        })
        .await;
    }

    async fn resume(&self) {
        sqlx::query("SELECT pg_wal_replay_resume()")
            .execute(&self.replica)
            .await
            .unwrap();
    }

    /// The control read: row `id`'s body as the standby has it.
    async fn on_standby(&self, id: i64) -> Option<String> {
        sqlx::query_scalar("SELECT body FROM notes WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.replica)
            .await
            .unwrap()
    }

    /// Runs `sql` on the primary, behind the stores' back.
    async fn raw(&self, sql: &str) {
        sqlx::query(sql).execute(&self.pool).await.unwrap();
    }
}

/// A second manager on the same Redis and global prefix: another process.
fn twin(manager: &CacheManager) -> Arc<CacheManager> {
    let config = CacheConfig::new(redis_url(), 3600, manager.global_prefix());
    Arc::new(CacheManager::new(config).unwrap())
}

fn stats_of(store: &GenericStore<Note>) -> ReplicaStats {
    store.replica_stats().expect("a store with a replica")
}

/// Waits until `store` loads from the standby: its pollers have seen it.
async fn until_standby_serves(store: &GenericStore<Note>) {
    let manager = store.cache_manager().unwrap();
    let start = Instant::now();
    loop {
        let before = stats_of(store).replica_loads;
        manager.delete_record("notes", &PROBE.to_string()).await.unwrap();
        store.get_by_id(&PROBE).await.unwrap();
        if stats_of(store).replica_loads > before {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the standby never served a load"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the cache holds for row `id` (waiting for a fill to land): read
/// through a store on the paused standby that can only agree with the
/// primary by hitting the cache.
/// What the cache holds for each row (`None`: "no such row"), read
/// through a fresh manager on the same key space.
async fn assert_cached(pair: &Pair, manager: &CacheManager, expected: &[(i64, Option<&str>)]) {
    for &(id, want) in expected {
        assert_eq!(cached_body(pair, manager, id).await.as_deref(), want, "row {id} cached");
    }
}

async fn cached_body(pair: &Pair, manager: &CacheManager, id: i64) -> Option<String> {
    let store = GenericStore::<Note>::new(
        pair.replica.clone(),
        None,
        Some(CacheParams::new(Arc::new(
            CacheManager::new(CacheConfig::new(redis_url(), 3600, manager.global_prefix())).unwrap(),
        ))),
    );
    let mut redis = raw_redis(&redis_url()).await;
    wait_for_value(&mut redis, &store.cache_key(&id)).await;
    store.get_by_id(&id).await.unwrap().map(|n| n.body)
}

fn body(found: Option<Note>) -> Option<String> {
    found.map(|n| n.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_an_update_and_a_delete_are_never_read_back_old_by_either_process() {
    let pair = Pair::start().await;
    let writer_mgr = manager();
    let writer = pair.store(&writer_mgr);
    let reader_mgr = twin(&writer_mgr);
    let reader = pair.store(&reader_mgr);
    until_standby_serves(&writer).await;
    until_standby_serves(&reader).await;
    // Cached before the writes: the writes must delete them, and the
    // misses after them must not refill them from the standby.
    for id in [1, 2, 5] {
        reader.get_by_id(&id).await.unwrap();
    }
    assert_eq!(reader.get_by_id(&41).await.unwrap(), None);

    pair.pause().await;
    writer.update(&1, note(1, "v1"), None).await.unwrap();
    writer.create(note(41, "born"), None).await.unwrap();
    assert!(writer.delete(&2).await.unwrap());
    writer.update(&5, note(5, "v1"), None).await.unwrap();
    writer.update(&6, note(6, "v1"), None).await.unwrap();
    writer.create(note(42, "born"), None).await.unwrap();
    assert!(writer.delete(&7).await.unwrap());

    assert_eq!(
        pair.on_standby(1).await.as_deref(),
        Some("v0"),
        "control: the standby lags"
    );
    assert_eq!(pair.on_standby(41).await, None, "control: the standby lags");
    assert_eq!(
        pair.on_standby(2).await.as_deref(),
        Some("v0"),
        "control: the standby lags"
    );

    let primary_before = stats_of(&reader).primary_loads;
    // get_many first (a miss of every id), then one by one.
    let many = reader.get_many(&[5, 6, 42, 7]).await.unwrap();
    let many: Vec<Option<String>> = many.into_iter().map(body).collect();
    assert_eq!(
        many,
        vec![Some("v1".into()), Some("v1".into()), Some("born".into()), None]
    );
    for (name, store) in [("the writer", &writer), ("another process", &reader)] {
        assert_eq!(
            body(store.get_by_id(&1).await.unwrap()).as_deref(),
            Some("v1"),
            "{name}: update"
        );
        assert_eq!(
            body(store.get_by_id(&41).await.unwrap()).as_deref(),
            Some("born"),
            "{name}: create"
        );
        assert_eq!(store.get_by_id(&2).await.unwrap(), None, "{name}: delete");
    }
    assert!(stats_of(&reader).primary_loads > primary_before);

    // Never filled old: what the cache holds is the new row.
    assert_cached(
        &pair,
        &reader_mgr,
        &[
            (1, Some("v1")),
            (41, Some("born")),
            (2, None),
            (5, Some("v1")),
            (42, Some("born")),
            (7, None),
        ],
    )
    .await;
    pair.resume().await;
    clear_prefix(&writer_mgr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_many_a_transaction_lookups_and_queries_are_never_read_back_old() {
    let pair = Pair::start().await;
    let writer_mgr = manager();
    let writer = pair.store(&writer_mgr);
    let reader_mgr = twin(&writer_mgr);
    let reader = pair.store(&reader_mgr);
    until_standby_serves(&reader).await;
    let renamed = || Query::<Note>::new().filter(Note::columns().body.eq("renamed".to_string()));
    // Cached before the writes.
    assert!(reader.find(renamed()).await.unwrap().is_empty());
    assert_eq!(
        body(reader.get_by(Note::columns().slug, "n3".to_string()).await.unwrap()).as_deref(),
        Some("v0")
    );
    for id in [3, 4, 8, 9] {
        reader.get_by_id(&id).await.unwrap();
    }
    wait_for_fills(&reader_mgr, 5).await;

    pair.pause().await;
    writer
        .update_many(vec![(3, note(3, "renamed")), (4, note(4, "renamed"))])
        .await
        .unwrap();
    let mut tx = writer.begin().await.unwrap();
    tx.update(&8, note(8, "in-tx"), None).await.unwrap();
    assert!(tx.delete(&9).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(
        pair.on_standby(3).await.as_deref(),
        Some("v0"),
        "control: the standby lags"
    );
    assert_eq!(
        pair.on_standby(9).await.as_deref(),
        Some("v0"),
        "control: the standby lags"
    );

    for (name, store) in [("the writer", &writer), ("another process", &reader)] {
        let ids: Vec<i64> = store.find(renamed()).await.unwrap().iter().map(|n| n.id).collect();
        assert_eq!(ids.len(), 2, "{name}: a cached query after update_many: {ids:?}");
        let by_slug = store.get_by(Note::columns().slug, "n3".to_string()).await.unwrap();
        assert_eq!(
            body(by_slug).as_deref(),
            Some("renamed"),
            "{name}: get_by after update_many"
        );
        assert_eq!(
            body(store.get_by_id(&4).await.unwrap()).as_deref(),
            Some("renamed"),
            "{name}: update_many"
        );
        assert_eq!(
            body(store.get_by_id(&8).await.unwrap()).as_deref(),
            Some("in-tx"),
            "{name}: transaction"
        );
        assert_eq!(store.get_by_id(&9).await.unwrap(), None, "{name}: transaction delete");
    }
    assert_cached(
        &pair,
        &reader_mgr,
        &[(3, Some("renamed")), (8, Some("in-tx")), (9, None)],
    )
    .await;
    pair.resume().await;
    clear_prefix(&writer_mgr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_write_is_never_read_back_old_once_the_outbox_delivered_it() {
    let pair = Pair::start().await;
    let mgr = manager();
    let store = pair.store(&mgr);
    store.watch_external_writes().await.unwrap();
    until_standby_serves(&store).await;
    for id in [10, 11] {
        store.get_by_id(&id).await.unwrap();
    }
    wait_for_fills(&mgr, 2).await;

    pair.pause().await;
    let delivered = mgr.get_stats().await.unwrap().outbox_delivered;
    pair.raw("UPDATE notes SET body = 'external' WHERE id = 10").await;
    pair.raw("DELETE FROM notes WHERE id = 11").await;
    eventually("the outbox delivered both", || async {
        mgr.get_stats().await.unwrap().outbox_delivered >= delivered + 2
    })
    .await;
    assert_eq!(
        pair.on_standby(10).await.as_deref(),
        Some("v0"),
        "control: the standby lags"
    );
    assert_eq!(body(store.get_by_id(&10).await.unwrap()).as_deref(), Some("external"));
    assert_eq!(store.get_by_id(&11).await.unwrap(), None);
    assert_eq!(cached_body(&pair, &mgr, 10).await.as_deref(), Some("external"));
    pair.resume().await;
    clear_prefix(&mgr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_standby_is_paused_rows_nobody_wrote_keep_loading_from_it() {
    let pair = Pair::start().await;
    let mgr = manager();
    let store = pair.store(&mgr);
    until_standby_serves(&store).await;

    pair.pause().await;
    store.update(&1, note(1, "v1"), None).await.unwrap();
    // Changed behind the store's back (no outbox, no invalidation): a load
    // from the primary would see "raw", one from the standby "v0".
    pair.raw("UPDATE notes SET body = 'raw' WHERE id BETWEEN 20 AND 29")
        .await;
    let before = stats_of(&store);
    for id in 20..30 {
        assert_eq!(
            body(store.get_by_id(&id).await.unwrap()).as_deref(),
            Some("v0"),
            "row {id} from the standby"
        );
    }
    let many = store.get_many(&[1, 30, 31]).await.unwrap();
    assert_eq!(
        body(many[0].clone()).as_deref(),
        Some("v1"),
        "the written row from the primary"
    );
    let after = stats_of(&store);
    assert_eq!(after.replica_loads - before.replica_loads, 10, "{before:?} {after:?}");
    assert_eq!(after.primary_loads - before.primary_loads, 1, "{before:?} {after:?}");
    pair.resume().await;
    clear_prefix(&mgr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_further_behind_than_the_budget_is_skipped() {
    let pair = Pair::start().await;
    let mgr = manager();
    let store = pair.store(&mgr);
    until_standby_serves(&store).await;

    pair.pause().await;
    store.update(&1, note(1, "v1"), None).await.unwrap();
    // The write's marker expires; the standby still has not replayed it.
    tokio::time::sleep(REPLICA_LAG_BUDGET + Duration::from_millis(500)).await;
    assert_eq!(
        pair.on_standby(1).await.as_deref(),
        Some("v0"),
        "control: the standby lags"
    );
    let before = stats_of(&store);
    assert_eq!(body(store.get_by_id(&1).await.unwrap()).as_deref(), Some("v1"));
    assert_eq!(body(store.get_by_id(&12).await.unwrap()).as_deref(), Some("v0"));
    let after = stats_of(&store);
    assert_eq!(
        after.replica_loads, before.replica_loads,
        "a standby that far behind serves nothing"
    );

    // Caught up again, it serves again.
    pair.resume().await;
    until_standby_serves(&store).await;
    clear_prefix(&mgr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_standby_costs_reads_nothing_but_a_fallback() {
    let pair = Pair::start().await;
    let mgr = manager();
    let store = pair.store(&mgr);
    until_standby_serves(&store).await;
    store.update(&1, note(1, "v1"), None).await.unwrap();

    pair.standby.stop();
    let before = stats_of(&store);
    for round in 0..3 {
        for id in 1..=20 {
            mgr.delete_record("notes", &id.to_string()).await.unwrap();
            let expected = if id == 1 { "v1" } else { "v0" };
            let found = store.get_by_id(&id).await.expect("a stopped standby is never an error");
            assert_eq!(body(found).as_deref(), Some(expected), "round {round}, row {id}");
        }
    }
    let after = stats_of(&store);
    assert_eq!(after.replica_loads, before.replica_loads);
    assert_eq!(after.primary_loads - before.primary_loads, 60, "{before:?} {after:?}");
    // Its poll fails within one interval (20 ms), and three failed loads in
    // a row take it out: only loads that raced both tried the standby.
    assert!(after.fallbacks - before.fallbacks <= 3, "{before:?} {after:?}");

    // Started again, it serves again.
    pair.standby.start_again();
    until_standby_serves(&store).await;
    clear_prefix(&mgr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_cache_keeps_its_markers_too() {
    let pair = Pair::start().await;
    let mgr = memory_manager();
    let store = pair.store(&mgr);
    until_standby_serves(&store).await;
    store.get_by_id(&1).await.unwrap();
    pair.pause().await;
    store.update(&1, note(1, "v1"), None).await.unwrap();
    assert_eq!(
        pair.on_standby(1).await.as_deref(),
        Some("v0"),
        "control: the standby lags"
    );
    assert_eq!(body(store.get_by_id(&1).await.unwrap()).as_deref(), Some("v1"));
    pair.resume().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_loads_fail_is_skipped_and_never_an_error() {
    let pair = Pair::start().await;
    let mgr = manager();
    // Its replay position reads fine; its loads fail (no `notes` there).
    let broken = PgPoolOptions::new()
        .max_connections(2)
        .connect(&pair.standby.url_as("postgres", "template1"))
        .await
        .unwrap();
    let store = GenericStore::<Note>::new(pair.pool.clone(), None, Some(CacheParams::new(mgr.clone())))
        .with_read_replica(broken);
    // Until the pollers have seen it, loads use the primary.
    eventually("the broken replica was tried", || async {
        mgr.delete_record("notes", &PROBE.to_string()).await.unwrap();
        body(store.get_by_id(&PROBE).await.unwrap()).as_deref() == Some("v0") && stats_of(&store).fallbacks > 0
    })
    .await;
    let before = stats_of(&store);
    for id in 1..=20 {
        mgr.delete_record("notes", &id.to_string()).await.unwrap();
        let found = store.get_by_id(&id).await.expect("a failing replica is never an error");
        assert_eq!(body(found).as_deref(), Some("v0"));
    }
    let after = stats_of(&store);
    assert_eq!(after.replica_loads, 0);
    assert_eq!(after.primary_loads - before.primary_loads, 20);
    // Three failures in a row take it out for a second.
    assert!(after.fallbacks - before.fallbacks <= 3, "{before:?} {after:?}");
    clear_prefix(&mgr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_writes_are_never_read_back_old() {
    let pair = Pair::start().await;
    let writer_mgr = manager_on(&cluster_url(), |c| c);
    let writer = pair.store(&writer_mgr);
    let reader_mgr =
        Arc::new(CacheManager::new(CacheConfig::new(cluster_url(), 3600, writer_mgr.global_prefix())).unwrap());
    let reader = pair.store(&reader_mgr);
    until_standby_serves(&reader).await;
    let renamed = || Query::<Note>::new().filter(Note::columns().body.eq("renamed".to_string()));
    assert!(reader.find(renamed()).await.unwrap().is_empty());
    assert_eq!(
        body(reader.get_by(Note::columns().slug, "n3".to_string()).await.unwrap()).as_deref(),
        Some("v0")
    );
    for id in [1, 2] {
        reader.get_by_id(&id).await.unwrap();
    }

    pair.pause().await;
    writer.update(&1, note(1, "v1"), None).await.unwrap();
    writer.create(note(41, "born"), None).await.unwrap();
    assert!(writer.delete(&2).await.unwrap());
    writer.update(&3, note(3, "renamed"), None).await.unwrap();
    assert_eq!(
        pair.on_standby(1).await.as_deref(),
        Some("v0"),
        "control: the standby lags"
    );
    for (name, store) in [("the writer", &writer), ("another process", &reader)] {
        assert_eq!(
            body(store.get_by_id(&1).await.unwrap()).as_deref(),
            Some("v1"),
            "{name}: update"
        );
        assert_eq!(
            body(store.get_by_id(&41).await.unwrap()).as_deref(),
            Some("born"),
            "{name}: create"
        );
        assert_eq!(store.get_by_id(&2).await.unwrap(), None, "{name}: delete");
        assert_eq!(store.find(renamed()).await.unwrap().len(), 1, "{name}: a cached query");
        let by_slug = store.get_by(Note::columns().slug, "n3".to_string()).await.unwrap();
        assert_eq!(body(by_slug).as_deref(), Some("renamed"), "{name}: get_by");
    }
    pair.resume().await;
    clear_prefix(&writer_mgr).await;
}
