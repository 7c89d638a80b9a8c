//! Concurrent reads batched into one `MGET` (the runtime's
//! `backend/redis/batch.rs`): a lone reader sends its `GET` at once; reads
//! that come while earlier ones are on the wire go out together as soon as
//! one answers; each caller gets what its own `GET` would have given it,
//! falls back to the database when its budget runs out while it waits, and
//! a key holding another type met inside a batch is still found corrupt and
//! replaced.
//!
//! The batches are made deterministic by pausing a private redis-server
//! (SIGSTOP) while the reads are issued: the first reads go out and hang,
//! and every later one queues behind them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use storehaus::prelude::*;
use storehaus_testkit::faults::{store_on, warm};
use storehaus_testkit::records::items::{item, items_db, Item};
use storehaus_testkit::*;

/// Rows of each test.
const ROWS: i64 = 20;

/// Reads on the wire before the rest queue (the runtime's `IN_FLIGHT`).
const IN_FLIGHT: u64 = 2;

/// A store of [`ROWS`] cached rows on a private server, and a raw
/// connection whose command statistics start at zero.
async fn warmed(
    server: &RedisServer,
    timeout_ms: u64,
) -> (
    Db,
    Arc<CacheManager>,
    Arc<GenericStore<Item>>,
    redis::aio::MultiplexedConnection,
) {
    let db = items_db(ROWS).await;
    let manager = manager_on(&server.url(), |c| {
        c.with_timeout(timeout_ms).with_circuit_breaker(10_000, 1_000)
    });
    let store = Arc::new(store_on(&db, &manager));
    warm(&store, &server.url(), 0..ROWS).await;
    // Hits until the store's reads start with a plain GET again (after the
    // misses of the warm-up they start with the lease command; see the
    // runtime's `cache/adapt.rs`).
    for _ in 0..3 {
        for id in 0..ROWS {
            store.get_by_id(&id).await.unwrap();
        }
    }
    let mut redis = raw_redis_without_timeout(&server.url()).await;
    reset_command_calls(&mut redis).await;
    (db, manager, store, redis)
}

/// Reads `ids` concurrently while the server is paused for `pause`.
async fn read_while_paused(
    server: &RedisServer,
    store: &Arc<GenericStore<Item>>,
    ids: impl IntoIterator<Item = i64>,
    pause: Duration,
) -> Vec<(i64, Option<Item>, Duration)> {
    server.pause();
    let reads: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let store = store.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let found = store.get_by_id(&id).await.expect("a read never fails");
                (id, found, start.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(pause).await;
    server.resume();
    let mut out = Vec::new();
    for r in reads {
        out.push(r.await.expect("the read task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_reader_sends_a_plain_get() {
    let server = RedisServer::start().await;
    let (db, manager, store, mut redis) = warmed(&server, 1_000).await;
    let before = stats(&manager).await;
    for id in 0..ROWS {
        assert_eq!(store.get_by_id(&id).await.unwrap(), Some(item(id, 0)));
    }
    assert_eq!(stats(&manager).await.hits - before.hits, ROWS as u64);
    assert_eq!(command_calls(&mut redis, "get").await, ROWS as u64, "one GET per read");
    assert_eq!(command_calls(&mut redis, "mget").await, 0, "no read waits for a batch");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_go_out_as_one_mget() {
    let server = RedisServer::start().await;
    let (db, manager, store, mut redis) = warmed(&server, 5_000).await;
    let before = stats(&manager).await;
    let ids: Vec<i64> = (0..64).map(|i| i % ROWS).collect();
    let reads = read_while_paused(&server, &store, ids, Duration::from_millis(300)).await;
    for (id, found, _) in &reads {
        assert_eq!(found.as_ref(), Some(&item(*id, 0)), "row {id}");
    }
    let after = stats(&manager).await;
    assert_eq!(
        after.hits - before.hits,
        64,
        "every read served from the cache: {after:?}"
    );
    let (gets, mgets) = (
        command_calls(&mut redis, "get").await,
        command_calls(&mut redis, "mget").await,
    );
    assert!(
        gets <= IN_FLIGHT && mgets >= 1 && gets + mgets <= IN_FLIGHT + 2,
        "the reads that queued went out together: {gets} GET, {mgets} MGET"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_reads_that_run_out_of_budget_fall_back_and_the_cache_serves_again() {
    let server = RedisServer::start().await;
    let budget = Duration::from_millis(200);
    let (db, manager, store, _redis) = warmed(&server, budget.as_millis() as u64).await;
    let reads = read_while_paused(&server, &store, 0..ROWS, Duration::from_millis(600)).await;
    for (id, found, took) in &reads {
        assert_eq!(found.as_ref(), Some(&item(*id, 0)), "row {id} from the database");
        assert!(
            *took < budget + Duration::from_millis(800),
            "row {id} waited {took:?}, past its budget"
        );
    }
    assert!(stats(&manager).await.timeouts > 0);
    // The batch given up on holds nothing up: hits again.
    let hits = stats(&manager).await.hits;
    eventually_within("hits again after the pause", Duration::from_secs(5), || async {
        for id in 0..ROWS {
            store.get_by_id(&id).await.unwrap();
        }
        stats(&manager).await.hits >= hits + ROWS as u64
    })
    .await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_type_in_a_batch_is_found_corrupt_and_replaced() {
    let server = RedisServer::start().await;
    let (db, manager, store, mut redis) = warmed(&server, 5_000).await;
    let key = store.cache_key(&7);
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(&key)
        .cmd("RPUSH")
        .arg(&key)
        .arg("not a record")
        .query_async(&mut redis)
        .await
        .unwrap();
    // Row 7 is read last, so that it queues into a batch.
    let ids = (0..ROWS).filter(|id| *id != 7).chain([7]);
    let reads = read_while_paused(&server, &store, ids, Duration::from_millis(300)).await;
    for (id, found, _) in &reads {
        assert_eq!(found.as_ref(), Some(&item(*id, 0)), "row {id}");
    }
    assert!(command_calls(&mut redis, "mget").await >= 1, "a batch went out");
    assert!(
        stats(&manager).await.serialization_errors >= 1,
        "the list was found corrupt"
    );
    wait_for_value(&mut redis, &key).await;
    let hits = stats(&manager).await.hits;
    assert_eq!(store.get_by_id(&7).await.unwrap(), Some(item(7, 0)));
    assert_eq!(stats(&manager).await.hits, hits + 1, "replaced by the record");
    db.cleanup().await;
}
