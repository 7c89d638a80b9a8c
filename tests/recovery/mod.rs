//! After a failover the cache comes back.
//!
//! A primary is SIGKILLed (or, every other run, SIGSTOPped: a hung
//! process or a partition, whose port accepts connections that never
//! answer) under load (2 writers, 6 readers over 100 cached
//! rows) and its replica promoted; then, besides no failed call and no
//! stale read, the cache must serve hits again within [`RECOVERY`] of the
//! deployment being healthy (the promoted replica is a primary and, on a
//! cluster, every surviving node says `cluster_state:ok`), the pending
//! invalidations must all be delivered (to the new owner of each key) and
//! the breaker must be closed.
//!
//! A hit is proven, not counted: a few *probe* rows served by the victim
//! are changed in the database behind the cache's back before the kill
//! (their entries had reached the replica), so a read that returns the old
//! version came from the cache — from the promoted replica. Nobody writes
//! or reads the probe rows but the prober.
//!
//! One deployment serves every run: after each run the killed server is
//! started again and rejoins as a replica, and the next run kills the
//! primary of another row. `STOREHAUS_FAILOVER_RUNS` sets the number of runs
//! (default [`DEFAULT_RUNS`]; `STOREHAUS_FAILOVER_RUNS=10 cargo test --test
//! test_failover recovery -- --nocapture` for the full series); the figures
//! (time from the kill and from the healthy deployment to the first hit,
//! p50 and max) are printed. `STOREHAUS_FAILOVER_DEATH=freeze` (or `kill`)
//! makes every run die that way; `STOREHAUS_TEST_LOG=FILE` writes the
//! library's debug log there (see `storehaus_testkit::logs`).

use std::time::{Duration, Instant};

use super::*;

/// How soon after the deployment is healthy the cache must serve hits.
const RECOVERY: Duration = Duration::from_secs(5);

/// Rows of the workload.
const RECOVERY_ROWS: i64 = 100;

/// Rows changed behind the cache's back, read only by the prober.
const PROBES: usize = 4;

/// Runs per topology unless `STOREHAUS_FAILOVER_RUNS` says otherwise: a run
/// takes about 10 s (the failover, then the killed server rejoining), so
/// the suite runs 2 (a kill and a freeze); `STOREHAUS_FAILOVER_RUNS=10` for
/// the full series.
const DEFAULT_RUNS: usize = 2;

fn runs() -> usize {
    std::env::var("STOREHAUS_FAILOVER_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_RUNS)
        .max(1)
}

/// `STOREHAUS_FAILOVER_DEATH=kill` or `freeze`: every run dies that way
/// (by default they alternate).
fn deaths() -> Option<Death> {
    match std::env::var("STOREHAUS_FAILOVER_DEATH").ok()?.as_str() {
        "kill" => Some(Death::Kill),
        "freeze" => Some(Death::Freeze),
        _ => None,
    }
}

/// How the primary dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Death {
    /// SIGKILL: its port refuses connections.
    Kill,
    /// SIGSTOP: its port accepts connections that never answer, as a hung
    /// process or a partition looks.
    Freeze,
}

/// What one run saw.
#[derive(Debug)]
struct Run {
    death: Death,
    /// From the kill to the deployment being healthy.
    healed_after: Duration,
    /// From the healthy deployment to the first hit on a probe row.
    first_hit: Option<Duration>,
    /// From the healthy deployment to nothing pending and the breaker closed.
    settled: Option<Duration>,
    reads: u64,
    writes: u64,
    failed_calls: u64,
    stale_reads: u64,
    wrong_entries: u64,
    stats: storehaus::CacheStats,
}

/// A fresh schema with rows `1..=RECOVERY_ROWS` at version 1.
async fn rows_db() -> Db {
    let db = Db::with_max_connections(12).await;
    db.exec(items::CREATE_TABLE).await;
    db.exec(&format!(
        "INSERT INTO items SELECT g, 'item-' || g || '-v1', 1 FROM generate_series(1, {RECOVERY_ROWS}) g"
    ))
    .await;
    db
}

/// The first [`PROBES`] rows served by `primary`, once their entries have
/// reached `replica`.
async fn probes(deployment: &Deployment, store: &GenericStore<Item>, primary: u16, replica: u16) -> Vec<i64> {
    let mut probes = Vec::new();
    for id in 1..=RECOVERY_ROWS {
        if probes.len() < PROBES && deployment.served_by(&store.cache_key(&id), primary).await {
            probes.push(id);
        }
    }
    let keys: Vec<String> = probes.iter().map(|id| store.cache_key(id)).collect();
    let start = Instant::now();
    while !deployment.replica_holds(replica, &keys).await {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the replica never got {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    probes
}

/// Reads the probe rows until one comes from the cache (the version the
/// database no longer holds): how long after `from` it took.
async fn first_hit(store: &GenericStore<Item>, probes: &[i64], from: Instant) -> Option<Duration> {
    while from.elapsed() < RECOVERY {
        for id in probes {
            if let Ok(Some(found)) = store.get_by_id(id).await {
                if found.version == 1 {
                    return Some(from.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Waits until nothing is pending and the breaker is closed: how long
/// after `from` it took.
async fn settled(manager: &CacheManager, from: Instant) -> Option<Duration> {
    while from.elapsed() < RECOVERY {
        let s = stats(manager).await;
        if s.pending_invalidations == 0 && !s.breaker_open {
            return Some(from.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// One run: the primary serving row `row` dies under load.
async fn kill_a_primary(deployment: &Deployment, row: i64, death: Death) -> Run {
    let db = rows_db().await;
    let manager = manager_on(&deployment.url(), |c| c.with_timeout(300).with_retry_delay(10));
    let store = GenericStore::<Item>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let ids: Vec<i64> = (1..=RECOVERY_ROWS).collect();
    store.get_many(&ids).await.unwrap();
    wait_for_fills(&manager, RECOVERY_ROWS as u64).await;
    let (primary, replica) = deployment.victim(&store.cache_key(&row)).await;
    let probes = probes(deployment, &store, primary, replica).await;
    let probe_list = probes.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    db.exec(&format!("UPDATE items SET version = 1000 WHERE id IN ({probe_list})"))
        .await;

    let load = Workload::new(&store, RECOVERY_ROWS);
    let tasks = load.spawn(&probes, &probes, 6);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    match death {
        Death::Kill => deployment.kill(primary),
        Death::Freeze => deployment.freeze(primary, true),
    }
    deployment.wait_until_primary(replica).await;
    let healthy = Instant::now();
    let first_hit = first_hit(&store, &probes, healthy).await;
    let settled = settled(&manager, healthy).await;
    // The workload goes on against the healed deployment for a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop(tasks).await;

    let rest = ids.iter().copied().filter(|id| !probes.contains(id));
    let wrong_entries = wrong_entries(&manager, &store, &db, rest).await;
    let run = Run {
        death,
        healed_after: healthy - killed,
        first_hit,
        settled,
        reads: load.count(READS),
        writes: load.count(WRITES),
        failed_calls: load.count(FAILED),
        stale_reads: load.count(STALE),
        wrong_entries,
        stats: stats(&manager).await,
    };
    clear_prefix(&manager).await;
    db.cleanup().await;
    deployment.rejoin(primary, death == Death::Kill).await;
    run
}

/// Kills a primary [`runs`] times in a row and asserts each run recovered.
async fn recovers_every_time(deployment: Deployment, topology: &str) {
    let mut hits_after_kill = Vec::new();
    let mut hits_after_healthy = Vec::new();
    for n in 0..runs() {
        // Another row each time: over the runs, each primary goes down,
        // killed or frozen in turn.
        let death = match deaths() {
            Some(only) => only,
            None if n % 2 == 0 => Death::Kill,
            None => Death::Freeze,
        };
        let run = kill_a_primary(&deployment, 1 + n as i64 * 7, death).await;
        eprintln!("{topology} run {n}: {run:?}");
        assert!(run.reads > 100 && run.writes > 20, "run {n}: {run:?}");
        assert_eq!(run.failed_calls, 0, "run {n}: {run:?}");
        assert_eq!(run.stale_reads, 0, "run {n}: {run:?}");
        assert_eq!(run.wrong_entries, 0, "run {n}: {run:?}");
        let hit = run
            .first_hit
            .unwrap_or_else(|| panic!("run {n}: no hit within {RECOVERY:?} of a healthy deployment: {run:?}"));
        assert!(
            run.settled.is_some(),
            "run {n}: still pending or the breaker open {RECOVERY:?} after: {run:?}"
        );
        assert!(run.stats.hits > 0 && !run.stats.breaker_open, "run {n}: {run:?}");
        hits_after_kill.push(run.healed_after + hit);
        hits_after_healthy.push((run.death, hit));
    }
    let summary = |mut v: Vec<Duration>| {
        v.sort();
        match v.len() {
            0 => "no run".to_string(),
            n => format!("p50 {:?}, max {:?} ({n} runs)", v[n / 2], v[n - 1]),
        }
    };
    let after = |death: Option<Death>| {
        let hits = hits_after_healthy.iter().filter(|(d, _)| death.is_none_or(|x| x == *d));
        summary(hits.map(|(_, hit)| *hit).collect())
    };
    eprintln!(
        "{topology}: first hit after the kill {}; after the deployment was healthy {} (killed: {}; frozen: {})",
        summary(hits_after_kill),
        after(None),
        after(Some(Death::Kill)),
        after(Some(Death::Freeze)),
    );
}

#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_cluster_failover_the_cache_serves_hits_again() {
    storehaus_testkit::logs::log_to_file_from_env();
    let cluster = RedisCluster::start_with_node_timeout(500);
    recovers_every_time(Deployment::Cluster(cluster), "cluster").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_sentinel_failover_the_cache_serves_hits_again() {
    storehaus_testkit::logs::log_to_file_from_env();
    recovers_every_time(Deployment::Sentinel(Sentinels::start()), "sentinel").await;
}
