//! Never serve stale data: guarded fills, single-flight, transactions,
//! replayed invalidations and read-your-writes, against real PostgreSQL and
//! Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use storehaus::prelude::*;
use storehaus::{CacheParams, ChangeOp, GenericStore, SignalManager};
use storehaus_testkit::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "counters", prefix = "counters")]
pub struct Counter {
    pub id: i32,
    pub version: i64,
}

/// Reads go through a view whose function counts every database scan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "herd")]
pub struct HerdRow {
    pub id: i64,
    pub body: String,
}

async fn counters_db(rows: i32) -> Db {
    let db = Db::with_max_connections(10).await;
    db.exec("CREATE TABLE counters (id integer PRIMARY KEY, version bigint NOT NULL)")
        .await;
    db.exec(&format!(
        "INSERT INTO counters SELECT g, 1 FROM generate_series(1, {rows}) g"
    ))
    .await;
    db
}

async fn herd_db() -> Db {
    let db = Db::with_max_connections(10).await;
    db.exec("CREATE TABLE herd_rows (id bigint PRIMARY KEY, body text NOT NULL)")
        .await;
    db.exec("CREATE TABLE herd_loads (n bigint NOT NULL)").await;
    db.exec("INSERT INTO herd_loads VALUES (0)").await;
    db.exec("INSERT INTO herd_rows VALUES (1, 'one')").await;
    db.exec(
        "CREATE FUNCTION herd_scan() RETURNS SETOF herd_rows LANGUAGE plpgsql VOLATILE AS $$ \
         BEGIN UPDATE herd_loads SET n = n + 1; RETURN QUERY SELECT * FROM herd_rows; END $$",
    )
    .await;
    db.exec("CREATE VIEW herd AS SELECT * FROM herd_scan()").await;
    db
}

async fn herd_loads(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT n FROM herd_loads")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn decode_version(bytes: &[u8]) -> i64 {
    let value = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
    // The payload is the envelope's last element (docs/FORMAT.md).
    value.as_array().unwrap().last().unwrap().as_array().unwrap()[1]
        .as_i64()
        .unwrap()
}

/// One cache-aside reader of row 1, driven through the stale-set race by
/// [`stale_set_race`]: it misses, reads the row from the database, is held
/// there, and fills the cache when released.
trait HeldReader {
    /// Starts a read of row 1; returns once the read has read the database
    /// and is held before its cache fill, with the version it read.
    async fn read_and_hold(&mut self) -> i64;
    /// The writer: commits `version` for row 1, then invalidates its key.
    async fn write(&mut self, version: i64);
    /// Releases the held read and waits until its fill has run.
    async fn release_and_finish(&mut self);
    /// The version the cache holds for row 1 (`None`: nothing, or a lease).
    async fn cached(&mut self) -> Option<i64>;
}

/// What the race left: the version the reader read, what the cache holds
/// after the reader's fill, and what the database holds.
#[derive(Debug)]
struct RaceOutcome {
    read: i64,
    cached: Option<i64>,
    database: i64,
}

/// The stale-set race of cache-aside: the reader reads v1 from the
/// database; a writer commits v2 and deletes the key; then the reader's
/// fill runs. Asserts that this interleaving really happened (the reader
/// read v1 before the write, the database holds v2).
async fn stale_set_race(reader: &mut impl HeldReader, db: &Db) -> RaceOutcome {
    db.exec("UPDATE counters SET version = 1 WHERE id = 1").await;
    assert_eq!(reader.cached().await, None, "the race starts with a cold cache");
    let read = reader.read_and_hold().await;
    reader.write(2).await;
    reader.release_and_finish().await;
    let outcome = RaceOutcome {
        read,
        cached: reader.cached().await,
        database: sqlx::query_scalar("SELECT version FROM counters WHERE id = 1")
            .fetch_one(&db.pool)
            .await
            .unwrap(),
    };
    assert_eq!(
        (outcome.read, outcome.database),
        (1, 2),
        "the reader read v1 before the writer committed v2: {outcome:?}"
    );
    outcome
}

/// A StoreHaus read, held at its fill by the test hook.
struct StoreHausReader {
    manager: Arc<storehaus::CacheManager>,
    store: GenericStore<Counter>,
    redis: redis::aio::MultiplexedConnection,
    pause: Option<storehaus_runtime::test_hooks::FillPause>,
}

impl HeldReader for StoreHausReader {
    async fn read_and_hold(&mut self) -> i64 {
        let pause = self.manager.test_hooks().pause_fill(&self.store.cache_key(&1));
        // The read returns at once; its fill runs in the background, held.
        let version = self.store.get_by_id(&1).await.unwrap().unwrap().version;
        reached(&pause).await;
        self.pause = Some(pause);
        version
    }

    async fn write(&mut self, version: i64) {
        self.store.update(&1, Counter { id: 1, version }, None).await.unwrap();
    }

    async fn release_and_finish(&mut self) {
        self.pause.take().expect("a held read").release();
        let manager = self.manager.clone();
        eventually("the held fill ran", || async {
            let s = manager.get_stats().await.unwrap();
            s.fills + s.fills_rejected == 1
        })
        .await;
    }

    async fn cached(&mut self) -> Option<i64> {
        raw_get(&mut self.redis, &self.store.cache_key(&1))
            .await
            .filter(|bytes| bytes.first() != Some(&0xC1))
            .map(|bytes| decode_version(&bytes))
    }
}

/// Plain cache-aside: GET; on a miss SELECT, then SET. It runs as a task of
/// its own, held by a gate between its SELECT and its SET; the writer does
/// UPDATE, then DEL.
struct PlainReader {
    pool: sqlx::PgPool,
    redis: redis::aio::MultiplexedConnection,
    key: String,
    held: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

impl HeldReader for PlainReader {
    async fn read_and_hold(&mut self) -> i64 {
        let (read_tx, read_rx) = tokio::sync::oneshot::channel();
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        let (pool, mut redis, key) = (self.pool.clone(), self.redis.clone(), self.key.clone());
        let task = tokio::spawn(async move {
            let hit: Option<i64> = redis::cmd("GET").arg(&key).query_async(&mut redis).await.unwrap();
            assert_eq!(hit, None, "the plain reader misses");
            let version: i64 = sqlx::query_scalar("SELECT version FROM counters WHERE id = 1")
                .fetch_one(&pool)
                .await
                .unwrap();
            read_tx.send(version).unwrap();
            gate_rx.await.expect("the gate opens");
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(version)
                .query_async(&mut redis)
                .await
                .unwrap();
        });
        let version = tokio::time::timeout(PAUSE_PATIENCE, read_rx)
            .await
            .expect("the plain reader read the database within the patience")
            .expect("the plain reader sent what it read");
        self.held = Some((gate_tx, task));
        version
    }

    async fn write(&mut self, version: i64) {
        sqlx::query("UPDATE counters SET version = $1 WHERE id = 1")
            .bind(version)
            .execute(&self.pool)
            .await
            .unwrap();
        let _: () = redis::cmd("DEL")
            .arg(&self.key)
            .query_async(&mut self.redis)
            .await
            .unwrap();
    }

    async fn release_and_finish(&mut self) {
        let (gate, task) = self.held.take().expect("a held read");
        gate.send(()).unwrap();
        tokio::time::timeout(PAUSE_PATIENCE, task)
            .await
            .expect("the plain reader finished within the patience")
            .expect("the plain reader did not fail");
    }

    async fn cached(&mut self) -> Option<i64> {
        redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut self.redis)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn guarded_fill_never_puts_an_old_row_back() {
    let db = counters_db(1).await;
    let manager = manager();
    let redis = raw_redis(&redis_url()).await;

    // StoreHaus: the reader's fill finds its lease gone and is dropped.
    let mut ours = StoreHausReader {
        manager: manager.clone(),
        store: GenericStore::<Counter>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone()))),
        redis: redis.clone(),
        pause: None,
    };
    let outcome = stale_set_race(&mut ours, &db).await;
    assert!(
        matches!(outcome.cached, None | Some(2)),
        "StoreHaus leaves v2 or nothing: {outcome:?}"
    );
    assert_eq!(manager.get_stats().await.unwrap().fills_rejected, 1);
    assert_eq!(ours.store.get_by_id(&1).await.unwrap().unwrap().version, 2);

    // The same interleaving through plain GET / SELECT / SET puts the old
    // row back: the control shows what the guard prevents.
    let mut plain = PlainReader {
        pool: db.pool.clone(),
        redis,
        key: format!("{}:plain:counters:1", manager.global_prefix()),
        held: None,
    };
    let outcome = stale_set_race(&mut plain, &db).await;
    assert_eq!(
        outcome.cached,
        Some(1),
        "plain cache-aside leaves v1 cached while the database holds v2: {outcome:?}"
    );
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[tokio::test]
async fn read_your_writes_holds_while_an_older_load_is_in_flight() {
    let db = counters_db(1).await;
    let manager = manager();
    let store = GenericStore::<Counter>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let key = store.cache_key(&1);

    let pause = manager.test_hooks().pause_fill(&key);
    assert_eq!(store.get_by_id(&1).await.unwrap().unwrap().version, 1);
    reached(&pause).await;
    store.update(&1, Counter { id: 1, version: 2 }, None).await.unwrap();
    // The load that began before the write is still in flight: a read that
    // starts now must not join it.
    assert_eq!(store.get_by_id(&1).await.unwrap().unwrap().version, 2);
    pause.release();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.get_by_id(&1).await.unwrap().unwrap().version, 2);
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_cold_reads_cause_one_database_query() {
    let db = herd_db().await;
    let manager = manager_on(&redis_url(), |c| c.with_lease_wait(5_000).with_timeout(10_000));
    let store = Arc::new(GenericStore::<HerdRow>::new(
        db.pool.clone(),
        None,
        Some(CacheParams::new(manager.clone())),
    ));
    let gate = Arc::new(tokio::sync::Barrier::new(1000));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let store = store.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            store.get_by_id(&1).await
        }));
    }
    for t in tasks {
        let row = t.await.unwrap().unwrap().unwrap();
        assert_eq!(row.body, "one");
    }
    assert_eq!(herd_loads(&db).await, 1, "one database query for 1000 cold reads");
    let stats = manager.get_stats().await.unwrap();
    assert_eq!(stats.misses, 1, "{stats:?}");
    assert_eq!(
        stats.hits, 999,
        "every other read was answered without the database: {stats:?}"
    );
    assert!(stats.coalesced > 0, "{stats:?}");
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[tokio::test]
async fn another_process_waits_for_the_lease_instead_of_querying() {
    let db = herd_db().await;
    let prefix = random_name("t");
    let make = || {
        Arc::new(
            storehaus::CacheManager::new(
                storehaus::CacheConfig::new(redis_url(), 600, prefix.clone()).with_lease_wait(3_000),
            )
            .unwrap(),
        )
    };
    let (ma, mb) = (make(), make());
    let a = GenericStore::<HerdRow>::new(db.pool.clone(), None, Some(CacheParams::new(ma.clone())));
    let b = GenericStore::<HerdRow>::new(db.pool.clone(), None, Some(CacheParams::new(mb.clone())));
    let key = a.cache_key(&1);

    let pause = ma.test_hooks().pause_fill(&key);
    assert_eq!(a.get_by_id(&1).await.unwrap().unwrap().body, "one");
    reached(&pause).await;
    let reader_b = tokio::spawn(async move { b.get_by_id(&1).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    pause.release();
    assert_eq!(reader_b.await.unwrap().unwrap().unwrap().body, "one");
    assert_eq!(herd_loads(&db).await, 1, "process B did not query the database");
    let stats = mb.get_stats().await.unwrap();
    assert_eq!((stats.lease_waits, stats.hits), (1, 1), "{stats:?}");
    clear_prefix(&ma).await;
    db.cleanup().await;
}

#[tokio::test]
async fn transaction_invalidates_after_commit_and_never_on_rollback() {
    let db = counters_db(3).await;
    let manager = manager();
    let signals = Arc::new(SignalManager::new(64));
    let mut events = signals.subscribe();
    let store = GenericStore::<Counter>::new(
        db.pool.clone(),
        Some(signals.clone()),
        Some(CacheParams::new(manager.clone())),
    );
    let mut redis = raw_redis(&redis_url()).await;
    for id in 1..=3 {
        store.get_by_id(&id).await.unwrap();
        wait_for_value(&mut redis, &store.cache_key(&id)).await;
    }

    let mut tx = store.begin().await.unwrap();
    tx.update(&1, Counter { id: 1, version: 10 }, Some(vec!["t".into()]))
        .await
        .unwrap();
    assert!(tx.delete(&2).await.unwrap());
    assert_eq!(
        tx.get_by_id(&1).await.unwrap().unwrap().version,
        10,
        "sees its own write"
    );
    assert!(
        raw_get(&mut redis, &store.cache_key(&1)).await.is_some(),
        "nothing invalidated before commit"
    );
    assert_eq!(
        store.get_by_id(&1).await.unwrap().unwrap().version,
        1,
        "others see the committed row"
    );
    tx.commit().await.unwrap();
    assert_eq!(raw_get(&mut redis, &store.cache_key(&1)).await, None);
    assert_eq!(raw_get(&mut redis, &store.cache_key(&2)).await, None);
    assert_eq!(store.get_by_id(&1).await.unwrap().unwrap().version, 10);
    assert_eq!(store.get_by_id(&2).await.unwrap(), None);
    let first = events.try_recv().unwrap();
    assert_eq!(
        (first.op, first.ids.clone(), first.tags.clone()),
        (ChangeOp::Update, vec!["1".to_string()], vec!["t".to_string()])
    );
    assert_eq!(events.try_recv().unwrap().op, ChangeOp::Delete);

    // Rollback and drop: the database and the cache are untouched.
    let cached3 = wait_for_value(&mut redis, &store.cache_key(&3)).await;
    let mut tx = store.begin().await.unwrap();
    tx.update(&3, Counter { id: 3, version: 30 }, None).await.unwrap();
    tx.rollback().await.unwrap();
    {
        let mut tx = store.begin().await.unwrap();
        tx.update(&3, Counter { id: 3, version: 31 }, None).await.unwrap();
    }
    assert_eq!(raw_get(&mut redis, &store.cache_key(&3)).await, Some(cached3));
    assert_eq!(store.get_by_id(&3).await.unwrap().unwrap().version, 1);
    assert!(events.try_recv().is_err(), "no event after rollback");
    clear_prefix(&manager).await;
    db.cleanup().await;
}

/// An outage staged on a private redis-server that keeps its dataset on
/// disk: row 1 is cached at v1 and saved, Redis is killed, and v2 is
/// committed while its invalidation cannot be delivered (it is pending).
struct Outage {
    dir: std::path::PathBuf,
    server: RedisServer,
    db: Db,
    manager: Arc<storehaus::CacheManager>,
    store: GenericStore<Counter>,
    key: String,
}

impl Outage {
    async fn stage(tweak: impl FnOnce(storehaus::CacheConfig) -> storehaus::CacheConfig) -> Outage {
        let dir = std::env::temp_dir().join(random_name("redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let dir_s = dir.to_string_lossy().to_string();
        let mut server = RedisServer::start_with(&["--dir", &dir_s, "--dbfilename", "dump.rdb"]).await;
        let db = counters_db(1).await;
        let manager = manager_on(&server.url(), |c| tweak(c.with_timeout(300).with_retry_delay(5)));
        let store = GenericStore::<Counter>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
        let key = store.cache_key(&1);

        // v1 is cached, and saved to disk with the rest of the dataset.
        assert_eq!(store.get_by_id(&1).await.unwrap().unwrap().version, 1);
        let mut redis = raw_redis(&server.url()).await;
        wait_for_value(&mut redis, &key).await;
        let _: () = redis::cmd("SAVE").query_async(&mut redis).await.unwrap();

        // Redis dies; the update commits; its invalidation cannot be delivered.
        server.kill();
        store.update(&1, Counter { id: 1, version: 2 }, None).await.unwrap();
        assert!(manager.get_stats().await.unwrap().pending_invalidations >= 1);
        Outage {
            dir,
            server,
            db,
            manager,
            store,
            key,
        }
    }

    async fn cleanup(self) {
        self.db.cleanup().await;
        drop(self.server);
        let _ = std::fs::remove_dir_all(self.dir);
    }
}

#[tokio::test]
async fn invalidation_lost_in_an_outage_is_replayed_before_cached_reads_resume() {
    let mut o = Outage::stage(|c| c.with_circuit_breaker(100, 50)).await;
    assert_eq!(
        o.store.get_by_id(&1).await.unwrap().unwrap().version,
        2,
        "bypasses the cache meanwhile"
    );

    // Redis comes back with the old dataset, v1 included. (Locked at first,
    // so that the background replayer cannot remove the entry before this
    // test has seen it there.)
    o.server.restart_locked("lock").await;
    let mut locked = raw_redis(&format!("redis://:lock@127.0.0.1:{}", o.server.port)).await;
    assert!(
        raw_get(&mut locked, &o.key).await.is_some(),
        "the stale entry is back on the server"
    );
    o.server.unlock("lock").await;
    let mut redis = raw_redis(&o.server.url()).await;
    assert_eq!(
        o.store.get_by_id(&1).await.unwrap().unwrap().version,
        2,
        "never the old row"
    );
    assert_eq!(o.manager.get_stats().await.unwrap().pending_invalidations, 0);
    wait_for_value(&mut redis, &o.key).await;
    assert_eq!(o.store.get_by_id(&1).await.unwrap().unwrap().version, 2);
    o.cleanup().await;
}

#[tokio::test]
async fn a_write_only_process_replays_its_lost_invalidations_in_the_background() {
    let mut o = Outage::stage(|c| c).await;

    // Redis returns with v1 on disk. This process never reads again: the
    // background replayer alone must remove the stale entry, so another
    // process (a raw client here) stops seeing it.
    o.server.restart().await;
    let mut redis = raw_redis(&o.server.url()).await;
    eventually("the replayer deleted the stale entry", || {
        let mut redis = redis.clone();
        let key = o.key.clone();
        async move { raw_get(&mut redis, &key).await.is_none() }
    })
    .await;
    // The restart (a new run_id) also has the log of recent invalidations
    // delivered again, which may take the replayer one more round trip.
    eventually("nothing is pending", || async {
        o.manager.get_stats().await.unwrap().pending_invalidations == 0
    })
    .await;
    assert!(raw_get(&mut redis, &o.key).await.is_none());
    o.cleanup().await;
}

#[tokio::test]
async fn a_write_whose_caller_gives_up_after_commit_still_invalidates() {
    let server = RedisServer::start().await;
    let db = counters_db(1).await;
    let manager = manager_on(&server.url(), |c| c.with_timeout(2_000).with_circuit_breaker(100, 50));
    let store = GenericStore::<Counter>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let key = store.cache_key(&1);
    assert_eq!(store.get_by_id(&1).await.unwrap().unwrap().version, 1);
    let mut redis = raw_redis(&server.url()).await;
    wait_for_value(&mut redis, &key).await;

    // Redis stalls, so the invalidation hangs after the commit; the caller
    // gives up (its future is dropped) long before the cache budget ends.
    server.pause();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        store.update(&1, Counter { id: 1, version: 2 }, None),
    )
    .await;
    assert!(gave_up.is_err(), "the caller timed out inside the invalidation");
    let version: i64 = sqlx::query_scalar("SELECT version FROM counters WHERE id = 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(version, 2, "the write was committed");
    // The write goes on in a task of its own: its invalidation waits for
    // the stalled server (or is remembered for replay), it is not lost.
    server.resume();
    assert_eq!(
        store.get_by_id(&1).await.unwrap().unwrap().version,
        2,
        "never the old row"
    );
    eventually("replayed", || async {
        manager.get_stats().await.unwrap().pending_invalidations == 0
    })
    .await;
    assert_eq!(store.get_by_id(&1).await.unwrap().unwrap().version, 2);
    db.cleanup().await;
}

/// The stale-read workload: writers change a few rows, readers read them.
///
/// Versions only grow. Every writer holds the locks of the rows it writes
/// (in id order) and does one of: `update` of one row (v -> v+1),
/// `update_many` of two rows (each v -> v+1), or `delete` of a row followed
/// by `create` of it (the delete makes its committed state "absent at
/// v+1", the create writes version v+2). A write is committed once its call
/// has returned.
///
/// A read is stale when it returns `Some(v)` with `v` below the version
/// committed at the read's start (present or absent), or `None` while the
/// row was committed present at the read's start and no delete of that row
/// was in flight during the read: none started before the read ended
/// without having returned before the read began. (A delete that started
/// just before the read and returns after its start may already have
/// committed: `None` is then the truth, not a stale read.)
struct Workload {
    rows: i32,
    writers: usize,
    readers: usize,
    writes_per_writer: usize,
    reads_per_reader: usize,
}

/// What the workload reads and writes through: StoreHaus, or plain
/// cache-aside.
trait Subject: Send + Sync + 'static {
    fn read(&self, id: i32) -> impl std::future::Future<Output = Option<i64>> + Send;
    fn update(&self, id: i32, version: i64) -> impl std::future::Future<Output = ()> + Send;
    /// Both rows in one transaction.
    fn update_two(&self, a: (i32, i64), b: (i32, i64)) -> impl std::future::Future<Output = ()> + Send;
    fn delete(&self, id: i32) -> impl std::future::Future<Output = ()> + Send;
    fn create(&self, id: i32, version: i64) -> impl std::future::Future<Output = ()> + Send;
}

#[derive(Debug, Default)]
struct Outcome {
    reads: u64,
    updates: u64,
    updates_of_two: u64,
    recreates: u64,
    /// Reads that returned a version older than the committed one.
    stale_versions: u64,
    /// Reads that returned no row while one was committed and not being deleted.
    stale_absent: u64,
}

impl Outcome {
    fn stale(&self) -> u64 {
        self.stale_versions + self.stale_absent
    }
}

/// A row's committed state in one atomic: `v > 0` present at version `v`,
/// `v < 0` absent at version `-v`.
async fn run_workload<S: Subject>(w: &Workload, subject: Arc<S>) -> Outcome {
    let n = w.rows as usize + 1;
    let committed: Arc<Vec<AtomicI64>> = Arc::new((0..n).map(|_| AtomicI64::new(1)).collect());
    let deletes_started: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let deletes_returned: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let locks: Arc<Vec<tokio::sync::Mutex<()>>> = Arc::new((0..n).map(|_| tokio::sync::Mutex::new(())).collect());
    let counts = Arc::new([(); 6].map(|_| AtomicU64::new(0)));
    const READS: usize = 0;
    const UPDATES: usize = 1;
    const UPDATES_OF_TWO: usize = 2;
    const RECREATES: usize = 3;
    const STALE_VERSIONS: usize = 4;
    const STALE_ABSENT: usize = 5;
    let mut tasks = Vec::new();
    for _ in 0..w.writers {
        let (subject, committed, deletes_started, deletes_returned, locks, counts) = (
            subject.clone(),
            committed.clone(),
            deletes_started.clone(),
            deletes_returned.clone(),
            locks.clone(),
            counts.clone(),
        );
        let (rows, writes) = (w.rows, w.writes_per_writer);
        tasks.push(tokio::spawn(async move {
            for _ in 0..writes {
                let r = rand::random_range(1..=rows);
                match rand::random_range(0..4) {
                    0 | 1 => {
                        let _guard = locks[r as usize].lock().await;
                        let v = committed[r as usize].load(Ordering::SeqCst);
                        subject.update(r, v + 1).await;
                        committed[r as usize].store(v + 1, Ordering::SeqCst);
                        counts[UPDATES].fetch_add(1, Ordering::Relaxed);
                    }
                    2 => {
                        let other = (r % rows) + 1;
                        let (a, b) = (r.min(other), r.max(other));
                        let _ga = locks[a as usize].lock().await;
                        let _gb = locks[b as usize].lock().await;
                        let va = committed[a as usize].load(Ordering::SeqCst);
                        let vb = committed[b as usize].load(Ordering::SeqCst);
                        subject.update_two((a, va + 1), (b, vb + 1)).await;
                        committed[a as usize].store(va + 1, Ordering::SeqCst);
                        committed[b as usize].store(vb + 1, Ordering::SeqCst);
                        counts[UPDATES_OF_TWO].fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        let _guard = locks[r as usize].lock().await;
                        let v = committed[r as usize].load(Ordering::SeqCst);
                        deletes_started[r as usize].fetch_add(1, Ordering::SeqCst);
                        subject.delete(r).await;
                        committed[r as usize].store(-(v + 1), Ordering::SeqCst);
                        deletes_returned[r as usize].fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        subject.create(r, v + 2).await;
                        committed[r as usize].store(v + 2, Ordering::SeqCst);
                        counts[RECREATES].fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for _ in 0..w.readers {
        let (subject, committed, deletes_started, deletes_returned, counts) = (
            subject.clone(),
            committed.clone(),
            deletes_started.clone(),
            deletes_returned.clone(),
            counts.clone(),
        );
        let (rows, reads) = (w.rows, w.reads_per_reader);
        tasks.push(tokio::spawn(async move {
            for _ in 0..reads {
                let r = rand::random_range(1..=rows) as usize;
                let returned_before = deletes_returned[r].load(Ordering::SeqCst);
                let at_start = committed[r].load(Ordering::SeqCst);
                let got = subject.read(r as i32).await;
                // A delete of r was in flight during the read.
                let deleting = deletes_started[r].load(Ordering::SeqCst) != returned_before;
                match got {
                    Some(v) if v < at_start.abs() => {
                        counts[STALE_VERSIONS].fetch_add(1, Ordering::Relaxed);
                    }
                    None if at_start > 0 && !deleting => {
                        counts[STALE_ABSENT].fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                counts[READS].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let count = |i: usize| counts[i].load(Ordering::Relaxed);
    Outcome {
        reads: count(READS),
        updates: count(UPDATES),
        updates_of_two: count(UPDATES_OF_TWO),
        recreates: count(RECREATES),
        stale_versions: count(STALE_VERSIONS),
        stale_absent: count(STALE_ABSENT),
    }
}

struct Ours(GenericStore<Counter>);

impl Subject for Ours {
    async fn read(&self, id: i32) -> Option<i64> {
        self.0.get_by_id(&id).await.unwrap().map(|c| c.version)
    }

    async fn update(&self, id: i32, version: i64) {
        self.0.update(&id, Counter { id, version }, None).await.unwrap();
    }

    async fn update_two(&self, a: (i32, i64), b: (i32, i64)) {
        let rows = [a, b].map(|(id, version)| (id, Counter { id, version }));
        self.0.update_many(rows.to_vec()).await.unwrap();
    }

    async fn delete(&self, id: i32) {
        assert!(self.0.delete(&id).await.unwrap(), "row {id} existed");
    }

    async fn create(&self, id: i32, version: i64) {
        self.0.create(Counter { id, version }, None).await.unwrap();
    }
}

/// Plain cache-aside: GET; on a miss SELECT, a slow moment, SET (0 caches
/// "no such row"). Writes commit, then DEL.
struct Plain {
    pool: sqlx::PgPool,
    redis: redis::aio::MultiplexedConnection,
    prefix: String,
    slow_fill: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Plain {
    fn key(&self, id: i32) -> String {
        format!("{}:{id}", self.prefix)
    }

    async fn del(&self, ids: &[i32]) {
        let keys: Vec<String> = ids.iter().map(|&id| self.key(id)).collect();
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut self.redis.clone())
            .await
            .unwrap();
    }
}

impl Subject for Plain {
    async fn read(&self, id: i32) -> Option<i64> {
        let mut redis = self.redis.clone();
        let key = self.key(id);
        let hit: Option<i64> = redis::cmd("GET").arg(&key).query_async(&mut redis).await.unwrap();
        if let Some(v) = hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return (v != 0).then_some(v);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let v: Option<i64> = sqlx::query_scalar("SELECT version FROM counters WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .unwrap();
        tokio::time::sleep(self.slow_fill).await;
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(v.unwrap_or(0))
            .query_async(&mut redis)
            .await
            .unwrap();
        v
    }

    async fn update(&self, id: i32, version: i64) {
        sqlx::query("UPDATE counters SET version = $1 WHERE id = $2")
            .bind(version)
            .bind(id)
            .execute(&self.pool)
            .await
            .unwrap();
        self.del(&[id]).await;
    }

    async fn update_two(&self, a: (i32, i64), b: (i32, i64)) {
        let mut tx = self.pool.begin().await.unwrap();
        for (id, version) in [a, b] {
            sqlx::query("UPDATE counters SET version = $1 WHERE id = $2")
                .bind(version)
                .bind(id)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        self.del(&[a.0, b.0]).await;
    }

    async fn delete(&self, id: i32) {
        sqlx::query("DELETE FROM counters WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .unwrap();
        self.del(&[id]).await;
    }

    async fn create(&self, id: i32, version: i64) {
        sqlx::query("INSERT INTO counters (id, version) VALUES ($1, $2)")
            .bind(id)
            .bind(version)
            .execute(&self.pool)
            .await
            .unwrap();
        self.del(&[id]).await;
    }
}

/// The least fraction of StoreHaus reads that must be hits (`hit_rate()`),
/// and the least fraction answered from a cached value (hits that did not
/// join another read's database load), so that "no stale read" cannot come
/// from reads that bypassed the cache. Measured on this 2-core machine (debug
/// build): hit rate 0.83-0.85 and 0.55-0.65 answered by a cached value, in
/// both read modes; the bounds are about half of that.
const MIN_HIT_RATE: f64 = 0.4;
const MIN_CACHED_RATE: f64 = 0.25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_no_stale_reads_while_plain_cache_aside_has_them() {
    let workload = Workload {
        rows: 4,
        writers: 4,
        readers: 12,
        writes_per_writer: 200,
        reads_per_reader: 800,
    };
    let slow_fill = Duration::from_millis(2);

    // StoreHaus, with every fill delayed like a slow reader, in both read
    // modes (GET first, and the single SET NX GET).
    for single_command_reads in [false, true] {
        let db = counters_db(workload.rows).await;
        let manager = manager_on(&redis_url(), |c| c.with_single_command_reads(single_command_reads));
        manager.test_hooks().set_fill_delay(slow_fill);
        let store = GenericStore::<Counter>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
        let ours = run_workload(&workload, Arc::new(Ours(store.clone()))).await;
        let stats = manager.get_stats().await.unwrap();
        println!(
            "storehaus (single_command_reads = {single_command_reads}): {ours:?}, hit rate {:.2}, \
             answered by a cached value {:.2}\n  {stats:?}",
            stats.hit_rate(),
            (stats.hits - stats.coalesced) as f64 / ours.reads as f64
        );
        assert_eq!(ours.stale(), 0, "{ours:?}");
        // The reads went through the cache: each counted once, and enough
        // of them were hits.
        assert_eq!(stats.hits + stats.misses, ours.reads, "{stats:?}");
        assert!(
            stats.hit_rate() >= MIN_HIT_RATE,
            "only {:.2} of the reads were hits: {stats:?}",
            stats.hit_rate()
        );
        let cached_rate = (stats.hits - stats.coalesced) as f64 / ours.reads as f64;
        assert!(
            cached_rate >= MIN_CACHED_RATE,
            "only {cached_rate:.2} of the reads were answered by a cached value: {stats:?}"
        );
        assert!(stats.fills > 0 && stats.invalidations > 0, "{stats:?}");
        assert!(
            ours.updates > 0 && ours.updates_of_two > 0 && ours.recreates > 0,
            "{ours:?}"
        );

        // After the writers stop, every cached entry equals its row (every
        // row exists again).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut redis = raw_redis(&redis_url()).await;
        let rows: HashMap<i32, i64> = sqlx::query_as::<_, (i32, i64)>("SELECT id, version FROM counters")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(rows.len(), workload.rows as usize);
        for (id, version) in &rows {
            if let Some(bytes) = raw_get(&mut redis, &store.cache_key(id)).await {
                if bytes[0] != 0xC1 {
                    let entry = storehaus::codec::decode::<Counter>(Counter::FINGERPRINT, &bytes).unwrap();
                    assert_eq!(
                        entry,
                        storehaus::codec::Entry::Record(Counter {
                            id: *id,
                            version: *version
                        }),
                        "cached row {id} equals the database"
                    );
                }
            }
        }
        clear_prefix(&manager).await;
        db.cleanup().await;
    }

    // The same workload through plain cache-aside.
    let db = counters_db(workload.rows).await;
    let plain = Arc::new(Plain {
        pool: db.pool.clone(),
        redis: raw_redis(&redis_url()).await,
        prefix: random_name("plain"),
        slow_fill,
        hits: AtomicU64::new(0),
        misses: AtomicU64::new(0),
    });
    let naive = run_workload(&workload, plain.clone()).await;
    let (hits, misses) = (plain.hits.load(Ordering::Relaxed), plain.misses.load(Ordering::Relaxed));
    println!(
        "plain cache-aside: {naive:?}, hit rate {:.2}",
        hits as f64 / (hits + misses) as f64
    );
    assert!(
        naive.stale() > 0,
        "the workload is known to expose the stale-set race: {naive:?}"
    );
    assert_eq!(hits + misses, naive.reads);
    let keys: Vec<String> = (1..=workload.rows).map(|id| plain.key(id)).collect();
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut raw_redis(&redis_url()).await)
        .await
        .unwrap();
    db.cleanup().await;
}
