//! The Redis Cluster backend: the primitives of the backend contract on a
//! redis-rs `cluster-async` connection, split by hash slot.
//!
//! - Keys are laid out by `layout` (records spread over every slot; a
//!   store's query results with its generation counter, a tag set with its
//!   draining set, each pair in one slot).
//! - A multi-key primitive (`MGET`, the lease and fill scripts, `DEL`, an
//!   invalidation's pipeline) runs once per slot, concurrently, and its
//!   answers are put back in the keys' order.
//! - `SCAN` walks reach every primary (`scan`).
//! - redis-rs retries nothing here (`retries(0)`): a failure, a `MOVED`
//!   or `ASK` redirection, or a cluster that is down reaches this backend,
//!   which moves the contact epoch before it answers (a replica may have
//!   been promoted: the manager replays its recent invalidations before it
//!   serves cached values again), has its own view of the slot map
//!   checked (`topology`), and the budget's own retries resend the
//!   command. When the slot owners changed, the next command gets a new
//!   cluster connection, seeded with the nodes that answered.
//! - A multi-slot primitive waits for every slot's answer (a slot that
//!   fails does not cut the others short) and fails with the first error.
//!
//! Connections are made in the background by redis-rs on first use; the
//! callers' budget bounds only their own wait.

mod client;
mod health;
pub(crate) mod layout;
mod scan;
pub(crate) mod seeds;
mod slots;
pub(crate) mod topology;
pub(crate) mod tracking;
mod view;

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;

use self::client::{client, every};
use self::health::{Health, Watched};
use self::layout::{by_slot, physical, physical_all};
use self::slots::{scatter, split_invalidation, SlotInvalidation};
use self::topology::Topology;
use crate::backend::contact::Contact;
use crate::backend::wire::scripts::Scripts;
use crate::backend::wire::{invalidation, RunOn};
use crate::backend::{Invalidated, Invalidation, ScanStep};
use crate::config::TlsCerts;
use crate::error::{CacheError, CacheResult};

/// The least time a connect or a reply is given, whatever the budget.
const MIN_NODE_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct ClusterBackend {
    client: ClusterClient,
    config: ClusterConfig,
    /// The connection and the topology version it was made for.
    conn: RwLock<Option<(u64, ClusterConnection)>>,
    health: Health,
    topology: Arc<Topology>,
    limit: Duration,
    scripts: Scripts,
    contact: Arc<Contact>,
    wait: Option<(u32, u64)>,
}

impl std::fmt::Debug for ClusterBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBackend").finish_non_exhaustive()
    }
}

impl ClusterBackend {
    /// A backend on the cluster that `seeds` (URLs of some of its nodes,
    /// with the credentials and TLS mode of the first) belong to. Connects
    /// lazily.
    pub fn new(
        seeds: &[String],
        timeout: Duration,
        tls: &TlsCerts,
        contact: Arc<Contact>,
        wait: Option<(u32, u64)>,
    ) -> CacheResult<Self> {
        let limit = timeout.max(MIN_NODE_TIMEOUT);
        let client = client(seeds, limit, tls)?;
        Ok(ClusterBackend {
            client,
            config: ClusterConfig::new()
                .set_connection_timeout(limit)
                .set_response_timeout(limit),
            conn: RwLock::new(None),
            health: Health::default(),
            topology: Arc::new(Topology::new(seeds, tls, timeout, contact.clone())?),
            limit,
            scripts: Scripts::new(),
            contact,
            wait,
        })
    }

    /// The backend's view of the cluster.
    pub(crate) fn topology(&self) -> &Arc<Topology> {
        &self.topology
    }

    /// The cluster connection: made in the background on first use, and
    /// made again, seeded with the nodes that answered, when the slot
    /// owners changed (see `topology`) or when commands keep failing while
    /// every primary answers the topology's own questions (see `health`).
    fn conn(&self) -> ClusterConnection {
        let version = self.topology.version();
        let stuck = self.health.replace.load(Ordering::Acquire) && !self.topology.degraded();
        if !stuck {
            if let Some((v, conn)) = self.conn.read().ok().and_then(|c| c.clone()) {
                if v == version {
                    return conn;
                }
            }
        }
        let mut slot = self.conn.write().unwrap_or_else(|p| p.into_inner());
        let stuck = self.health.replace.swap(false, Ordering::AcqRel) && !self.topology.degraded();
        match slot.as_ref() {
            Some((v, conn)) if *v == version && !stuck => conn.clone(),
            current => {
                if current.is_none() {
                    self.topology.suspect("first use");
                } else {
                    tracing::debug!(target: "storehaus", stuck, "cluster: connecting afresh");
                }
                let conn = self.fresh_conn();
                *slot = Some((version, conn.clone()));
                conn
            }
        }
    }

    /// A new cluster connection, seeded with the nodes of the last trusted
    /// view that answered (the configured seeds before any).
    fn fresh_conn(&self) -> ClusterConnection {
        let seeds = self.topology.snapshot().seeds;
        let fresh = (!seeds.is_empty())
            .then(|| client(&seeds, self.limit, self.topology.tls()).ok())
            .flatten();
        fresh
            .as_ref()
            .unwrap_or(&self.client)
            .get_pending_async_connection_with_config(self.config.clone())
    }

    /// Whether the cluster can serve: every primary of the trusted slot map
    /// answers a `PING`. Before any map was learned, a fresh look at it
    /// that some node answers. It never waits on a node the map no longer
    /// names (a frozen primary that was replaced stays known, and a look at
    /// every node would wait its whole timeout for it).
    ///
    /// # Errors
    /// `ConnectionError` when the map cannot be trusted (a primary does not
    /// answer; the refreshes go on in the background) or no node answers.
    pub async fn probe(&self) -> CacheResult<()> {
        match self.topology.primaries_answer().await {
            Some(true) => Ok(()),
            Some(false) => Err(CacheError::ConnectionError("a cluster primary does not answer".into())),
            None if self.topology.snapshot().view.is_some() => {
                self.topology.ensure_refreshing("no slot map to trust");
                Err(CacheError::ConnectionError(
                    "no slot map to trust yet: a cluster primary does not answer".into(),
                ))
            }
            None => match self.topology.refresh().await {
                0 => Err(CacheError::ConnectionError("no cluster node answers".into())),
                _ => Ok(()),
            },
        }
    }

    /// Runs one command, pipeline or script, routed by its first key.
    async fn run<T: redis::FromRedisValue>(&self, cmd: impl RunOn) -> CacheResult<T> {
        let mut conn = self.conn();
        let mut watched = Watched {
            contact: &self.contact,
            health: &self.health,
            topology: &self.topology,
            done: false,
        };
        let result = cmd.run(&mut conn).await;
        watched.done = true;
        match result {
            Ok(v) => {
                self.health.answered();
                Ok(v)
            }
            Err(e) => Err(self.map_err(e)),
        }
    }

    /// Maps an error; a sign that a primary may have changed moves the
    /// contact epoch first.
    fn map_err(&self, err: redis::RedisError) -> CacheError {
        let moved = matches!(
            err.code(),
            Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "LOADING" | "READONLY")
        );
        let mapped = crate::backend::wire::map_err(err);
        match mapped {
            CacheError::Command(m) if moved => {
                self.contact.bump("a slot moved or the cluster is down");
                self.topology.suspect("a slot moved or the cluster is down");
                CacheError::ConnectionError(m)
            }
            e @ CacheError::ConnectionError(_) => {
                self.contact.bump("a cluster node failed");
                self.topology.suspect("a cluster node failed");
                self.health.failed();
                e
            }
            other => other,
        }
    }

    pub async fn get(&self, key: &str) -> CacheResult<Option<Vec<u8>>> {
        self.run(redis::cmd("GET").arg(physical(key).as_ref()).to_owned()).await
    }

    /// Not batched on a cluster (yet): a `get`.
    pub async fn read(&self, key: &str) -> CacheResult<Option<Vec<u8>>> {
        self.get(key).await
    }

    /// One `MGET` per slot, concurrently.
    pub async fn mget(&self, keys: &[String]) -> CacheResult<Vec<Option<Vec<u8>>>> {
        let keys = physical_all(keys);
        let groups = by_slot(&keys);
        let answers = every(groups.iter().map(|group| {
            let mut cmd = redis::cmd("MGET");
            for &i in group {
                cmd.arg(&keys[i]);
            }
            self.run::<Vec<Option<Vec<u8>>>>(cmd)
        }))
        .await?;
        Ok(scatter(keys.len(), &groups, answers))
    }

    pub async fn get_or_lease(&self, key: &str, lease: &[u8], lease_ms: u64) -> CacheResult<Option<Vec<u8>>> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(physical(key).as_ref())
            .arg(lease)
            .arg("NX")
            .arg("PX")
            .arg(lease_ms)
            .arg("GET");
        self.run(cmd).await
    }

    /// The lease script once per slot, concurrently.
    pub async fn lease_many(&self, keys: &[String], lease: &[u8], lease_ms: u64) -> CacheResult<(Vec<bool>, u64)> {
        let keys = physical_all(keys);
        let groups = by_slot(&keys);
        let answers = every(groups.iter().map(|group| {
            let mut inv = self.scripts.lease_many.prepare_invoke();
            for &i in group {
                inv.key(&keys[i]);
            }
            inv.arg(lease).arg(lease_ms);
            async move { self.run::<Vec<u8>>(inv).await }
        }))
        .await?;
        let codes = scatter(keys.len(), &groups, answers);
        let replaced = codes.iter().filter(|c| **c == 2).count() as u64;
        Ok((codes.into_iter().map(|c| c != 0).collect(), replaced))
    }

    pub async fn release_lease(&self, key: &str, lease: &[u8]) -> CacheResult<()> {
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(physical(key).as_ref()).arg(lease);
        let _: u64 = self.run(inv).await?;
        Ok(())
    }

    /// The fill script once per slot, concurrently.
    pub async fn fill(&self, keys: &[&str], values: &[&[u8]], lease: &[u8], ttl_ms: u64) -> CacheResult<u64> {
        let keys: Vec<String> = keys.iter().map(|k| physical(k).into_owned()).collect();
        let groups = by_slot(&keys);
        let filled = every(groups.iter().map(|group| {
            let mut inv = self.scripts.fill.prepare_invoke();
            for &i in group {
                inv.key(&keys[i]);
            }
            inv.arg(lease).arg(ttl_ms);
            for &i in group {
                inv.arg(values[i]);
            }
            async move { self.run::<u64>(inv).await }
        }))
        .await?;
        Ok(filled.into_iter().sum())
    }

    pub async fn set_ex(&self, key: &str, value: &[u8], ttl_secs: u64) -> CacheResult<()> {
        self.run(
            redis::cmd("SET")
                .arg(physical(key).as_ref())
                .arg(value)
                .arg("EX")
                .arg(ttl_secs)
                .to_owned(),
        )
        .await
    }

    pub async fn get_with_pttl(&self, key: &str) -> CacheResult<(Option<Vec<u8>>, i64)> {
        let key = physical(key);
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key.as_ref()).cmd("PTTL").arg(key.as_ref());
        self.run(pipe).await
    }

    /// One `DEL` per slot, concurrently.
    pub async fn delete(&self, keys: &[String]) -> CacheResult<u64> {
        let keys = physical_all(keys);
        self.delete_physical(&keys, "DEL").await
    }

    async fn delete_physical(&self, keys: &[String], command: &str) -> CacheResult<u64> {
        let groups = by_slot(keys);
        let counts = every(groups.iter().map(|group| {
            let mut cmd = redis::cmd(command);
            for &i in group {
                cmd.arg(&keys[i]);
            }
            self.run::<u64>(cmd)
        }))
        .await?;
        Ok(counts.into_iter().sum())
    }

    /// The invalidation pipeline once per slot, concurrently; the slots
    /// holding replica markers first (a reader that finds an index entry
    /// deleted, in another slot, then finds the store's marker).
    pub async fn invalidate(&self, inv: &Invalidation<'_>) -> CacheResult<Invalidated> {
        // Slots carrying markers first: a marker lands before any key of
        // another slot is deleted.
        let (marked, rest): (Vec<SlotInvalidation>, Vec<SlotInvalidation>) =
            split_invalidation(inv).into_iter().partition(|p| !p.markers.is_empty());
        let mut done = every(marked.iter().map(|p| self.invalidate_slot(p))).await?;
        done.extend(every(rest.iter().map(|p| self.invalidate_slot(p))).await?);
        Ok(done.into_iter().fold(Invalidated::default(), |mut all, one| {
            all.deleted += one.deleted;
            all.corrupt += one.corrupt;
            all.refused += one.refused;
            all.tags_refused |= one.tags_refused;
            all.markers_refused |= one.markers_refused;
            all
        }))
    }

    async fn invalidate_slot(&self, part: &SlotInvalidation) -> CacheResult<Invalidated> {
        let inv = Invalidation {
            markers: &part.markers,
            keys: &part.keys,
            counters: &part.counters,
            tags: &part.tags,
        };
        invalidation::send(&inv, self.wait, |pipe| self.run(pipe)).await
    }

    /// One pipeline of `ZSCORE` per slot, concurrently.
    pub async fn markers(&self, keys: &[String]) -> CacheResult<Vec<Option<u64>>> {
        let keys = physical_all(keys);
        let groups = by_slot(&keys);
        let answers = every(groups.iter().map(|group| {
            let mut pipe = redis::pipe();
            for &i in group {
                pipe.cmd("ZSCORE").arg(&keys[i]).arg("m");
            }
            self.run::<Vec<Option<f64>>>(pipe)
        }))
        .await?;
        let scores = scatter(keys.len(), &groups, answers);
        Ok(scores
            .into_iter()
            .map(|s| s.map(crate::backend::lsn_of_score))
            .collect())
    }

    pub async fn seed_counter(&self, key: &str, start: u64) -> CacheResult<Option<Vec<u8>>> {
        self.run(
            redis::cmd("SET")
                .arg(physical(key).as_ref())
                .arg(start)
                .arg("NX")
                .arg("GET")
                .to_owned(),
        )
        .await
    }

    pub async fn fill_if_counter(
        &self,
        key: &str,
        value: &[u8],
        ttl_ms: u64,
        counter: &str,
        expected: u64,
    ) -> CacheResult<bool> {
        let mut inv = self.scripts.fill_if_counter.prepare_invoke();
        inv.key(physical(key).as_ref())
            .key(physical(counter).as_ref())
            .arg(value)
            .arg(ttl_ms)
            .arg(expected);
        let filled: u64 = self.run(inv).await?;
        Ok(filled == 1)
    }

    pub async fn drain_tag(&self, set: &str, draining: &str) -> CacheResult<u64> {
        let mut inv = self.scripts.drain_tag.prepare_invoke();
        inv.key(physical(set).as_ref()).key(physical(draining).as_ref());
        self.run(inv).await
    }

    // SSCAN of the draining set, then UNLINK of the members (per slot), then
    // SREM of them from the set, in that order.
    pub async fn drain_step(&self, draining: &str, cursor: u64) -> CacheResult<ScanStep> {
        let draining = physical(draining);
        let (next, keys): (u64, Vec<String>) = self
            .run(
                redis::cmd("SSCAN")
                    .arg(draining.as_ref())
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(crate::backend::wire::SCAN_COUNT)
                    .to_owned(),
            )
            .await?;
        if keys.is_empty() {
            return Ok(ScanStep { next, removed: 0, keys });
        }
        let removed = self.delete_physical(&keys, "UNLINK").await?;
        let _: u64 = self
            .run(redis::cmd("SREM").arg(draining.as_ref()).arg(&keys).to_owned())
            .await?;
        Ok(ScanStep { next, removed, keys })
    }

    pub async fn register_version(&self, key: &str, tag: &str, ttl_ms: u64) -> CacheResult<()> {
        let mut inv = self.scripts.register_version.prepare_invoke();
        inv.key(physical(key).as_ref()).arg(tag).arg(ttl_ms);
        let _: u64 = self.run(inv).await?;
        Ok(())
    }

    pub async fn versions(&self, key: &str) -> CacheResult<Vec<String>> {
        self.run(
            redis::cmd("ZRANGE")
                .arg(physical(key).as_ref())
                .arg(0)
                .arg(-1)
                .to_owned(),
        )
        .await
    }
}
