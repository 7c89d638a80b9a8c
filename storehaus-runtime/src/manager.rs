//! [`CacheManager`]: one per cache server, shared by every store.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::timeout_at;

use crate::backend::Backend;
use crate::breaker::{Breaker, Transition};
use crate::codec::{self, Entry, ANY_FINGERPRINT};
use crate::config::CacheConfig;
use crate::error::{CacheError, CacheResult};
use crate::flight::Flights;
use crate::hooks::TestHooks;
use crate::key;
use crate::stats::{CacheStats, Counters};

/// The largest TTL accepted anywhere: one year, in seconds.
pub const MAX_TTL_SECS: u64 = 31_536_000;

/// Invalidations that could not reach the cache yet, each with the epoch of
/// the write that last needed it: a replay only forgets the entries it
/// delivered, never one that a later write added again meanwhile.
#[derive(Debug, Default)]
struct Pending {
    keys: HashMap<String, u64>,
    counters: HashMap<String, u64>,
    epoch: u64,
    replayer_running: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.counters.is_empty()
    }
}

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
    pub(crate) backend: Backend,
    pub(crate) counters: Counters,
    breaker: Breaker,
    pending: Mutex<Pending>,
    has_pending: AtomicBool,
    pub(crate) flights: Flights,
    last_warning_ms: AtomicU64,
    suppressed_warnings: AtomicU64,
    started: Instant,
    timeout: Duration,
    pub(crate) hooks: TestHooks,
}

impl CacheManager {
    /// Validates the configuration and prepares the connections. Nothing is
    /// connected yet: the first cache operation connects, within its budget.
    ///
    /// # Errors
    /// [`CacheError::InvalidConfig`] for a URL that does not parse or has an
    /// unsupported scheme, a pool size of 0, a timeout of 0, a default TTL
    /// outside 1..=31 536 000 s, or a global prefix that is empty, starts with
    /// `__` or holds characters outside `[A-Za-z0-9_.-]`.
    pub fn new(config: CacheConfig) -> CacheResult<Self> {
        key::validate_prefix("global prefix", &config.global_prefix)?;
        if config.pool_size == 0 || config.pool_size > 1024 {
            return Err(CacheError::InvalidConfig(format!(
                "pool size must be between 1 and 1024, got {}",
                config.pool_size
            )));
        }
        if !(1..=86_400_000).contains(&config.lease_ms) {
            return Err(CacheError::InvalidConfig(format!(
                "lease TTL must be between 1 ms and one day, got {} ms",
                config.lease_ms
            )));
        }
        if config.lease_wait_ms > 86_400_000 {
            return Err(CacheError::InvalidConfig(format!(
                "lease wait must be at most one day, got {} ms",
                config.lease_wait_ms
            )));
        }
        if config.timeout_ms == 0 {
            return Err(CacheError::InvalidConfig("timeout must be at least 1 ms".into()));
        }
        if !(1..=MAX_TTL_SECS).contains(&config.default_ttl) {
            return Err(CacheError::InvalidConfig(format!(
                "default TTL must be between 1 and {MAX_TTL_SECS} seconds, got {}",
                config.default_ttl
            )));
        }
        let timeout = Duration::from_millis(config.timeout_ms);
        let backend = Backend::open(&config.url, config.pool_size, timeout, &config.tls)?;
        tracing::debug!(url = %config.redacted_url(), prefix = %config.global_prefix, "cache manager created");
        Ok(CacheManager {
            breaker: Breaker::new(config.breaker_threshold, config.breaker_cooldown_ms),
            config,
            backend,
            counters: Counters::default(),
            pending: Mutex::new(Pending::default()),
            has_pending: AtomicBool::new(false),
            flights: Flights::default(),
            last_warning_ms: AtomicU64::new(0),
            suppressed_warnings: AtomicU64::new(0),
            started: Instant::now(),
            timeout,
            hooks: TestHooks::default(),
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

    /// A snapshot of the counters. `hit_rate()` on it is a fraction 0.0..=1.0.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for backends that keep stats remotely.
    pub async fn get_stats(&self) -> CacheResult<CacheStats> {
        let pending = self
            .pending
            .lock()
            .map(|p| (p.keys.len() + p.counters.len()) as u64)
            .unwrap_or(0);
        Ok(self.counters.snapshot(pending, self.breaker.is_open()))
    }

    /// Pings the cache within the configured timeout.
    ///
    /// # Errors
    /// [`CacheError::CircuitOpen`] while the breaker is open (and no probe is
    /// due), [`CacheError::ConnectionError`] or [`CacheError::Timeout`] when
    /// the server cannot be reached in time.
    #[tracing::instrument(skip(self))]
    pub async fn health_check(&self) -> CacheResult<()> {
        self.guarded(self.deadline(), "ping", || self.backend.ping()).await
    }

    /// Stores `value` under `{global}:{prefix}:{id}` for `ttl` seconds.
    /// A store of the same prefix reads it back as a cached record.
    ///
    /// # Errors
    /// [`CacheError::InvalidInput`] for a bad prefix or a TTL outside
    /// 1..=31 536 000; [`CacheError::SerializationError`] when the value
    /// cannot be encoded; connection errors and timeouts as they happen.
    #[tracing::instrument(skip(self, value))]
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
        self.guarded(self.deadline(), "set_record", || self.backend.set_ex(&key, &bytes, ttl))
            .await
    }

    /// Reads `{global}:{prefix}:{id}`. Counts a hit or a miss like a store read.
    ///
    /// # Errors
    /// [`CacheError::SerializationError`] when the entry does not decode as
    /// `T` (it is left in place); [`CacheError::InvalidInput`] for a bad
    /// prefix; connection errors and timeouts as they happen.
    #[tracing::instrument(skip(self))]
    pub async fn get_record<T: DeserializeOwned>(&self, prefix: &str, id: &str) -> CacheResult<Option<T>> {
        let key = self.manual_key(prefix, id)?;
        let deadline = self.deadline();
        if !self.ready(deadline).await {
            // An invalidation is still waiting for replay: the entry may be
            // older than a write that has returned.
            Counters::bump(&self.counters.misses);
            return Ok(None);
        }
        let found = self.guarded(deadline, "get_record", || self.backend.get(&key)).await;
        let bytes = match found {
            Ok(Some(bytes)) if !codec::is_lease(&bytes) => bytes,
            Ok(_) => {
                Counters::bump(&self.counters.misses);
                return Ok(None);
            }
            Err(e) => {
                Counters::bump(&self.counters.misses);
                return Err(e);
            }
        };
        match codec::decode::<T>(ANY_FINGERPRINT, &bytes) {
            Ok(Entry::Record(v)) => {
                Counters::bump(&self.counters.hits);
                Ok(Some(v))
            }
            Ok(Entry::Absent) => {
                Counters::bump(&self.counters.hits);
                Ok(None)
            }
            Err(e) => {
                Counters::bump(&self.counters.misses);
                Counters::bump(&self.counters.serialization_errors);
                Err(e)
            }
        }
    }

    /// Removes `{global}:{prefix}:{id}`; `true` when a key existed.
    ///
    /// # Errors
    /// [`CacheError::InvalidInput`] for a bad prefix; connection errors and
    /// timeouts as they happen.
    #[tracing::instrument(skip(self))]
    pub async fn delete_record(&self, prefix: &str, id: &str) -> CacheResult<bool> {
        let key = self.manual_key(prefix, id)?;
        let keys = [key];
        self.flights.detach(&keys);
        let n = self
            .guarded(self.deadline(), "delete_record", || self.backend.invalidate(&keys, &[]))
            .await?;
        Ok(n > 0)
    }

    /// Makes every cached query result of `prefix` unreachable in O(1): bumps
    /// the prefix's query generation (one round trip: a `SET NX` that seeds
    /// a missing counter at a random value, then `INCR`; no scan).
    ///
    /// # Errors
    /// [`CacheError::InvalidInput`] for a bad prefix; connection errors and
    /// timeouts as they happen.
    #[tracing::instrument(skip(self))]
    pub async fn invalidate_queries(&self, prefix: &str) -> CacheResult<()> {
        key::validate_prefix("prefix", prefix).map_err(into_input)?;
        let gen = key::generation_key(self.global_prefix(), prefix);
        self.guarded(self.deadline(), "invalidate_queries", || self.backend.incr(&gen))
            .await?;
        Ok(())
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
    #[tracing::instrument(skip(self))]
    pub async fn delete_pattern(&self, pattern: &str) -> CacheResult<u64> {
        if pattern.is_empty() {
            return Err(CacheError::InvalidInput("pattern must not be empty".into()));
        }
        let glob = key::confined_pattern(self.global_prefix(), pattern);
        let deadline = tokio::time::Instant::now() + self.timeout * 10;
        self.guarded(deadline, "delete_pattern", || self.backend.scan_unlink(&glob))
            .await
    }

    /// Test hooks (pause points in the read path). Not public API.
    #[doc(hidden)]
    pub fn test_hooks(&self) -> &TestHooks {
        &self.hooks
    }

    /// Removes every cached entry written with `tag` (see
    /// [`GenericStore::create`](crate::GenericStore::create) and
    /// [`update`](crate::GenericStore::update)) and returns how many entries it
    /// removed. The tag's set lives at `{global}:__tag:{tag}`; its members are
    /// read with SSCAN and removed with UNLINK in batches (never KEYS), so a
    /// tag can only reach keys inside this manager's global prefix.
    ///
    /// # Errors
    /// [`CacheError::InvalidInput`] for an empty tag; connection errors and
    /// timeouts as they happen (under ten times the configured timeout).
    #[tracing::instrument(skip(self))]
    pub async fn invalidate_tag(&self, tag: &str) -> CacheResult<u64> {
        if tag.is_empty() {
            return Err(CacheError::InvalidInput("tag must not be empty".into()));
        }
        let set = key::tag_key(self.global_prefix(), tag);
        let deadline = tokio::time::Instant::now() + self.timeout * 10;
        let removed = self
            .guarded(deadline, "invalidate_tag", || self.backend.unlink_set_members(&set))
            .await?;
        Counters::add(&self.counters.invalidations, removed);
        Ok(removed)
    }

    fn manual_key(&self, prefix: &str, id: &str) -> CacheResult<String> {
        key::validate_prefix("prefix", prefix).map_err(into_input)?;
        Ok(key::str_key(self.global_prefix(), prefix, id))
    }

    // ----- crate-internal machinery used by the stores -----

    /// The deadline of one operation's cache budget.
    pub(crate) fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.timeout
    }

    pub(crate) fn lease_ms(&self) -> u64 {
        self.config.lease_ms
    }

    pub(crate) fn lease_wait(&self) -> Duration {
        Duration::from_millis(self.config.lease_wait_ms)
    }

    /// Runs one cache primitive through the breaker, with retries of
    /// connection-level failures (jittered exponential backoff), all inside
    /// `deadline`. Counts and logs failures.
    pub(crate) async fn guarded<R, F, Fut>(
        &self,
        deadline: tokio::time::Instant,
        op: &'static str,
        call: F,
    ) -> CacheResult<R>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = CacheResult<R>>,
    {
        if tokio::time::Instant::now() >= deadline {
            // The budget went to earlier steps of this operation: the cache
            // is not at fault, so neither the breaker nor the stats hear of it.
            return Err(CacheError::Timeout {
                budget_ms: self.config.timeout_ms,
            });
        }
        let probe = match self.breaker.allow() {
            Ok(probe) => probe,
            Err(open) => {
                Counters::bump(&self.counters.breaker_skips);
                return Err(CacheError::CircuitOpen {
                    failures: open.failures,
                    retry_in_ms: open.retry_in_ms,
                });
            }
        };
        let mut attempt = 0u32;
        loop {
            let err = match timeout_at(deadline, call()).await {
                Ok(Ok(v)) => {
                    if self.breaker.success() == Transition::Closed {
                        tracing::info!("cache reachable again: circuit breaker closed");
                    }
                    return Ok(v);
                }
                Ok(Err(e @ (CacheError::ConnectionError(_) | CacheError::AuthenticationFailed(_)))) => {
                    Counters::bump(&self.counters.connection_errors);
                    e
                }
                Ok(Err(e)) => {
                    // The server answered: it is alive, the command was refused.
                    Counters::bump(&self.counters.command_errors);
                    self.breaker.success();
                    self.warn(op, &e);
                    return Err(e);
                }
                Err(_elapsed) => {
                    Counters::bump(&self.counters.timeouts);
                    CacheError::Timeout {
                        budget_ms: self.config.timeout_ms,
                    }
                }
            };
            if matches!(err, CacheError::ConnectionError(_)) && attempt < self.config.retry_attempts {
                let backoff = self.backoff(attempt);
                if tokio::time::Instant::now() + backoff < deadline {
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                    continue;
                }
            }
            if self.breaker.failure(probe) == Transition::Opened {
                Counters::bump(&self.counters.breaker_opened);
                tracing::warn!(error = %err, "cache unavailable: circuit breaker opened; store operations go straight to the database");
            }
            self.warn(op, &err);
            return Err(err);
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.config.retry_delay_ms.max(1) << attempt.min(10);
        // Full jitter between half and all of the exponential delay.
        let jittered = base / 2 + rand::random_range(0..=base / 2);
        Duration::from_millis(jittered)
    }

    /// Logs a cache failure at WARN at most once every 5 s (with a count of
    /// the suppressed ones), at DEBUG otherwise.
    pub(crate) fn warn(&self, op: &str, err: &CacheError) {
        let now = self.started.elapsed().as_millis() as u64 + 5_001;
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if now >= last + 5_000
            && self
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed_warnings.swap(0, Ordering::Relaxed);
            tracing::warn!(op, error = %err, suppressed, "cache operation failed; falling back to the database");
        } else {
            self.suppressed_warnings.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(op, error = %err, "cache operation failed");
        }
    }

    /// Whether cached reads may proceed: no invalidation is waiting for
    /// replay, or the replay succeeded now.
    pub(crate) async fn ready(&self, deadline: tokio::time::Instant) -> bool {
        if !self.has_pending.load(Ordering::Acquire) {
            return true;
        }
        self.replay(deadline).await
    }

    async fn replay(&self, deadline: tokio::time::Instant) -> bool {
        type Snapshot = (Vec<(String, u64)>, Vec<(String, u64)>);
        let (keys, counters): Snapshot = match self.pending.lock() {
            Ok(p) => (
                p.keys.iter().map(|(k, e)| (k.clone(), *e)).collect(),
                p.counters.iter().map(|(k, e)| (k.clone(), *e)).collect(),
            ),
            Err(_) => return false,
        };
        if keys.is_empty() && counters.is_empty() {
            return true;
        }
        let key_names: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
        let counter_names: Vec<String> = counters.iter().map(|(k, _)| k.clone()).collect();
        let replayed = self
            .guarded(deadline, "replay_invalidations", || {
                self.backend.invalidate(&key_names, &counter_names)
            })
            .await;
        if replayed.is_err() {
            return false;
        }
        let Ok(mut p) = self.pending.lock() else {
            return false;
        };
        for (k, epoch) in &keys {
            if p.keys.get(k) == Some(epoch) {
                p.keys.remove(k);
            }
        }
        for (c, epoch) in &counters {
            if p.counters.get(c) == Some(epoch) {
                p.counters.remove(c);
            }
        }
        let done = p.is_empty();
        if done {
            self.has_pending.store(false, Ordering::Release);
        }
        drop(p);
        Counters::add(&self.counters.invalidations, keys.len() as u64);
        tracing::info!(
            keys = keys.len(),
            "replayed invalidations that failed during a cache outage"
        );
        done
    }

    /// Invalidates `keys` and bumps `counters` after a committed write, in
    /// one round trip, then records `tagged` (tag set, member keys) under the
    /// same budget: a write's cache work never takes more than one timeout.
    /// Detaches in-flight loads first.
    ///
    /// What cannot reach the cache is remembered: cached reads bypass the
    /// cache until it has been replayed, by the next read or by a background
    /// task. That includes a caller whose future is dropped after the commit
    /// but before the invalidation answered: the drop remembers it.
    pub(crate) async fn invalidate_committed(
        self: &Arc<Self>,
        keys: Vec<String>,
        counters: Vec<String>,
        tagged: Vec<(String, Vec<String>)>,
    ) {
        self.flights.detach(&keys);
        if keys.is_empty() && counters.is_empty() {
            return;
        }
        let mut work = Unfinished {
            manager: self,
            keys,
            counters,
            done: false,
        };
        let deadline = self.deadline();
        let delivered = self
            .guarded(deadline, "invalidate", || {
                self.backend.invalidate(&work.keys, &work.counters)
            })
            .await;
        work.done = true;
        match delivered {
            Ok(_) => Counters::add(&self.counters.invalidations, work.keys.len() as u64),
            Err(_) => self.remember(std::mem::take(&mut work.keys), std::mem::take(&mut work.counters)),
        }
        if !tagged.is_empty() {
            let _ = self
                .guarded(deadline, "tag", || self.backend.add_to_sets(&tagged))
                .await;
        }
    }

    /// Remembers invalidations for replay and makes sure a replayer runs.
    fn remember(self: &Arc<Self>, keys: Vec<String>, counters: Vec<String>) {
        let Ok(mut p) = self.pending.lock() else {
            return;
        };
        p.epoch += 1;
        let epoch = p.epoch;
        p.keys.extend(keys.into_iter().map(|k| (k, epoch)));
        p.counters.extend(counters.into_iter().map(|c| (c, epoch)));
        self.has_pending.store(true, Ordering::Release);
        // Outside a runtime (a drop during shutdown) the next read replays.
        if !p.replayer_running {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                p.replayer_running = true;
                runtime.spawn(Arc::clone(self).replay_in_background());
            }
        }
    }

    /// Retries the pending invalidations with backoff until they are all
    /// delivered, so that a process that only writes still cleans up after
    /// an outage. Ends when nothing is pending, or when it holds the last
    /// reference to the manager.
    async fn replay_in_background(self: Arc<Self>) {
        let mut pause = Duration::from_millis(50);
        loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
            let alone = Arc::strong_count(&self) == 1;
            if !alone {
                self.replay(self.deadline()).await;
            }
            if let Ok(mut p) = self.pending.lock() {
                if p.is_empty() || alone {
                    p.replayer_running = false;
                    return;
                }
            }
        }
    }
}

/// An invalidation under way; if its future is dropped before the cache
/// answered, the keys are remembered for replay.
struct Unfinished<'a> {
    manager: &'a Arc<CacheManager>,
    keys: Vec<String>,
    counters: Vec<String>,
    done: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.manager
                .remember(std::mem::take(&mut self.keys), std::mem::take(&mut self.counters));
        }
    }
}

fn into_input(e: CacheError) -> CacheError {
    match e {
        CacheError::InvalidConfig(m) => CacheError::InvalidInput(m),
        other => other,
    }
}
