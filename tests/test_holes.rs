//! The consistency holes a review found by constructing interleavings across
//! processes, dropped futures and bad data, each staged for real: row locks
//! and slow reads in PostgreSQL, several managers ("processes") on one
//! Redis, private `redis-server`s out of memory or restarted from a dump,
//! and values planted in Redis by hand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use storehaus::prelude::*;
use storehaus::{CacheParams, GenericStore, Query};
use storehaus_testkit::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "docs", prefix = "docs")]
pub struct Doc {
    pub id: i64,
    pub version: i64,
}

fn doc(id: i64, version: i64) -> Doc {
    Doc { id, version }
}

/// A schema with `docs` rows `1..=n` at version 1.
async fn docs_db(n: i64) -> Db {
    let db = Db::with_max_connections(10).await;
    db.exec("CREATE TABLE docs (id bigint PRIMARY KEY, version bigint NOT NULL)")
        .await;
    db.exec(&format!("INSERT INTO docs SELECT g, 1 FROM generate_series(1, {n}) g"))
        .await;
    db
}

fn store_on(pool: &sqlx::PgPool, manager: &Arc<CacheManager>) -> GenericStore<Doc> {
    GenericStore::<Doc>::new(pool.clone(), None, Some(CacheParams::new(manager.clone())))
}

async fn db_version(db: &Db, id: i64) -> Option<i64> {
    sqlx::query_scalar("SELECT version FROM docs WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
}

fn decode_version(bytes: &[u8]) -> Option<i64> {
    let value = rmpv::decode::read_value(&mut &bytes[..]).ok()?;
    // The payload is the envelope's last element (docs/FORMAT.md).
    value.as_array()?.last()?.as_array()?.get(1)?.as_i64()
}

/// Reads `id` until it returns `want`, for at most 3 s (far less than any
/// TTL here: a write whose invalidation was lost would be read stale for an
/// hour).
async fn reads_become(store: &GenericStore<Doc>, id: i64, want: Option<i64>) {
    let start = Instant::now();
    loop {
        let got = store.get_by_id(&id).await.unwrap().map(|d| d.version);
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "doc {id}: reads still return {got:?} after the write committed, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the database until `id` has `want`.
async fn committed(db: &Db, id: i64, want: Option<i64>) {
    eventually("the write committed", || async { db_version(db, id).await == want }).await;
}

/// Runs `f` under a 50 ms deadline that it cannot meet: the caller gives up
/// (the future is dropped) while the database still works on it.
async fn give_up<F: std::future::Future>(f: F) {
    assert!(
        tokio::time::timeout(Duration::from_millis(50), f).await.is_err(),
        "the call was expected to be still waiting on the database"
    );
}

// ----- 1. A write whose caller gives up still invalidates after its commit -----

/// A transaction holding `FOR UPDATE` locks on rows (or an uncommitted
/// insert of an id, which blocks another insert of it).
struct Locker(sqlx::Transaction<'static, sqlx::Postgres>);

impl Locker {
    async fn rows(db: &Db, ids: &[i64]) -> Locker {
        let mut tx = db.pool.begin().await.unwrap();
        sqlx::query("SELECT id FROM docs WHERE id = ANY($1) FOR UPDATE")
            .bind(ids)
            .execute(&mut *tx)
            .await
            .unwrap();
        Locker(tx)
    }

    async fn insert(db: &Db, id: i64) -> Locker {
        let mut tx = db.pool.begin().await.unwrap();
        sqlx::query("INSERT INTO docs VALUES ($1, 0)")
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
        Locker(tx)
    }

    async fn release(self) {
        self.0.rollback().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_caller_gives_up_before_the_commit_still_invalidates_after_it() {
    let db = docs_db(4).await;
    let manager = manager();
    let store = store_on(&db.pool, &manager);
    let mut redis = raw_redis(&redis_url()).await;
    for id in 1..=4 {
        store.get_by_id(&id).await.unwrap();
        wait_for_value(&mut redis, &store.cache_key(&id)).await;
    }
    assert_eq!(store.get_by_id(&99).await.unwrap(), None);
    wait_for_value(&mut redis, &store.cache_key(&99)).await;

    // update: blocked on a row lock, the caller gives up; a read in between
    // (a hit, or a refill of v1 if the keys had been deleted at the drop);
    // then the lock goes, the update commits.
    let lock = Locker::rows(&db, &[1]).await;
    give_up(store.update(&1, doc(1, 2), None)).await;
    assert_eq!(store.get_by_id(&1).await.unwrap(), Some(doc(1, 1)), "not committed yet");
    lock.release().await;
    committed(&db, 1, Some(2)).await;
    reads_become(&store, 1, Some(2)).await;

    // create: clears the cached "no such row".
    let lock = Locker::insert(&db, 99).await;
    give_up(store.create(doc(99, 7), None)).await;
    assert_eq!(store.get_by_id(&99).await.unwrap(), None);
    lock.release().await;
    committed(&db, 99, Some(7)).await;
    reads_become(&store, 99, Some(7)).await;

    // delete
    let lock = Locker::rows(&db, &[2]).await;
    give_up(store.delete(&2)).await;
    assert_eq!(store.get_by_id(&2).await.unwrap(), Some(doc(2, 1)));
    lock.release().await;
    committed(&db, 2, None).await;
    reads_become(&store, 2, None).await;

    // update_many and delete_many
    let lock = Locker::rows(&db, &[3]).await;
    give_up(store.update_many(vec![(3, doc(3, 2)), (4, doc(4, 2))])).await;
    assert_eq!(store.get_by_id(&3).await.unwrap(), Some(doc(3, 1)));
    lock.release().await;
    committed(&db, 4, Some(2)).await;
    reads_become(&store, 3, Some(2)).await;
    reads_become(&store, 4, Some(2)).await;

    let lock = Locker::rows(&db, &[3]).await;
    give_up(store.delete_many(&[3, 4])).await;
    lock.release().await;
    committed(&db, 3, None).await;
    reads_become(&store, 3, None).await;
    reads_become(&store, 4, None).await;

    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_caller_gives_up_during_commit_still_invalidates_after_it() {
    let db = docs_db(2).await;
    // A deferred constraint trigger runs at COMMIT: this one makes the
    // commit take 400 ms, long after the caller gave up.
    db.exec(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_sleep(0.4); RETURN NULL; END $$",
    )
    .await;
    db.exec(
        "CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON docs \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()",
    )
    .await;
    let manager = manager();
    let store = store_on(&db.pool, &manager);
    let mut redis = raw_redis(&redis_url()).await;
    for id in 1..=2 {
        store.get_by_id(&id).await.unwrap();
        wait_for_value(&mut redis, &store.cache_key(&id)).await;
    }

    let mut tx = store.begin().await.unwrap();
    tx.update(&1, doc(1, 2), None).await.unwrap();
    tx.update(&2, doc(2, 2), None).await.unwrap();
    give_up(tx.commit()).await;
    assert_eq!(store.get_by_id(&1).await.unwrap(), Some(doc(1, 1)), "not committed yet");
    committed(&db, 1, Some(2)).await;
    reads_become(&store, 1, Some(2)).await;
    reads_become(&store, 2, Some(2)).await;

    clear_prefix(&manager).await;
    db.cleanup().await;
}

// ----- 2. A reader joins a local load only under that load's own lease -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_never_joins_a_local_load_that_began_before_another_processs_write() {
    let db = docs_db(1).await;
    // Reads go through a view whose WHERE clause sleeps as long as the
    // session setting `storehaus.slow` says (seconds; 0 when unset).
    db.exec("ALTER TABLE docs RENAME TO docs_t").await;
    db.exec(
        "CREATE FUNCTION slow_gate() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$ BEGIN \
         PERFORM pg_sleep(coalesce(nullif(current_setting('storehaus.slow', true), ''), '0')::float8); \
         RETURN true; END $$",
    )
    .await;
    db.exec("CREATE VIEW docs AS SELECT * FROM docs_t WHERE slow_gate()")
        .await;
    let pool_sleeping = |secs: &'static str| {
        let schema = db.schema.clone();
        async move {
            let opts: PgConnectOptions = database_url().parse().unwrap();
            PgPoolOptions::new()
                .max_connections(2)
                .connect_with(opts.options([("search_path", schema.as_str()), ("storehaus.slow", secs)]))
                .await
                .unwrap()
        }
    };
    let slow_a = pool_sleeping("0.8").await;
    let slow_b = pool_sleeping("0.3").await;

    // Three processes on one Redis: A, B and the writer C.
    let global = random_name("t");
    let process = || {
        let config = CacheConfig::new(redis_url(), 3600, global.clone()).with_lease_wait(3_000);
        Arc::new(CacheManager::new(config).unwrap())
    };
    let (a, b, c) = (process(), process(), process());

    // In A, R1 takes lease 1 and reads v1 slowly.
    let r1 = tokio::spawn({
        let store = store_on(&slow_a, &a);
        async move { store.get_by_id(&1).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // C commits v2, deleting the key and lease 1 with it, and returns.
    store_on(&db.pool, &c).update(&1, doc(1, 2), None).await.unwrap();
    // In B, R2 takes lease 2 and reads (v2) slowly.
    let r2 = tokio::spawn({
        let store = store_on(&slow_b, &b);
        async move { store.get_by_id(&1).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // In A, R3 starts after C's write returned and finds lease 2. Joining
    // R1's load (same key, same process) would return v1.
    let r3 = store_on(&db.pool, &a).get_by_id(&1).await.unwrap();
    assert_eq!(r3, Some(doc(1, 2)), "R3 began after the write had returned");
    assert_eq!(r2.await.unwrap(), Some(doc(1, 2)));
    assert_eq!(
        r1.await.unwrap(),
        Some(doc(1, 1)),
        "R1 began before the write: v1 is its answer"
    );
    assert_eq!(a.get_stats().await.unwrap().coalesced, 0, "{:?}", a.get_stats().await);

    clear_prefix(&a).await;
    slow_a.close().await;
    slow_b.close().await;
    db.cleanup().await;
}

// ----- 3. Out of memory: query generations still move -----

async fn unstarve(redis: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("DEL").arg("junk").query_async(redis).await.unwrap();
    config_set(redis, "maxmemory", "0").await;
}

#[tokio::test]
async fn out_of_memory_a_write_still_invalidates_other_processes_query_results() {
    let server = RedisServer::start().await;
    let db = docs_db(3).await;
    let global = random_name("t");
    let process = || {
        let config = CacheConfig::new(server.url(), 3600, global.clone()).with_timeout(300);
        Arc::new(CacheManager::new(config).unwrap())
    };
    let (writer, reader) = (process(), process());
    let w = store_on(&db.pool, &writer);
    let r = store_on(&db.pool, &reader);
    let all = || Query::<Doc>::new().filter(Doc::columns().version.ge(1));

    // Twice: the first query of a store seeds its generation.
    assert_eq!(r.find(all()).await.unwrap().len(), 3);
    assert_eq!(r.find(all()).await.unwrap().len(), 3);
    wait_for_fills(&reader, 1).await;
    let hits = reader.get_stats().await.unwrap().hits;
    assert_eq!(r.find(all()).await.unwrap().len(), 3);
    assert_eq!(reader.get_stats().await.unwrap().hits, hits + 1, "the result is cached");

    let mut redis = raw_redis(&server.url()).await;
    starve(&mut redis).await;
    w.delete(&1).await.unwrap();
    assert_eq!(w.find(all()).await.unwrap().len(), 2, "the writer reads its write");
    assert_eq!(
        r.find(all()).await.unwrap().len(),
        2,
        "another process never serves the result cached before the write"
    );
    let s = writer.get_stats().await.unwrap();
    assert!(s.command_errors >= 1, "the refused bump is counted: {s:?}");

    // Memory frees: results are cached again.
    unstarve(&mut redis).await;
    let fills = reader.get_stats().await.unwrap().fills;
    assert_eq!(r.find(all()).await.unwrap().len(), 2);
    assert_eq!(r.find(all()).await.unwrap().len(), 2);
    wait_for_fills(&reader, fills + 1).await;
    let hits = reader.get_stats().await.unwrap().hits;
    assert_eq!(r.find(all()).await.unwrap().len(), 2);
    assert_eq!(reader.get_stats().await.unwrap().hits, hits + 1);
    db.cleanup().await;
}

// ----- 4 and 5. Query generations on the embedded stack; the first query -----

#[tokio::test]
async fn memory_backend_a_deleted_generation_never_revives_old_query_results() {
    let db = docs_db(2).await;
    let manager = memory_manager();
    let store = store_on(&db.pool, &manager);
    let all = || Query::<Doc>::new().filter(Doc::columns().version.ge(1));
    store.update(&1, doc(1, 2), None).await.unwrap();
    assert_eq!(store.find(all()).await.unwrap().len(), 2);
    wait_for_fills(&manager, 1).await;
    // The counter is lost (deleted here; evicted or flushed elsewhere)...
    assert_eq!(manager.delete_pattern("docs:query:gen").await.unwrap(), 1);
    // ...and a write starts it again: never at a value an old result carries.
    store.update(&2, doc(2, 5), None).await.unwrap();
    let versions: Vec<i64> = store
        .find(all())
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.version)
        .collect();
    assert_eq!(versions, vec![2, 5]);
    db.cleanup().await;
}

#[tokio::test]
async fn the_first_query_of_a_store_is_cached() {
    for on_redis in [true, false] {
        let db = docs_db(2).await;
        let manager = if on_redis { manager() } else { memory_manager() };
        let store = store_on(&db.pool, &manager);
        let q = || Query::<Doc>::new().filter(Doc::columns().id.eq(1));
        assert_eq!(store.find(q()).await.unwrap(), vec![doc(1, 1)]);
        wait_for_fills(&manager, 1).await;
        sqlx::query("UPDATE docs SET version = 9 WHERE id = 1")
            .execute(&db.pool)
            .await
            .unwrap();
        assert_eq!(
            store.find(q()).await.unwrap(),
            vec![doc(1, 1)],
            "the second identical find is a hit (on_redis = {on_redis})"
        );
        let s = manager.get_stats().await.unwrap();
        assert_eq!((s.misses, s.hits), (1, 1), "{s:?}");
        clear_prefix(&manager).await;
        db.cleanup().await;
    }
}

// ----- 6 and 7. Bad data: fake leases, corrupt generation counters -----

#[tokio::test]
async fn a_lease_without_expiry_or_of_the_wrong_length_is_a_corrupt_entry_not_a_lease() {
    let db = docs_db(4).await;
    let manager = manager_on(&redis_url(), |c| c.with_lease_wait(5_000).with_timeout(5_000));
    let store = store_on(&db.pool, &manager);
    let mut redis = raw_redis(&redis_url()).await;
    let mut no_ttl = vec![0xC1];
    no_ttl.extend_from_slice(&[7u8; 16]);
    set_raw(&mut redis, &store.cache_key(&1), &no_ttl).await;
    set_raw(&mut redis, &store.cache_key(&2), b"\xC1short").await;
    set_raw(&mut redis, &store.cache_key(&3), &no_ttl).await;
    set_raw(&mut redis, &store.cache_key(&4), b"\xC1short").await;

    for id in [1, 2] {
        let start = Instant::now();
        assert_eq!(store.get_by_id(&id).await.unwrap(), Some(doc(id, 1)));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "doc {id}: the read did not wait out the 5 s lease wait: {:?}",
            start.elapsed()
        );
        let value = wait_for_value(&mut redis, &store.cache_key(&id)).await;
        assert_eq!(decode_version(&value), Some(1), "doc {id} was refilled");
    }
    // get_many replaces them too.
    let start = Instant::now();
    assert_eq!(
        store.get_many(&[3, 4]).await.unwrap(),
        vec![Some(doc(3, 1)), Some(doc(4, 1))]
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    for id in [3, 4] {
        let value = wait_for_value(&mut redis, &store.cache_key(&id)).await;
        assert_eq!(decode_version(&value), Some(1), "doc {id} was refilled");
    }
    let s = manager.get_stats().await.unwrap();
    assert!(s.serialization_errors >= 4, "each is counted: {s:?}");
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_corrupt_generation_counter_is_replaced_and_the_cache_stays_on() {
    let db = docs_db(2).await;
    let manager = manager();
    let store = store_on(&db.pool, &manager);
    let mut redis = raw_redis(&redis_url()).await;
    let gen = format!("{}:docs:query:gen", manager.global_prefix());
    let all = || Query::<Doc>::new().filter(Doc::columns().version.ge(1));

    for plant in ["string", "hash"] {
        let _: () = redis::cmd("DEL").arg(&gen).query_async(&mut redis).await.unwrap();
        if plant == "string" {
            set_raw(&mut redis, &gen, b"not a number").await;
        } else {
            let _: () = redis::cmd("HSET")
                .arg(&gen)
                .arg("f")
                .arg("v")
                .query_async(&mut redis)
                .await
                .unwrap();
        }
        let before = manager.get_stats().await.unwrap();
        let v = before.hits + 2;
        store.update(&1, doc(1, v as i64), None).await.unwrap();
        let s = manager.get_stats().await.unwrap();
        assert_eq!(s.pending_invalidations, 0, "{plant}: the write was delivered: {s:?}");
        assert_eq!(
            s.serialization_errors,
            before.serialization_errors + 1,
            "{plant}: counted"
        );
        let counter: String = redis::cmd("GET").arg(&gen).query_async(&mut redis).await.unwrap();
        assert!(counter.parse::<u64>().is_ok(), "{plant}: a fresh seed, {counter:?}");

        // Reads and queries go on through the cache.
        store.get_by_id(&1).await.unwrap();
        wait_for_value(&mut redis, &store.cache_key(&1)).await;
        assert_eq!(store.get_by_id(&1).await.unwrap(), Some(doc(1, v as i64)));
        let fills = manager.get_stats().await.unwrap().fills;
        store.find(all()).await.unwrap();
        wait_for_fills(&manager, fills + 1).await;
        let hits = manager.get_stats().await.unwrap().hits;
        store.find(all()).await.unwrap();
        assert_eq!(
            manager.get_stats().await.unwrap().hits,
            hits + 1,
            "{plant}: a query hit"
        );
    }

    // A corrupt counter met by a read is replaced too.
    set_raw(&mut redis, &gen, b"garbage").await;
    let errors = manager.get_stats().await.unwrap().serialization_errors;
    assert_eq!(store.find(all()).await.unwrap().len(), 2);
    assert_eq!(manager.get_stats().await.unwrap().serialization_errors, errors + 1);
    let counter: String = redis::cmd("GET").arg(&gen).query_async(&mut redis).await.unwrap();
    assert!(counter.parse::<u64>().is_ok(), "{counter:?}");
    clear_prefix(&manager).await;
    db.cleanup().await;
}

// ----- 8 and 9. Configuration -----

#[test]
fn every_duration_is_validated_with_its_range() {
    let base = || CacheConfig::new("memory://", 60, "app");
    let day = 86_400_000;
    let cases: Vec<(&str, CacheConfig)> = vec![
        ("cool-down", base().with_circuit_breaker(5, u64::MAX)),
        ("cool-down", base().with_circuit_breaker(5, day + 1)),
        ("threshold", base().with_circuit_breaker(0, 1_000)),
        ("timeout", base().with_timeout(u64::MAX)),
        ("retry delay", base().with_retry_delay(u64::MAX)),
        ("retry attempts", base().with_retry_attempts(u32::MAX)),
        ("lease TTL", base().with_lease_ttl(u64::MAX)),
        ("lease wait", base().with_lease_wait(u64::MAX)),
        ("max pending", base().with_max_pending_invalidations(0)),
    ];
    for (what, config) in cases {
        let err = CacheManager::new(config).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CacheError::InvalidConfig(_)), "{what}: {msg}");
        assert!(msg.contains("between"), "{what}: the message names the range: {msg}");
    }
    assert!(CacheManager::new(base().with_circuit_breaker(u32::MAX, day).with_retry_delay(day)).is_ok());
}

#[tokio::test]
async fn the_largest_accepted_durations_never_panic_a_store_operation() {
    let db = docs_db(1).await;
    let server = RedisServer::start().await;
    let day = 86_400_000;
    let manager = manager_on(&server.url(), |c| {
        c.with_circuit_breaker(1, day)
            .with_retry_attempts(100)
            .with_retry_delay(day)
            .with_timeout(200)
    });
    let store = store_on(&db.pool, &manager);
    drop(server);
    for _ in 0..3 {
        assert_eq!(store.get_by_id(&1).await.unwrap(), Some(doc(1, 1)));
        store.update(&1, doc(1, 1), None).await.unwrap();
    }
    assert!(manager.get_stats().await.unwrap().breaker_open);
    db.cleanup().await;
}

#[tokio::test]
async fn a_store_prefix_never_produces_a_key_in_the_reserved_namespace() {
    let db = docs_db(1).await;
    let manager = manager();
    let reserved = format!("{}:__", manager.global_prefix());
    for prefix in ["__tag", "__", "___x"] {
        let store = GenericStore::<Doc>::new(
            db.pool.clone(),
            None,
            Some(CacheParams::new(manager.clone()).with_prefix(prefix)),
        );
        assert!(
            !store.cache_key(&1).starts_with(&reserved),
            "{prefix}: {}",
            store.cache_key(&1)
        );
        assert!(matches!(
            GenericStore::<Doc>::try_new(
                db.pool.clone(),
                None,
                Some(CacheParams::new(manager.clone()).with_prefix(prefix))
            ),
            Err(StorehausError::Cache(CacheError::InvalidConfig(_)))
        ));
    }
    // A record of a store prefixed `__tag` and a tag of the same name live
    // side by side.
    let odd = GenericStore::<Doc>::new(
        db.pool.clone(),
        None,
        Some(CacheParams::new(manager.clone()).with_prefix("__tag")),
    );
    let plain = store_on(&db.pool, &manager);
    assert_eq!(odd.get_by_id(&1).await.unwrap(), Some(doc(1, 1)));
    let mut redis = raw_redis(&redis_url()).await;
    wait_for_value(&mut redis, &odd.cache_key(&1)).await;
    plain.update(&1, doc(1, 2), Some(vec!["1".into()])).await.unwrap();
    assert_eq!(manager.get_stats().await.unwrap().command_errors, 0);
    assert_eq!(
        manager.invalidate_tag("1").await.unwrap(),
        0,
        "the tag's member is not cached"
    );
    clear_prefix(&manager).await;
    db.cleanup().await;
}

// ----- 10. Bounded pending work -----

/// A private redis-server with `docs` 1..=n cached at v1 and saved to disk,
/// then killed: `n` updates to v2 cannot be delivered.
struct DownWithDump {
    dir: std::path::PathBuf,
    server: RedisServer,
    db: Db,
    manager: Arc<CacheManager>,
    store: GenericStore<Doc>,
}

impl DownWithDump {
    async fn stage(n: i64, max_pending: usize) -> DownWithDump {
        let dir = std::env::temp_dir().join(random_name("redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let dir_s = dir.to_string_lossy().to_string();
        let mut server = RedisServer::start_with(&["--dir", &dir_s, "--dbfilename", "dump.rdb"]).await;
        let db = docs_db(n).await;
        let manager = manager_on(&server.url(), |c| {
            c.with_timeout(500)
                .with_retry_delay(5)
                .with_circuit_breaker(1_000, 50)
                .with_max_pending_invalidations(max_pending)
        });
        let store = store_on(&db.pool, &manager);
        let ids: Vec<i64> = (1..=n).collect();
        store.get_many(&ids).await.unwrap();
        let mut redis = raw_redis(&server.url()).await;
        for id in &ids {
            wait_for_value(&mut redis, &store.cache_key(id)).await;
        }
        let _: () = redis::cmd("SAVE").query_async(&mut redis).await.unwrap();
        server.kill();
        DownWithDump {
            dir,
            server,
            db,
            manager,
            store,
        }
    }

    /// Restarts the server with its old dataset (every row at v1) and
    /// checks the stale entries are there before anyone may touch them.
    async fn restart_with_stale_entries(&mut self) {
        self.server.restart_locked("lock").await;
        let mut locked = raw_redis(&format!("redis://:lock@127.0.0.1:{}", self.server.port)).await;
        assert!(raw_get(&mut locked, &self.store.cache_key(&1)).await.is_some());
        self.server.unlock("lock").await;
    }

    async fn cleanup(self) {
        self.db.cleanup().await;
        drop(self.server);
        let _ = std::fs::remove_dir_all(self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_bound_pending_keys_fall_back_to_clearing_the_store_and_nothing_is_stale() {
    let mut o = DownWithDump::stage(300, 50).await;
    for id in 1..=300 {
        o.store.update(&id, doc(id, 2), None).await.unwrap();
    }
    let s = o.manager.get_stats().await.unwrap();
    assert!(s.pending_overflows >= 1, "{s:?}");
    assert!(
        s.pending_invalidations <= 52,
        "bounded: the store's scope replaced its keys: {s:?}"
    );
    o.restart_with_stale_entries().await;
    let mut redis = raw_redis(&o.server.url()).await;
    for id in [1, 150, 300] {
        assert_eq!(
            o.store.get_by_id(&id).await.unwrap(),
            Some(doc(id, 2)),
            "never the old row"
        );
    }
    eventually("the scope was cleared", || async {
        o.manager.get_stats().await.unwrap().pending_invalidations == 0
    })
    .await;
    for id in 1..=300 {
        if let Some(v) = raw_get(&mut redis, &o.store.cache_key(&id)).await {
            assert_ne!(decode_version(&v), Some(1), "doc {id}: no stale entry left");
        }
    }
    let ids: Vec<i64> = (1..=300).collect();
    let rows = o.store.get_many(&ids).await.unwrap();
    assert!(rows.iter().all(|r| r.as_ref().is_some_and(|d| d.version == 2)));
    o.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_pending_set_is_replayed_in_bounded_batches() {
    let mut o = DownWithDump::stage(2_500, 100_000).await;
    let updates = (1..=2_500).map(|id| (id, doc(id, 2))).collect();
    o.store.update_many(updates).await.unwrap();
    let s = o.manager.get_stats().await.unwrap();
    assert_eq!((s.pending_invalidations, s.pending_overflows), (2_501, 0), "{s:?}");
    o.restart_with_stale_entries().await;
    eventually("replayed", || async {
        o.manager.get_stats().await.unwrap().pending_invalidations == 0
    })
    .await;
    let mut redis = raw_redis(&o.server.url()).await;
    for id in (1..=2_500).step_by(97) {
        assert_eq!(raw_get(&mut redis, &o.store.cache_key(&id)).await, None, "doc {id}");
    }
    assert_eq!(o.store.get_by_id(&2_500).await.unwrap(), Some(doc(2_500, 2)));
    o.cleanup().await;
}

// ----- 11. Tag sets -----

#[tokio::test]
async fn tag_sets_expire_no_sooner_than_their_members_and_refresh_on_every_addition() {
    let db = docs_db(2).await;
    let manager = manager();
    let store = GenericStore::<Doc>::new(
        db.pool.clone(),
        None,
        Some(CacheParams::new(manager.clone()).with_ttl(100)),
    );
    let mut redis = raw_redis(&redis_url()).await;
    let set = format!("{}:__tag:red", manager.global_prefix());
    store.update(&1, doc(1, 2), Some(vec!["red".into()])).await.unwrap();
    let ttl: i64 = redis::cmd("TTL").arg(&set).query_async(&mut redis).await.unwrap();
    assert!((100..=200).contains(&ttl), "at least the members' TTL: {ttl}");
    let _: () = redis::cmd("EXPIRE")
        .arg(&set)
        .arg(5)
        .query_async(&mut redis)
        .await
        .unwrap();
    store.update(&2, doc(2, 2), Some(vec!["red".into()])).await.unwrap();
    let ttl: i64 = redis::cmd("TTL").arg(&set).query_async(&mut redis).await.unwrap();
    assert!(ttl >= 100, "refreshed: {ttl}");
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_refused_tag_addition_is_kept_and_replayed() {
    let server = RedisServer::start().await;
    let db = docs_db(1).await;
    let manager = manager_on(&server.url(), |c| c.with_timeout(300));
    let store = store_on(&db.pool, &manager);
    let mut redis = raw_redis(&server.url()).await;
    starve(&mut redis).await;
    store.update(&1, doc(1, 2), Some(vec!["red".into()])).await.unwrap();
    assert!(manager.get_stats().await.unwrap().pending_invalidations >= 1);
    assert_eq!(store.get_by_id(&1).await.unwrap(), Some(doc(1, 2)));
    unstarve(&mut redis).await;
    assert_eq!(store.get_by_id(&1).await.unwrap(), Some(doc(1, 2)));
    eventually("the tag addition was replayed", || async {
        manager.get_stats().await.unwrap().pending_invalidations == 0
    })
    .await;
    wait_for_value(&mut redis, &store.cache_key(&1)).await;
    assert_eq!(
        manager.invalidate_tag("red").await.unwrap(),
        1,
        "the tag reaches the record"
    );
    assert_eq!(raw_get(&mut redis, &store.cache_key(&1)).await, None);
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_added_while_invalidate_tag_runs_is_not_lost() {
    let db = docs_db(1).await;
    let manager = manager();
    let store = store_on(&db.pool, &manager);
    let mut redis = raw_redis(&redis_url()).await;
    let set = format!("{}:__tag:big", manager.global_prefix());
    // A big tag set: its invalidation takes many SSCAN steps.
    let members: Vec<String> = (0..100_000)
        .map(|i| format!("{}:docs:gone{i}", manager.global_prefix()))
        .collect();
    for chunk in members.chunks(10_000) {
        let _: () = redis::cmd("SADD")
            .arg(&set)
            .arg(chunk)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let invalidation = tokio::spawn({
        let manager = manager.clone();
        async move { manager.invalidate_tag("big").await.unwrap() }
    });
    // While it runs, a write tags doc 1.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!invalidation.is_finished(), "the invalidation is still walking the set");
    store.update(&1, doc(1, 2), Some(vec!["big".into()])).await.unwrap();
    assert!(!invalidation.is_finished(), "the tag was added during the invalidation");
    invalidation.await.unwrap();
    // Doc 1 is cached afterwards; the tag must still reach it.
    store.get_by_id(&1).await.unwrap();
    wait_for_value(&mut redis, &store.cache_key(&1)).await;
    assert_eq!(manager.invalidate_tag("big").await.unwrap(), 1);
    assert_eq!(raw_get(&mut redis, &store.cache_key(&1)).await, None);
    clear_prefix(&manager).await;
    db.cleanup().await;
}
