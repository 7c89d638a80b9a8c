//! [`CacheConfig`]: where the cache lives and how patient to be with it.

use std::fmt;
use std::time::Duration;

use crate::error::{CacheError, CacheResult};

mod durations;
mod redact;

pub(crate) use redact::redact_url;
#[cfg(feature = "redis")]
pub(crate) use redact::url_error;

/// Global cache settings, shared by every store of one
/// [`CacheManager`](crate::CacheManager).
///
/// ```
/// use storehaus_runtime::CacheConfig;
///
/// let config = CacheConfig::new("redis://127.0.0.1:6379", 3600, "myapp")
///     .with_pool_size(10)     // connections
///     .with_timeout(2000)     // ms, the cache's budget per store operation
///     .with_retry_attempts(3) // extra tries on connection errors
///     .with_retry_delay(100); // ms, base of a jittered exponential backoff
/// assert_eq!(config.timeout().as_millis(), 2000);
/// ```
///
/// Nothing is validated or connected here: [`CacheManager::new`](crate::CacheManager::new)
/// validates. `Debug` never shows the password of the URL.
#[derive(Clone)]
pub struct CacheConfig {
    pub(crate) url: String,
    pub(crate) default_ttl: u64,
    pub(crate) global_prefix: String,
    pub(crate) pool_size: usize,
    pub(crate) timeout_ms: u64,
    pub(crate) retry_attempts: u32,
    pub(crate) retry_delay_ms: u64,
    pub(crate) lease_ms: u64,
    pub(crate) lease_wait_ms: u64,
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_cooldown_ms: u64,
    pub(crate) tls: TlsCerts,
    pub(crate) single_command_reads: bool,
    pub(crate) max_pending: usize,
    pub(crate) deployment: Option<String>,
    pub(crate) outbox_poll_ms: u64,
    pub(crate) deployment_expiry_ms: u64,
    pub(crate) cluster_nodes: Vec<String>,
    pub(crate) recent_window_secs: u64,
    pub(crate) wait_replicas: Option<(u32, u64)>,
    pub(crate) near_max: Option<u64>,
}

/// Certificates for `rediss://` beyond the system's trust store.
#[derive(Clone, Default)]
pub(crate) struct TlsCerts {
    /// A PEM root certificate to trust instead of the system's.
    pub root: Option<Vec<u8>>,
    /// A PEM client certificate and its PEM key, for mutual TLS.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsCerts {
    pub fn is_set(&self) -> bool {
        self.root.is_some() || self.client.is_some()
    }
}

impl CacheConfig {
    /// Default number of connections.
    pub const DEFAULT_POOL_SIZE: usize = 10;
    /// Default budget of the cache's share of one store operation, in ms.
    pub const DEFAULT_TIMEOUT_MS: u64 = 500;
    /// Default extra tries after a connection-level failure.
    pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
    /// Default base delay of the retry backoff, in ms.
    pub const DEFAULT_RETRY_DELAY_MS: u64 = 50;
    /// Default window of the log of recent invalidations, in seconds (see
    /// [`with_recent_invalidations`](Self::with_recent_invalidations)).
    pub const DEFAULT_RECENT_INVALIDATIONS_SECS: u64 = 60;
    /// Default number of invalidated keys remembered one by one during an
    /// outage (see [`with_max_pending_invalidations`](Self::with_max_pending_invalidations)).
    pub const DEFAULT_MAX_PENDING_INVALIDATIONS: usize = 100_000;
    /// Default interval at which the outbox worker polls, in ms.
    pub const DEFAULT_OUTBOX_POLL_MS: u64 = 1_000;
    /// Default time after which a deployment that stopped renewing its
    /// outbox position expires, in ms (10 minutes).
    pub const DEFAULT_DEPLOYMENT_EXPIRY_MS: u64 = 600_000;

    /// A configuration with the URL (`redis://`, `rediss://`,
    /// `redis+sentinel://` or `memory://`), the default TTL in seconds and
    /// the global key prefix. A `redis://` URL may name one node of a Redis
    /// Cluster: the first connect finds out (see
    /// [`with_cluster_nodes`](Self::with_cluster_nodes)).
    /// `redis+sentinel://host:26379,host:26380/mymaster` reaches the primary
    /// that Sentinel names for `mymaster`, asked again on every reconnect.
    ///
    /// Credentials go in the URL: `redis://:password@host:6379` for
    /// `requirepass`, `redis://user:password@host:6379` for an ACL user
    /// (percent-encode `@`, `:` and `/` in the password). They are never
    /// shown: `Debug`, errors and logs carry [`redacted_url`](Self::redacted_url).
    ///
    /// `rediss://` (TLS, cargo feature `tls`: rustls with the ring provider)
    /// verifies the server's certificate against the system's roots; point
    /// `SSL_CERT_FILE` at a private CA's PEM file, or give it to
    /// [`with_tls_root_cert`](Self::with_tls_root_cert), to trust it.
    /// Verification cannot be turned off: a URL with redis-rs's `#insecure`
    /// flag is refused by [`CacheManager::new`](crate::CacheManager::new).
    pub fn new(url: impl Into<String>, default_ttl: u64, global_prefix: impl Into<String>) -> Self {
        CacheConfig {
            url: url.into(),
            default_ttl,
            global_prefix: global_prefix.into(),
            pool_size: Self::DEFAULT_POOL_SIZE,
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
            retry_attempts: Self::DEFAULT_RETRY_ATTEMPTS,
            retry_delay_ms: Self::DEFAULT_RETRY_DELAY_MS,
            lease_ms: 2_000,
            lease_wait_ms: 200,
            breaker_threshold: 5,
            breaker_cooldown_ms: 1_000,
            tls: TlsCerts::default(),
            single_command_reads: false,
            max_pending: Self::DEFAULT_MAX_PENDING_INVALIDATIONS,
            deployment: None,
            outbox_poll_ms: Self::DEFAULT_OUTBOX_POLL_MS,
            deployment_expiry_ms: Self::DEFAULT_DEPLOYMENT_EXPIRY_MS,
            cluster_nodes: Vec::new(),
            recent_window_secs: Self::DEFAULT_RECENT_INVALIDATIONS_SECS,
            wait_replicas: None,
            near_max: None,
        }
    }

    /// More seed nodes of a Redis Cluster, as `host:port` (the scheme and
    /// credentials of the main URL apply) or as full `redis://` URLs. The
    /// main URL may name any one node: StoreHaus finds out by itself that
    /// it belongs to a cluster (one `INFO` on the first connect) and learns
    /// the other nodes from it; seeds given here make the cluster reachable
    /// when that node is down at start-up, and skip the finding out. Needs
    /// the `cluster` feature (on by default).
    ///
    /// ```
    /// use storehaus_runtime::CacheConfig;
    ///
    /// let config = CacheConfig::new("redis://127.0.0.1:7000", 3600, "myapp")
    ///     .with_cluster_nodes(["127.0.0.1:7001", "127.0.0.1:7002"]);
    /// # let _ = config;
    /// ```
    pub fn with_cluster_nodes<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cluster_nodes.extend(nodes.into_iter().map(Into::into));
        self
    }

    /// How long acknowledged invalidations are remembered, in seconds
    /// (default 60; 0 turns the log off). No Redis deployment keeps every
    /// acknowledged write through a failover or a restart from a snapshot:
    /// a `DEL` acknowledged by a primary can be missing on the replica that
    /// replaces it. When the primary changes (a Sentinel switch, a `MOVED`
    /// or a failed node on a cluster) or a node's `run_id` changes (a
    /// restart), the invalidations of this window are delivered again
    /// before cached values are served. Choose at least the failover time
    /// plus the replication lag. The log holds at most
    /// [`with_max_pending_invalidations`](Self::with_max_pending_invalidations)
    /// keys; past that its oldest entries are dropped, and counted.
    pub fn with_recent_invalidations(mut self, window_secs: u64) -> Self {
        self.recent_window_secs = window_secs;
        self
    }

    /// After each invalidation, waits until `replicas` replicas acknowledged
    /// it (`WAIT replicas timeout_ms`), so that a failover to one of them
    /// cannot lose it. Off by default: the log of recent invalidations (see
    /// [`with_recent_invalidations`](Self::with_recent_invalidations))
    /// already covers a failover; `WAIT` narrows the window further at the
    /// price of a round trip to a replica on every write (measured in
    /// BENCHMARKS.md). The wait counts in the write's cache budget; a
    /// replica that does not answer in time does not fail the write.
    pub fn with_wait_for_replicas(mut self, replicas: u32, timeout_ms: u64) -> Self {
        self.wait_replicas = Some((replicas, timeout_ms));
        self
    }

    /// Turns the near cache on for every store of this manager: an
    /// in-process L1 of decoded records, at most `max_entries` of them, in
    /// front of Redis, kept coherent by Redis client tracking (a dedicated
    /// RESP3 connection subscribed to every key under the global prefix).
    /// A hit costs no round trip and no decode. Off by default; a store opts
    /// out with [`CacheParams::with_near_cache(false)`](crate::CacheParams::with_near_cache).
    ///
    /// Within this process a write evicts its keys before it returns; other
    /// processes' writes reach this L1 when Redis's invalidation arrives
    /// (the delivery delay, measured in BENCHMARKS.md), and an L1 entry never
    /// outlives the Redis TTL of the value it came from. While the tracking
    /// connection is down or unanswered (a heartbeat every 200 ms), nothing
    /// is served from the L1, and it is flushed before it serves again. Only
    /// for `redis://`, `rediss://` and Sentinel URLs: on `memory://` (already
    /// in-process) and on a Redis Cluster it stays off.
    pub fn with_near_cache(mut self, max_entries: u64) -> Self {
        self.near_max = Some(max_entries);
        self
    }

    /// Number of Redis connections (multiplexed; default 10, must be ≥ 1).
    pub fn with_pool_size(mut self, pool_size: usize) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// The cache's time budget for one store operation, in milliseconds
    /// (default 500). However many commands an operation sends, retries
    /// included, the cache never delays it by more than this.
    pub fn with_timeout(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }

    /// Extra tries after a connection-level failure (default 2). Retries run
    /// inside the [`with_timeout`](Self::with_timeout) budget.
    pub fn with_retry_attempts(mut self, attempts: u32) -> Self {
        self.retry_attempts = attempts;
        self
    }

    /// Base delay of the jittered exponential retry backoff, in ms (default 50).
    pub fn with_retry_delay(mut self, delay_ms: u64) -> Self {
        self.retry_delay_ms = delay_ms;
        self
    }

    /// How long a reader's fill lease lives, in ms (default 2000). A reader
    /// that took a lease and died frees the key after this long.
    pub fn with_lease_ttl(mut self, lease_ms: u64) -> Self {
        self.lease_ms = lease_ms;
        self
    }

    /// How long a reader that finds another process's lease waits for its
    /// fill before going to the database itself, in ms (default 200).
    pub fn with_lease_wait(mut self, wait_ms: u64) -> Self {
        self.lease_wait_ms = wait_ms;
        self
    }

    /// Consecutive failures that open the circuit breaker (default 5) and
    /// how long it stays open before one probe is allowed, in ms (default 1000).
    pub fn with_circuit_breaker(mut self, threshold: u32, cooldown_ms: u64) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_cooldown_ms = cooldown_ms;
        self
    }

    /// Trusts `root_cert_pem` (a PEM CA certificate) for `rediss://`
    /// instead of the system's trust store, e.g. for a private CA. Needs the
    /// `tls` feature; [`CacheManager::new`](crate::CacheManager::new) rejects
    /// it otherwise, and for a URL that is not `rediss://`.
    pub fn with_tls_root_cert(mut self, root_cert_pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root = Some(root_cert_pem.into());
        self
    }

    /// Presents `cert_pem` with its private key `key_pem` (both PEM) to a
    /// `rediss://` server that requires client certificates (mutual TLS).
    /// The key never appears in `Debug`. Needs the `tls` feature.
    pub fn with_tls_client_cert(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.tls.client = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// How a read looks a key up. By default (`false`) a read sends a plain
    /// `GET`, and only a miss then takes its fill lease with
    /// `SET key lease NX PX ms GET`: hits cost exactly what a raw `GET` does,
    /// a miss one round trip more. With `true` every read is that single
    /// `SET ... NX ... GET`: a miss saves the round trip, but every hit is a
    /// write command that costs the server more CPU (measured: about 0.8–0.9×
    /// the throughput of plain GETs at 32 tasks on 2 cores). Choose `true`
    /// for caches that miss often.
    pub fn with_single_command_reads(mut self, single: bool) -> Self {
        self.single_command_reads = single;
        self
    }

    /// How many invalidated keys (and tag additions) that could not reach
    /// the cache are remembered one by one for replay (default 100 000,
    /// must be ≥ 1). Past this bound a store's pending keys are replaced by
    /// the store's whole key space: on recovery every key under
    /// `{global}:{prefix}:` is removed (SCAN + UNLINK in steps, each under
    /// its own budget), which is coarser but still leaves nothing stale.
    /// Replay runs in batches of at most 1 000 keys per round trip.
    pub fn with_max_pending_invalidations(mut self, max_keys: usize) -> Self {
        self.max_pending = max_keys;
        self
    }

    /// The name of this cache deployment in the database's outbox (default:
    /// the global prefix). Processes that share a cache (one Redis, one
    /// global prefix) share a deployment: each of its processes delivers
    /// every outbox entry it finds, so delivery never waits for one of
    /// them. An in-process cache (`memory://`) is a deployment of its own
    /// whatever its name: the name gets `~` and an id of its manager
    /// ([`CacheManager::deployment`](crate::CacheManager::deployment)). See
    /// [`GenericStore::watch_external_writes`](crate::GenericStore::watch_external_writes).
    pub fn with_deployment(mut self, name: impl Into<String>) -> Self {
        self.deployment = Some(name.into());
        self
    }

    /// How often the outbox worker looks for entries when no `pg_notify`
    /// wakes it, in ms (default 1000): the bound on an external write's
    /// invalidation delay while notifications are lost.
    pub fn with_outbox_poll_interval(mut self, interval_ms: u64) -> Self {
        self.outbox_poll_ms = interval_ms;
        self
    }

    /// How long a deployment may go without renewing its outbox position
    /// before another worker expires it, in ms (default 600 000, 10
    /// minutes; at least three poll intervals and 100 ms, at most 30 days).
    /// Every pass of a worker renews it. An expired deployment no longer
    /// holds entries back (the outbox is pruned past it); one that comes
    /// back starts over: it clears what it had cached of the tables it
    /// watches, since writes made while it was away may be missing. A
    /// process of it that stalled for half this time bypasses the cache
    /// until its worker has renewed it again. Set it above the longest
    /// time all processes of a deployment may be down together (a deploy,
    /// a maintenance window).
    pub fn with_deployment_expiry(mut self, expiry_ms: u64) -> Self {
        self.deployment_expiry_ms = expiry_ms;
        self
    }

    /// The deployment name in the outbox, as configured (see
    /// [`CacheManager::deployment`](crate::CacheManager::deployment) for the
    /// name a manager uses).
    pub fn deployment(&self) -> &str {
        self.deployment.as_deref().unwrap_or(&self.global_prefix)
    }

    /// The outbox worker's poll interval.
    pub fn outbox_poll_interval(&self) -> Duration {
        Duration::from_millis(self.outbox_poll_ms)
    }

    /// Checks every setting; [`CacheManager::new`](crate::CacheManager::new)
    /// calls it.
    pub(crate) fn validate(&self) -> CacheResult<()> {
        crate::keys::validate_prefix("global prefix", &self.global_prefix)?;
        in_range("pool size", self.pool_size as u64, 1, 1024, "")?;
        in_range("timeout", self.timeout_ms, 1, ONE_DAY_MS, " ms")?;
        in_range("retry attempts", u64::from(self.retry_attempts), 0, 100, "")?;
        in_range("retry delay", self.retry_delay_ms, 0, ONE_DAY_MS, " ms")?;
        in_range("lease TTL", self.lease_ms, 1, ONE_DAY_MS, " ms")?;
        in_range("lease wait", self.lease_wait_ms, 0, ONE_DAY_MS, " ms")?;
        in_range(
            "circuit breaker threshold",
            u64::from(self.breaker_threshold),
            1,
            u64::from(u32::MAX),
            "",
        )?;
        in_range(
            "circuit breaker cool-down",
            self.breaker_cooldown_ms,
            0,
            ONE_DAY_MS,
            " ms",
        )?;
        in_range("default TTL", self.default_ttl, 1, crate::MAX_TTL_SECS, " s")?;
        in_range("max pending invalidations", self.max_pending as u64, 1, 100_000_000, "")?;
        in_range("outbox poll interval", self.outbox_poll_ms, 10, ONE_DAY_MS, " ms")?;
        in_range(
            "deployment expiry (at least three outbox poll intervals)",
            self.deployment_expiry_ms,
            (self.outbox_poll_ms.saturating_mul(3)).max(100),
            30 * ONE_DAY_MS,
            " ms",
        )?;
        if self.deployment.as_deref().is_some_and(str::is_empty) {
            return Err(CacheError::InvalidConfig("deployment name must not be empty".into()));
        }
        in_range("recent invalidations window", self.recent_window_secs, 0, 86_400, " s")?;
        if let Some(max) = self.near_max {
            in_range("near cache entries", max, 1, 100_000_000, "")?;
        }
        if let Some((replicas, timeout_ms)) = self.wait_replicas {
            in_range("replicas to wait for", u64::from(replicas), 1, 100, "")?;
            in_range("replica wait", timeout_ms, 1, ONE_DAY_MS, " ms")?;
        }
        if self.url.ends_with("#insecure") {
            return Err(CacheError::InvalidConfig(
                "`#insecure` (TLS without certificate verification) is not supported: trust the server's CA \
                 with CacheConfig::with_tls_root_cert or SSL_CERT_FILE"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The default TTL in seconds.
    pub fn default_ttl(&self) -> u64 {
        self.default_ttl
    }

    /// The global key prefix.
    pub fn global_prefix(&self) -> &str {
        &self.global_prefix
    }

    /// The number of connections.
    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// The per-operation budget.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Extra tries after a connection-level failure.
    pub fn retry_attempts(&self) -> u32 {
        self.retry_attempts
    }

    /// Base delay of the retry backoff.
    pub fn retry_delay(&self) -> Duration {
        Duration::from_millis(self.retry_delay_ms)
    }
}

/// One day in milliseconds: the longest duration any setting accepts.
const ONE_DAY_MS: u64 = 86_400_000;

fn in_range(what: &str, value: u64, min: u64, max: u64, unit: &str) -> CacheResult<()> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(CacheError::InvalidConfig(format!(
        "{what} must be between {min}{unit} and {max}{unit}, got {value}{unit}"
    )))
}

impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheConfig")
            .field("url", &self.redacted_url())
            .field("default_ttl", &self.default_ttl)
            .field("global_prefix", &self.global_prefix)
            .field("pool_size", &self.pool_size)
            .field("timeout_ms", &self.timeout_ms)
            .field("retry_attempts", &self.retry_attempts)
            .field("retry_delay_ms", &self.retry_delay_ms)
            .field("lease_ms", &self.lease_ms)
            .field("lease_wait_ms", &self.lease_wait_ms)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_cooldown_ms", &self.breaker_cooldown_ms)
            .field("single_command_reads", &self.single_command_reads)
            .field("max_pending", &self.max_pending)
            .field("deployment", &self.deployment())
            .field("outbox_poll_ms", &self.outbox_poll_ms)
            .field("deployment_expiry_ms", &self.deployment_expiry_ms)
            .field(
                "cluster_nodes",
                &self.cluster_nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>(),
            )
            .field("recent_window_secs", &self.recent_window_secs)
            .field("wait_replicas", &self.wait_replicas)
            .field("near_max", &self.near_max)
            .field("tls_root_cert", &self.tls.root.as_ref().map(|_| "set"))
            .field(
                "tls_client_cert",
                &self.tls.client.as_ref().map(|_| "set (key redacted)"),
            )
            .finish()
    }
}
