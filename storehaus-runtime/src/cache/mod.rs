//! [`CacheManager`]: one per cache server, shared by every store, and the
//! read-through protocol it runs for them.
//!
//! - `read` (one key) and `read_many` (`get_many`) read through the cache
//!   behind fill leases; `query` reads cached query results against the
//!   store's generation; `fill` is the one background fill they share;
//!   `early` decides when a hit refreshes its entry before it expires;
//!   `flight` is the in-process single-flight table;
//! - `guard` runs every cache command inside one operation's budget, with
//!   retries and the circuit breaker (`breaker`);
//! - `invalidate` delivers a committed write's invalidation, and `pending` +
//!   `replay` keep and deliver what could not reach the cache; `recent`
//!   keeps what did reach it, to deliver it again after a failover or a
//!   restart that may have lost it;
//! - `manual` is the manual API and the bulk invalidations (one walk over
//!   the key space); `gate` is what the reads know of the workers that
//!   deliver external writes (the outbox's, the write-ahead log's);
//! - `stats` and `codec` (the value format); the key grammar is
//!   `crate::keys`, below every layer.

pub(crate) mod adapt;
pub(crate) mod breaker;
mod clock;
pub mod codec;
pub(crate) mod controls;
pub(crate) mod early;
pub(crate) mod fill;
pub(crate) mod flight;
pub(crate) mod gate;
mod guard;
#[cfg(feature = "test-hooks")]
pub mod hooks;
mod invalidate;
mod manual;
pub(crate) mod markers;
// Fed by Redis client tracking: without the `redis` feature it is never
// built (its tracking half is not compiled).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) mod near;
pub(crate) mod pending;
pub(crate) mod query;
pub(crate) mod read;
pub(crate) mod read_many;
pub(crate) mod recent;
mod replay;
pub(crate) mod server;
pub(crate) mod stats;
mod status;
pub(crate) mod telemetry;
pub(crate) mod versions;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::breaker::Breaker;
use self::flight::Flights;
use self::near::Near;
use self::pending::Pending;
use self::recent::Recent;
use self::stats::{CacheStats, Counters};
use self::status::Status;
use self::telemetry::ManagerMetrics;
use crate::backend::contact::Contact;
use crate::backend::{Backend, Options};
use crate::config::CacheConfig;
use crate::error::CacheResult;

pub(crate) use self::invalidate::Change;

/// The largest TTL accepted anywhere: one year, in seconds. Defined in
/// `storehaus-limits`, which `#[derive(Cached)]` checks `ttl = N` against too.
pub use storehaus_limits::MAX_TTL_SECS;

/// Talks to the cache for every store built on it: holds the connections,
/// the counters, the circuit breaker, the in-process single-flight table and
/// the invalidations still to be replayed.
///
/// Build one per cache server and share it in an `Arc`:
///
/// ```no_run
/// use std::sync::Arc;
/// use storehaus_runtime::{CacheConfig, CacheManager};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = CacheConfig::new("redis://127.0.0.1:6379", 3600, "myapp");
/// let cache_manager = Arc::new(CacheManager::new(config)?);
/// cache_manager.health_check().await?;
/// let stats = cache_manager.get_stats().await?;
/// println!("hit rate {:.1}%", stats.hit_rate() * 100.0);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct CacheManager {
    config: CacheConfig,
    backend: Backend,
    counters: Counters,
    /// The same events, for a `metrics` recorder.
    metrics: ManagerMetrics,
    /// Latencies of the stores' operations on this manager.
    latencies: stats::Figures,
    breaker: Breaker,
    /// Whether the server answers, and why not (logged once per change).
    status: Status,
    pending: Pending,
    /// Acknowledged invalidations, delivered again when `contact` moves.
    recent: Recent,
    /// Moves when the server's data may have been replaced by an older copy.
    contact: Arc<Contact>,
    flights: Flights,
    /// The near cache (`CacheConfig::with_near_cache`), on Redis only.
    near: Option<Arc<Near>>,
    /// The background fills under way (see `flush_fills`).
    fill_epochs: fill::FillEpochs,
    /// The live-version registries as last read (see `versions`).
    known_versions: versions::Known,
    /// Keys an early refresh of this process is loading.
    refreshing: std::sync::Mutex<std::collections::HashSet<String>>,
    watchers: gate::Watchers,
    /// The stores read from database replicas (see `markers`).
    replica_scopes: markers::ReplicaScopes,
    last_warning_ms: AtomicU64,
    suppressed_warnings: AtomicU64,
    /// `evicted_keys` at the previous health check (`u64::MAX`: none yet).
    last_evicted: AtomicU64,
    started: Instant,
    timeout: Duration,
    #[cfg(feature = "test-hooks")]
    hooks: hooks::TestHooks,
}

impl CacheManager {
    /// Validates the configuration and prepares the connections. Nothing is
    /// connected yet: the first cache operation connects, within its budget.
    ///
    /// # Errors
    /// [`CacheError::InvalidConfig`](crate::CacheError::InvalidConfig), naming the setting and its allowed
    /// range, for a URL that does not parse or has an unsupported scheme, a
    /// global prefix that is empty, starts with `__` or holds characters
    /// outside `[A-Za-z0-9_.-]`, a pool size outside 1..=1024, a default TTL
    /// outside 1..=31 536 000 s, a timeout, lease TTL, lease wait, retry
    /// delay or breaker cool-down longer than one day (timeout and lease TTL
    /// at least 1 ms), more than 100 retry attempts, a breaker threshold of
    /// 0, or a pending-invalidation bound of 0 or above 100 000 000.
    pub fn new(config: CacheConfig) -> CacheResult<Self> {
        config.validate()?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let options = Options {
            pool_size: config.pool_size,
            timeout,
            tls: config.tls.clone(),
            cluster_nodes: config.cluster_nodes.clone(),
            wait_replicas: config.wait_replicas,
        };
        let contact = Arc::new(Contact::default());
        let backend = Backend::open(&config.url, &options, contact.clone())?;
        let in_process = backend.is_in_process();
        let watchers = gate::Watchers::new(gate::Deployment {
            // An in-process cache is its own deployment: two of them with
            // one name must each get every entry.
            name: if in_process {
                format!("{}~{:016x}", config.deployment(), rand::random::<u64>())
            } else {
                config.deployment().to_string()
            },
            ephemeral: in_process,
            expiry: Duration::from_millis(config.deployment_expiry_ms),
        });
        let near = match (config.near_max, backend.tracks()) {
            (Some(max), true) => Some(Arc::new(Near::new(max))),
            (Some(_), false) => {
                tracing::info!(target: "storehaus", "the near cache is for Redis: off on memory://");
                None
            }
            _ => None,
        };
        tracing::debug!(target: "storehaus", url = %config.redacted_url(), prefix = %config.global_prefix, "cache manager created");
        Ok(CacheManager {
            breaker: Breaker::new(config.breaker_threshold, config.breaker_cooldown_ms),
            status: Status::new(config.redacted_url().to_string()),
            pending: Pending::new(config.max_pending),
            recent: Recent::new(Duration::from_secs(config.recent_window_secs), config.max_pending),
            contact,
            metrics: ManagerMetrics::new(&config.global_prefix),
            config,
            backend,
            counters: Counters::default(),
            latencies: Default::default(),
            flights: Flights::default(),
            near,
            fill_epochs: Default::default(),
            known_versions: Default::default(),
            refreshing: Default::default(),
            watchers,
            replica_scopes: Default::default(),
            last_warning_ms: AtomicU64::new(0),
            suppressed_warnings: AtomicU64::new(0),
            last_evicted: AtomicU64::new(u64::MAX),
            started: Instant::now(),
            timeout,
            #[cfg(feature = "test-hooks")]
            hooks: hooks::TestHooks::default(),
        })
    }

    /// The configuration this manager was built with.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The global key prefix.
    pub fn global_prefix(&self) -> &str {
        &self.config.global_prefix
    }

    /// This manager's name as a cache deployment in the database's outbox
    /// ([`GenericStore::watch_external_writes`](crate::GenericStore::watch_external_writes)):
    /// the configured one ([`CacheConfig::with_deployment`], default the
    /// global prefix), or for an in-process cache (`memory://`, which no
    /// other process shares) that name followed by `~` and an id of this
    /// manager.
    pub fn deployment(&self) -> &str {
        &self.watchers.deployment.name
    }

    /// The read gate's view of the workers that deliver external writes to
    /// this manager (the outbox's, the write-ahead log's); they register
    /// and report through it.
    pub(crate) fn watchers(&self) -> &gate::Watchers {
        &self.watchers
    }

    /// A snapshot of the counters. `hit_rate()` on it is a fraction 0.0..=1.0.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for backends that keep stats remotely.
    pub async fn get_stats(&self) -> CacheResult<CacheStats> {
        let mut stats = self.counters.snapshot(self.pending.len(), self.breaker.is_open());
        stats.hit_latency = self.latencies.hit.summary();
        stats.miss_latency = self.latencies.miss.summary();
        stats.write_latency = self.latencies.write.summary();
        stats.pending_overflows = self.pending.overflows() + self.recent.overflows();
        stats.recent_replays = self.recent.handovers();
        if let Some(near) = &self.near {
            let c = &near.counters;
            let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
            stats.near_hits = load(&c.hits);
            stats.near_misses = load(&c.misses);
            stats.near_invalidations = load(&c.invalidations);
            stats.near_flushes = load(&c.flushes);
        }
        (stats.outbox_backlog, stats.outbox_lag_ms, stats.outbox_delivered) = self.watchers.figures();
        Ok(stats)
    }

    /// Test hooks: pause points in the read path (feature `test-hooks`,
    /// for tests only).
    #[cfg(feature = "test-hooks")]
    pub fn test_hooks(&self) -> &hooks::TestHooks {
        &self.hooks
    }

    /// Whether the near cache would serve `key` now, and whether it is live
    /// (feature `test-hooks`, for tests only).
    #[cfg(feature = "test-hooks")]
    pub fn near_state(&self, key: &str) -> (bool, bool) {
        self.near
            .as_ref()
            .map_or((false, false), |n| (n.holds(key), n.is_live()))
    }

    /// The near cache, when configured; starts its tracking connection on
    /// first use (it needs a tokio runtime).
    pub(crate) fn near(&self) -> Option<&Arc<Near>> {
        let near = self.near.as_ref()?;
        // Without the `redis` feature there is no near cache to start.
        #[cfg(feature = "redis")]
        if !near.started.load(std::sync::atomic::Ordering::Relaxed) {
            self.start_tracking(near);
        }
        Some(near)
    }

    #[cold]
    #[cfg(feature = "redis")]
    fn start_tracking(&self, near: &Arc<Near>) {
        let (Ok(_), Some(source)) = (tokio::runtime::Handle::try_current(), self.backend.tracking_source()) else {
            return;
        };
        if near.started.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let prefix = format!("{}:", self.global_prefix());
        let listener: Arc<dyn crate::backend::listener::KeyListener> = near.clone();
        crate::backend::tracking::spawn(source, prefix, &listener, self.timeout);
    }

    /// `keys` changed (this process's write reached Redis, or may have):
    /// nothing read before now is served for them from the near cache.
    pub(crate) fn near_forget(&self, keys: &[String]) {
        if let Some(near) = &self.near {
            for key in keys {
                near.invalidate(key);
            }
        }
    }

    /// Many keys changed: the near cache serves nothing read before now.
    pub(crate) fn near_flush(&self) {
        if let Some(near) = &self.near {
            near.flush();
        }
    }

    /// A store's own figures as [`CacheStats`]: its counters and
    /// latencies; the pending invalidations and the breaker are this
    /// manager's (shared by its stores).
    pub(crate) fn store_stats(&self, figures: &stats::Figures) -> CacheStats {
        figures.snapshot(self.pending.len(), self.breaker.is_open())
    }

    /// Bumps a counter of this manager, and of the store whose operation
    /// the task runs.
    #[inline]
    pub(crate) fn count(&self, field: impl Fn(&Counters) -> &AtomicU64) {
        self.count_n(field, 1);
    }

    /// Adds `n` to a counter of this manager and of the task's store.
    #[inline]
    pub(crate) fn count_n(&self, field: impl Fn(&Counters) -> &AtomicU64, n: u64) {
        Counters::add(field(&self.counters), n);
        stats::with_store(|store| Counters::add(field(&store.counters), n));
    }

    /// Bumps a counter of this manager and of `store` (outside the
    /// store's scope).
    #[inline]
    pub(crate) fn count_in(&self, store: &stats::Figures, field: impl Fn(&Counters) -> &AtomicU64) {
        Counters::add(field(&self.counters), 1);
        Counters::add(field(&store.counters), 1);
    }

    /// Records how long an operation of the store whose figures are
    /// `store` took, here and for the store: the one measurement of the
    /// operation, which its metrics get too.
    pub(crate) fn record(&self, op: stats::Op, took: Duration, store: &stats::Figures) {
        self.latencies.latency(op).record(took);
        store.latency(op).record(took);
    }
}
