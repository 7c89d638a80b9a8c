//! The in-process backend behind `memory://`: a [moka] cache that speaks the
//! same primitives as the Redis backend, with the same keys, the same bytes
//! and the same semantics, so everything above the [`Backend`](crate::backend::Backend)
//! enum (envelopes, leases, stats, invalidation) is shared.
//!
//! - Values live in a bounded `moka::sync::Cache` (TinyLFU, `max_capacity`
//!   entries, default [`DEFAULT_MAX_CAPACITY`]). Every value carries its own
//!   deadline, which moka's [`Expiry`] turns into a per-entry TTL: records,
//!   "no such row" markers and fill leases each expire on their own clock,
//!   exactly like `SET ... PX`.
//! - Every write goes through moka's compute operation, which serializes all
//!   writers of one key behind a key-level lock. That makes each primitive as
//!   atomic as its Redis counterpart: `get_or_lease` is `SET NX GET`, `fill`
//!   is the compare-and-set of `FILL_SCRIPT`, and an invalidation can never
//!   slip between a fill's compare and its set. Reads take no lock.
//! - Counters (query generations) and sets (tag indexes) live in small
//!   separate tables that moka never evicts: an evicted generation would make
//!   old query results current again, an evicted tag set would forget which
//!   keys to invalidate. Like in Redis, a counter has no TTL and a missing
//!   one starts at a random value; a tag set expires like its Redis twin
//!   (its TTL is only ever lengthened). A tag set that outgrows the cache
//!   drops the members that are no longer cached.
//! - `scan_step` walks the keys and removes those matching a Redis glob
//!   (`*`, `?`, `[...]`, `\`), as `SCAN MATCH` + `UNLINK` would, in one step.
//!
//! The cache is private to one [`CacheManager`](crate::CacheManager): share
//! the manager (it is meant to live in an `Arc`), not the URL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;
use moka::Expiry;

use crate::backend::ServerStats;
use crate::backend::{counter_seed, glob, Invalidated, Invalidation, ScanStep};
use crate::error::{CacheError, CacheResult};

mod sets;

use self::sets::TagSet;

/// Entries kept when the URL names no `max_capacity`.
pub(crate) const DEFAULT_MAX_CAPACITY: u64 = 100_000;

/// One cached value and the instant it expires.
#[derive(Clone)]
struct Item {
    bytes: Arc<[u8]>,
    expires_at: Instant,
}

/// Tells moka each entry's TTL: the time left until its own deadline, on
/// insert and on every replacement alike.
struct UntilDeadline;

impl Expiry<String, Item> for UntilDeadline {
    fn expire_after_create(&self, _key: &String, item: &Item, created_at: Instant) -> Option<Duration> {
        Some(item.expires_at.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _key: &String,
        item: &Item,
        updated_at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(item.expires_at.saturating_duration_since(updated_at))
    }
}

/// The backend. Lock order: a `counters` or `sets` guard may be held while
/// moka locks a key (in `fill_if_counter`), never the other way round.
pub(crate) struct MemoryBackend {
    values: Cache<String, Item>,
    /// Entries moka evicted for room (not expiries, not deletes).
    evicted: Arc<AtomicU64>,
    counters: RwLock<HashMap<String, i64>>,
    sets: RwLock<HashMap<String, TagSet>>,
    /// Live-version registries: member -> the instant its time ends.
    registries: RwLock<HashMap<String, HashMap<String, Instant>>>,
    /// Replica markers: the highest position, and the instant it expires.
    markers: RwLock<HashMap<String, (u64, Instant)>>,
    max_capacity: u64,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("entries", &self.values.entry_count())
            .field("max_capacity", &self.max_capacity)
            .finish()
    }
}

/// A random counter start, as the Redis backend seeds them.
fn seed_i64() -> i64 {
    i64::try_from(counter_seed()).unwrap_or(1)
}

/// The deadline `ms` milliseconds from now. Zero is refused, as Redis
/// refuses `PX 0`; an absurdly long TTL saturates instead of overflowing.
fn deadline_in(ms: u64, command: &str) -> CacheResult<Instant> {
    if ms == 0 {
        return Err(CacheError::Command(
            format!("ERR invalid expire time in '{command}' command").into(),
        ));
    }
    let now = Instant::now();
    Ok(now
        .checked_add(Duration::from_millis(ms))
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600)))
}

/// A piece of a `memory://` URL for an error message: itself when it is a
/// plain word, else not shown (a URL's query can hold a password, which
/// no error repeats; found by the `config_url` fuzz target).
fn shown(piece: &str) -> String {
    if piece.len() <= 64
        && piece
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        format!("{piece:?}")
    } else {
        "(not shown: it is not a plain word)".to_string()
    }
}

impl MemoryBackend {
    /// Opens `memory://` or `memory://?max_capacity=N` (N entries, N ≥ 1).
    pub fn open(url: &str) -> CacheResult<Self> {
        let rest = url.strip_prefix("memory://").ok_or_else(|| {
            CacheError::InvalidConfig(format!("{:?} is not a memory:// URL", crate::config::redact_url(url)))
        })?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        if !location.is_empty() && location != "/" {
            return Err(CacheError::InvalidConfig(format!(
                "memory:// takes no host or path (got {:?}); use memory:// or memory://?max_capacity=N",
                crate::config::redact_url(url)
            )));
        }
        let mut max_capacity = DEFAULT_MAX_CAPACITY;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "max_capacity" => {
                    max_capacity = value.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        CacheError::InvalidConfig(format!(
                            "max_capacity must be a whole number of entries, at least 1; got {}",
                            shown(value)
                        ))
                    })?;
                }
                other => {
                    return Err(CacheError::InvalidConfig(format!(
                        "unknown memory:// option {}; the only option is max_capacity=N (entries)",
                        shown(other)
                    )))
                }
            }
        }
        Ok(Self::with_capacity(max_capacity))
    }

    /// An empty cache holding at most `max_capacity` values.
    pub fn with_capacity(max_capacity: u64) -> Self {
        let evicted = Arc::new(AtomicU64::new(0));
        let counted = evicted.clone();
        MemoryBackend {
            values: Cache::builder()
                .max_capacity(max_capacity)
                .expire_after(UntilDeadline)
                .eviction_listener(move |_key, _item, cause| {
                    if cause == RemovalCause::Size {
                        counted.fetch_add(1, AtomicOrdering::Relaxed);
                    }
                })
                .build(),
            evicted,
            counters: RwLock::new(HashMap::new()),
            sets: RwLock::new(HashMap::new()),
            registries: RwLock::new(HashMap::new()),
            markers: RwLock::new(HashMap::new()),
            max_capacity,
        }
    }

    fn counter(&self, key: &str) -> Option<i64> {
        let counters = self.counters.read().unwrap_or_else(PoisonError::into_inner);
        counters.get(key).copied()
    }

    /// A key's bytes as `GET` returns them: a value, or a counter in decimal.
    fn value(&self, key: &str) -> Option<Vec<u8>> {
        match self.values.get(key) {
            Some(item) => Some(item.bytes.to_vec()),
            None => self.counter(key).map(|n| n.to_string().into_bytes()),
        }
    }

    /// `SET key value PX ms NX`, atomically: `Ok(())` when the key was free
    /// and now holds `value`, `Err(current bytes)` when it was taken.
    fn set_nx(&self, key: &str, value: &[u8], expires_at: Instant) -> Result<(), Vec<u8>> {
        // Counter keys never hold values (no id renders as `query:gen`), so
        // this check needs no atomicity with the insert below; it only keeps
        // `SET NX` from shadowing a counter.
        if let Some(n) = self.counter(key) {
            return Err(n.to_string().into_bytes());
        }
        let mut current = None;
        let result = self.values.entry_by_ref(key).and_compute_with(|entry| match entry {
            Some(entry) => {
                current = Some(entry.into_value().bytes.to_vec());
                Op::Nop
            }
            None => Op::Put(Item {
                bytes: Arc::from(value),
                expires_at,
            }),
        });
        match result {
            CompResult::Inserted(_) => Ok(()),
            _ => Err(current.unwrap_or_default()),
        }
    }

    /// `DEL key`: whether a value, a counter or a set existed.
    fn delete_one(&self, key: &str) -> bool {
        let result = self
            .values
            .entry_by_ref(key)
            .and_compute_with(|entry| if entry.is_some() { Op::Remove } else { Op::Nop });
        let removed_value = matches!(result, CompResult::Removed(_));
        let removed_other = self.remove_counter(key) | self.remove_set(key).is_some() | self.remove_registry(key);
        removed_value || removed_other
    }

    /// Always answers: it is this process.
    pub async fn probe(&self) -> CacheResult<()> {
        Ok(())
    }

    pub async fn get(&self, key: &str) -> CacheResult<Option<Vec<u8>>> {
        Ok(self.value(key))
    }

    /// No batching in process: a `get`.
    pub async fn read(&self, key: &str) -> CacheResult<Option<Vec<u8>>> {
        self.get(key).await
    }

    pub async fn get_with_pttl(&self, key: &str) -> CacheResult<(Option<Vec<u8>>, i64)> {
        let pttl = match self.pttl(key) {
            None => -2,
            Some(None) => -1,
            Some(Some(left)) => i64::try_from(left.as_millis()).unwrap_or(i64::MAX),
        };
        Ok((self.value(key), pttl))
    }

    pub async fn mget(&self, keys: &[String]) -> CacheResult<Vec<Option<Vec<u8>>>> {
        Ok(keys.iter().map(|k| self.value(k)).collect())
    }

    pub async fn get_or_lease(&self, key: &str, lease: &[u8], lease_ms: u64) -> CacheResult<Option<Vec<u8>>> {
        // A hit needs no lock: reading an existing value is all `SET NX GET`
        // does to it.
        if let Some(bytes) = self.value(key) {
            return Ok(Some(bytes));
        }
        let expires_at = deadline_in(lease_ms, "set")?;
        Ok(self.set_nx(key, lease, expires_at).err())
    }

    // Values here are always byte strings with an expiry: nothing is ever replaced.
    pub async fn lease_many(&self, keys: &[String], lease: &[u8], lease_ms: u64) -> CacheResult<(Vec<bool>, u64)> {
        let expires_at = deadline_in(lease_ms, "set")?;
        Ok((
            keys.iter().map(|k| self.set_nx(k, lease, expires_at).is_ok()).collect(),
            0,
        ))
    }

    pub async fn fill(&self, keys: &[&str], values: &[&[u8]], lease: &[u8], ttl_ms: u64) -> CacheResult<u64> {
        let expires_at = deadline_in(ttl_ms, "set")?;
        let mut filled = 0;
        for (key, value) in keys.iter().zip(values) {
            let result = self.values.entry_by_ref(*key).and_compute_with(|entry| match entry {
                Some(entry) if *entry.value().bytes == *lease => Op::Put(Item {
                    bytes: Arc::from(*value),
                    expires_at,
                }),
                _ => Op::Nop,
            });
            if matches!(result, CompResult::ReplacedWith(_)) {
                filled += 1;
            }
        }
        Ok(filled)
    }

    pub async fn release_lease(&self, key: &str, lease: &[u8]) -> CacheResult<()> {
        self.values.entry_by_ref(key).and_compute_with(|entry| match entry {
            Some(entry) if *entry.value().bytes == *lease => Op::Remove,
            _ => Op::Nop,
        });
        Ok(())
    }

    pub async fn set_ex(&self, key: &str, value: &[u8], ttl_secs: u64) -> CacheResult<()> {
        let expires_at = deadline_in(ttl_secs.saturating_mul(1000), "set")?;
        self.remove_counter(key);
        self.values.entry_by_ref(key).and_compute_with(|_| {
            Op::Put(Item {
                bytes: Arc::from(value),
                expires_at,
            })
        });
        Ok(())
    }

    pub async fn delete(&self, keys: &[String]) -> CacheResult<u64> {
        Ok(keys.iter().filter(|k| self.delete_one(k)).count() as u64)
    }

    pub async fn invalidate(&self, inv: &Invalidation<'_>) -> CacheResult<Invalidated> {
        if !inv.markers.is_empty() {
            // Raised before anything is deleted, like the Redis pipeline.
            let now = Instant::now();
            let mut markers = self.markers.write().unwrap_or_else(PoisonError::into_inner);
            markers.retain(|_, (_, until)| *until > now);
            for m in inv.markers {
                let until = deadline_in(m.ttl_ms, "pexpire")?;
                let entry = markers.entry(m.key.clone()).or_insert((m.lsn, until));
                *entry = (entry.0.max(m.lsn), until);
            }
        }
        let mut out = Invalidated {
            deleted: inv.keys.iter().filter(|k| self.delete_one(k)).count() as u64,
            ..Invalidated::default()
        };
        for counter in inv.counters {
            if self.bump_counter(counter).is_err() {
                out.corrupt += 1;
                self.reset_counter(counter);
            }
        }
        if !inv.tags.is_empty() {
            let now = Instant::now();
            let mut sets = self.sets.write().unwrap_or_else(PoisonError::into_inner);
            for tag in inv.tags {
                self.add_to_set(&mut sets, tag, now);
            }
        }
        Ok(out)
    }

    pub async fn markers(&self, keys: &[String]) -> CacheResult<Vec<Option<u64>>> {
        let now = Instant::now();
        let markers = self.markers.read().unwrap_or_else(PoisonError::into_inner);
        Ok(keys
            .iter()
            .map(|k| markers.get(k).filter(|(_, until)| *until > now).map(|(lsn, _)| *lsn))
            .collect())
    }

    pub async fn server_stats(&self) -> CacheResult<ServerStats> {
        Ok(ServerStats {
            maxmemory_policy: Some("tinylfu".into()),
            evicted_keys: Some(self.evicted.load(AtomicOrdering::Relaxed)),
            entries: Some((self.values.entry_count(), self.max_capacity)),
            ..ServerStats::default()
        })
    }

    // One step: the whole walk at once (the cursor is ignored).
    pub async fn scan_step(&self, _cursor: u64, pattern: &str, spare: Option<&str>) -> CacheResult<ScanStep> {
        let bytes = pattern.as_bytes();
        let spared = |key: &str| spare.is_some_and(|s| key.starts_with(s));
        let mut keys: Vec<String> = self
            .values
            .iter()
            .map(|(key, _)| key)
            .filter(|key| glob::matches(bytes, key.as_bytes()) && !spared(key))
            .map(|key| key.as_ref().clone())
            .collect();
        let mut removed = keys.iter().filter(|key| self.delete_one(key)).count() as u64;
        let mut unlink = |key: &String| {
            let hit = glob::matches(bytes, key.as_bytes()) && !spared(key);
            if hit {
                removed += 1;
                keys.push(key.clone());
            }
            !hit
        };
        self.counters
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, _| unlink(key));
        self.sets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, _| unlink(key));
        self.registries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, _| unlink(key));
        Ok(ScanStep { next: 0, removed, keys })
    }

    // One step: the whole set at once (the cursor is ignored).
    // Registries live beside values and counters, like a sorted set in Redis.
    /// The time `key` has left, as Redis' `PTTL` would say: `None` for a
    /// missing key, `Some(None)` for a key without TTL (a counter).
    fn pttl(&self, key: &str) -> Option<Option<Duration>> {
        match self.values.get(key) {
            Some(item) => Some(Some(item.expires_at.saturating_duration_since(Instant::now()))),
            None => self.counter(key).map(|_| None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Marker, TagAdd};

    #[test]
    fn an_option_that_is_not_a_plain_word_is_not_repeated_in_the_error() {
        // Found by the `config_url` fuzz target (fuzz/).
        for url in [
            "memory://?u:s3cret@x=1",
            "memory://?max_capacity=:s3cret@x",
            "memory://?u:s3cret&x@",
        ] {
            let Err(err) = MemoryBackend::open(url) else {
                panic!("{url} was accepted")
            };
            let err = err.to_string();
            assert!(!err.contains("s3cret"), "{url}: {err}");
        }
        let Err(err) = MemoryBackend::open("memory://?max_entries=5") else {
            panic!("max_entries was accepted")
        };
        let err = err.to_string();
        assert!(err.contains("\"max_entries\""), "a plain option name is shown: {err}");
    }

    #[test]
    fn urls_are_parsed_and_checked() {
        assert_eq!(
            MemoryBackend::open("memory://").unwrap().max_capacity,
            DEFAULT_MAX_CAPACITY
        );
        assert_eq!(
            MemoryBackend::open("memory:///").unwrap().max_capacity,
            DEFAULT_MAX_CAPACITY
        );
        assert_eq!(MemoryBackend::open("memory://?max_capacity=7").unwrap().max_capacity, 7);
        for bad in [
            "memory://?max_capacity=0",
            "memory://?max_capacity=-1",
            "memory://?max_capacity=",
            "memory://?max_capacity=lots",
            "memory://?size=10",
            "memory://localhost",
            "memory://host/db?max_capacity=1",
        ] {
            let err = MemoryBackend::open(bad).map(|_| ()).unwrap_err();
            assert!(matches!(err, CacheError::InvalidConfig(_)), "{bad}: {err}");
        }
    }

    const LEASE: &[u8] = b"\xC1lease-of-reader-1";
    const OTHER_LEASE: &[u8] = b"\xC1lease-of-reader-2";

    #[tokio::test]
    async fn get_set_and_ttl() {
        let b = MemoryBackend::with_capacity(100);
        assert_eq!(b.get("k").await.unwrap(), None);
        b.set_ex("k", b"v1", 60).await.unwrap();
        assert_eq!(b.get("k").await.unwrap(), Some(b"v1".to_vec()));
        let ttl = b.pttl("k").unwrap().unwrap();
        assert!(
            ttl > Duration::from_secs(59) && ttl <= Duration::from_secs(60),
            "{ttl:?}"
        );
        b.set_ex("k", b"v2", 5).await.unwrap();
        assert!(
            b.pttl("k").unwrap().unwrap() <= Duration::from_secs(5),
            "SET replaces the TTL"
        );
        assert_eq!(
            b.mget(&["k".into(), "nope".into()]).await.unwrap(),
            vec![Some(b"v2".to_vec()), None]
        );
        assert!(matches!(b.set_ex("k", b"v", 0).await, Err(CacheError::Command(_))));
    }

    #[tokio::test]
    async fn entries_expire_on_their_own_clock() {
        let b = MemoryBackend::with_capacity(100);
        assert_eq!(b.get_or_lease("short", LEASE, 40).await.unwrap(), None);
        assert_eq!(b.get_or_lease("long", LEASE, 60_000).await.unwrap(), None);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(b.get("short").await.unwrap(), None, "the lease expired");
        assert_eq!(b.get("long").await.unwrap(), Some(LEASE.to_vec()));
        assert_eq!(b.fill(&["short"], &[b"v"], LEASE, 60_000).await.unwrap(), 0);
        // An expired key is free again.
        assert_eq!(b.get_or_lease("short", OTHER_LEASE, 60_000).await.unwrap(), None);
        assert_eq!(b.get("short").await.unwrap(), Some(OTHER_LEASE.to_vec()));
    }

    #[tokio::test]
    async fn get_or_lease_is_set_nx_get() {
        let b = MemoryBackend::with_capacity(100);
        assert_eq!(
            b.get_or_lease("k", LEASE, 2_000).await.unwrap(),
            None,
            "free: the lease is ours"
        );
        assert_eq!(b.get("k").await.unwrap(), Some(LEASE.to_vec()));
        assert_eq!(
            b.get_or_lease("k", OTHER_LEASE, 2_000).await.unwrap(),
            Some(LEASE.to_vec()),
            "taken: the holder's lease is returned and kept"
        );
        assert_eq!(b.get("k").await.unwrap(), Some(LEASE.to_vec()));
        b.set_ex("v", b"value", 60).await.unwrap();
        assert_eq!(
            b.get_or_lease("v", LEASE, 2_000).await.unwrap(),
            Some(b"value".to_vec())
        );
        assert_eq!(b.get("v").await.unwrap(), Some(b"value".to_vec()));
        assert!(b.get_or_lease("z", LEASE, 0).await.is_err(), "PX 0 is refused");
    }

    #[tokio::test]
    async fn fill_is_a_compare_and_set_against_the_lease() {
        let b = MemoryBackend::with_capacity(100);
        assert_eq!(b.get_or_lease("a", LEASE, 2_000).await.unwrap(), None);
        assert_eq!(b.get_or_lease("b", OTHER_LEASE, 2_000).await.unwrap(), None);
        assert_eq!(b.get_or_lease("c", LEASE, 2_000).await.unwrap(), None);
        // A write deletes `c` (and its lease) while its reader was loading.
        assert_eq!(b.delete(&["c".into()]).await.unwrap(), 1);
        let filled = b
            .fill(&["a", "b", "c", "d"], &[b"va", b"vb", b"vc", b"vd"], LEASE, 30_000)
            .await
            .unwrap();
        assert_eq!(filled, 1, "only the key still holding our lease");
        assert_eq!(b.get("a").await.unwrap(), Some(b"va".to_vec()));
        let ttl = b.pttl("a").unwrap().unwrap();
        assert!(
            ttl > Duration::from_secs(29),
            "the fill's TTL replaces the lease's: {ttl:?}"
        );
        assert_eq!(
            b.get("b").await.unwrap(),
            Some(OTHER_LEASE.to_vec()),
            "another reader's lease"
        );
        assert_eq!(b.get("c").await.unwrap(), None, "no stale value after the write");
        assert_eq!(b.get("d").await.unwrap(), None, "never leased");
        // Filling twice with the same lease: the key now holds a value.
        assert_eq!(b.fill(&["a"], &[b"again"], LEASE, 30_000).await.unwrap(), 0);
        assert_eq!(b.get("a").await.unwrap(), Some(b"va".to_vec()));
    }

    /// Bumps a counter as a write's invalidation does; its value after.
    async fn bump(b: &MemoryBackend, key: &str) -> i64 {
        let counters = [key.to_string()];
        let inv = Invalidation {
            counters: &counters,
            ..Invalidation::default()
        };
        b.invalidate(&inv).await.unwrap();
        b.counter(key).expect("a counter")
    }

    fn tag(set: &str, members: &[&str]) -> TagAdd {
        TagAdd {
            set: set.to_string(),
            members: members.iter().map(|m| m.to_string()).collect(),
            ttl_secs: 60,
        }
    }

    async fn add_tags(b: &MemoryBackend, tags: &[TagAdd]) {
        let inv = Invalidation {
            tags,
            ..Invalidation::default()
        };
        b.invalidate(&inv).await.unwrap();
    }

    /// `invalidate_tag` as the manager runs it: drain, then one step.
    async fn unlink_tag(b: &MemoryBackend, set: &str) -> u64 {
        let draining = format!("{set}:draining");
        b.drain_tag(set, &draining).await.unwrap();
        b.drain_step(&draining, 0).await.unwrap().removed
    }

    #[tokio::test]
    async fn markers_keep_the_highest_position_until_they_expire() {
        let b = MemoryBackend::with_capacity(10);
        let raise = |lsn: u64, ttl_ms: u64| Marker {
            key: "m".into(),
            lsn,
            ttl_ms,
        };
        let keys = vec!["m".to_string(), "other".to_string()];
        for lsn in [50, 70, 60] {
            let markers = [raise(lsn, 60_000)];
            let inv = Invalidation {
                markers: &markers,
                ..Invalidation::default()
            };
            b.invalidate(&inv).await.unwrap();
        }
        assert_eq!(b.markers(&keys).await.unwrap(), vec![Some(70), None]);
        let markers = [raise(10, 20)];
        let inv = Invalidation {
            markers: &markers,
            ..Invalidation::default()
        };
        b.invalidate(&inv).await.unwrap();
        assert_eq!(b.markers(&keys).await.unwrap(), vec![Some(70), None]);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.markers(&keys).await.unwrap(), vec![None, None]);
    }

    #[tokio::test]
    async fn lease_many_grants_free_keys_only() {
        let b = MemoryBackend::with_capacity(100);
        b.set_ex("hit", b"v", 60).await.unwrap();
        bump(&b, "counter").await;
        let keys: Vec<String> = ["hit", "free", "counter", "free2"].map(String::from).into();
        assert_eq!(
            b.lease_many(&keys, LEASE, 2_000).await.unwrap(),
            (vec![false, true, false, true], 0)
        );
        assert_eq!(b.get("free").await.unwrap(), Some(LEASE.to_vec()));
        assert_eq!(b.get("hit").await.unwrap(), Some(b"v".to_vec()));
    }

    #[tokio::test]
    async fn counters_start_at_a_random_seed_and_invalidate_resets_corrupt_ones() {
        let b = MemoryBackend::with_capacity(100);
        let gen = "app:users:query:gen";
        let first = bump(&b, gen).await;
        assert!(
            first > 1,
            "a missing counter starts at a random seed, like in Redis: {first}"
        );
        assert_eq!(bump(&b, gen).await, first + 1);
        assert_eq!(
            b.get(gen).await.unwrap(),
            Some((first + 1).to_string().into_bytes()),
            "GET reads it like Redis"
        );
        assert_eq!(b.pttl(gen), Some(None), "a counter has no TTL");
        assert_eq!(b.get_with_pttl(gen).await.unwrap().1, -1);
        assert_eq!(b.get_with_pttl("nope").await.unwrap(), (None, -2));

        b.set_ex("app:users:1", b"v", 60).await.unwrap();
        let keys = ["app:users:1".to_string(), "app:users:2".to_string()];
        let gens = [gen.to_string(), "app:notes:query:gen".to_string()];
        let done = b
            .invalidate(&Invalidation {
                keys: &keys,
                counters: &gens,
                ..Invalidation::default()
            })
            .await
            .unwrap();
        assert_eq!((done.deleted, done.corrupt), (1, 0), "one of the two keys existed");
        assert_eq!(b.get("app:users:1").await.unwrap(), None);
        assert_eq!(b.counter(gen), Some(first + 2));
        assert!(b.counter("app:notes:query:gen").is_some());
        // DEL removes a counter too; the next bump starts at a new seed.
        assert_eq!(b.delete(&gens[..1]).await.unwrap(), 1);
        assert_ne!(bump(&b, gen).await, 1);
        // A counter key holding a value is corrupt: replaced by a fresh seed.
        b.set_ex(gen, b"not a number", 60).await.unwrap();
        let done = b
            .invalidate(&Invalidation {
                counters: &gens[..1],
                ..Invalidation::default()
            })
            .await
            .unwrap();
        assert_eq!(done.corrupt, 1);
        assert!(b.counter(gen).is_some());
        assert_eq!(b.get_with_pttl(gen).await.unwrap().1, -1, "a counter again");
    }

    #[tokio::test]
    async fn counters_survive_eviction_pressure() {
        let b = MemoryBackend::with_capacity(10);
        let first = bump(&b, "app:users:query:gen").await;
        for i in 0..1_000 {
            b.set_ex(&format!("app:users:{i}"), b"v", 60).await.unwrap();
        }
        b.values.run_pending_tasks();
        assert!(b.values.entry_count() <= 10, "bounded: {}", b.values.entry_count());
        assert_eq!(bump(&b, "app:users:query:gen").await, first + 1);
    }

    #[tokio::test]
    async fn query_generations_guard_query_fills() {
        let b = MemoryBackend::with_capacity(100);
        let gen = "app:users:query:gen";
        assert_eq!(b.seed_counter(gen, 41).await.unwrap(), None, "seeded");
        assert_eq!(
            b.seed_counter(gen, 7).await.unwrap(),
            Some(b"41".to_vec()),
            "SET NX GET keeps the first start and returns it"
        );
        assert!(b
            .fill_if_counter("app:users:query:ab", b"r41", 60_000, gen, 41)
            .await
            .unwrap());
        assert_eq!(b.get("app:users:query:ab").await.unwrap(), Some(b"r41".to_vec()));
        assert_eq!(bump(&b, gen).await, 42);
        assert!(!b
            .fill_if_counter("app:users:query:cd", b"r41", 60_000, gen, 41)
            .await
            .unwrap());
        assert_eq!(
            b.get("app:users:query:cd").await.unwrap(),
            None,
            "a result of an old generation is dropped"
        );
        assert!(!b
            .fill_if_counter("app:x:query:ab", b"r", 60_000, "app:x:query:gen", 0)
            .await
            .unwrap());
        // MGET of the generation and an entry, as the query path reads them.
        let keys = [gen.to_string(), "app:users:query:ab".to_string()];
        assert_eq!(
            b.mget(&keys).await.unwrap(),
            vec![Some(b"42".to_vec()), Some(b"r41".to_vec())]
        );
    }

    #[tokio::test]
    async fn tag_sets_index_keys_for_invalidation() {
        let b = MemoryBackend::with_capacity(100);
        for k in ["app:users:1", "app:users:2", "app:notes:9"] {
            b.set_ex(k, b"v", 60).await.unwrap();
        }
        let sets = vec![
            tag("app:__tag:red", &["app:users:1", "app:notes:9"]),
            tag("app:__tag:blue", &["app:users:2"]),
            tag("app:__tag:none", &[]),
        ];
        add_tags(&b, &sets).await;
        add_tags(&b, &sets[..1]).await;
        assert_eq!(
            b.get("app:__tag:red").await.unwrap(),
            None,
            "a set is not a string value"
        );
        assert_eq!(unlink_tag(&b, "app:__tag:red").await, 2);
        assert_eq!(b.get("app:users:1").await.unwrap(), None);
        assert_eq!(b.get("app:notes:9").await.unwrap(), None);
        assert_eq!(b.get("app:users:2").await.unwrap(), Some(b"v".to_vec()));
        assert_eq!(
            unlink_tag(&b, "app:__tag:red").await,
            0,
            "the set went with its members"
        );
        assert_eq!(unlink_tag(&b, "app:__tag:none").await, 0);
        // DEL and SCAN + UNLINK reach sets too.
        assert_eq!(b.delete(&["app:__tag:blue".to_string()]).await.unwrap(), 1);
        add_tags(&b, &sets[1..2]).await;
        assert_eq!(b.scan_step(0, "app:__tag:*", None).await.unwrap().removed, 1);
        assert_eq!(
            b.get("app:users:2").await.unwrap(),
            Some(b"v".to_vec()),
            "unlinking a set keeps its members"
        );
    }

    #[tokio::test]
    async fn tag_sets_expire_and_their_ttl_only_grows() {
        let b = MemoryBackend::with_capacity(100);
        b.set_ex("app:users:1", b"v", 60).await.unwrap();
        let mut short = tag("app:__tag:t", &["app:users:1"]);
        short.ttl_secs = 1;
        add_tags(&b, std::slice::from_ref(&short)).await;
        add_tags(&b, &[tag("app:__tag:t", &["app:users:1"])]).await;
        add_tags(&b, std::slice::from_ref(&short)).await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(
            unlink_tag(&b, "app:__tag:t").await,
            1,
            "lengthened to 60 s, never shortened"
        );
        add_tags(&b, std::slice::from_ref(&short)).await;
        b.set_ex("app:users:1", b"v", 60).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(unlink_tag(&b, "app:__tag:t").await, 0, "an expired set is gone");
        assert_eq!(b.get("app:users:1").await.unwrap(), Some(b"v".to_vec()));
    }

    #[tokio::test]
    async fn a_tag_set_does_not_outgrow_the_cache() {
        let b = MemoryBackend::with_capacity(10);
        b.set_ex("live", b"v", 60).await.unwrap();
        let mut members = vec!["live".to_string()];
        members.extend((0..30).map(|i| format!("gone{i}")));
        add_tags(
            &b,
            &[TagAdd {
                set: "tag".into(),
                members,
                ttl_secs: 60,
            }],
        )
        .await;
        let sets = b.sets.read().unwrap();
        assert_eq!(sets["tag"].members.len(), 1, "only the cached member is kept");
    }

    #[tokio::test]
    async fn scan_step_removes_matching_keys_only() {
        let b = MemoryBackend::with_capacity(1_000);
        for i in 0..25 {
            b.set_ex(&format!("app:sess:s{i}"), b"v", 60).await.unwrap();
        }
        b.set_ex("app:users:1", b"v", 60).await.unwrap();
        b.set_ex("other:sess:s1", b"v", 60).await.unwrap();
        bump(&b, "app:users:query:gen").await;
        let scan = |pattern: &'static str| {
            let b = &b;
            async move { b.scan_step(0, pattern, None).await.unwrap() }
        };
        let step = scan("app:sess:s1?").await;
        assert_eq!((step.next, step.removed, step.keys.len()), (0, 10, 10));
        assert_eq!(scan("app:sess:*").await.removed, 15);
        assert_eq!(scan("app:sess:*").await.removed, 0);
        assert_eq!(scan("app:*").await.removed, 2, "the record and the counter");
        assert_eq!(b.get("other:sess:s1").await.unwrap(), Some(b"v".to_vec()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_leases_have_one_winner_and_one_fill() {
        let b = Arc::new(MemoryBackend::with_capacity(100));
        let tasks: Vec<_> = (0..16u8)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move {
                    let lease = [0xC1, i];
                    let won = b.get_or_lease("hot", &lease, 2_000).await.unwrap().is_none();
                    let filled = b.fill(&["hot"], &[&[0x90, i]], &lease, 60_000).await.unwrap();
                    (won, filled)
                })
            })
            .collect();
        let mut winners = 0;
        let mut fills = 0;
        for t in tasks {
            let (won, filled) = t.await.unwrap();
            winners += u32::from(won);
            fills += filled;
        }
        assert_eq!((winners, fills), (1, 1));
    }
}
