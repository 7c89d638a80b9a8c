//! The near cache on a Redis Cluster (tracking on every primary) and behind
//! Sentinel (following `+switch-master`), through lost connections and
//! failovers. As in `test_near`, manager A reads with a near cache and
//! manager B, standing for another process, writes.
//!
//! A read is stale when it returns a version older than one whose write
//! had returned more than [`BOUND`] before the read began: one heartbeat of
//! the tracking connection plus one operation budget, the longest a lost
//! or demoted node goes unnoticed. A write made during a failover (its
//! invalidation may have had no primary to go to; the writer delivers it
//! once there is one) must be seen by reads that begin more than [`BOUND`]
//! after the deployment is healthy again.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use storehaus::prelude::*;
use storehaus_testkit::*;

mod near;
use near::*;

/// The staleness allowed after a write returned: the tracking heartbeat
/// (200 ms) plus the default operation budget (500 ms).
const BOUND: Duration = Duration::from_millis(700);

/// Rows spread over the cluster's slots (and so its primaries).
const ROWS: i64 = 12;

#[cfg(feature = "cluster")]
#[tokio::test]
async fn on_a_cluster_another_processs_write_reaches_the_near_cache() {
    let db = rows_db(ROWS).await;
    let (a, b) = managers(&cluster_url());
    let (sa, sb) = (store(&db, &a), store(&db, &b));
    for id in 1..=ROWS {
        until_near(&sa, &a, id).await;
    }
    let hits = a.get_stats().await.unwrap().near_hits;
    for id in 1..=ROWS {
        assert_eq!(version(&sa, id).await, 0);
    }
    assert_eq!(
        a.get_stats().await.unwrap().near_hits,
        hits + ROWS as u64,
        "near hits on every primary"
    );
    for id in 1..=ROWS {
        sb.update(&id, Row { id, version: 1 }, None).await.unwrap();
        within(Duration::from_secs(2), "A sees B's write", async || {
            version(&sa, id).await == 1
        })
        .await;
    }
    clear_prefix(&a).await;
    db.cleanup().await;
}

/// How long another process's write takes to evict a near entry, over
/// rows on every primary.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_delivery_delay_on_a_cluster() {
    let delays = delivery_delay(&cluster_url(), ROWS, 200).await;
    eprintln!("cluster: delivery delay {}", summary(&delays));
}

#[cfg(feature = "cluster")]
#[tokio::test]
async fn on_a_cluster_an_invalidation_between_the_reply_and_the_insert_keeps_the_value_out() {
    reply_insert_race(&cluster_url()).await;
}

/// The tracking connection of one primary killed (`CLIENT KILL`), then
/// that primary frozen: the whole near cache is flushed and serves nothing
/// until every primary is subscribed again.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_lost_tracking_connection_flushes_the_near_cache() {
    let cluster = RedisCluster::start_with_node_timeout(5_000);
    let db = rows_db(ROWS).await;
    let (a, b) = managers(&cluster.url());
    let (sa, sb) = (store(&db, &a), store(&db, &b));
    for id in 1..=ROWS {
        until_near(&sa, &a, id).await;
    }
    let key = sa.cache_key(&1);
    let (primary, _) = cluster.owner(&key).await;
    let flushes = a.get_stats().await.unwrap().near_flushes;
    let mut node = raw_node(primary).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut node)
        .await
        .unwrap();
    assert!(killed >= 1);
    sb.update(&1, Row { id: 1, version: 1 }, None).await.unwrap();
    within(Duration::from_secs(3), "subscribed again", async || {
        a.near_state(&key).1
    })
    .await;
    assert_eq!(version(&sa, 1).await, 1, "nothing from before the disconnect");
    assert!(
        a.get_stats().await.unwrap().near_flushes >= flushes + 2,
        "lost, then subscribed again"
    );

    // A silent primary: within a heartbeat and a budget nothing is served
    // near, on any primary.
    until_near(&sa, &a, 2).await;
    cluster.freeze(primary, true);
    within(
        Duration::from_secs(3),
        "not live while a primary is silent",
        async || !a.near_state(&sa.cache_key(&2)).1,
    )
    .await;
    let hits = a.get_stats().await.unwrap().near_hits;
    for id in 1..=ROWS {
        let _ = sa.get_by_id(&id).await;
    }
    assert_eq!(a.get_stats().await.unwrap().near_hits, hits, "nothing served near");
    cluster.freeze(primary, false);
    db.cleanup().await;
}

/// Readers hit A's near cache while the primary of row 1 is killed and its
/// replica promoted; B writes every row before, during and after: no read
/// is stale beyond [`BOUND`], and the near cache serves again afterwards.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_cluster_a_failover_with_the_near_cache_on() {
    let cluster = RedisCluster::start_with_node_timeout(500);
    let db = rows_db(ROWS).await;
    let (a, b) = managers(&cluster.url());
    let (primary, replica) = cluster.owner(&store(&db, &a).cache_key(&1)).await;
    let replica = replica.expect("a replica");
    let failover = async {
        cluster.kill(primary);
        cluster.wait_until_primary(replica).await;
    };
    near_through_a_failover(&db, &a, &b, failover).await;
    db.cleanup().await;
}

/// The same behind Sentinel, with a manual failover: the old primary stays
/// up, demoted to a replica, and would keep a tracking connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_sentinel_a_failover_with_the_near_cache_on() {
    let sentinels = Sentinels::start();
    let db = rows_db(ROWS).await;
    let (a, b) = managers(&sentinels.url());
    let replica = sentinels.replica();
    let failover = async {
        sentinels.failover().await;
        sentinels.wait_until_primary(replica).await;
    };
    near_through_a_failover(&db, &a, &b, failover).await;
    db.cleanup().await;
}

/// Readers on A, a writer on B, and `failover` in the middle.
async fn near_through_a_failover(
    db: &Db,
    a: &Arc<CacheManager>,
    b: &Arc<CacheManager>,
    failover: impl Future<Output = ()>,
) {
    let (sa, sb) = (store(db, a), store(db, b));
    for id in 1..=ROWS {
        until_near(&sa, a, id).await;
    }
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..2 {
        let (sa, ledger, stop) = (sa.clone(), ledger.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                ledger.read(&sa, 1 + i % ROWS).await;
                i += 1;
                tokio::task::yield_now().await;
            }
        }));
    }
    let writer = {
        let (sb, ledger, stop) = (sb.clone(), ledger.clone(), stop.clone());
        tokio::spawn(async move {
            let mut v = 0;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                for id in 1..=ROWS {
                    ledger.write(&sb, id, v).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            v
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    failover.await;
    let outage = Some((started, Instant::now()));
    let healthy = started.elapsed();
    // Near hits again: a read of a row that nobody writes any more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let last = writer.await.unwrap();
    for r in readers {
        r.await.unwrap();
    }
    let settled = Instant::now();
    for id in 1..=ROWS {
        within(Duration::from_secs(5), "A sees every last write", async || {
            version(&sa, id).await == last
        })
        .await;
    }
    within(Duration::from_secs(5), "near hits again", async || {
        let before = a.get_stats().await.unwrap().near_hits;
        version(&sa, 1).await;
        a.get_stats().await.unwrap().near_hits > before
    })
    .await;
    let stats = a.get_stats().await.unwrap();
    eprintln!(
        "failover healthy after {healthy:?}, near again {:?} after the writes stopped; {} reads, {} writes, {} near hits, {} flushes; stale: {} raw, {} beyond {BOUND:?}",
        settled.elapsed(),
        ledger.reads(),
        ledger.writes(),
        stats.near_hits,
        stats.near_flushes,
        ledger.stale(Duration::ZERO, None).len(),
        ledger.stale(BOUND, outage).len(),
    );
    assert!(stats.near_hits > 100, "{stats:?}");
    assert_eq!(
        ledger.stale(BOUND, outage),
        vec![],
        "(id, version read, version written before)"
    );
}
