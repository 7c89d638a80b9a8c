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
//! - `stats`, `codec` (the value format) and `key` (the key grammar).

pub(crate) mod adapt;
pub(crate) mod breaker;
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

use serde::de::DeserializeOwned;
use serde::Serialize;

use self::breaker::Breaker;
use self::codec::{Entry, ANY_FINGERPRINT};
use self::flight::Flights;
use self::near::Near;
use self::pending::Pending;
use self::recent::Recent;
use self::stats::{CacheStats, Counters};
use self::status::Status;
use self::telemetry::ManagerMetrics;
use crate::backend::contact::Contact;
use crate::backend::{Backend, Invalidation, Options};
use crate::config::CacheConfig;
use crate::error::{CacheError, CacheResult};
use crate::keys;

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
    /// [`CacheError::InvalidConfig`], naming the setting and its allowed
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

    /// Stores `value` under `{global}:{prefix}:{id}` for `ttl` seconds.
    /// A store of the same prefix reads it back as a cached record.
    ///
    /// # Errors
    /// [`CacheError::InvalidInput`] for a bad prefix or a TTL outside
    /// 1..=31 536 000; [`CacheError::SerializationError`] when the value
    /// cannot be encoded; connection errors and timeouts as they happen.
    #[tracing::instrument(target = "storehaus", skip(self, value))]
    pub async fn set_record<T: Serialize + ?Sized>(
        &self,
        prefix: &str,
        id: &str,
        value: &T,
        ttl: u64,
    ) -> CacheResult<()> {
        let key = self.manual_key(prefix, id)?;
        if !(1..=MAX_TTL_SECS).contains(&ttl) {
            return Err(CacheError::InvalidInput(format!(
                "ttl must be between 1 and {MAX_TTL_SECS} seconds, got {ttl}"
            )));
        }
        let bytes = codec::encode(ANY_FINGERPRINT, Some(value))?;
        let set = self
            .guarded(self.deadline(), "set_record", || self.backend.set_ex(&key, &bytes, ttl))
            .await;
        self.near_forget(std::slice::from_ref(&key));
        set
    }

    /// Reads `{global}:{prefix}:{id}`. Counts a hit or a miss like a store read.
    ///
    /// # Errors
    /// [`CacheError::SerializationError`] when the entry does not decode as
    /// `T` (it is left in place); [`CacheError::InvalidInput`] for a bad
    /// prefix; connection errors and timeouts as they happen.
    #[tracing::instrument(target = "storehaus", skip(self))]
    pub async fn get_record<T: DeserializeOwned>(&self, prefix: &str, id: &str) -> CacheResult<Option<T>> {
        let key = self.manual_key(prefix, id)?;
        let deadline = self.deadline();
        if !self.ready(deadline).await {
            // An invalidation is still waiting for replay: the entry may be
            // older than a write that has returned.
            self.count(|c| &c.misses);
            return Ok(None);
        }
        let found = self.guarded(deadline, "get_record", || self.backend.get(&key)).await;
        let bytes = match found {
            Ok(Some(bytes)) if !codec::is_lease(&bytes) => bytes,
            Ok(_) => {
                self.count(|c| &c.misses);
                return Ok(None);
            }
            Err(e) => {
                self.count(|c| &c.misses);
                return Err(e);
            }
        };
        match codec::decode::<T>(ANY_FINGERPRINT, &bytes) {
            Ok(Entry::Record(v)) => {
                self.count(|c| &c.hits);
                Ok(Some(v))
            }
            Ok(Entry::Absent) => {
                self.count(|c| &c.hits);
                Ok(None)
            }
            Err(e) => {
                self.count(|c| &c.misses);
                self.count_corrupt(1);
                Err(e)
            }
        }
    }

    /// Removes `{global}:{prefix}:{id}`, and the entries other versions of
    /// the store's record type keep beside it during a rolling deploy
    /// (`docs/FORMAT.md`); `true` when the key itself existed.
    ///
    /// # Errors
    /// [`CacheError::InvalidInput`] for a bad prefix; connection errors and
    /// timeouts as they happen.
    #[tracing::instrument(target = "storehaus", skip(self))]
    pub async fn delete_record(&self, prefix: &str, id: &str) -> CacheResult<bool> {
        let key = self.manual_key(prefix, id)?;
        let mut keys = vec![key];
        self.flights.detach(&keys);
        self.recent
            .record(&keys::store_scope(self.global_prefix(), prefix), &keys, &[]);
        let deadline = self.deadline();
        let sides = self.side_keys(&keys, deadline).await;
        let home = self
            .guarded(deadline, "delete_record", || self.backend.delete(&keys[..1]))
            .await;
        let sides = match sides {
            Ok(sides) if !sides.is_empty() => {
                let deleted = self
                    .guarded(deadline, "delete_record", || self.backend.delete(&sides))
                    .await;
                keys.extend(sides);
                deleted.map(|_| ())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        self.near_forget(&keys);
        let existed = home? > 0;
        sides?;
        Ok(existed)
    }

    /// Invalidates everything cached for the store prefix `prefix`: its
    /// records and its query results. Returns how many records it removed.
    ///
    /// First the query results, in O(1): the prefix's query generation is
    /// bumped (one round trip: a `SET NX` that seeds a missing counter at a
    /// random value, then `INCR`), which makes every cached result
    /// unreachable at once. Then the records: a walk over
    /// `{global}:{prefix}:*` with SCAN and UNLINK in batches (never KEYS;
    /// on a cluster, on every primary), which also removes the prefix's
    /// index entries (`#[cache(index)]`; not counted). The walk costs O(keys in the database), like
    /// [`delete_pattern`](Self::delete_pattern), and runs under ten times the
    /// configured timeout. Records present for the whole walk are removed;
    /// records filled meanwhile were read after the call began. In-flight
    /// loads of the prefix in this process are detached. The removed keys
    /// join the log of recent invalidations, delivered again after a
    /// failover like a write's.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use storehaus::prelude::*;
    /// # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
    /// # #[cache(table = "users")]
    /// # struct User { id: i64, name: String }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let db_pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    /// # sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)").execute(&db_pool).await?;
    /// let cache_manager = Arc::new(CacheManager::new(CacheConfig::new("memory://", 60, "app"))?);
    /// let users = GenericStore::<User>::new(db_pool, None, Some(CacheParams::new(cache_manager.clone())));
    /// users.create(User { id: 1, name: "Ada".into() }, None).await?;
    /// users.get_by_id(&1).await?;
    /// cache_manager.flush_fills().await;
    /// assert_eq!(cache_manager.invalidate_queries("users").await?, 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`CacheError::InvalidInput`] for a bad prefix; connection errors and
    /// timeouts as they happen (after a failed generation bump nothing is
    /// removed; a walk cut short leaves the rest of the records in place).
    #[tracing::instrument(target = "storehaus", skip(self))]
    pub async fn invalidate_queries(&self, prefix: &str) -> CacheResult<u64> {
        keys::validate_prefix("prefix", prefix).map_err(into_input)?;
        let scope = keys::store_scope(self.global_prefix(), prefix);
        let counters = [keys::generation_key(self.global_prefix(), prefix)];
        self.recent.record(&scope, &[], &counters);
        // A change made behind the stores' back: replicas are skipped for
        // the store's lookups and queries for a while.
        let markers = self.markers_for(&counters, None);
        let inv = Invalidation {
            markers: &markers,
            counters: &counters,
            ..Invalidation::default()
        };
        let done = self
            .guarded(self.deadline(), "invalidate_queries", || self.backend.invalidate(&inv))
            .await?;
        self.count_resets(&done);

        // The records: every key of the scope but the query results and
        // the counter (all under `{scope}query:`, unreachable already).
        let glob = format!("{scope}*");
        let results = format!("{scope}query:");
        let hints = format!("{scope}idx:");
        let deadline = self.long_deadline();
        self.flights.detach_matching(&glob);
        let mut removed = 0;
        let mut cursor = 0;
        loop {
            let step = self
                .guarded(deadline, "invalidate_queries", || {
                    self.backend.scan_step(cursor, &glob, Some(&results))
                })
                .await?;
            self.recent.record(&scope, &step.keys, &[]);
            self.near_forget(&step.keys);
            // Index entries (`{scope}idx:`) go too, but are not records.
            let records = step.keys.iter().filter(|k| !k.starts_with(&hints)).count() as u64;
            removed += records.min(step.removed);
            cursor = step.next;
            if cursor == 0 {
                break;
            }
        }
        self.count_n(|c| &c.invalidations, removed);
        Ok(removed)
    }

    /// Removes every key matching the glob `{global}:{pattern}` with SCAN and
    /// UNLINK in batches (never KEYS); returns how many keys it removed. The
    /// pattern is always relative to the global prefix, so `"*"` removes this
    /// application's keys and nothing else. Runs under ten times the
    /// configured timeout.
    ///
    /// # Errors
    /// [`CacheError::InvalidInput`] for an empty pattern; connection errors
    /// and timeouts as they happen.
    #[tracing::instrument(target = "storehaus", skip(self))]
    pub async fn delete_pattern(&self, pattern: &str) -> CacheResult<u64> {
        if pattern.is_empty() {
            return Err(CacheError::InvalidInput("pattern must not be empty".into()));
        }
        let glob = keys::confined_pattern(self.global_prefix(), pattern);
        self.clear_glob(&glob).await
    }

    /// Removes every key matching the absolute glob `glob` (SCAN + UNLINK in
    /// steps, under ten budgets), detaching in-flight loads of those keys.
    pub(crate) async fn clear_glob(&self, glob: &str) -> CacheResult<u64> {
        let cleared = self.walk_glob(glob).await;
        self.near_flush();
        cleared
    }

    async fn walk_glob(&self, glob: &str) -> CacheResult<u64> {
        let deadline = self.long_deadline();
        self.flights.detach_matching(glob);
        let mut removed = 0;
        let mut cursor = 0;
        // Replica markers stay: without one, a reader could fill from a
        // replica behind a write it has not replayed (see `markers`).
        let spare = format!("{}:{}:", self.global_prefix(), keys::MARKER_SEGMENT);
        loop {
            let step = self
                .guarded(deadline, "delete_pattern", || {
                    self.backend.scan_step(cursor, glob, Some(&spare))
                })
                .await?;
            removed += step.removed;
            cursor = step.next;
            if cursor == 0 {
                return Ok(removed);
            }
        }
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

    /// Removes every cached entry written with `tag` (see
    /// [`GenericStore::create`](crate::GenericStore::create) and
    /// [`update`](crate::GenericStore::update)) and returns how many entries it
    /// removed. The tag's set lives at `{global}:__tag:{tag}`, so a tag can
    /// only reach keys inside this manager's global prefix.
    ///
    /// The set is first moved aside (atomically, by a script), so a write
    /// that tags a key while the invalidation runs starts a new set and is
    /// not swept up and lost; then its members are read with SSCAN and
    /// removed with UNLINK in batches (never KEYS), each batch leaving the
    /// set only after its keys are gone. An invalidation cut short (a
    /// timeout, a crash) leaves the rest for the next `invalidate_tag` of
    /// the same tag.
    ///
    /// A tag set lives as long as the longest TTL of the stores that added
    /// to it, counted from its last addition, and then expires: a record
    /// first cached later than that after its last tagged write is no longer
    /// reached by the tag (it expires with its own TTL). Under an
    /// `allkeys-*` eviction policy Redis may evict a tag set before its
    /// members; `invalidate_tag` then removes only the members it still
    /// knows, and the others live until their TTL.
    ///
    /// # Errors
    /// [`CacheError::InvalidInput`] for an empty tag; connection errors and
    /// timeouts as they happen (under ten times the configured timeout).
    #[tracing::instrument(target = "storehaus", skip(self))]
    pub async fn invalidate_tag(&self, tag: &str) -> CacheResult<u64> {
        if tag.is_empty() {
            return Err(CacheError::InvalidInput("tag must not be empty".into()));
        }
        let set = keys::tag_key(self.global_prefix(), tag);
        let draining = keys::tag_draining_key(&set);
        let deadline = self.long_deadline();
        let size = self
            .guarded(deadline, "invalidate_tag", || self.backend.drain_tag(&set, &draining))
            .await?;
        if size == 0 {
            return Ok(0);
        }
        let mut removed = 0;
        let mut cursor = 0;
        // One SSCAN walk: members merged in by a concurrent invalidation of
        // the same tag are walked by that invalidation.
        loop {
            let step = self
                .guarded(deadline, "invalidate_tag", || {
                    self.backend.drain_step(&draining, cursor)
                })
                .await?;
            self.flights.detach(&step.keys);
            self.near_forget(&step.keys);
            self.drop_side_entries(&step.keys, deadline).await;
            removed += step.removed;
            cursor = step.next;
            if cursor == 0 {
                break;
            }
        }
        self.count_n(|c| &c.invalidations, removed);
        Ok(removed)
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

    /// Records how long a store operation took, here and for its store.
    pub(crate) fn record(&self, op: stats::Op, took: Duration) {
        self.latencies.latency(op).record(took);
        stats::with_store(|store| store.latency(op).record(took));
    }

    fn manual_key(&self, prefix: &str, id: &str) -> CacheResult<String> {
        keys::validate_prefix("prefix", prefix).map_err(into_input)?;
        Ok(keys::str_key(self.global_prefix(), prefix, id))
    }
}

fn into_input(e: CacheError) -> CacheError {
    match e {
        CacheError::InvalidConfig(m) => CacheError::InvalidInput(m),
        other => other,
    }
}
