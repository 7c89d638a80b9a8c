//! Read replicas: where a store's loads run.
//!
//! A store built with [`GenericStore::with_read_replica`] loads its misses
//! (`get_by_id`, `get_many`, `get_by`, cached queries) from a PostgreSQL
//! standby when the standby has replayed every write the load could see
//! stale, and from the primary otherwise. What it has replayed is polled
//! here, per replica, every [`REPLAY_POLL`] (`pg_last_wal_replay_lsn()`); what
//! it must have replayed is read from the cache's replica markers (see
//! `cache::markers`) after the load's lease was taken, and bounded below by
//! the primary's position one [`REPLICA_LAG_BUDGET`] ago (sampled here
//! every [`PRIMARY_SAMPLE`]), which covers every marker that has expired.
//!
//! A replica whose poll fails or times out is skipped until a poll
//! succeeds; one whose loads fail three times in a row is skipped for a
//! second. A load that fails on a replica runs again on the primary: a
//! replica never turns into an error, and a stopped one costs a read
//! nothing once its poll has failed (no marker is read either).

mod lsn;

pub(crate) use self::lsn::commit_position;
use self::lsn::{covers, replay_position, segment_size};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::cache::markers::REPLICA_LAG_BUDGET;
use crate::cache::CacheManager;
use crate::error::Result;
use crate::keys;
use crate::record::Cached;
use crate::store::pool::DbPool;
use crate::store::sql::Pooled;
use crate::store::GenericStore;

/// How often each replica's replay position is polled.
pub(crate) const REPLAY_POLL: Duration = Duration::from_millis(20);
/// How often the primary's position is sampled.
pub(crate) const PRIMARY_SAMPLE: Duration = Duration::from_millis(100);
/// The longest a poll may take before its replica counts as down.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest a load waits for a replica's connection before it runs on
/// the primary (a stopped replica's pool retries connecting until its own
/// `acquire_timeout`).
const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(250);
/// Failed loads in a row that take a replica out, and for how long.
const FAILURES_TO_OPEN: u32 = 3;
const OPEN_FOR: Duration = Duration::from_secs(1);

/// Where a load runs, and what a replica served: see
/// [`GenericStore::replica_stats`](crate::GenericStore::replica_stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaStats {
    /// Loads served by a replica.
    pub replica_loads: u64,
    /// Loads that ran on the primary: no replica had replayed far enough
    /// (or none was up, or the markers could not be read).
    pub primary_loads: u64,
    /// Loads that failed on a replica and ran again on the primary.
    pub fallbacks: u64,
}

/// A store's replicas, their pollers' findings and its counters.
#[derive(Debug)]
pub(crate) struct Replicas {
    primary: PgPool,
    members: Vec<Member>,
    /// The primary's position, sampled: (when the sample was asked for, position).
    samples: Mutex<VecDeque<(Instant, u64)>>,
    /// The primary's `wal_segment_size` in bytes (0 until read).
    segment: AtomicU64,
    next: AtomicUsize,
    polling: AtomicBool,
    replica_loads: AtomicU64,
    primary_loads: AtomicU64,
    fallbacks: AtomicU64,
    born: Instant,
}

#[derive(Debug)]
struct Member {
    pool: DbPool,
    /// The replay position last polled; 0 while unknown or down.
    replay: AtomicU64,
    /// When it was polled (ms since `born`).
    polled_ms: AtomicU64,
    failures: AtomicU32,
    /// Skipped until then (ms since `born`).
    open_until_ms: AtomicU64,
}

impl Replicas {
    pub(crate) fn new(primary: PgPool, pools: Vec<PgPool>) -> Arc<Self> {
        let replicas = Arc::new(Replicas {
            primary,
            members: pools
                .into_iter()
                .map(|pool| Member {
                    pool: DbPool::Postgres(pool),
                    replay: AtomicU64::new(0),
                    polled_ms: AtomicU64::new(0),
                    failures: AtomicU32::new(0),
                    open_until_ms: AtomicU64::new(0),
                })
                .collect(),
            samples: Mutex::default(),
            segment: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            polling: AtomicBool::new(false),
            replica_loads: AtomicU64::new(0),
            primary_loads: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            born: Instant::now(),
        });
        replicas.start_polling();
        replicas
    }

    /// The replicas' pools, for a store that adds one more.
    #[cfg_attr(not(feature = "sqlite"), allow(clippy::unnecessary_filter_map))]
    pub(crate) fn pools(&self) -> Vec<PgPool> {
        self.members
            .iter()
            .filter_map(|m| match &m.pool {
                DbPool::Postgres(p) => Some(p.clone()),
                #[cfg(feature = "sqlite")]
                DbPool::Sqlite(_) => None,
            })
            .collect()
    }

    pub(crate) fn stats(&self) -> ReplicaStats {
        ReplicaStats {
            replica_loads: self.replica_loads.load(Ordering::Relaxed),
            primary_loads: self.primary_loads.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Starts the pollers (once, inside a runtime; until then loads use the
    /// primary). They stop when the store's last clone is dropped.
    fn start_polling(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.polling.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(sample_primary(Arc::downgrade(self)));
        for i in 0..self.members.len() {
            runtime.spawn(poll_replica(Arc::downgrade(self), i));
        }
    }

    /// Whether some replica may serve a load now (so that its marker is
    /// worth reading).
    fn any_up(&self) -> bool {
        let now = self.now_ms();
        self.members.iter().any(|m| m.usable(now))
    }

    /// The least position a replica must have replayed for any load now:
    /// the primary's position at the oldest sample asked for within the
    /// budget (every marker that has expired was raised before it). `None`
    /// without such a sample.
    fn floor(&self) -> Option<u64> {
        let now = Instant::now();
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        while samples
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > REPLICA_LAG_BUDGET)
        {
            samples.pop_front();
        }
        samples.front().map(|(_, lsn)| *lsn)
    }

    /// A replica that has replayed `needed`, in turn.
    fn pick(&self, needed: u64) -> Option<&Member> {
        let now = self.now_ms();
        let segment = self.segment.load(Ordering::Relaxed);
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.members[(start + i) % n])
            .find(|m| m.usable(now) && covers(m.replay.load(Ordering::Acquire), needed, segment))
    }

    /// Runs `load` on a replica that has replayed every write the markers
    /// `markers` (computed only when a replica is up) speak of, else on
    /// `primary`; a replica's failure runs it again on the primary.
    pub(crate) async fn load<R, M, F, Fut>(
        &self,
        mgr: &CacheManager,
        primary: &DbPool,
        markers: M,
        load: F,
    ) -> Result<R>
    where
        M: FnOnce() -> Vec<String>,
        F: Fn(Pooled) -> Fut,
        Fut: Future<Output = Result<R>>,
    {
        if let Some(member) = self.choose(mgr, markers).await {
            match tokio::time::timeout(ACQUIRE_TIMEOUT, Pooled::acquire(&member.pool)).await {
                Ok(Ok(conn)) => match load(conn).await {
                    Ok(found) => {
                        member.failures.store(0, Ordering::Relaxed);
                        self.replica_loads.fetch_add(1, Ordering::Relaxed);
                        return Ok(found);
                    }
                    Err(e) => self.failed(member, &e.to_string()),
                },
                Ok(Err(e)) => self.failed(member, &e.to_string()),
                Err(_) => self.failed(member, "no connection in time"),
            }
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        self.primary_loads.fetch_add(1, Ordering::Relaxed);
        load(Pooled::acquire(primary).await?).await
    }

    async fn choose<M: FnOnce() -> Vec<String>>(&self, mgr: &CacheManager, markers: M) -> Option<&Member> {
        if !self.any_up() {
            return None;
        }
        let marked = mgr.marker_position(&markers()).await?;
        let needed = marked.max(self.floor()?);
        self.pick(needed)
    }

    fn failed(&self, member: &Member, why: &str) {
        let failures = member.failures.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::debug!(target: "storehaus", failures, error = why, "a load failed on a read replica: it runs on the primary");
        if failures >= FAILURES_TO_OPEN {
            member.failures.store(0, Ordering::Relaxed);
            member
                .open_until_ms
                .store(self.now_ms() + OPEN_FOR.as_millis() as u64, Ordering::Release);
            tracing::warn!(target: "storehaus", error = why, "a read replica failed {FAILURES_TO_OPEN} loads in a row: skipped for {OPEN_FOR:?}");
        }
    }
}

impl Member {
    fn usable(&self, now_ms: u64) -> bool {
        let polled = self.polled_ms.load(Ordering::Acquire);
        self.replay.load(Ordering::Acquire) > 0
            && now_ms.saturating_sub(polled) <= POLL_TIMEOUT.as_millis() as u64 * 2
            && now_ms >= self.open_until_ms.load(Ordering::Acquire)
    }
}

/// Samples the primary's position every [`PRIMARY_SAMPLE`] while the store lives.
async fn sample_primary(replicas: Weak<Replicas>) {
    loop {
        let Some(this) = replicas.upgrade() else {
            return;
        };
        if this.segment.load(Ordering::Relaxed) == 0 {
            if let Ok(Some(size)) = tokio::time::timeout(POLL_TIMEOUT, segment_size(&this.primary)).await {
                this.segment.store(size, Ordering::Relaxed);
            }
        }
        let asked = Instant::now();
        if let Ok(Some(lsn)) = tokio::time::timeout(POLL_TIMEOUT, commit_position(&this.primary)).await {
            let mut samples = this.samples.lock().unwrap_or_else(|p| p.into_inner());
            samples.push_back((asked, lsn));
            // Older than the budget and the next sample: never a floor again.
            while samples.len() > 1 && samples.get(1).is_some_and(|(at, _)| at.elapsed() > REPLICA_LAG_BUDGET) {
                samples.pop_front();
            }
        }
        drop(this);
        tokio::time::sleep(PRIMARY_SAMPLE).await;
    }
}

/// Polls replica `i`'s replay position every [`REPLAY_POLL`] while the store lives.
async fn poll_replica(replicas: Weak<Replicas>, i: usize) {
    let mut up = true;
    loop {
        let Some(this) = replicas.upgrade() else {
            return;
        };
        let member = &this.members[i];
        let polled = tokio::time::timeout(POLL_TIMEOUT, replay_position(&member.pool)).await;
        let now = this.now_ms();
        match polled {
            Ok(Ok(Some(lsn))) => {
                member.replay.fetch_max(lsn, Ordering::AcqRel);
                member.polled_ms.store(now, Ordering::Release);
                if !up {
                    tracing::info!(target: "storehaus", replica = i, "a read replica answers again");
                }
                up = true;
            }
            outcome => {
                member.replay.store(0, Ordering::Release);
                if up {
                    let why = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "no answer in time".to_string(),
                        Ok(Ok(_)) => "it has replayed nothing yet".to_string(),
                    };
                    tracing::warn!(target: "storehaus", replica = i, error = %why, "a read replica is skipped: its replay position cannot be read");
                }
                up = false;
            }
        }
        drop(this);
        tokio::time::sleep(REPLAY_POLL).await;
    }
}

impl<T: Cached> GenericStore<T> {
    /// Loads misses from `pool`, a PostgreSQL hot standby of the store's
    /// database, whenever it has replayed every write the load could
    /// otherwise see stale, and from the store's own pool (the primary)
    /// otherwise. Call it again to add more replicas: loads take turns
    /// among those that qualify. Writes, transactions,
    /// [`get_fresh`](Self::get_fresh) and the outbox always use the primary.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use storehaus::prelude::*;
    /// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
    /// # #[cache(table = "users")]
    /// # struct User { id: i64, name: String }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let primary = sqlx::PgPool::connect("postgres://app@db-primary/app").await?;
    /// let standby = sqlx::postgres::PgPoolOptions::new()
    ///     .acquire_timeout(std::time::Duration::from_secs(1))
    ///     .connect_lazy("postgres://app@db-standby/app")?;
    /// let cache = Arc::new(CacheManager::new(CacheConfig::new("redis://127.0.0.1:6379", 300, "app"))?);
    /// let users = GenericStore::<User>::new(primary, None, Some(CacheParams::new(cache)))
    ///     .with_read_replica(standby);
    /// let ada = users.get_by_id(&1).await?; // a miss: the standby, when it has caught up
    /// # Ok(()) }
    /// ```
    ///
    /// # The guarantee
    ///
    /// Once a write through a store (`create`, `update`, `update_many`,
    /// `delete`, `delete_many`, a transaction, [`invalidate`](Self::invalidate))
    /// has returned, no read of that store in any process sharing the cache
    /// returns or caches the row as it was before the write, however far
    /// behind the standby is: the write raises a replica marker in the cache
    /// (the write-ahead log position it committed at) before it deletes the
    /// keys, and a miss that finds a marker its standby has not replayed
    /// reads the primary. The same holds for writes delivered by
    /// [`watch_external_writes`](Self::watch_external_writes) (or
    /// `watch_wal`) in this process's deployment, from the delivery on.
    /// Rows nobody wrote within the last [`REPLICA_LAG_BUDGET`] keep loading
    /// from the standby while it lags. `get_by` and cached queries read the
    /// store's own marker (the rows they will return are not known before):
    /// they use the standby only once it has replayed the store's latest
    /// write.
    ///
    /// # Limits
    ///
    /// - A standby more than [`REPLICA_LAG_BUDGET`] behind the primary is
    ///   skipped (markers live that long), as is one whose replay position
    ///   cannot be polled or whose loads fail three times in a row (for a
    ///   second); its loads run on the primary, never as errors. Each
    ///   replica is polled every 20 ms, the primary sampled every 100 ms.
    /// - Markers live in the cache: a store without [`CacheParams`](crate::CacheParams) (and a
    ///   SQLite store) does not use the replica. Every process that writes
    ///   the table must raise markers: use `with_read_replica` there too,
    ///   or deliver the writes through the outbox. Raw SQL writes are
    ///   covered only once delivered by the outbox or followed by
    ///   [`invalidate`](Self::invalidate).
    /// - While the cache cannot be read, has invalidations waiting for
    ///   replay or its outbox is behind, and for [`REPLICA_LAG_BUDGET`]
    ///   after its server's data was replaced (a failover), loads use the
    ///   primary. A Redis that evicts keys under memory pressure may evict a
    ///   marker (with `volatile-ttl`, markers go first): a standby could
    ///   then serve a row older than a write of the last few seconds.
    /// - A write's commit position is read with one more query on the
    ///   primary after its commit; a marker costs one more command in the
    ///   write's invalidation pipeline and one in a miss (`ZSCORE`).
    /// - `CacheManager::delete_record`/`delete_pattern` raise no markers
    ///   (use [`invalidate`](Self::invalidate) after a change made behind the
    ///   store's back).
    pub fn with_read_replica(mut self, pool: PgPool) -> Self {
        #[allow(irrefutable_let_patterns)] // PostgreSQL is the only database without `sqlite`
        let DbPool::Postgres(primary) = &self.pool
        else {
            tracing::warn!(target: "storehaus", table = T::TABLE, "with_read_replica: the store is not on PostgreSQL; the replica is not used");
            return self;
        };
        let Some(cache) = &self.cache else {
            tracing::warn!(target: "storehaus", table = T::TABLE, "with_read_replica: the store has no cache (its replica markers live there); the replica is not used");
            return self;
        };
        cache.manager.register_replica_scope(&cache.prefix);
        let mut pools = self.replicas.as_ref().map(|r| r.pools()).unwrap_or_default();
        pools.push(pool);
        self.replicas = Some(Replicas::new(primary.clone(), pools));
        self
    }

    /// Where this store's loads ran (see [`with_read_replica`](Self::with_read_replica)):
    /// `None` for a store without a read replica.
    pub fn replica_stats(&self) -> Option<ReplicaStats> {
        self.replicas.as_ref().map(|r| r.stats())
    }

    /// Runs the load `load` on a replica when one has replayed past the
    /// markers `markers` (record keys whose markers count; `None`: the
    /// store's marker), else on the primary.
    pub(crate) async fn read_db<R, F, Fut>(&self, markers: Option<&[T::Id]>, load: F) -> Result<R>
    where
        F: Fn(Pooled) -> Fut,
        Fut: Future<Output = Result<R>>,
    {
        match (&self.replicas, &self.cache) {
            (Some(replicas), Some(cache)) => {
                let mgr = &cache.manager;
                let global = mgr.global_prefix();
                let marker_keys = || match markers {
                    Some(ids) => ids
                        .iter()
                        .map(|id| keys::record_marker_key(global, &keys::record_key(global, &cache.prefix, id)))
                        .collect(),
                    None => vec![keys::store_marker_key(global, &cache.prefix)],
                };
                replicas.load(mgr, &self.pool, marker_keys, load).await
            }
            _ => load(Pooled::acquire(&self.pool).await?).await,
        }
    }

    /// The write-ahead log position after a commit of this store, when its
    /// writes raise replica markers (see `cache::markers`).
    pub(crate) async fn commit_lsn(&self) -> Option<u64> {
        let cache = self.cache.as_ref()?;
        match &self.pool {
            DbPool::Postgres(pool) if cache.manager.marks_scope(&cache.prefix) => commit_position(pool).await,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_past_a_page_header_is_covered_by_the_page_s_start() {
        let seg = 16 << 20;
        assert!(covers(100, 100, seg));
        assert!(!covers(99, 100, seg));
        assert!(covers(8192, 8192 + 24, seg));
        assert!(!covers(8191, 8192 + 24, seg));
        assert!(!covers(8192, 8192 + 32, seg));
        assert!(covers(3 * seg, 3 * seg + 40, seg));
        assert!(!covers(3 * seg, 3 * seg + 40, 0), "a segment of unknown size: no guess");
        assert!(!covers(8192, 8192 + 40, seg), "a page's header is 24 bytes");
        assert!(covers(u64::MAX - 1, 0, seg));
        assert!(!covers(u64::MAX - 1, u64::MAX, seg));
    }
}
