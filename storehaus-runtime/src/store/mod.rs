//! [`GenericStore`]: typed CRUD over one table, cached.
//!
//! This file holds the store, its settings and its reads; `write` its
//! writes (each run to its outcome, then invalidated); `find` and `query`
//! the typed, cached queries; `transaction` several writes under one commit;
//! `sql` the SQL of each dialect; `pool`, `sqlite` and `signals` the
//! database pool, the SQLite glue and the change events; `replica` where
//! its loads run when it has read replicas.

mod controls;
pub(crate) mod find;
mod index;
mod params;
pub(crate) mod pool;
pub(crate) mod query;
pub(crate) mod replica;
pub(crate) mod signals;
pub(crate) mod sql;
pub(crate) mod transaction;
mod write;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tracing::field::Empty;

use crate::cache::adapt::ReadMode;
use crate::cache::fill::Ttls;
use crate::cache::read::{near_first, read_through, NearFirst, RecordRead};
use crate::cache::read_many::{read_many, ManyOutcome};
use crate::cache::stats::Op;
use crate::cache::telemetry::{Outcome, StoreMetrics};
use crate::cache::{CacheManager, MAX_TTL_SECS};
use crate::error::{Result, StorehausError};
use crate::keys;
use crate::record::Cached;
use crate::store::pool::DbPool;
use crate::store::signals::SignalManager;
use crate::store::sql::Pooled;

pub use params::{CacheParams, DEFAULT_NEGATIVE_TTL_SECS};
pub(crate) use write::{joined, Change};

/// The resolved cache settings of one store.
#[derive(Debug)]
pub(crate) struct StoreCache {
    pub manager: Arc<CacheManager>,
    pub prefix: String,
    pub ttl: u64,
    /// TTL of a cached "no such row".
    pub negative_ttl: u64,
    pub fill_on_write: bool,
    /// Early refresh of `get_by_id` hits, when on.
    pub early: Option<crate::cache::early::Early>,
    /// This store's own counters and latencies (`GenericStore::stats`).
    pub figures: Arc<crate::cache::stats::Figures>,
    pub generation_key: String,
    /// The value layout its readers write, and its live-version registry.
    pub layout: crate::cache::versions::Layout,
    /// The store's key space: `{global}:{prefix}:`.
    pub scope: String,
    /// Whether reads use the manager's near cache.
    pub near: bool,
    /// Which command reads start with: record reads, index lookups.
    pub reads: ReadMode,
    pub index_reads: ReadMode,
}

impl StoreCache {
    /// How `get_by_id` reads a record through the cache.
    pub(crate) fn record_read(&self) -> RecordRead<'_> {
        RecordRead {
            layout: &self.layout,
            ttls: self.ttls(),
            early: self.early.as_ref(),
            near: self.near,
            mode: &self.reads,
        }
    }

    pub(crate) fn ttls(&self) -> Ttls {
        Ttls {
            record: self.ttl,
            absent: self.negative_ttl,
        }
    }
}

/// Typed, cached access to the table of `T`.
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
/// # let cache_manager = Arc::new(CacheManager::new(CacheConfig::new("memory://", 60, "app"))?);
/// let store = GenericStore::<User>::new(db_pool, None, Some(CacheParams::new(cache_manager)));
/// store.create(User { id: 1, name: "Ada".into() }, None).await?;
/// let user = store.get_by_id(&1).await?;      // miss: database, then cached
/// let changed = User { id: 1, name: "Ada L.".into() };
/// store.update(&1, changed.clone(), None).await?; // invalidated after commit
/// assert_eq!(store.get_by_id(&1).await?, Some(changed));
/// # Ok(()) }
/// ```
///
/// Reads go through the cache when one is configured and fall back to the
/// database whenever the cache is slow, down or returns garbage. Writes run
/// on the database and invalidate after commit. No cache failure is ever
/// returned from a store operation.
#[derive(Debug, Clone)]
pub struct GenericStore<T: Cached> {
    pool: DbPool,
    signals: Option<Arc<SignalManager>>,
    cache: Option<Arc<StoreCache>>,
    metrics: Arc<StoreMetrics>,
    /// Read replicas (`with_read_replica`).
    replicas: Option<Arc<replica::Replicas>>,
    _marker: std::marker::PhantomData<fn() -> T>,
}

impl<T: Cached> GenericStore<T> {
    /// A store over `pool` (a `sqlx::PgPool` or `sqlx::SqlitePool`), with
    /// optional change signals and optional caching.
    ///
    /// Never fails: a store prefix with forbidden characters, or one that
    /// starts with `__` (a namespace StoreHaus reserves for its own keys), is
    /// escaped in keys (with a warning) and a TTL outside 1..=31 536 000 is
    /// clamped. Use [`try_new`](Self::try_new) to have them rejected instead.
    pub fn new(pool: impl Into<DbPool>, signals: Option<Arc<SignalManager>>, cache: Option<CacheParams>) -> Self {
        let cache = cache.map(|params| {
            let prefix = params.prefix.unwrap_or_else(|| T::PREFIX.to_string());
            let escaped = keys::escape_store_prefix(&prefix);
            if escaped != prefix {
                tracing::warn!(target: "storehaus", prefix = %prefix, escaped = %escaped, "store prefix holds characters outside [A-Za-z0-9_.-] or starts with the reserved \"__\"; it is escaped in keys");
            }
            let ttl = params
                .ttl
                .or(T::TTL)
                .unwrap_or(params.manager.config().default_ttl)
                .clamp(1, MAX_TTL_SECS);
            let negative_ttl = params
                .negative_ttl
                .unwrap_or(DEFAULT_NEGATIVE_TTL_SECS.min(ttl))
                .clamp(1, MAX_TTL_SECS);
            let generation_key = keys::generation_key(params.manager.global_prefix(), &escaped);
            let layout = crate::cache::versions::Layout::new(
                params.manager.global_prefix(),
                &escaped,
                T::FINGERPRINT,
                ttl.max(negative_ttl),
                params.manager.lease_ms(),
            );
            let scope = keys::store_scope(params.manager.global_prefix(), &escaped);
            Arc::new(StoreCache {
                manager: params.manager,
                prefix: escaped,
                ttl,
                negative_ttl,
                fill_on_write: params.fill_on_write,
                early: params.early_refresh.and_then(crate::cache::early::Early::new),
                figures: Arc::default(),
                generation_key,
                layout,
                scope,
                near: params.near,
                reads: ReadMode::default(),
                index_reads: ReadMode::default(),
            })
        });
        let metrics = Arc::new(StoreMetrics::new(
            T::TABLE,
            cache.as_ref().map_or(T::PREFIX, |c| c.prefix.as_str()),
        ));
        GenericStore {
            pool: pool.into(),
            signals,
            cache,
            metrics,
            replicas: None,
            _marker: std::marker::PhantomData,
        }
    }

    /// Like [`new`](Self::new), but rejects a bad store prefix or TTL.
    ///
    /// # Errors
    /// [`StorehausError::Cache`] with [`CacheError::InvalidConfig`](crate::CacheError::InvalidConfig)
    /// for a prefix that is empty, starts with `__` or holds characters outside
    /// `[A-Za-z0-9_.-]`, a TTL or negative TTL outside 1..=31 536 000, or an
    /// early-refresh beta that is not positive and finite.
    pub fn try_new(
        pool: impl Into<DbPool>,
        signals: Option<Arc<SignalManager>>,
        cache: Option<CacheParams>,
    ) -> Result<Self> {
        if let Some(params) = &cache {
            if let Some(prefix) = &params.prefix {
                keys::validate_prefix("store prefix", prefix)?;
            }
            if let Some(beta) = params.early_refresh {
                if !(beta.is_finite() && beta > 0.0) {
                    return Err(crate::CacheError::InvalidConfig(format!(
                        "early refresh beta must be a positive, finite number, got {beta}"
                    ))
                    .into());
                }
            }
            for (what, ttl) in [("store TTL", params.ttl), ("negative TTL", params.negative_ttl)] {
                if let Some(ttl) = ttl {
                    if !(1..=MAX_TTL_SECS).contains(&ttl) {
                        return Err(crate::CacheError::InvalidConfig(format!(
                            "{what} must be between 1 and {MAX_TTL_SECS} seconds, got {ttl}"
                        ))
                        .into());
                    }
                }
            }
        }
        Ok(Self::new(pool, signals, cache))
    }

    pub(crate) fn store_metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    pub(crate) fn metrics_handle(&self) -> Arc<StoreMetrics> {
        self.metrics.clone()
    }

    pub(crate) fn cache_settings(&self) -> Option<&StoreCache> {
        self.cache.as_deref()
    }

    /// Records how long an operation of this store took under `op` (the
    /// manager's figures and the store's), for a store with a cache.
    pub(crate) fn record_latency(&self, op: Op, took: std::time::Duration) {
        if let Some(cache) = &self.cache {
            cache.manager.record(op, took, &cache.figures);
        }
    }

    /// Runs `fut` as an operation of this store: the manager's counters and
    /// latencies it moves count for the store too ([`stats`](Self::stats)).
    pub(crate) fn scoped<F: std::future::Future>(&self, fut: F) -> impl std::future::Future<Output = F::Output> {
        crate::cache::stats::STORE.scope(self.cache.as_ref().map(|c| c.figures.clone()), fut)
    }

    /// This store's own statistics: the counters of
    /// [`CacheManager::get_stats`] (hits, misses, fills, invalidations, ...)
    /// counted for this store's operations alone, and the latencies of its
    /// hits, misses and writes (p50/p99). The pending invalidations and the
    /// circuit breaker are the manager's, shared by its stores; the outbox
    /// figures are the manager's only (0 here).
    ///
    /// # Errors
    /// [`StorehausError::CacheDisabled`] when the store was built without
    /// [`CacheParams`].
    pub fn stats(&self) -> Result<crate::CacheStats> {
        let cache = self.cache.as_ref().ok_or(StorehausError::CacheDisabled)?;
        Ok(cache.manager.store_stats(&cache.figures))
    }

    /// The database pool.
    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    /// The cache manager of this store.
    ///
    /// # Errors
    /// [`StorehausError::CacheDisabled`] when the store was built without
    /// [`CacheParams`].
    pub fn cache_manager(&self) -> Result<Arc<CacheManager>> {
        self.cache
            .as_ref()
            .map(|c| c.manager.clone())
            .ok_or(StorehausError::CacheDisabled)
    }

    /// The effective store prefix (as used in keys), if caching is enabled.
    pub fn cache_prefix(&self) -> Option<&str> {
        self.cache.as_ref().map(|c| c.prefix.as_str())
    }

    /// The effective TTL in seconds, if caching is enabled.
    pub fn cache_ttl(&self) -> Option<u64> {
        self.cache.as_ref().map(|c| c.ttl)
    }

    /// The cache key of `id`: `{global}:{prefix}:{id}`. Without caching, the
    /// key the record type would use with an empty global prefix.
    pub fn cache_key(&self, id: &T::Id) -> String {
        match &self.cache {
            Some(c) => keys::record_key(c.manager.global_prefix(), &c.prefix, id),
            None => keys::record_key("", T::PREFIX, id),
        }
    }

    /// The record with `id`, from the cache when it holds it, else from the
    /// database (and then cached, "no such row" included).
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the database fails. Cache failures
    /// are never returned: the database answers instead.
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE, outcome = Empty, coalesced = Empty, lease_waited = Empty))]
    pub async fn get_by_id(&self, id: &T::Id) -> Result<Option<T>> {
        let started = Instant::now();
        let (found, outcome) = match &self.cache {
            None => (self.load_one(id).await, Outcome::Uncached),
            Some(cache) => {
                let key = keys::record_key(cache.manager.global_prefix(), &cache.prefix, id);
                let read = cache.record_read();
                match near_first(&cache.manager, &key, &read, &cache.figures) {
                    NearFirst::Hit(v) => {
                        // Always ready: without a share of tokio's budget, a
                        // loop of near hits would never yield, and the
                        // runtime's other tasks (writes, the tracking
                        // connection's pushes) would wait for it to end.
                        tokio::task::consume_budget().await;
                        (Ok(v), Outcome::NearHit)
                    }
                    asked => {
                        let asked = matches!(asked, NearFirst::Missed);
                        // Not boxed: a box saved a near hit 330 instructions
                        // of moving this future and cost a Redis hit 700.
                        self.scoped(read_through(&cache.manager, key, read, asked, || self.load_one(id)))
                            .await
                    }
                }
            }
        };
        let took = started.elapsed();
        self.record_latency(outcome.op(), took);
        self.metrics
            .read("get_by_id", found.is_ok().then_some(outcome), 1, took);
        found
    }

    /// The row `id`, from a read replica that has replayed the record's
    /// writes, else from the primary.
    pub(crate) async fn load_one(&self, id: &T::Id) -> Result<Option<T>> {
        self.read_db(Some(std::slice::from_ref(id)), |mut conn: Pooled| async move {
            sql::select(conn.conn(), id).await
        })
        .await
    }

    /// The row `id`, from the primary.
    pub(crate) async fn load_one_fresh(&self, id: &T::Id) -> Result<Option<T>> {
        let mut conn = Pooled::acquire(&self.pool).await?;
        sql::select(conn.conn(), id).await
    }

    /// The records of `ids`, in the same order (`None` where no row exists).
    /// What the near cache holds (when the manager has one) is served from
    /// it; the other hits come from one MGET; the misses from one database
    /// query, and are then cached behind leases.
    ///
    /// # Errors
    /// [`StorehausError::Database`] when the database fails.
    #[tracing::instrument(target = "storehaus", skip_all, fields(table = T::TABLE, n = ids.len(), outcome = Empty))]
    pub async fn get_many(&self, ids: &[T::Id]) -> Result<Vec<Option<T>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let Some(cache) = &self.cache else {
            let rows = self.load_many(ids).await;
            let outcome = rows.is_ok().then_some(Outcome::Uncached);
            self.metrics.read_many(0, ids.len() as u64, outcome, started.elapsed());
            let rows = rows?;
            return Ok(ids.iter().map(|id| rows.get(id).cloned()).collect());
        };
        let keys: Vec<String> = ids
            .iter()
            .map(|id| keys::record_key(cache.manager.global_prefix(), &cache.prefix, id))
            .collect();
        let read = self
            .scoped(read_many(
                &cache.manager,
                &keys,
                ids,
                &cache.layout,
                cache.ttls(),
                cache.near,
                |missing| async move { self.load_many(&missing).await },
            ))
            .await;
        let (found, ManyOutcome { hits, rest }) = read;
        let outcome = found.is_ok().then_some(rest);
        let took = started.elapsed();
        self.record_latency(many_op(hits, ids.len()), took);
        self.metrics.read_many(hits, ids.len() as u64 - hits, outcome, took);
        found
    }

    /// One query for many ids: `= ANY($1)` on PostgreSQL, `IN (...)` on SQLite.
    async fn load_many(&self, ids: &[T::Id]) -> Result<HashMap<T::Id, T>> {
        self.read_db(Some(ids), |mut conn: Pooled| async move {
            sql::select_many(conn.conn(), ids).await
        })
        .await
    }
}

/// The latency figure of a batch read of `n` ids of which the cache
/// answered `hits`: a hit's when it answered them all.
pub(crate) fn many_op(hits: u64, n: usize) -> Op {
    if hits == n as u64 {
        Op::Hit
    } else {
        Op::Miss
    }
}

pub(crate) fn check_id<T: Cached>(id: &T::Id, record: &T) -> Result<()> {
    if record.id() != id {
        return Err(StorehausError::IdMismatch {
            expected: id.to_string(),
            found: record.id().to_string(),
        });
    }
    Ok(())
}

pub(crate) fn not_found<T: Cached>(id: &T::Id) -> StorehausError {
    StorehausError::NotFound {
        table: T::TABLE,
        id: id.to_string(),
    }
}
