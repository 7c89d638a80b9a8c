//! Fault injection: every test runs its own `redis-server` on a free loopback
//! port and kills, stalls (SIGSTOP), restarts or starves it (out of memory),
//! or plants bad data in it, while store calls keep running. The store must
//! never fail, never serve a row older than the database, and never wait on
//! the cache for longer than one `with_timeout` budget per call.
//!
//! Deadline bounds are behaviours (the product promises them), so they are
//! asserted, with generous margins for a noisy machine. Raw speed is not:
//! the fault matrix (`benches/faults.rs`, `bash scripts/bench.sh --faults`)
//! measures it with the same managers ([`fault_manager`]).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use storehaus::prelude::*;
use storehaus_testkit::faults::{fault_manager, store_on, timed, warm, TIMEOUT_MS};
use storehaus_testkit::records::items::{db_row, item, items_db, Item};
use storehaus_testkit::*;

/// What a noisy 2-core machine may add on top of the budget (database,
/// scheduling), while these tests run in parallel. A call slower than
/// budget + margin waited on the cache. This margin would pass an operation
/// that spent several budgets: the one-budget-per-operation bound is
/// asserted tightly (budget + 100 ms, tests run one at a time) in
/// `tests/test_budget.rs`.
const MARGIN_MS: u64 = 800;

fn bound() -> Duration {
    Duration::from_millis(TIMEOUT_MS + MARGIN_MS)
}

/// Runs one store call and asserts it came back within budget + margin.
async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    let (out, took) = timed(f).await;
    assert!(
        took < bound(),
        "{what} took {took:?}, more than the {TIMEOUT_MS} ms budget + {MARGIN_MS} ms"
    );
    out
}

/// Proves `id` is served from the cache: changes its row behind the cache's
/// back and expects the cached row. Restores the row afterwards.
async fn assert_cache_hit(db: &Db, store: &GenericStore<Item>, id: i64) {
    let before = db_row(db, id).await.expect("row exists");
    sqlx::query("UPDATE items SET name = 'behind-the-cache' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    let got = store.get_by_id(&id).await.unwrap();
    sqlx::query("UPDATE items SET name = $2 WHERE id = $1")
        .bind(id)
        .bind(&before.name)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(got, Some(before), "item {id} was served from the cache");
}

/// A bounded wait: `while !cond { patience.tick().await }` fails the test
/// after `secs` seconds instead of hanging.
struct Patience {
    what: &'static str,
    start: Instant,
    limit: Duration,
}

impl Patience {
    fn new(what: &'static str, secs: u64) -> Self {
        Patience {
            what,
            start: Instant::now(),
            limit: Duration::from_secs(secs),
        }
    }

    async fn tick(&self) {
        assert!(
            self.start.elapsed() < self.limit,
            "timed out after {:?} waiting for: {}",
            self.limit,
            self.what
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ----- kill -----

/// One worker of a mixed workload over ids it alone writes, so it knows what
/// every read must return. Panics (failing the test) on any error or any
/// answer that differs from the database.
async fn worker(store: GenericStore<Item>, ids: Vec<i64>, stop: Arc<AtomicBool>, ops: Arc<AtomicU64>) {
    let mut current: Vec<Item> = ids.iter().map(|&id| item(id, 0)).collect();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let i = n % ids.len();
        let id = ids[i];
        match n % 5 {
            0 | 1 => {
                let got = store.get_by_id(&id).await.expect("get_by_id never fails");
                assert_eq!(got.as_ref(), Some(&current[i]), "get_by_id({id}) equals the database");
            }
            2 => {
                let got = store.get_many(&ids).await.expect("get_many never fails");
                let want: Vec<Option<Item>> = current.iter().cloned().map(Some).collect();
                assert_eq!(got, want, "get_many equals the database");
            }
            3 => {
                let next = item(id, current[i].version + 1);
                let stored = store.update(&id, next.clone(), None).await.expect("update never fails");
                assert_eq!(stored, next);
                current[i] = next;
            }
            _ => {
                // Read-your-writes right after a write.
                let got = store.get_by_id(&id).await.expect("get_by_id never fails");
                assert_eq!(got.as_ref(), Some(&current[i]), "read after write equals the database");
            }
        }
        n += 1;
        ops.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_workload_no_store_call_fails_and_answers_equal_the_database() {
    let mut server = RedisServer::start().await;
    let db = items_db(24).await;
    let manager = fault_manager(&server.url(), 3, 200);
    let store = store_on(&db, &manager);

    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let ids = (w * 6..w * 6 + 6).collect();
            tokio::spawn(worker(store.clone(), ids, stop.clone(), ops.clone()))
        })
        .collect();

    let phase = async |n: u64| {
        let patience = Patience::new("the workload to make progress", 8);
        let start = ops.load(Ordering::Relaxed);
        while ops.load(Ordering::Relaxed) < start + n {
            patience.tick().await;
        }
    };
    phase(100).await;
    let healthy = stats(&manager).await;
    assert!(healthy.hits > 0, "the cache served hits before the fault: {healthy:?}");

    server.kill();
    phase(150).await;
    let down = stats(&manager).await;
    assert!(down.connection_errors > 0, "{down:?}");

    server.restart().await;
    let patience = Patience::new("hits to return after the restart", 8);
    loop {
        let s = stats(&manager).await;
        if !s.breaker_open && s.hits > down.hits + 20 {
            break;
        }
        patience.tick().await;
    }

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("no worker failed a store call or saw a stale row");
    }
    // What the cache would answer now equals the database, row by row.
    for id in 0..24 {
        assert_eq!(store.get_by_id(&id).await.unwrap(), db_row(&db, id).await);
    }
    db.cleanup().await;
}

#[tokio::test]
async fn restart_after_kill_closes_the_breaker_and_hits_return() {
    let mut server = RedisServer::start().await;
    let db = items_db(4).await;
    let manager = fault_manager(&server.url(), 2, 150);
    let store = store_on(&db, &manager);
    warm(&store, &server.url(), 0..4).await;

    server.kill();
    for round in 0..4 {
        for id in 0..4 {
            let got = bounded("get_by_id on a killed server", store.get_by_id(&id))
                .await
                .unwrap();
            assert_eq!(got, db_row(&db, id).await, "round {round}");
        }
    }
    let down = stats(&manager).await;
    assert!(down.breaker_open && down.breaker_opened >= 1, "{down:?}");
    assert!(matches!(
        manager.health_check().await,
        Err(CacheError::CircuitOpen { .. })
    ));

    server.restart().await;
    let patience = Patience::new("the breaker to close after the restart", 5);
    loop {
        // The probe is an ordinary call; every answer equals the database.
        assert_eq!(store.get_by_id(&1).await.unwrap(), db_row(&db, 1).await);
        if !stats(&manager).await.breaker_open {
            break;
        }
        patience.tick().await;
    }
    manager.health_check().await.unwrap();

    // The restarted server is empty: the next read fills, the one after hits.
    warm(&store, &server.url(), [2]).await;
    assert_cache_hit(&db, &store, 2).await;
    db.cleanup().await;
}

// ----- stall (SIGSTOP) -----

#[tokio::test]
async fn stalled_server_every_call_returns_within_budget_and_the_breaker_opens() {
    let server = RedisServer::start().await;
    let db = items_db(8).await;
    // A long cooldown: no probe during this test, so every call after the
    // breaker opened is a skip.
    let manager = fault_manager(&server.url(), 3, 30_000);
    let store = store_on(&db, &manager);
    warm(&store, &server.url(), 0..8).await;

    server.pause();
    let mut n = 0;
    while !stats(&manager).await.breaker_open {
        let id = n % 8;
        let got = bounded("get_by_id on a stalled server", store.get_by_id(&id))
            .await
            .unwrap();
        assert_eq!(got, db_row(&db, id).await);
        n += 1;
        assert!(n <= 6, "the breaker opened after a run of failures");
    }
    let opened = stats(&manager).await;
    assert_eq!(opened.breaker_opened, 1, "{opened:?}");
    assert!(opened.timeouts >= 3, "{opened:?}");
    assert!(matches!(
        manager.health_check().await,
        Err(CacheError::CircuitOpen { .. })
    ));

    // While open: every kind of store call answers from the database without
    // a cache round trip: skips grow, no call waits for a timeout.
    for round in 0..5i64 {
        let id = round % 8;
        let got = bounded("get_by_id, breaker open", store.get_by_id(&id)).await.unwrap();
        assert_eq!(got, db_row(&db, id).await);
        let ids: Vec<i64> = (0..8).collect();
        let many = bounded("get_many, breaker open", store.get_many(&ids)).await.unwrap();
        assert_eq!(many.len(), 8);
        for (i, row) in many.into_iter().enumerate() {
            assert_eq!(row, db_row(&db, i as i64).await);
        }
        let next = item(id, round as i32 + 1);
        bounded("update, breaker open", store.update(&id, next.clone(), None))
            .await
            .unwrap();
        assert_eq!(store.get_by_id(&id).await.unwrap(), Some(next), "read-your-writes");
    }
    let open = stats(&manager).await;
    assert_eq!(
        open.timeouts, opened.timeouts,
        "no call waited on the stalled server: {open:?}"
    );
    assert!(open.breaker_skips >= opened.breaker_skips + 20, "{open:?}");
    assert!(open.breaker_open);
    db.cleanup().await;
}

#[tokio::test]
async fn connecting_to_a_stalled_server_is_bounded_by_the_budget() {
    // The server accepts TCP connections (the kernel does) but never answers
    // the handshake: the first call connects inside its budget or gives up.
    let server = RedisServer::start().await;
    let db = items_db(2).await;
    server.pause();
    let manager = fault_manager(&server.url(), 100, 1_000);
    let store = store_on(&db, &manager);
    for id in [0, 1, 0, 1] {
        let got = bounded("first calls on a stalled server", store.get_by_id(&id))
            .await
            .unwrap();
        assert_eq!(got, db_row(&db, id).await);
    }
    let next = item(0, 1);
    bounded("update on a stalled server", store.update(&0, next.clone(), None))
        .await
        .unwrap();
    assert_eq!(
        bounded("read after write", store.get_by_id(&0)).await.unwrap(),
        Some(next)
    );
    let (health, took) = timed(manager.health_check()).await;
    assert!(matches!(health, Err(CacheError::Timeout { .. })), "{health:?}");
    assert!(took < bound(), "health_check took {took:?}");
    db.cleanup().await;
}

#[tokio::test]
async fn resumed_after_stall_the_breaker_closes_invalidations_replay_and_hits_return() {
    let server = RedisServer::start().await;
    let db = items_db(4).await;
    let manager = fault_manager(&server.url(), 2, 200);
    let store = store_on(&db, &manager);
    warm(&store, &server.url(), 0..4).await;

    server.pause();
    // A write while the cache is stalled: its invalidation cannot land now.
    let v1 = item(0, 1);
    bounded("update on a stalled server", store.update(&0, v1.clone(), None))
        .await
        .unwrap();
    let patience = Patience::new("the breaker to open", 5);
    loop {
        assert_eq!(
            store.get_by_id(&0).await.unwrap(),
            Some(v1.clone()),
            "never the cached v0"
        );
        if stats(&manager).await.breaker_open {
            break;
        }
        patience.tick().await;
    }
    assert!(stats(&manager).await.pending_invalidations > 0);

    server.resume();
    let patience = Patience::new("the breaker to close after the resume", 5);
    loop {
        assert_eq!(
            store.get_by_id(&0).await.unwrap(),
            Some(v1.clone()),
            "never the cached v0"
        );
        let s = stats(&manager).await;
        if !s.breaker_open && s.pending_invalidations == 0 {
            break;
        }
        patience.tick().await;
    }
    manager.health_check().await.unwrap();
    let mut redis = raw_redis(&server.url()).await;
    // Item 0 was re-filled with v1; items 1..4 kept their entries through the stall.
    let key = store.cache_key(&0);
    let patience = Patience::new("item 0 to be cached again", 5);
    loop {
        store.get_by_id(&0).await.unwrap();
        if raw_get(&mut redis, &key)
            .await
            .is_some_and(|v| v.first() != Some(&0xC1))
        {
            break;
        }
        patience.tick().await;
    }
    assert_cache_hit(&db, &store, 0).await;
    assert_cache_hit(&db, &store, 3).await;
    db.cleanup().await;
}

// ----- out of memory -----

#[tokio::test]
async fn out_of_memory_server_reads_and_writes_succeed_and_errors_are_counted() {
    let server = RedisServer::start().await;
    let db = items_db(6).await;
    let manager = fault_manager(&server.url(), 3, 200);
    let store = store_on(&db, &manager);
    warm(&store, &server.url(), 0..3).await;

    // Fill past a tiny limit with eviction off: every write command is refused.
    let mut redis = raw_redis(&server.url()).await;
    starve(&mut redis).await;
    let refused: redis::RedisResult<()> = redis::cmd("SET").arg("probe").arg(1).query_async(&mut redis).await;
    assert!(
        refused.is_err_and(|e| e.code() == Some("OOM")),
        "the server refuses writes"
    );

    let hits_before = stats(&manager).await.hits;
    for id in 0..6 {
        let got = bounded("get_by_id, out of memory", store.get_by_id(&id)).await.unwrap();
        assert_eq!(got, db_row(&db, id).await);
    }
    assert_eq!(
        stats(&manager).await.hits,
        hits_before + 3,
        "the three warmed rows are still served from the cache"
    );
    let v1 = item(1, 1);
    bounded("update, out of memory", store.update(&1, v1.clone(), None))
        .await
        .unwrap();
    assert_eq!(store.get_by_id(&1).await.unwrap(), Some(v1.clone()), "read-your-writes");
    store.create(item(100, 0), None).await.unwrap();
    assert_eq!(store.get_by_id(&100).await.unwrap(), Some(item(100, 0)));
    assert!(store.delete(&2).await.unwrap());
    assert_eq!(store.get_by_id(&2).await.unwrap(), None);
    let many = store.get_many(&[0, 1, 2, 3]).await.unwrap();
    assert_eq!(
        many,
        vec![db_row(&db, 0).await, Some(v1.clone()), None, db_row(&db, 3).await]
    );

    let s = stats(&manager).await;
    assert!(s.command_errors > 0, "refused commands are counted: {s:?}");
    assert!(!s.breaker_open, "a server that answers is not down: {s:?}");

    // Memory back: invalidations replay and the cache serves again.
    config_set(&mut redis, "maxmemory", "0").await;
    let patience = Patience::new("the cache to fill again", 5);
    loop {
        assert_eq!(store.get_by_id(&1).await.unwrap(), Some(v1.clone()));
        if raw_get(&mut redis, &store.cache_key(&1))
            .await
            .is_some_and(|v| v.first() != Some(&0xC1))
        {
            break;
        }
        patience.tick().await;
    }
    assert_eq!(stats(&manager).await.pending_invalidations, 0);
    assert_cache_hit(&db, &store, 1).await;
    db.cleanup().await;
}

// ----- retries and budget -----

#[tokio::test]
async fn retries_apply_to_connection_errors_only_and_stay_inside_the_budget() {
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let no_breaker = |attempts: u32, delay: u64, timeout: u64| {
        manager_on(&dead, move |c| {
            c.with_timeout(timeout)
                .with_retry_attempts(attempts)
                .with_retry_delay(delay)
                .with_circuit_breaker(1_000, 1_000)
        })
    };

    // No retries: one attempt.
    let once = no_breaker(0, 5, 1_000);
    assert!(matches!(once.health_check().await, Err(CacheError::ConnectionError(_))));
    assert_eq!(stats(&once).await.connection_errors, 1);

    // Three retries with a small backoff all fit in the budget: four attempts.
    let four = no_breaker(3, 5, 2_000);
    assert!(matches!(four.health_check().await, Err(CacheError::ConnectionError(_))));
    assert_eq!(stats(&four).await.connection_errors, 4);

    // Many retries with a long backoff: the budget cuts them short.
    let cut = no_breaker(50, 100, TIMEOUT_MS);
    let (res, took) = timed(cut.health_check()).await;
    assert!(res.is_err());
    assert!(took < bound(), "retries stayed inside the budget: {took:?}");
    let attempts = stats(&cut).await.connection_errors;
    assert!(
        (1..10).contains(&attempts),
        "the budget cut the retries short: {attempts}"
    );

    // A command the server refuses is not retried.
    let server = RedisServer::start().await;
    let manager = manager_on(&server.url(), |c| c.with_retry_attempts(5).with_retry_delay(5));
    let mut redis = raw_redis(&server.url()).await;
    let key = format!("{}:items:1", manager.global_prefix());
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("field")
        .arg("value")
        .query_async(&mut redis)
        .await
        .unwrap();
    let err = manager.get_record::<Item>("items", "1").await.unwrap_err();
    assert!(matches!(err, CacheError::Command(_)), "{err}");
    let s = stats(&manager).await;
    assert_eq!((s.command_errors, s.connection_errors), (1, 0), "{s:?}");
    assert!(!s.breaker_open);
}

#[tokio::test]
async fn pool_size_bounds_the_connections_to_the_server() {
    let server = RedisServer::start().await;
    let db = items_db(16).await;
    let manager = manager_on(&server.url(), |c| c.with_pool_size(3));
    let store = store_on(&db, &manager);
    let tasks: Vec<_> = (0..16)
        .map(|id| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    store.get_by_id(&id).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut redis = raw_redis(&server.url()).await;
    let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut redis).await.unwrap();
    let ours = clients.lines().count() - 1; // minus this raw connection
    assert!(
        (1..=3).contains(&ours),
        "{ours} connections for a pool of 3:\n{clients}"
    );
    db.cleanup().await;
}

// ----- bad data -----

/// Plants `plant` under item 1's key, reads item 1, and checks the read was
/// a counted miss that returned the database row and replaced the entry.
async fn bad_entry_is_a_counted_miss_and_replaced(
    plant: impl AsyncFnOnce(&mut redis::aio::MultiplexedConnection, &str),
) {
    let server = RedisServer::start().await;
    let db = items_db(2).await;
    let manager = fault_manager(&server.url(), 3, 200);
    let store = store_on(&db, &manager);
    let mut redis = raw_redis(&server.url()).await;
    let key = store.cache_key(&1);
    plant(&mut redis, &key).await;

    let want = db_row(&db, 1).await;
    assert_eq!(store.get_by_id(&1).await.unwrap(), want);
    let s = stats(&manager).await;
    assert_eq!((s.serialization_errors, s.hits, s.misses), (1, 0, 1), "{s:?}");

    let bytes = wait_for_value(&mut redis, &key).await;
    let value = rmpv::decode::read_value(&mut bytes.as_slice()).expect("a MessagePack envelope");
    let parts = value.as_array().expect("envelope");
    assert_eq!(parts[1].as_u64(), Some(Item::FINGERPRINT), "rewritten with this schema");
    assert_cache_hit(&db, &store, 1).await;
    db.cleanup().await;
}

#[tokio::test]
async fn value_that_is_not_an_envelope_is_a_counted_miss_and_replaced() {
    bad_entry_is_a_counted_miss_and_replaced(async |redis, key| {
        set_raw(redis, key, b"{\"id\":1,\"name\":\"json?\"}").await;
    })
    .await;
}

#[tokio::test]
async fn truncated_messagepack_is_a_counted_miss_and_replaced() {
    bad_entry_is_a_counted_miss_and_replaced(async |redis, key| {
        let full = storehaus::codec::encode(Item::FINGERPRINT, Some(&item(1, 9))).unwrap();
        set_raw(redis, key, &full[..full.len() - 3]).await;
    })
    .await;
}

#[tokio::test]
async fn entry_of_another_schema_fingerprint_is_left_alone_and_read_beside() {
    let server = RedisServer::start().await;
    let db = items_db(2).await;
    let manager = fault_manager(&server.url(), 3, 200);
    let store = store_on(&db, &manager);
    let mut redis = raw_redis(&server.url()).await;
    let key = store.cache_key(&1);
    // What another `Item` (same field types, other fingerprint) wrote: it
    // would decode, so only the fingerprint can tell. Another version of
    // the application, during a rolling deploy: not corrupt.
    let other = storehaus::codec::encode(Item::FINGERPRINT ^ 0xdead_beef, Some(&item(1, 9))).unwrap();
    set_raw(&mut redis, &key, &other).await;

    let want = db_row(&db, 1).await;
    assert_eq!(store.get_by_id(&1).await.unwrap(), want);
    let s = stats(&manager).await;
    assert_eq!(
        (s.serialization_errors, s.foreign_entries, s.hits, s.misses),
        (0, 1, 0, 1),
        "{s:?}"
    );
    assert_eq!(raw_get(&mut redis, &key).await, Some(other), "left alone");
    let side = format!("{key}~{}", storehaus::codec::layout_tag(Item::FINGERPRINT));
    let bytes = wait_for_value(&mut redis, &side).await;
    assert!(storehaus::codec::decode::<Item>(Item::FINGERPRINT, &bytes).is_ok());
    assert_cache_hit(&db, &store, 1).await;
    db.cleanup().await;
}

#[tokio::test]
async fn key_holding_a_hash_is_a_counted_miss_and_replaced() {
    bad_entry_is_a_counted_miss_and_replaced(async |redis, key| {
        let _: () = redis::cmd("HSET")
            .arg(key)
            .arg("f")
            .arg("v")
            .query_async(redis)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn bad_entries_read_by_get_many_are_counted_misses_and_replaced() {
    let server = RedisServer::start().await;
    let db = items_db(5).await;
    let manager = fault_manager(&server.url(), 3, 200);
    let store = store_on(&db, &manager);
    let mut redis = raw_redis(&server.url()).await;
    let full = storehaus::codec::encode(Item::FINGERPRINT, Some(&item(0, 9))).unwrap();
    set_raw(&mut redis, &store.cache_key(&0), b"garbage").await;
    set_raw(&mut redis, &store.cache_key(&1), &full[..full.len() - 3]).await;
    let old = storehaus::codec::encode(Item::FINGERPRINT ^ 1, Some(&item(2, 9))).unwrap();
    set_raw(&mut redis, &store.cache_key(&2), &old).await;
    let _: () = redis::cmd("HSET")
        .arg(store.cache_key(&3))
        .arg("f")
        .arg("v")
        .query_async(&mut redis)
        .await
        .unwrap();

    let ids: Vec<i64> = (0..5).collect();
    let mut want = Vec::new();
    for id in &ids {
        want.push(db_row(&db, *id).await);
    }
    assert_eq!(store.get_many(&ids).await.unwrap(), want);
    let s = stats(&manager).await;
    assert_eq!((s.hits, s.misses), (0, 5), "{s:?}");
    assert_eq!(s.serialization_errors, 3, "every bad entry is counted: {s:?}");
    assert_eq!(s.foreign_entries, 1, "another version's entry is not bad: {s:?}");
    let side = format!("~{}", storehaus::codec::layout_tag(Item::FINGERPRINT));
    for id in &ids {
        // Item 2's key keeps the other version's entry; this one's is beside it.
        let key = store.cache_key(id) + if *id == 2 { side.as_str() } else { "" };
        let bytes = wait_for_value(&mut redis, &key).await;
        assert!(
            storehaus::codec::decode::<Item>(Item::FINGERPRINT, &bytes).is_ok(),
            "item {id} was replaced by a good entry"
        );
    }
    assert_eq!(store.get_many(&ids).await.unwrap(), want);
    assert_eq!(stats(&manager).await.hits, 5);
    db.cleanup().await;
}
