//! The one background fill: what a read loaded from the database is written
//! to the cache in a task of its own, guarded so that it can never land
//! after a write that followed the load.
//!
//! Two guards, one routine:
//! - a record (`get_by_id`, `get_many`) is written only where its key still
//!   holds the reader's fill lease (every write deletes the key, and the
//!   lease with it);
//! - a query result is written only while the store's query generation still
//!   holds the value read before the query (every write bumps it).
//!
//! `fills` counts values written, `fills_rejected` values dropped by their
//! guard; a fill that cannot reach the cache is neither (the breaker and the
//! error counters see it).

use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::cache::codec;
use crate::cache::flight::{Lead, Lease};
use crate::cache::CacheManager;

/// What a fill is guarded by.
pub(crate) enum Guard {
    /// Every key must still hold this lease.
    Lease(Lease),
    /// The counter must still hold `expected` (one key per fill).
    Generation { counter: String, expected: u64 },
    /// Every key must still hold exactly these bytes (an early refresh
    /// replaces the value it read; a write deletes it).
    Value(Vec<u8>),
}

/// Values to write, one per key, and their guard.
pub(crate) struct Fill {
    pub keys: Vec<String>,
    pub values: Vec<Vec<u8>>,
    pub guard: Guard,
    pub ttl_secs: u64,
}

impl CacheManager {
    /// Encodes a value for a fill (`None`: a cached "no such row"). A value
    /// serde cannot encode is counted in `encode_errors` and logged, and is
    /// not cached; the reader has its answer regardless.
    pub(crate) fn encode_fill<V: Serialize + ?Sized>(&self, fingerprint: u64, value: Option<&V>) -> Option<Vec<u8>> {
        match codec::encode(fingerprint, value) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.count(|c| &c.encode_errors);
                self.warn("encode", &e);
                None
            }
        }
    }

    /// Writes `fill` in a task of its own, under a budget of its own.
    /// `lead`, when given, is the load's single-flight handle: it is dropped
    /// once the fill has landed, so the load stays joinable until then.
    pub(crate) fn spawn_fill(self: &Arc<Self>, fill: Fill, lead: Option<Lead>) {
        if fill.keys.is_empty() {
            return;
        }
        let mgr = self.clone();
        let landed = self.fill_epochs.token();
        // The fill counts for the store whose read spawned it.
        let store = crate::cache::stats::current_store();
        let filling = async move {
            mgr.land(&fill).await;
            drop(lead);
            drop(landed);
        };
        tokio::spawn(crate::cache::stats::STORE.scope(store, filling.instrument(tracing::Span::current())));
    }

    /// Writes `fill` now, under a budget of its own, and counts it: how many
    /// values were written (0 when the cache could not be reached).
    pub(crate) async fn land(&self, fill: &Fill) -> u64 {
        #[cfg(feature = "test-hooks")]
        for key in &fill.keys {
            self.hooks.before_fill(key).await;
        }
        let deadline = self.deadline();
        let ttl_ms = fill.ttl_secs.saturating_mul(1000);
        let written = match &fill.guard {
            Guard::Lease(lease) => {
                let keys: Vec<&str> = fill.keys.iter().map(String::as_str).collect();
                let values: Vec<&[u8]> = fill.values.iter().map(Vec::as_slice).collect();
                self.guarded(deadline, "fill", || self.backend.fill(&keys, &values, lease, ttl_ms))
                    .await
            }
            // The fill primitive compares the key with any bytes: here, the
            // value the refresh replaces.
            Guard::Value(expected) => {
                let keys: Vec<&str> = fill.keys.iter().map(String::as_str).collect();
                let values: Vec<&[u8]> = fill.values.iter().map(Vec::as_slice).collect();
                self.guarded(deadline, "refresh_fill", || {
                    self.backend.fill(&keys, &values, expected, ttl_ms)
                })
                .await
            }
            Guard::Generation { counter, expected } => self
                .guarded(deadline, "query_fill", || {
                    self.backend
                        .fill_if_counter(&fill.keys[0], &fill.values[0], ttl_ms, counter, *expected)
                })
                .await
                .map(u64::from),
        };
        match written {
            Ok(filled) => {
                let rejected = fill.keys.len() as u64 - filled;
                self.count_n(|c| &c.fills, filled);
                self.count_n(|c| &c.fills_rejected, rejected);
                self.metrics.fills(filled, rejected);
                if rejected > 0 {
                    tracing::debug!(target: "storehaus", rejected, "fill rejected: a write invalidated the key while the database was read");
                }
                filled
            }
            Err(_) => 0,
        }
    }
}

/// A store's TTLs: for records, and for cached "no such row" entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ttls {
    pub record: u64,
    pub absent: u64,
}

impl Ttls {
    /// The TTL of an entry holding `value` (`None`: "no such row").
    pub fn of<V>(&self, value: Option<&V>) -> u64 {
        match value {
            Some(_) => self.record,
            None => self.absent,
        }
    }
}

/// The fills under way, by epoch, so that [`CacheManager::flush_fills`] can
/// wait for the fills spawned before it was called (and not for every fill
/// spawned while it waits, which under steady reads would never end).
///
/// Every fill task holds a sender of the epoch current when it was spawned;
/// a flush starts a new epoch and waits until every sender of the old one
/// is gone (the receiver then reads `None`). A flush also holds a sender of
/// the new epoch until it returns, so a later flush waits for the fills an
/// earlier, still running one waits for.
#[derive(Debug)]
pub(crate) struct FillEpochs {
    current: Mutex<Epoch>,
}

#[derive(Debug)]
struct Epoch {
    tx: mpsc::Sender<()>,
    rx: mpsc::Receiver<()>,
}

impl Epoch {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel(1);
        Epoch { tx, rx }
    }
}

impl Default for FillEpochs {
    fn default() -> Self {
        FillEpochs {
            current: Mutex::new(Epoch::new()),
        }
    }
}

impl FillEpochs {
    /// A token for a fill spawned now; dropped when the fill has landed.
    fn token(&self) -> Option<mpsc::Sender<()>> {
        self.current.lock().ok().map(|e| e.tx.clone())
    }

    /// Waits until every fill that held a token before this call is done.
    pub(crate) async fn flush(&self) {
        let (old, hold) = {
            let Ok(mut current) = self.current.lock() else {
                return;
            };
            let old = std::mem::replace(&mut *current, Epoch::new());
            (old, current.tx.clone())
        };
        let Epoch { tx, mut rx } = old;
        drop(tx);
        // Nothing is ever sent: `None` once the last token is gone.
        let _ = rx.recv().await;
        drop(hold);
    }
}

impl CacheManager {
    /// Waits until every background fill spawned before this call has
    /// landed (or was dropped by its guard, or failed): after it, what the
    /// reads so far loaded is in the cache. For tests and warm-up code, in
    /// place of sleeps. Fills spawned while it waits are not waited for.
    ///
    /// Each fill runs under its own budget, so this returns within about one
    /// [`with_timeout`](crate::CacheConfig::with_timeout) even when the
    /// cache is down.
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
    /// let store = GenericStore::<User>::new(db_pool, None, Some(CacheParams::new(cache_manager.clone())));
    /// store.create(User { id: 1, name: "Ada".into() }, None).await?;
    /// store.get_by_id(&1).await?;        // a miss: filled in the background
    /// cache_manager.flush_fills().await; // the fill has landed
    /// assert!(cache_manager.get_record::<User>("users", "1").await?.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn flush_fills(&self) {
        self.fill_epochs.flush().await;
    }
}
