//! [`CacheParams`]: how one store uses the cache.

use std::sync::Arc;

use crate::cache::CacheManager;

/// Per-store cache settings: which [`CacheManager`], and optionally a TTL and
/// a prefix that override the record type's `#[cache(...)]` values.
///
/// TTL precedence: [`with_ttl`](Self::with_ttl) > `#[cache(ttl)]` >
/// [`CacheConfig`](crate::CacheConfig)'s default. Prefix precedence:
/// [`with_prefix`](Self::with_prefix) > `#[cache(prefix)]` > the table name.
#[derive(Debug, Clone)]
pub struct CacheParams {
    pub(super) manager: Arc<CacheManager>,
    pub(super) ttl: Option<u64>,
    pub(super) prefix: Option<String>,
    pub(super) near: bool,
    pub(super) negative_ttl: Option<u64>,
    pub(super) fill_on_write: bool,
    pub(super) early_refresh: Option<f64>,
}

/// How long a cached "no such row" lives unless
/// [`CacheParams::with_negative_ttl`] says otherwise (or the store's TTL,
/// when that is shorter): 60 s.
pub const DEFAULT_NEGATIVE_TTL_SECS: u64 = 60;

impl CacheParams {
    /// Cache through `manager` with the record type's own TTL and prefix.
    pub fn new(manager: Arc<CacheManager>) -> Self {
        CacheParams {
            manager,
            ttl: None,
            prefix: None,
            near: true,
            negative_ttl: None,
            fill_on_write: false,
            early_refresh: None,
        }
    }

    /// Probabilistic early refresh of hot records (XFetch), against expiry
    /// stampedes; off by default. A `get_by_id` hit then reads the entry's
    /// remaining TTL in the same round trip (`GET` + `PTTL`, pipelined) and,
    /// with a probability that grows as the expiry nears and with the time
    /// the store's loads take, refreshes the entry from the database before
    /// it expires: one reader refreshes, the others keep being served. The
    /// refresh replaces the entry only if it still holds the bytes that were
    /// read, so a write that lands meanwhile wins. `beta` scales how early
    /// (1.0 is the paper's choice; larger refreshes earlier); a value that
    /// is not positive and finite turns it off
    /// ([`GenericStore::try_new`](crate::GenericStore::try_new) rejects it). Each hit pays the `PTTL`.
    pub fn with_early_refresh(mut self, beta: f64) -> Self {
        self.early_refresh = Some(beta);
        self
    }

    /// TTL in seconds of a cached "no such row" (a read of an id that has
    /// no row caches that answer too). Default: 60 s
    /// ([`DEFAULT_NEGATIVE_TTL_SECS`]), or the store's TTL when that is
    /// shorter; clamped to 1..=31 536 000 ([`GenericStore::try_new`](crate::GenericStore::try_new)
    /// rejects a value outside it).
    ///
    /// Short, because such an entry that outlives an invalidation it missed
    /// (a raw-SQL insert without
    /// [`watch_external_writes`](crate::GenericStore::watch_external_writes)) hides
    /// a real row, which is worse than serving an old version of one.
    pub fn with_negative_ttl(mut self, secs: u64) -> Self {
        self.negative_ttl = Some(secs);
        self
    }

    /// Whether `create` and `update` put the row they wrote into the cache
    /// (default `false`: writes only invalidate, and the next read fills).
    ///
    /// The fill is guarded like a read's: before the write is sent, the key
    /// is deleted and leased; after the commit, the written row replaces the
    /// lease only if the lease is still there, and the key is deleted
    /// otherwise. A concurrent write (from any process) removes or replaces
    /// the lease, so an older row can never overwrite a newer one. It costs
    /// two cache round trips before the write (each under its own
    /// [`with_timeout`](crate::CacheConfig::with_timeout) budget, like the
    /// fill after the commit); when the cache cannot be reached the write
    /// just invalidates. `update_many`, `delete*` and transactions always
    /// invalidate.
    pub fn with_fill_on_write(mut self, fill: bool) -> Self {
        self.fill_on_write = fill;
        self
    }

    /// Whether this store's `get_by_id` and `get_many` use the manager's near cache
    /// ([`CacheConfig::with_near_cache`](crate::CacheConfig::with_near_cache));
    /// on by default when the manager has one. Turn it off for a store whose
    /// rows are written about as often as they are read: each of its reads
    /// would pay the near cache's bookkeeping for nothing.
    pub fn with_near_cache(mut self, on: bool) -> Self {
        self.near = on;
        self
    }

    /// TTL in seconds for this store (clamped to 1..=31 536 000).
    pub fn with_ttl(mut self, ttl: u64) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Key prefix for this store. Characters outside `[A-Za-z0-9_.-]` are
    /// percent-escaped in keys (use [`GenericStore::try_new`](crate::GenericStore::try_new) to reject them).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }
}
