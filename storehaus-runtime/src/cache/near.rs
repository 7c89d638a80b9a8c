//! The near cache: an in-process L1 of decoded records in front of Redis,
//! kept coherent by Redis itself (client tracking, see
//! `backend::redis::tracking`).
//!
//! Redis sends an invalidation for every key under the global prefix that
//! anybody changes; the tracking connection hands each one to
//! [`Near::invalidate`], a flush (or a lost connection) to [`Near::flush`].
//! The hard part is the race every client-side cache has: a reader's `GET`
//! is answered with v1, a writer changes the key, the invalidation arrives
//! and evicts nothing (the reader has not inserted yet), then the reader
//! inserts v1 — which would be served until the TTL. Here every entry
//! carries a **ticket**: the invalidation sequence number read *before* its
//! `GET` was sent. Every invalidation takes the next sequence number and
//! records it on the key's stripe (one of [`STRIPES`]); a flush records it
//! for every key. An entry is served only while its ticket is at least the
//! last number recorded for its stripe and for flushes, so an entry whose
//! read started before an invalidation of its key is never served, however
//! the insert and the invalidation interleave (the removal is only memory
//! hygiene). A stripe shared with another key costs a spurious miss, never a
//! stale hit.
//!
//! While the tracking connection is not subscribed (before the first
//! subscribe, after a disconnect, while its heartbeat goes unanswered) the
//! near cache is not live: nothing is served from it and no ticket is given
//! out, so nothing read meanwhile is kept. Becoming live again is a flush.
//!
//! Entries expire no later than the Redis TTL their value had when it was
//! read (`PTTL` is read with the value), and the cache holds at most
//! `max_entries` (moka's admission and eviction).

use std::any::Any;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

/// The hasher of the entries and the stripes: foldhash's quality variant,
/// seeded at random per process (a fraction of SipHash's cost on keys of
/// 50–80 bytes; the stripe index takes the low bits, hence the quality
/// variant).
type Hasher = foldhash::quality::RandomState;

/// How many invalidation stripes: keys share a stripe's sequence number.
pub(crate) const STRIPES: usize = 4096;

/// Proof that a read started at a given point of the invalidation sequence.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket(u64);

/// One decoded value (`Option<V>`: `None` is a cached "no such row").
#[derive(Clone)]
struct Entry {
    value: Arc<dyn Any + Send + Sync>,
    ticket: u64,
    ttl: Duration,
}

/// Expires each entry after the TTL it was inserted with.
struct ByTtl;

impl Expiry<String, Entry> for ByTtl {
    fn expire_after_create(&self, _key: &String, value: &Entry, _created_at: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The near cache's counters.
#[derive(Debug, Default)]
pub(crate) struct NearCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub invalidations: AtomicU64,
    pub flushes: AtomicU64,
}

/// The L1: decoded entries, the invalidation sequence and its stripes.
pub(crate) struct Near {
    entries: Cache<String, Entry, Hasher>,
    /// The last invalidation sequence number handed out.
    seq: AtomicU64,
    /// Per stripe, the sequence number of its last invalidation.
    stripes: Box<[AtomicU64]>,
    /// The sequence number of the last flush.
    flushed: AtomicU64,
    live: AtomicBool,
    hasher: Hasher,
    pub counters: NearCounters,
    /// Set once the tracking task has been started.
    pub(crate) started: AtomicBool,
}

impl std::fmt::Debug for Near {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Near")
            .field("entries", &self.entries.entry_count())
            .field("live", &self.live.load(SeqCst))
            .finish()
    }
}

impl Near {
    /// An empty, not yet live near cache of at most `max_entries` values.
    pub fn new(max_entries: u64) -> Self {
        Near {
            entries: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(ByTtl)
                .build_with_hasher(Hasher::default()),
            seq: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            flushed: AtomicU64::new(0),
            live: AtomicBool::new(false),
            hasher: Default::default(),
            counters: NearCounters::default(),
            started: AtomicBool::new(false),
        }
    }

    fn stripe(&self, key: &str) -> &AtomicU64 {
        &self.stripes[(self.hasher.hash_one(key) as usize) % STRIPES]
    }

    /// Whether the tracking connection is subscribed.
    pub fn is_live(&self) -> bool {
        self.live.load(SeqCst)
    }

    /// The value cached for `key` (`Some(None)`: a cached "no such row"),
    /// when the near cache is live and no invalidation of the key (or flush)
    /// came after the read the entry came from. Counts a near hit or miss.
    pub fn get<V: Clone + Send + Sync + 'static>(&self, key: &str) -> Option<Option<V>> {
        if !self.is_live() {
            return None;
        }
        let found = self
            .entries
            .get(key)
            .filter(|e| e.ticket >= self.flushed.load(SeqCst) && e.ticket >= self.stripe(key).load(SeqCst))
            .and_then(|e| e.value.downcast_ref::<Option<V>>().cloned());
        let counter = if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, SeqCst);
        found
    }

    /// A ticket for a read about to be sent to Redis; `None` while the near
    /// cache is not live (nothing read then may be kept).
    pub fn ticket(&self) -> Option<Ticket> {
        self.is_live().then(|| Ticket(self.seq.load(SeqCst)))
    }

    /// Keeps `value`, read from Redis under `ticket` with `ttl` left, unless
    /// the key (or everything) was invalidated since the ticket.
    pub fn insert<V: Send + Sync + 'static>(&self, key: &str, value: Option<V>, ttl: Duration, ticket: Ticket) {
        if !self.valid(key, ticket) || ttl.is_zero() {
            return;
        }
        let entry = Entry {
            value: Arc::new(value),
            ticket: ticket.0,
            ttl,
        };
        self.entries.insert(key.to_string(), entry);
    }

    fn valid(&self, key: &str, ticket: Ticket) -> bool {
        self.is_live() && ticket.0 >= self.flushed.load(SeqCst) && ticket.0 >= self.stripe(key).load(SeqCst)
    }

    /// `key` changed: nothing read before now is served for it again.
    pub fn invalidate(&self, key: &str) {
        let n = self.seq.fetch_add(1, SeqCst) + 1;
        self.stripe(key).fetch_max(n, SeqCst);
        self.counters.invalidations.fetch_add(1, SeqCst);
        self.entries.invalidate(key);
    }

    /// Everything may have changed: nothing read before now is served again.
    pub fn flush(&self) {
        let n = self.seq.fetch_add(1, SeqCst) + 1;
        self.flushed.fetch_max(n, SeqCst);
        self.counters.flushes.fetch_add(1, SeqCst);
        self.entries.invalidate_all();
    }

    /// The tracking connection is subscribed (`true`: after a flush, so
    /// that nothing from before the subscription survives) or lost.
    pub fn set_live(&self, live: bool) {
        if live {
            self.flush();
            self.live.store(true, SeqCst);
        } else {
            self.live.store(false, SeqCst);
            self.flush();
        }
    }

    /// Whether an entry for `key` would be served now (tests).
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn holds(&self, key: &str) -> bool {
        self.is_live()
            && self
                .entries
                .get(key)
                .is_some_and(|e| e.ticket >= self.flushed.load(SeqCst) && e.ticket >= self.stripe(key).load(SeqCst))
    }
}

/// The near cache hears a tracking connection's news through this.
#[cfg(feature = "redis")]
impl crate::backend::listener::KeyListener for Near {
    fn invalidate(&self, key: &str) {
        Near::invalidate(self, key);
    }

    fn flush(&self) {
        Near::flush(self);
    }

    fn set_live(&self, live: bool) {
        Near::set_live(self, live);
    }

    fn is_live(&self) -> bool {
        Near::is_live(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn live() -> Near {
        let near = Near::new(100);
        near.set_live(true);
        near
    }

    #[test]
    fn serves_what_was_inserted_under_a_current_ticket() {
        let near = live();
        let t = near.ticket().unwrap();
        near.insert("k", Some(7u32), TTL, t);
        assert_eq!(near.get::<u32>("k"), Some(Some(7)));
        near.insert("absent", None::<u32>, TTL, near.ticket().unwrap());
        assert_eq!(near.get::<u32>("absent"), Some(None), "a cached no-such-row");
        assert_eq!(near.get::<String>("k"), None, "another type is a miss");
    }

    #[test]
    fn an_invalidation_after_the_ticket_drops_the_insert_whichever_comes_first() {
        let near = live();
        // The invalidation lands between the read and the insert.
        let t = near.ticket().unwrap();
        near.invalidate("k");
        near.insert("k", Some(1u32), TTL, t);
        assert_eq!(near.get::<u32>("k"), None);
        // The insert lands first, then the invalidation.
        let t = near.ticket().unwrap();
        near.insert("k", Some(2u32), TTL, t);
        near.invalidate("k");
        assert_eq!(near.get::<u32>("k"), None);
        // A read that started after the invalidation is kept.
        let t = near.ticket().unwrap();
        near.insert("k", Some(3u32), TTL, t);
        assert_eq!(near.get::<u32>("k"), Some(Some(3)));
    }

    #[test]
    fn a_stale_insert_that_slips_in_is_never_served() {
        let near = live();
        let t = near.ticket().unwrap();
        near.invalidate("k");
        // Bypass the insert check, as a racing insert that checked before
        // the invalidation would.
        near.entries.insert(
            "k".into(),
            Entry {
                value: Arc::new(Some(1u32)),
                ticket: t.0,
                ttl: TTL,
            },
        );
        assert_eq!(near.get::<u32>("k"), None);
        assert!(!near.holds("k"));
    }

    #[test]
    fn not_live_serves_nothing_and_keeps_nothing_and_reconnecting_flushes() {
        let near = live();
        let t = near.ticket().unwrap();
        near.insert("k", Some(1u32), TTL, t);
        near.set_live(false);
        assert_eq!(near.get::<u32>("k"), None);
        assert!(near.ticket().is_none());
        near.insert("j", Some(1u32), TTL, t);
        near.set_live(true);
        assert_eq!(near.get::<u32>("k"), None, "an entry from before the disconnect");
        assert_eq!(near.get::<u32>("j"), None);
    }

    #[test]
    fn entries_expire_with_the_ttl_they_came_with() {
        let near = live();
        near.insert("k", Some(1u32), Duration::from_millis(30), near.ticket().unwrap());
        assert_eq!(near.get::<u32>("k"), Some(Some(1)));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(near.get::<u32>("k"), None);
    }

    #[test]
    fn a_flush_drops_everything_read_before_it() {
        let near = live();
        let t = near.ticket().unwrap();
        near.insert("a", Some(1u32), TTL, t);
        near.insert("b", Some(2u32), TTL, t);
        near.flush();
        assert_eq!(near.get::<u32>("a"), None);
        assert_eq!(near.get::<u32>("b"), None);
        assert_eq!(near.counters.flushes.load(SeqCst), 2, "one for going live, one here");
    }
}
