//! What the near cache's tests share: the rows, two managers standing for
//! two processes (A reads with a near cache, B writes), and the tests that
//! run on one node and on a cluster alike.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use storehaus::prelude::*;
use storehaus::{CacheParams, GenericStore};
use storehaus_testkit::*;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "near_rows", prefix = "rows")]
pub struct Row {
    pub id: i64,
    pub version: i64,
}

pub async fn rows_db(n: i64) -> Db {
    let db = Db::with_max_connections(10).await;
    db.exec("CREATE TABLE near_rows (id bigint PRIMARY KEY, version bigint NOT NULL)")
        .await;
    db.exec(&format!(
        "INSERT INTO near_rows SELECT g, 0 FROM generate_series(1, {n}) g"
    ))
    .await;
    db
}

/// Two managers on `url` sharing one global prefix: A with a near cache.
pub fn managers(url: &str) -> (Arc<CacheManager>, Arc<CacheManager>) {
    let global = random_name("near");
    let a = CacheConfig::new(url, 3600, global.clone()).with_near_cache(10_000);
    let b = CacheConfig::new(url, 3600, global);
    (
        Arc::new(CacheManager::new(a).unwrap()),
        Arc::new(CacheManager::new(b).unwrap()),
    )
}

pub fn store(db: &Db, manager: &Arc<CacheManager>) -> GenericStore<Row> {
    GenericStore::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())))
}

pub async fn version(store: &GenericStore<Row>, id: i64) -> i64 {
    store.get_by_id(&id).await.unwrap().expect("row").version
}

/// Reads `id` through `store` until it sits in the near cache (the first
/// read starts the tracking connection; a read is kept only once it is
/// subscribed and the value is in Redis).
pub async fn until_near(store: &GenericStore<Row>, manager: &CacheManager, id: i64) {
    let key = store.cache_key(&id);
    let start = Instant::now();
    while !manager.near_state(&key).0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never kept near: {:?}",
            manager.near_state(&key)
        );
        store.get_by_id(&id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls until `check` holds, for at most `within`; how long it took.
pub async fn within(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

/// Reads `id` through B (no near cache) until its value is in Redis (not
/// a lease).
pub async fn wait_until_cached(b: &Arc<CacheManager>, sb: &GenericStore<Row>, id: i64) {
    let start = Instant::now();
    loop {
        let _ = sb.get_by_id(&id).await;
        if b.get_record::<Row>("rows", &id.to_string())
            .await
            .ok()
            .flatten()
            .is_some()
        {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{id} never cached");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The race every client-side cache must close: an invalidation delivered
/// between Redis's reply and the L1 insert. The insert must be dropped.
pub async fn reply_insert_race(url: &str) {
    let db = rows_db(1).await;
    let (a, b) = managers(url);
    let (sa, sb) = (store(&db, &a), store(&db, &b));
    let key = sa.cache_key(&1);
    // Fill Redis, start tracking, then drop the L1 entry by a flush-free
    // route: A's own write of the same version.
    until_near(&sa, &a, 1).await;
    sa.update(&1, Row { id: 1, version: 0 }, None).await.unwrap();
    sa.get_by_id(&1).await.unwrap(); // refill Redis
    wait_until_cached(&b, &sb, 1).await;
    assert!(!a.near_state(&key).0);

    let pause = a.test_hooks().pause_near_insert(&key);
    let reader = {
        let sa = sa.clone();
        tokio::spawn(async move { version(&sa, 1).await })
    };
    tokio::time::timeout(Duration::from_secs(5), pause.reached())
        .await
        .expect("the reader reached the near insert");
    let seen = a.get_stats().await.unwrap().near_invalidations;
    sb.update(&1, Row { id: 1, version: 1 }, None).await.unwrap();
    within(Duration::from_secs(2), "A hears of B's write", async || {
        a.get_stats().await.unwrap().near_invalidations > seen
    })
    .await;
    pause.release();
    assert_eq!(reader.await.unwrap(), 0, "the reader's own answer predates the write");
    assert!(!a.near_state(&key).0, "the old value was not kept");
    assert_eq!(version(&sa, 1).await, 1);

    clear_prefix(&a).await;
    db.cleanup().await;
}

/// What readers saw and when writes returned: `(id, version, when)`, a
/// read's `when` being the moment it began.
#[derive(Default)]
pub struct Ledger {
    writes: Mutex<Vec<(i64, i64, Instant)>>,
    reads: Mutex<Vec<(i64, i64, Instant)>>,
}

impl Ledger {
    /// Writes `version` of `id` through `store` and records when it returned.
    pub async fn write(&self, store: &GenericStore<Row>, id: i64, version: i64) {
        store.update(&id, Row { id, version }, None).await.unwrap();
        self.writes.lock().unwrap().push((id, version, Instant::now()));
    }

    /// Reads `id` through `store` and records what it saw.
    pub async fn read(&self, store: &GenericStore<Row>, id: i64) -> i64 {
        let began = Instant::now();
        let got = version(store, id).await;
        self.reads.lock().unwrap().push((id, got, began));
        got
    }

    pub fn reads(&self) -> usize {
        self.reads.lock().unwrap().len()
    }

    pub fn writes(&self) -> usize {
        self.writes.lock().unwrap().len()
    }

    /// Reads that returned a version older than one whose write had
    /// returned more than `bound` before the read began: `(id, version
    /// read, version written)`. A write that returned during `outage` (from
    /// the failure to a healthy deployment again: its invalidation may have
    /// had no primary to go to) counts only for reads that began more than
    /// `bound` after the outage.
    pub fn stale(&self, bound: Duration, outage: Option<(Instant, Instant)>) -> Vec<(i64, i64, i64)> {
        let writes = self.writes.lock().unwrap();
        let reads = self.reads.lock().unwrap();
        let counts = |at: Instant, began: Instant| match outage {
            Some((from, to)) if at >= from && at <= to => to + bound < began,
            _ => true,
        };
        reads
            .iter()
            .filter_map(|(id, got, began)| {
                writes
                    .iter()
                    .filter(|(wid, v, at)| wid == id && v > got && *at + bound < *began && counts(*at, *began))
                    .map(|(_, v, _)| (*id, *got, *v))
                    .max_by_key(|(_, _, v)| *v)
            })
            .collect()
    }
}

/// How long another process's write takes to evict a near entry: B's
/// `update` of one of rows `1..=rows` returned → A's entry no longer
/// served, over `n` writes (A's near cache refilled before each).
pub async fn delivery_delay(url: &str, rows: i64, n: i64) -> Vec<Duration> {
    let db = rows_db(rows).await;
    let (a, b) = managers(url);
    let (sa, sb) = (store(&db, &a), store(&db, &b));
    let mut delays = Vec::new();
    for v in 1..=n {
        let id = 1 + v % rows;
        until_near(&sa, &a, id).await;
        let key = sa.cache_key(&id);
        sb.update(&id, Row { id, version: v }, None).await.unwrap();
        let start = Instant::now();
        while a.near_state(&key).0 {
            assert!(start.elapsed() < Duration::from_secs(2), "never evicted");
            tokio::task::yield_now().await;
        }
        delays.push(start.elapsed());
    }
    clear_prefix(&a).await;
    db.cleanup().await;
    delays.sort();
    delays
}

/// `p50 …, p99 …, max …` of sorted durations.
pub fn summary(sorted: &[Duration]) -> String {
    let at = |q: usize| sorted[(sorted.len() * q / 100).min(sorted.len() - 1)];
    format!(
        "p50 {:?}, p99 {:?}, max {:?} over {}",
        at(50),
        at(99),
        sorted[sorted.len() - 1],
        sorted.len()
    )
}
