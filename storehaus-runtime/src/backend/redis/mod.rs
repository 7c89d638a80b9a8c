//! The Redis backend: a fixed set of multiplexed connections, the Lua scripts
//! of the fill protocol, and one function per cache primitive.
//!
//! Connections are created lazily, on first use. A connect runs in its own
//! task, bounded by its own timeout (the operation budget, at least 1 s):
//! callers wait for it only until their own deadline, and a slow handshake
//! (TLS, AUTH) still completes for the callers that come after. Concurrent
//! callers of one slot share one connect attempt.
//!
//! A connection is dropped from its slot, and re-created by the next caller
//! that lands on it, when a command on it fails at the connection level, or
//! when a caller gave up waiting on it (its budget ran out) and nothing at all
//! came back on that connection since the command was sent: a stalled or
//! half-open connection is not kept forever.
//!
//! Commands go to the first connection that has fewer than
//! [`SPILL_IN_FLIGHT`] commands in flight, so under ordinary load they share
//! one connection and its multiplexer batches them (one write and one read
//! for many commands); the other connections take the overflow. Spreading
//! every command round-robin over ten connections costs about twice the CPU
//! per command and halves throughput at 32 tasks on two cores (see
//! `bash scripts/bench.sh --diagnose`). A second connection is kept open as
//! a spare, so a caller never waits for the first one to reconnect. Picking a
//! connection is an atomic load or two and one uncontended read lock: there
//! is no global lock on the hot path.
//!
//! `pool` holds the connections, `scripts` the Lua scripts; this file holds
//! one function per primitive of the backend contract (see `backend`).

mod batch;
pub(crate) mod failover;
pub(crate) mod pool;
pub(crate) mod probe;
pub(crate) mod tracking;

use std::sync::Arc;
use std::time::Duration;

use self::batch::{Batcher, Kind};
use self::failover::Failovers;
use self::pool::{Connector, Pool};
use self::probe::NodeWatch;
use crate::backend::contact::Contact;
use crate::backend::sentinel::SentinelUrl;
use crate::backend::wire::scripts::Scripts;
#[cfg(feature = "test-hooks")]
pub use crate::backend::wire::scripts::FILL_SCRIPT;
use crate::backend::wire::{invalidation, RunOn, SCAN_COUNT};
use crate::backend::ServerStats;
use crate::backend::{Invalidated, Invalidation, ScanStep};
use crate::config::{redact_url, TlsCerts};
use crate::error::{CacheError, CacheResult};

pub(crate) struct RedisBackend {
    pool: Arc<Pool>,
    /// Concurrent `GET`s of the read path, batched into `MGET`s.
    reads: Arc<Batcher>,
    /// Concurrent lease commands, batched into pipelines.
    leases: Arc<Batcher>,
    scripts: Scripts,
    wait: Option<(u32, u64)>,
}

/// How a `redis://` backend is reached and what it may turn out to be.
pub(crate) struct Target<'a> {
    pub url: &'a str,
    pub pool_size: usize,
    pub timeout: Duration,
    pub tls: &'a TlsCerts,
    /// More seed nodes of a cluster (`CacheConfig::with_cluster_nodes`).
    pub cluster_nodes: &'a [String],
    pub contact: Arc<Contact>,
    /// `WAIT replicas timeout_ms` after each invalidation.
    pub wait: Option<(u32, u64)>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend").field("pool", &self.pool).finish()
    }
}

impl RedisBackend {
    /// Where the near cache's invalidations come from.
    pub(crate) fn tracking_source(&self) -> tracking::Source {
        tracking::Source {
            connector: self.pool.connector().clone(),
            failovers: self.pool.failovers().cloned(),
        }
    }

    /// What the first connection found the node to be (connecting first,
    /// within the budget): one node, or a node of a cluster.
    #[cfg(feature = "cluster")]
    pub(crate) async fn topology_found(&self) -> CacheResult<Option<&probe::Topology>> {
        self.pool.connected().await?;
        Ok(self.pool.topology())
    }

    /// A backend for a `redis://`, `rediss://`, `redis+unix://` or
    /// `redis+sentinel://` URL. Connects lazily.
    pub fn new(target: Target<'_>) -> CacheResult<Self> {
        let url = target.url;
        let sentinel = url.contains("+sentinel://");
        let mut failovers = None;
        let connector = if sentinel {
            let parsed = SentinelUrl::parse(url)?;
            failovers = Some(Arc::new(Failovers::new(&parsed, target.contact.clone())));
            Connector::Sentinel(Arc::new(tokio::sync::Mutex::new(parsed.client(target.tls)?)))
        } else {
            #[cfg(feature = "tls")]
            if url.starts_with("rediss://") {
                crate::backend::tls::install_crypto_provider();
            }
            Connector::Direct(Box::new(crate::backend::wire::open_client(url, target.tls).map_err(
                |e| {
                    CacheError::InvalidConfig(format!(
                        "cannot use cache URL {}: {}",
                        redact_url(url),
                        crate::config::url_error(url, &e)
                    ))
                },
            )?))
        };
        let watch = Arc::new(NodeWatch::new(target.contact.clone(), sentinel));
        Ok(RedisBackend {
            pool: Arc::new(Pool::new(connector, watch, failovers, target.pool_size, target.timeout)),
            reads: Arc::new(Batcher::new(Kind::Reads)),
            leases: Arc::new(Batcher::new(Kind::Leases)),
            scripts: Scripts::new(),
            wait: target.wait,
        })
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: impl RunOn) -> CacheResult<T> {
        self.pool.run(cmd).await
    }

    pub async fn probe(&self) -> CacheResult<()> {
        let _: String = self.run(redis::cmd("PING")).await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> CacheResult<Option<Vec<u8>>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        self.run(cmd).await
    }

    /// A `GET`, sent at once, or batched with other concurrent ones into
    /// one `MGET` while an earlier read is on the wire (see `batch`).
    pub async fn read(&self, key: &str) -> CacheResult<Option<Vec<u8>>> {
        self.reads.call(&self.pool, key, None, || self.get(key)).await
    }

    pub async fn mget(&self, keys: &[String]) -> CacheResult<Vec<Option<Vec<u8>>>> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(keys);
        self.run(cmd).await
    }

    /// The lease command, sent at once, or with other concurrent ones in
    /// one pipeline while an earlier one is on the wire (see `batch`).
    pub async fn get_or_lease(&self, key: &str, lease: &[u8], lease_ms: u64) -> CacheResult<Option<Vec<u8>>> {
        let alone = || self.run(batch::lease_cmd(key, lease, lease_ms));
        self.leases.call(&self.pool, key, Some((lease, lease_ms)), alone).await
    }

    pub async fn lease_many(&self, keys: &[String], lease: &[u8], lease_ms: u64) -> CacheResult<(Vec<bool>, u64)> {
        let mut inv = self.scripts.lease_many.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        inv.arg(lease).arg(lease_ms);
        let codes: Vec<u8> = self.run(inv).await?;
        let replaced = codes.iter().filter(|c| **c == 2).count() as u64;
        Ok((codes.into_iter().map(|c| c != 0).collect(), replaced))
    }

    pub async fn release_lease(&self, key: &str, lease: &[u8]) -> CacheResult<()> {
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(key).arg(lease);
        let _: u64 = self.run(inv).await?;
        Ok(())
    }

    pub async fn fill(&self, keys: &[&str], values: &[&[u8]], lease: &[u8], ttl_ms: u64) -> CacheResult<u64> {
        let mut inv = self.scripts.fill.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        inv.arg(lease).arg(ttl_ms);
        for v in values {
            inv.arg(*v);
        }
        self.run(inv).await
    }

    pub async fn set_ex(&self, key: &str, value: &[u8], ttl_secs: u64) -> CacheResult<()> {
        self.run(redis::cmd("SET").arg(key).arg(value).arg("EX").arg(ttl_secs).to_owned())
            .await
    }

    pub async fn get_with_pttl(&self, key: &str) -> CacheResult<(Option<Vec<u8>>, i64)> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
        self.run(pipe).await
    }

    pub async fn delete(&self, keys: &[String]) -> CacheResult<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.run(redis::cmd("DEL").arg(keys).to_owned()).await
    }

    // One pipeline (errors kept per command), and a second one only when a counter or a tag set must be reset.
    pub async fn invalidate(&self, inv: &Invalidation<'_>) -> CacheResult<Invalidated> {
        invalidation::send(inv, self.wait, |pipe| self.run(pipe)).await
    }

    pub async fn markers(&self, keys: &[String]) -> CacheResult<Vec<Option<u64>>> {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("ZSCORE").arg(k).arg("m");
        }
        let scores: Vec<Option<f64>> = self.run(pipe).await?;
        Ok(scores
            .into_iter()
            .map(|s| s.map(crate::backend::lsn_of_score))
            .collect())
    }

    pub async fn seed_counter(&self, key: &str, start: u64) -> CacheResult<Option<Vec<u8>>> {
        self.run(redis::cmd("SET").arg(key).arg(start).arg("NX").arg("GET").to_owned())
            .await
    }

    pub async fn server_stats(&self) -> CacheResult<ServerStats> {
        let info: String = self
            .run(redis::cmd("INFO").arg("memory").arg("stats").arg("clients").to_owned())
            .await?;
        Ok(ServerStats::from_info(&info))
    }

    pub async fn scan_step(&self, cursor: u64, pattern: &str, spare: Option<&str>) -> CacheResult<ScanStep> {
        let (next, mut keys): (u64, Vec<String>) = self
            .run(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .to_owned(),
            )
            .await?;
        if let Some(spare) = spare {
            keys.retain(|k| !k.starts_with(spare));
        }
        let removed = if keys.is_empty() {
            0
        } else {
            self.run(redis::cmd("UNLINK").arg(&keys).to_owned()).await?
        };
        Ok(ScanStep { next, removed, keys })
    }
}

/// Query generations and tag sets.
impl RedisBackend {
    pub async fn fill_if_counter(
        &self,
        key: &str,
        value: &[u8],
        ttl_ms: u64,
        counter: &str,
        expected: u64,
    ) -> CacheResult<bool> {
        let mut inv = self.scripts.fill_if_counter.prepare_invoke();
        inv.key(key).key(counter).arg(value).arg(ttl_ms).arg(expected);
        let filled: u64 = self.run(inv).await?;
        Ok(filled == 1)
    }

    pub async fn drain_tag(&self, set: &str, draining: &str) -> CacheResult<u64> {
        let mut inv = self.scripts.drain_tag.prepare_invoke();
        inv.key(set).key(draining);
        self.run(inv).await
    }

    pub async fn register_version(&self, key: &str, tag: &str, ttl_ms: u64) -> CacheResult<()> {
        let mut inv = self.scripts.register_version.prepare_invoke();
        inv.key(key).arg(tag).arg(ttl_ms);
        let _: u64 = self.run(inv).await?;
        Ok(())
    }

    pub async fn versions(&self, key: &str) -> CacheResult<Vec<String>> {
        self.run(redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).to_owned()).await
    }

    // SSCAN, then UNLINK of the members and SREM of them, in that order.
    pub async fn drain_step(&self, draining: &str, cursor: u64) -> CacheResult<ScanStep> {
        let (next, keys): (u64, Vec<String>) = self
            .run(
                redis::cmd("SSCAN")
                    .arg(draining)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .to_owned(),
            )
            .await?;
        if keys.is_empty() {
            return Ok(ScanStep { next, removed: 0, keys });
        }
        let mut pipe = redis::pipe();
        pipe.cmd("UNLINK").arg(&keys);
        pipe.cmd("SREM").arg(draining).arg(&keys).ignore();
        let (removed,): (u64,) = self.run(pipe).await?;
        Ok(ScanStep { next, removed, keys })
    }
}
