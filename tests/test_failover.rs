//! No stale row through a failover or a restart from an old snapshot.
//!
//! A `DEL` acknowledged by a primary can be lost: the primary dies before
//! its replica has it, and the replica is promoted; or the server restarts
//! from a snapshot taken before the `DEL`. StoreHaus keeps a log of recent
//! invalidations and delivers it again to the new primary (or restarted
//! node) before it serves cached values from it.
//!
//! The torture runs readers and writers while a primary is SIGKILLed and a
//! replica promoted, on a private 6-node cluster and on a private primary +
//! replica + 3 Sentinels. Each run first *stages* a replica that missed
//! acknowledged `DEL`s: the replica is frozen (SIGSTOP), the primary's
//! replication links are cut (`CLIENT KILL TYPE replica`), some rows are
//! updated (their `DEL`s are acknowledged by the primary alone), the
//! primary is killed and the replica thawed: it can no longer fetch what
//! it missed, and is promoted holding the old entries. The same run with
//! the log turned off (`with_recent_invalidations(0)`) serves those old
//! rows: the test is known to be sensitive.
//!
//! A read is stale, as in `test_consistency`'s torture, when it returns a
//! version below the one committed when the read started.
//!
//! `recovery`: after the failover the cache serves hits again, within a
//! bound, run after run.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use storehaus::{CacheManager, CacheParams, GenericStore};
use storehaus_testkit::records::items::{self, item, Item};
use storehaus_testkit::*;

mod recovery;

/// Rows of the workload.
const ROWS: i64 = 40;

/// Where the torture runs.
enum Deployment {
    Cluster(RedisCluster),
    Sentinel(Sentinels),
}

impl Deployment {
    fn url(&self) -> String {
        match self {
            Deployment::Cluster(c) => c.url(),
            Deployment::Sentinel(s) => s.url(),
        }
    }

    /// The primary serving `key` and the replica that will replace it.
    async fn victim(&self, key: &str) -> (u16, u16) {
        match self {
            Deployment::Cluster(c) => {
                let (primary, replica) = c.owner(key).await;
                (primary, replica.expect("every primary has a replica"))
            }
            Deployment::Sentinel(s) => {
                let primary = s.current_primary().await.expect("a Sentinel names the primary");
                (primary, s.other(primary))
            }
        }
    }

    /// Whether `key` is served by the node on `port`.
    async fn served_by(&self, key: &str, port: u16) -> bool {
        match self {
            Deployment::Cluster(c) => c.owner(key).await.0 == port,
            Deployment::Sentinel(s) => s.current_primary().await == Some(port),
        }
    }

    fn kill(&self, port: u16) {
        match self {
            Deployment::Cluster(c) => c.kill(port),
            Deployment::Sentinel(s) => s.kill(port),
        }
    }

    fn freeze(&self, port: u16, frozen: bool) {
        match self {
            Deployment::Cluster(c) => c.freeze(port, frozen),
            Deployment::Sentinel(s) => s.freeze(port, frozen),
        }
    }

    async fn wait_until_primary(&self, port: u16) {
        match self {
            Deployment::Cluster(c) => c.wait_until_primary(port).await,
            Deployment::Sentinel(s) => s.wait_until_primary(port).await,
        }
    }

    /// Brings the server on `port` back (started again after a kill, or
    /// thawed after a freeze) and waits until it is a synced replica and
    /// the deployment is whole again.
    async fn rejoin(&self, port: u16, killed: bool) {
        if killed {
            match self {
                Deployment::Cluster(c) => c.restart(port),
                Deployment::Sentinel(s) => s.restart(port),
            }
        } else {
            self.freeze(port, false);
        }
        match self {
            Deployment::Cluster(c) => c.wait_until_healthy().await,
            Deployment::Sentinel(s) => s.wait_until_replica(port).await,
        }
    }

    /// Whether the replica on `port` holds every key of `keys`.
    async fn replica_holds(&self, port: u16, keys: &[String]) -> bool {
        match self {
            Deployment::Cluster(c) => c.replica_holds(port, keys).await,
            Deployment::Sentinel(s) => s.replica_holds(port, keys).await,
        }
    }
}

#[derive(Debug, Default)]
struct Outcome {
    reads: u64,
    writes: u64,
    failed_calls: u64,
    stale_reads: u64,
    /// Rows whose `DEL` the promoted replica missed.
    staged: usize,
    /// Cached entries that differ from their row at the end.
    wrong_entries: u64,
    recent_replays: u64,
}

/// The committed version of every row, shared by the workers.
struct Rows {
    committed: Vec<AtomicI64>,
}

impl Rows {
    fn new(rows: i64) -> Arc<Rows> {
        Arc::new(Rows {
            committed: (0..=rows).map(|_| AtomicI64::new(1)).collect(),
        })
    }

    /// Rows `1..=n`.
    fn n(&self) -> i64 {
        self.committed.len() as i64 - 1
    }
}

/// Readers and writers through one store, with what they saw.
#[derive(Clone)]
struct Workload {
    store: GenericStore<Item>,
    rows: Arc<Rows>,
    stop: Arc<AtomicBool>,
    /// Reads, writes, failed calls, stale reads.
    counts: Arc<[AtomicU64; 4]>,
}

const READS: usize = 0;
const WRITES: usize = 1;
const FAILED: usize = 2;
const STALE: usize = 3;

impl Workload {
    fn new(store: &GenericStore<Item>, rows: i64) -> Workload {
        Workload {
            store: store.clone(),
            rows: Rows::new(rows),
            stop: Arc::new(AtomicBool::new(false)),
            counts: Arc::new([(); 4].map(|_| AtomicU64::new(0))),
        }
    }

    fn count(&self, i: usize) -> u64 {
        self.counts[i].load(Ordering::Relaxed)
    }

    /// Two writers, which leave the rows of `unwritten` alone, and
    /// `readers` readers, which leave the rows of `unread` alone, until
    /// [`stop`](Self::stop). Counts failed store calls and stale reads.
    fn spawn(&self, unwritten: &[i64], unread: &[i64], readers: usize) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for w in 0..2i64 {
            let (load, unwritten) = (self.clone(), unwritten.to_vec());
            tasks.push(tokio::spawn(async move {
                // Each writer owns its rows: versions only grow, one writer per row.
                let n = load.rows.n();
                let mine: Vec<i64> = (1..=n).filter(|id| id % 2 == w && !unwritten.contains(id)).collect();
                let mut i = 0;
                while !load.stop.load(Ordering::Relaxed) {
                    load.write(mine[i % mine.len()]).await;
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        for _ in 0..readers {
            let (load, unread) = (self.clone(), unread.to_vec());
            tasks.push(tokio::spawn(async move {
                let readable: Vec<i64> = (1..=load.rows.n()).filter(|id| !unread.contains(id)).collect();
                while !load.stop.load(Ordering::Relaxed) {
                    load.read(readable[rand::random_range(0..readable.len())]).await;
                }
            }));
        }
        tasks
    }

    async fn write(&self, id: i64) {
        let v = self.rows.committed[id as usize].load(Ordering::SeqCst) + 1;
        match self.store.update(&id, item(id, v as i32), None).await {
            Ok(_) => {
                self.rows.committed[id as usize].store(v, Ordering::SeqCst);
                self.counts[WRITES].fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!("write failed: {e}");
                self.counts[FAILED].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn read(&self, id: i64) {
        let at_start = self.rows.committed[id as usize].load(Ordering::SeqCst);
        match self.store.get_by_id(&id).await {
            Ok(Some(found)) if i64::from(found.version) < at_start => {
                self.counts[STALE].fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("row {id} is never deleted"),
            Err(e) => {
                eprintln!("read failed: {e}");
                self.counts[FAILED].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.counts[READS].fetch_add(1, Ordering::Relaxed);
    }

    /// Stops the workers and waits for them.
    async fn stop(&self, tasks: Vec<tokio::task::JoinHandle<()>>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("no worker panicked");
        }
    }
}

/// Runs the workload through a failover of the primary that serves row 1,
/// after staging a replica that missed the `DEL`s of a few rows.
async fn failover_torture(deployment: Deployment, recent_window_secs: u64) -> Outcome {
    let db = Db::with_max_connections(10).await;
    db.exec(items::CREATE_TABLE).await;
    let manager = manager_on(&deployment.url(), |c| {
        c.with_timeout(300)
            .with_retry_delay(10)
            .with_recent_invalidations(recent_window_secs)
    });
    let store = GenericStore::<Item>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let ids: Vec<i64> = (1..=ROWS).collect();
    for &id in &ids {
        store.create(item(id, 1), None).await.unwrap();
    }
    store.get_many(&ids).await.unwrap();
    wait_for_fills(&manager, ROWS as u64).await;

    let (primary, replica) = deployment.victim(&store.cache_key(&1)).await;
    let mut staged = Vec::new();
    for &id in &ids {
        if staged.len() < 6 && deployment.served_by(&store.cache_key(&id), primary).await {
            staged.push(id);
        }
    }
    let load = Workload::new(&store, ROWS);
    let tasks = load.spawn(&staged, &[], 4);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The replica misses the staged rows' DELs: frozen, its link cut, the
    // rows updated (acknowledged by the primary alone), the primary killed.
    deployment.freeze(replica, true);
    cut_replication(primary).await;
    let updates: Vec<(i64, Item)> = staged.iter().map(|&id| (id, item(id, 2))).collect();
    store.update_many(updates).await.unwrap();
    for &id in &staged {
        load.rows.committed[id as usize].store(2, Ordering::SeqCst);
    }
    deployment.kill(primary);
    deployment.freeze(replica, false);
    deployment.wait_until_primary(replica).await;
    // Reads and writes go on against the promoted replica.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    load.stop(tasks).await;

    let wrong_entries = wrong_entries(&manager, &store, &db, 1..=ROWS).await;
    let stats = stats(&manager).await;
    let outcome = Outcome {
        reads: load.count(READS),
        writes: load.count(WRITES),
        failed_calls: load.count(FAILED),
        stale_reads: load.count(STALE),
        staged: staged.len(),
        wrong_entries,
        recent_replays: stats.recent_replays,
    };
    eprintln!("{outcome:?} {stats:?}");
    db.cleanup().await;
    outcome
}

/// Cached entries of the rows `ids` (read with `get_record` once nothing
/// is pending) that differ from their row.
async fn wrong_entries(
    manager: &Arc<CacheManager>,
    store: &GenericStore<Item>,
    db: &Db,
    ids: impl IntoIterator<Item = i64>,
) -> u64 {
    // Patient: on a loaded machine the cluster client may take a few
    // seconds to settle on the new topology.
    let start = std::time::Instant::now();
    loop {
        let _ = store.get_by_id(&1).await;
        if stats(manager).await.pending_invalidations == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the pending invalidations were not delivered: {:?}",
            stats(manager).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut wrong = 0;
    for id in ids {
        let row: Item = sqlx::query_as("SELECT id, name, version FROM items WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let cached: Option<Item> = manager.get_record("items", &id.to_string()).await.unwrap_or(None);
        if cached.is_some_and(|c| c != row) {
            wrong += 1;
        }
    }
    wrong
}

#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_failover_serves_no_stale_row() {
    let outcome = failover_torture(Deployment::Cluster(RedisCluster::start()), 60).await;
    assert!(outcome.staged > 0, "{outcome:?}");
    assert!(outcome.reads > 100 && outcome.writes > 50, "{outcome:?}");
    assert_eq!(outcome.failed_calls, 0, "{outcome:?}");
    assert_eq!(outcome.stale_reads, 0, "{outcome:?}");
    assert_eq!(outcome.wrong_entries, 0, "{outcome:?}");
    assert!(outcome.recent_replays > 0, "{outcome:?}");
}

#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_failover_without_the_log_serves_stale_rows() {
    let outcome = failover_torture(Deployment::Cluster(RedisCluster::start()), 0).await;
    assert!(outcome.staged > 0, "{outcome:?}");
    assert!(
        outcome.stale_reads > 0,
        "the staged replica holds old rows: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_failover_serves_no_stale_row() {
    let outcome = failover_torture(Deployment::Sentinel(Sentinels::start()), 60).await;
    assert!(outcome.staged > 0, "{outcome:?}");
    assert!(outcome.reads > 100 && outcome.writes > 50, "{outcome:?}");
    assert_eq!(outcome.failed_calls, 0, "{outcome:?}");
    assert_eq!(outcome.stale_reads, 0, "{outcome:?}");
    assert_eq!(outcome.wrong_entries, 0, "{outcome:?}");
    assert!(outcome.recent_replays > 0, "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_failover_without_the_log_serves_stale_rows() {
    let outcome = failover_torture(Deployment::Sentinel(Sentinels::start()), 0).await;
    assert!(outcome.staged > 0, "{outcome:?}");
    assert!(
        outcome.stale_reads > 0,
        "the staged replica holds old rows: {outcome:?}"
    );
}

/// A single node restarted from a snapshot taken before an acknowledged
/// `DEL`: the old entry is back on the server, and is never served.
async fn restart_from_old_snapshot(recent_window_secs: u64) -> Option<Item> {
    let dir = std::env::temp_dir().join(random_name("storehaus-rdb"));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_arg = dir.to_string_lossy().to_string();
    let mut server = RedisServer::start_with(&["--dir", &dir_arg, "--dbfilename", "dump.rdb"]).await;
    let db = Db::new().await;
    db.exec(items::CREATE_TABLE).await;
    let manager = manager_on(&server.url(), |c| {
        c.with_timeout(300).with_recent_invalidations(recent_window_secs)
    });
    let store = GenericStore::<Item>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    store.create(item(1, 1), None).await.unwrap();
    store.get_by_id(&1).await.unwrap();
    wait_for_fills(&manager, 1).await;
    let mut raw = raw_redis(&server.url()).await;
    let _: () = redis::cmd("SAVE").query_async(&mut raw).await.unwrap();
    // Acknowledged by the server, and lost with it.
    store.update(&1, item(1, 2), None).await.unwrap();
    assert_eq!(raw_get(&mut raw, &store.cache_key(&1)).await, None);
    server.restart().await;
    let mut raw = raw_redis(&server.url()).await;
    assert!(
        raw_get(&mut raw, &store.cache_key(&1)).await.is_some(),
        "the snapshot brought the old entry back"
    );
    let mut served = None;
    for _ in 0..20 {
        if let Some(found) = store.get_by_id(&1).await.unwrap() {
            if found.version < 2 {
                served = Some(found);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    db.cleanup().await;
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
    served
}

#[tokio::test]
async fn a_restart_from_a_snapshot_older_than_a_delete_serves_no_stale_row() {
    assert_eq!(restart_from_old_snapshot(60).await, None);
}

#[tokio::test]
async fn without_the_log_a_restart_from_an_old_snapshot_serves_the_old_row() {
    let stale = restart_from_old_snapshot(0).await;
    assert_eq!(stale.map(|i| i.version), Some(1), "the test is sensitive");
}
