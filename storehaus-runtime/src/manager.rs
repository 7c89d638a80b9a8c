//! [`CacheManager`]: one per cache server, shared by every store.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::timeout_at;

use crate::backend::{Backend, Invalidated, Invalidation, TagAdd};
use crate::breaker::{Breaker, Transition};
use crate::codec::{self, Entry, ANY_FINGERPRINT};
use crate::config::CacheConfig;
use crate::error::{CacheError, CacheResult};
use crate::flight::Flights;
use crate::hooks::TestHooks;
use crate::key;
use crate::pending::{Pending, Replay};
use crate::stats::{CacheStats, Counters};

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
    pub(crate) backend: Backend,
    pub(crate) counters: Counters,
    breaker: Breaker,
    pending: Pending,
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
        let backend = Backend::open(&config.url, config.pool_size, timeout, &config.tls)?;
        tracing::debug!(url = %config.redacted_url(), prefix = %config.global_prefix, "cache manager created");
        Ok(CacheManager {
            breaker: Breaker::new(config.breaker_threshold, config.breaker_cooldown_ms),
            pending: Pending::new(config.max_pending),
            config,
            backend,
            counters: Counters::default(),
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
        let mut stats = self.counters.snapshot(self.pending.len(), self.breaker.is_open());
        stats.pending_overflows = self.pending.overflows();
        Ok(stats)
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
            .guarded(self.deadline(), "delete_record", || self.backend.delete(&keys))
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
        let counters = [key::generation_key(self.global_prefix(), prefix)];
        let inv = Invalidation {
            counters: &counters,
            ..Invalidation::default()
        };
        let done = self
            .guarded(self.deadline(), "invalidate_queries", || self.backend.invalidate(&inv))
            .await?;
        self.count_resets(&done);
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
        let deadline = self.long_deadline();
        self.flights.detach_matching(&glob);
        let mut removed = 0;
        let mut cursor = 0;
        loop {
            let step = self
                .guarded(deadline, "delete_pattern", || self.backend.scan_step(cursor, &glob))
                .await?;
            removed += step.removed;
            cursor = step.next;
            if cursor == 0 {
                return Ok(removed);
            }
        }
    }

    /// Test hooks (pause points in the read path). Not public API.
    #[doc(hidden)]
    pub fn test_hooks(&self) -> &TestHooks {
        &self.hooks
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
    #[tracing::instrument(skip(self))]
    pub async fn invalidate_tag(&self, tag: &str) -> CacheResult<u64> {
        if tag.is_empty() {
            return Err(CacheError::InvalidInput("tag must not be empty".into()));
        }
        let set = key::tag_key(self.global_prefix(), tag);
        let draining = key::tag_draining_key(&set);
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
            removed += step.removed;
            cursor = step.next;
            if cursor == 0 {
                break;
            }
        }
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

    /// The deadline of a walk over many keys: ten budgets.
    fn long_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.timeout * 10
    }

    /// Counts the generation counters an invalidation had to reset.
    pub(crate) fn count_resets(&self, done: &Invalidated) {
        if done.corrupt > 0 {
            Counters::add(&self.counters.serialization_errors, done.corrupt);
            tracing::warn!(
                counters = done.corrupt,
                "a query generation counter held something else than an integer: replaced by a fresh seed"
            );
        }
        Counters::add(&self.counters.command_errors, done.refused);
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
                if tokio::time::Instant::now()
                    .checked_add(backoff)
                    .is_some_and(|t| t < deadline)
                {
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
        let base = self.config.retry_delay_ms.max(1).saturating_mul(1 << attempt.min(10));
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

    /// Whether cached reads may proceed: nothing waits for replay, or this
    /// read's one replay step (bounded: one batch) delivered the last of it.
    /// Costs one atomic load when nothing is pending.
    pub(crate) async fn ready(&self, deadline: tokio::time::Instant) -> bool {
        if !self.pending.any() {
            return true;
        }
        self.replay_step(deadline).await;
        !self.pending.any()
    }

    /// Delivers one batch of pending work (see [`crate::pending`]) within
    /// `deadline`, unless another task is delivering one.
    async fn replay_step(&self, deadline: tokio::time::Instant) -> Replay {
        let Some(claim) = self.pending.claim() else {
            return Replay::Busy;
        };
        let batch = claim.next_batch();
        if let Some((glob, cursor)) = &batch.scope {
            let stepped = self
                .guarded(deadline, "replay_scope", || self.backend.scan_step(*cursor, glob))
                .await;
            return match stepped {
                Ok(step) => {
                    Counters::add(&self.counters.invalidations, step.removed);
                    claim.scope_step(&batch, step.next)
                }
                Err(_) => {
                    claim.scope_failed(&batch);
                    Replay::Failed
                }
            };
        }
        let inv = Invalidation {
            keys: &batch.keys,
            counters: &batch.counters,
            tags: &batch.tags,
        };
        let Ok(done) = self
            .guarded(deadline, "replay_invalidations", || self.backend.invalidate(&inv))
            .await
        else {
            return Replay::Failed;
        };
        self.count_resets(&done);
        Counters::add(&self.counters.invalidations, batch.keys.len() as u64);
        tracing::info!(
            keys = batch.keys.len(),
            counters = batch.counters.len(),
            "replayed invalidations that failed during a cache outage"
        );
        match claim.delivered(&batch, !done.tags_refused) {
            // Refused tag additions (out of memory) stay; back off.
            Replay::Progress if done.tags_refused => Replay::Failed,
            outcome => outcome,
        }
    }

    /// Invalidates `keys` and bumps `counters` after a committed write, and
    /// records `tags`, in one round trip under one budget: a write's cache
    /// work never takes more than one timeout. Detaches in-flight loads first.
    /// `scope` is the writing store's key space, `{global}:{prefix}:`.
    ///
    /// What cannot reach the cache is remembered: cached reads bypass the
    /// cache until it has been replayed, by the next read or by a background
    /// task. That includes a caller whose future is dropped before the
    /// invalidation answered: the drop remembers it.
    pub(crate) async fn invalidate_committed(
        self: &Arc<Self>,
        scope: &str,
        keys: Vec<String>,
        counters: Vec<String>,
        tags: Vec<TagAdd>,
    ) {
        self.flights.detach(&keys);
        if keys.is_empty() && counters.is_empty() && tags.is_empty() {
            return;
        }
        let mut work = Unfinished {
            manager: self,
            scope,
            keys,
            counters,
            tags,
            done: false,
        };
        let inv = Invalidation {
            keys: &work.keys,
            counters: &work.counters,
            tags: &work.tags,
        };
        let delivered = self
            .guarded(self.deadline(), "invalidate", || self.backend.invalidate(&inv))
            .await;
        work.done = true;
        match delivered {
            Ok(done) => {
                self.count_resets(&done);
                Counters::add(&self.counters.invalidations, work.keys.len() as u64);
                if done.tags_refused {
                    self.remember(scope, Vec::new(), Vec::new(), std::mem::take(&mut work.tags));
                }
            }
            Err(_) => work.remember(),
        }
    }

    /// Remembers invalidations for replay and makes sure a replayer runs.
    fn remember(self: &Arc<Self>, scope: &str, keys: Vec<String>, counters: Vec<String>, tags: Vec<TagAdd>) {
        if !self.pending.remember(scope, keys, counters, tags) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(replay_in_background(Arc::downgrade(self)));
            }
            // Outside a runtime (a drop during shutdown) the next read replays.
            Err(_) => {
                self.pending.replayer_may_stop(true);
            }
        }
    }
}

/// Replays the pending invalidations, batch after batch, with backoff after
/// a failure, so that a process that only writes still cleans up after an
/// outage. Ends when nothing is pending, or when the manager is gone.
async fn replay_in_background(manager: Weak<CacheManager>) {
    let mut pause = Duration::from_millis(50);
    loop {
        let Some(this) = manager.upgrade() else {
            return;
        };
        let outcome = this.replay_step(this.deadline()).await;
        let wait = match outcome {
            Replay::Done if this.pending.replayer_may_stop(false) => return,
            Replay::Done | Replay::Progress => {
                pause = Duration::from_millis(50);
                Duration::ZERO
            }
            Replay::Failed => {
                let wait = pause;
                pause = (pause * 2).min(Duration::from_secs(5));
                wait
            }
            Replay::Busy => Duration::from_millis(5),
        };
        drop(this);
        if wait.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(wait).await;
        }
    }
}

/// An invalidation under way; if its future is dropped before the cache
/// answered, the work is remembered for replay.
struct Unfinished<'a> {
    manager: &'a Arc<CacheManager>,
    scope: &'a str,
    keys: Vec<String>,
    counters: Vec<String>,
    tags: Vec<TagAdd>,
    done: bool,
}

impl Unfinished<'_> {
    fn remember(&mut self) {
        self.manager.remember(
            self.scope,
            std::mem::take(&mut self.keys),
            std::mem::take(&mut self.counters),
            std::mem::take(&mut self.tags),
        );
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.remember();
        }
    }
}

fn into_input(e: CacheError) -> CacheError {
    match e {
        CacheError::InvalidConfig(m) => CacheError::InvalidInput(m),
        other => other,
    }
}
