//! The read-through protocol: fill leases, guarded fills and single-flight.
//!
//! The classic cache-aside race: reader A misses and reads row v1 from the
//! database; writer B commits v2 and deletes the key; A then writes v1 into
//! the cache, where it is served until the TTL runs out. StoreHaus closes it
//! the way memcache leases do:
//!
//! 1. A read `GET`s the key. On a miss it takes a **lease**:
//!    `SET key <lease> NX PX <lease_ttl> GET` returns the current value (one
//!    that appeared meanwhile: a hit), or nothing, in which case the key now
//!    holds this reader's unique lease token. A lease starts with the byte
//!    `0xC1`, which MessagePack never uses, so it can't be mistaken for a
//!    value. A store whose recent reads mostly miss starts its reads with
//!    that `SET ... NX ... GET` (a miss saves a round trip, a hit costs a
//!    write command; see `adapt`); with
//!    `CacheConfig::with_single_command_reads(true)` every read does.
//! 2. The lease holder reads the database.
//! 3. It **fills** with a compare-and-set Lua script (EVALSHA, loaded once,
//!    re-loaded on NOSCRIPT): the value is written only if the key still
//!    holds *its* lease.
//! 4. Every committed write deletes the key, and with it any lease. A reader
//!    that read the database before the write therefore finds its lease gone
//!    and its fill is dropped (`fills_rejected` in the stats).
//!
//! Readers that find someone else's lease don't go to the database: when
//! the lease is the one a load of this process holds, they join that load
//! (single-flight, `coalesced`; see [`crate::cache::flight`] for why only then);
//! otherwise they poll the key for a bounded time
//! (`CacheConfig::with_lease_wait`, `lease_waits`) and fall back to the
//! database without filling if no value appears. A leaseholder that dies
//! frees the key when the lease expires (`CacheConfig::with_lease_ttl`).
//! Something that looks like a lease but is not one (the wrong length, or
//! no expiry) is a corrupt entry: counted, removed, and the read goes on.
//!
//! Fills run in a background task, so a miss costs two cache round trips
//! (one with single-command reads) plus the database query; the load stays
//! joinable until the fill has landed.
//!
//! An entry of another version of the record type at the key (a rolling
//! deploy) is neither served nor removed: the read goes on at this
//! version's side key, with the same protocol, and registers its version
//! before it fills there (see `cache::versions`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cache::adapt::ReadMode;
use crate::cache::codec::{self, Entry, Found};
use crate::cache::early::{refresh_early, Early};
use crate::cache::fill::{Fill, Guard, Ttls};
use crate::cache::flight::Lease;
use crate::cache::near::{Near, Ticket};
use crate::cache::telemetry::Outcome;
use crate::cache::versions::Layout;
use crate::cache::CacheManager;
use crate::error::{CacheError, Result, ServerErrorKind};

mod near_first;
mod wait;

use self::near_first::near_hit;
pub(crate) use self::near_first::{near_first, NearFirst};

use self::wait::{behind_another_reader, Behind};

/// A fresh lease token: `0xC1` and 16 random bytes.
pub(crate) fn new_lease() -> Lease {
    let mut lease = [0u8; codec::LEASE_LEN];
    lease[0] = codec::LEASE_TAG;
    lease[1..].copy_from_slice(&rand::random::<u128>().to_le_bytes());
    lease
}

/// How long a value read with `pttl` ms left may stay in the near cache:
/// never past its Redis expiry (`None`: not at all, or unknown).
fn near_ttl(pttl: Option<i64>, ttl_secs: u64) -> Option<Duration> {
    match pttl? {
        ms if ms > 0 => Some(Duration::from_millis(ms as u64)),
        // No expiry: a value written by hand; the store's TTL bounds it.
        -1 => Some(Duration::from_secs(ttl_secs)),
        _ => None,
    }
}

/// What a cache lookup decided.
enum Step<V> {
    /// Answered from the cache (`None`: a cached "no such row"), with the
    /// milliseconds it had left when they were asked for (near cache, early
    /// refresh).
    Hit(Option<V>, Option<i64>),
    /// Answered from the cache, and due for an early refresh: these bytes
    /// (which hold the fill's token) are what the refresh may replace.
    Due(Option<V>, Vec<u8>),
    /// Another version's entry: look at this version's side key.
    Foreign,
    /// The lease is ours: load and fill.
    Lead,
    /// Someone else holds the lease (these bytes).
    Busy(Vec<u8>),
    /// The entry was corrupt and has been removed: look again.
    Retry,
    /// The cache could not answer: go to the database, don't fill.
    Bypass,
}

/// How a store reads one record through the cache: this version's layout
/// (fingerprint, side keys), the TTLs, early refresh, whether the store
/// uses the manager's near cache, and which command its reads start with
/// (see `adapt`).
#[derive(Clone, Copy)]
pub(crate) struct RecordRead<'a> {
    pub layout: &'a Layout,
    pub ttls: Ttls,
    pub early: Option<&'a Early>,
    pub near: bool,
    pub mode: &'a ReadMode,
}

/// A fill lease this reader holds on `key`, and the operation's budget.
pub(crate) struct Held {
    pub key: String,
    pub lease: Lease,
    pub deadline: tokio::time::Instant,
}

/// Reads `key` through the cache: a near-cache hit or a Redis hit is
/// returned; a miss runs `load` (the database) and fills the cache behind a
/// lease. Also says how the cache took part.
pub(crate) async fn read_through<V, F, Fut>(
    mgr: &Arc<CacheManager>,
    key: String,
    read: RecordRead<'_>,
    asked_near: bool,
    load: F,
) -> (Result<Option<V>>, Outcome)
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<V>>>,
{
    // With early refresh, every load of the store measures δ.
    let early = read.early;
    let load = move || {
        let start = std::time::Instant::now();
        let loading = load();
        async move {
            let loaded = loading.await;
            if let Some(early) = early {
                early.record(start.elapsed());
            }
            loaded
        }
    };
    let deadline = mgr.deadline();
    if !mgr.ready(deadline).await {
        mgr.count(|c| &c.misses);
        return (load().await, Outcome::Bypass);
    }
    let near = if read.near { mgr.near() } else { None };
    if let Some(v) = near
        .filter(|_| !asked_near)
        .and_then(|n| near_hit::<V>(n, &key, read.layout))
    {
        mgr.count(|c| &c.hits);
        // Always ready: without a share of tokio's budget, a loop of near
        // hits would never yield, and the runtime's other tasks (writes,
        // the tracking connection's pushes) would wait for it to end.
        tokio::task::consume_budget().await;
        return (Ok(v), Outcome::NearHit);
    }
    // Taken before the GET is sent: an invalidation of the key that arrives
    // after this point, whenever, keeps the answer out of the near cache.
    let near = near.and_then(|n| Some((&**n, n.ticket()?)));
    let lease = new_lease();
    let look = Look {
        mgr,
        key,
        version: (read.layout.fingerprint, false),
        lease: &lease,
        early,
        deadline,
        want_ttl: near.is_some(),
        mode: read.mode,
    };
    through_redis(look, &read, near, load).await
}

/// The read after the near cache: looks at the key (at this version's side
/// key after another version's entry), and serves a hit, refreshes a hit
/// that is due, loads and fills behind its own lease, or waits behind
/// another reader's; anything else reads the database without filling.
async fn through_redis<V, F, Fut>(
    mut look: Look<'_>,
    read: &RecordRead<'_>,
    near: Option<(&Near, Ticket)>,
    load: F,
) -> (Result<Option<V>>, Outcome)
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<V>>>,
{
    let mgr = look.mgr;
    let mut retried = false;
    loop {
        match lookup::<V>(&look).await {
            Step::Foreign => look.move_to_side(read.layout),
            Step::Hit(v, pttl) => {
                mgr.count(|c| &c.hits);
                read.mode.saw(false);
                if let (Some((n, t)), Some(left)) = (near, near_ttl(pttl, read.ttls.of(v.as_ref()))) {
                    #[cfg(feature = "test-hooks")]
                    mgr.test_hooks().before_near_insert(&look.key).await;
                    n.insert(&look.key, v.clone(), left, t);
                }
                return (Ok(v), Outcome::Hit);
            }
            Step::Due(v, bytes) => {
                mgr.count(|c| &c.hits);
                read.mode.saw(false);
                let version = (read.layout.fingerprint, look.version.1.then_some(read.layout));
                let refreshed = refresh_early(mgr, look.key, (v, bytes), version, read.ttls, load).await;
                return (Ok(refreshed), Outcome::Refreshed);
            }
            Step::Lead => {
                mgr.count(|c| &c.misses);
                read.mode.saw(true);
                let on_side = look.version.1;
                return lead(mgr, look.held(), on_side, read, load).await;
            }
            Step::Busy(found) => {
                match behind_another_reader::<V>(mgr, &look.key, &found, look.version, look.deadline).await {
                    Behind::Served(v) => {
                        mgr.count(|c| &c.hits);
                        return (Ok(v), Outcome::Hit);
                    }
                    Behind::Foreign => look.move_to_side(read.layout),
                    Behind::LookAgain if !retried => retried = true,
                    Behind::LookAgain | Behind::Load => {
                        mgr.count(|c| &c.misses);
                        return (load().await, Outcome::Bypass);
                    }
                }
            }
            Step::Retry if !retried => retried = true,
            Step::Retry | Step::Bypass => {
                mgr.count(|c| &c.misses);
                return (load().await, Outcome::Bypass);
            }
        }
    }
}

/// The lease is ours. A side key is filled only once this version is
/// registered, and registered before the database is read.
async fn lead<V, F, Fut>(
    mgr: &Arc<CacheManager>,
    held: Held,
    on_side: bool,
    read: &RecordRead<'_>,
    load: F,
) -> (Result<Option<V>>, Outcome)
where
    V: Serialize + Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<V>>>,
{
    if on_side && !mgr.register_layout(read.layout, held.deadline).await {
        mgr.release_lease(&held.key, &held.lease, held.deadline).await;
        return (load().await, Outcome::Bypass);
    }
    let loaded = load_and_fill(mgr, held, read.layout.fingerprint, read.ttls, load).await;
    (loaded, Outcome::Miss)
}

/// The lease is ours: loads, lets the readers of this process share the
/// load, and fills the cache behind the lease. A load that fails gives the
/// lease back, so that other readers need not wait for it to expire.
pub(crate) async fn load_and_fill<V, F, Fut>(
    mgr: &Arc<CacheManager>,
    held: Held,
    fingerprint: u64,
    ttls: Ttls,
    load: F,
) -> Result<Option<V>>
where
    V: Serialize + Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<V>>>,
{
    let Held { key, lease, deadline } = held;
    let lead = mgr.flights.lead(&key, lease);
    let value = match load().await {
        Ok(value) => value,
        Err(e) => {
            mgr.release_lease(&key, &lease, deadline).await;
            return Err(e);
        }
    };
    lead.publish(value.clone());
    if let Some(bytes) = mgr.encode_fill(fingerprint, value.as_ref()) {
        let fill = Fill {
            keys: vec![key],
            values: vec![bytes],
            guard: Guard::Lease(lease),
            ttl_secs: ttls.of(value.as_ref()),
        };
        mgr.spawn_fill(fill, Some(lead));
    }
    Ok(value)
}

/// One look at the cache: the key (the home key, or this version's side
/// key), the reader's version (its fingerprint, and whether `key` is its
/// side key, where another version's entry is corrupt, not foreign), its
/// lease, and how to look.
struct Look<'a> {
    mgr: &'a Arc<CacheManager>,
    key: String,
    version: (u64, bool),
    lease: &'a Lease,
    early: Option<&'a Early>,
    deadline: tokio::time::Instant,
    /// The near cache is on: a `GET` also reads the key's `PTTL`, so that a
    /// hit can be kept near.
    want_ttl: bool,
    mode: &'a ReadMode,
}

impl Look<'_> {
    /// Another version's entry is at the key: look at this version's side
    /// key instead.
    fn move_to_side(&mut self, layout: &Layout) {
        self.mgr.count(|c| &c.foreign_entries);
        self.key = layout.side(&self.key);
        self.version.1 = true;
    }

    /// The lease this look took.
    fn held(self) -> Held {
        Held {
            key: self.key,
            lease: *self.lease,
            deadline: self.deadline,
        }
    }
}

/// One look at the cache. With early refresh, a `GET` + `PTTL` first; else
/// the lease command (`SET NX GET`) first when reads start with it (see
/// `adapt`), or a plain `GET` (a hit costs what a raw GET does) and, on a
/// miss, the lease command. The first look stays in this one future: a
/// hit awaits nothing else.
async fn lookup<V: DeserializeOwned>(look: &Look<'_>) -> Step<V> {
    if let Some(early) = look.early {
        if let Some(step) = look_early(look, early).await {
            return step;
        }
    }
    let (mgr, key, deadline) = (look.mgr, look.key.as_str(), look.deadline);
    let lease_read = || mgr.backend.get_or_lease(key, look.lease, mgr.lease_ms());
    let mut pttl = None;
    let found = if mgr.config().single_command_reads || look.early.is_some() || look.mode.lease_first() {
        mgr.guarded(deadline, "get", lease_read).await
    } else {
        let first = if look.want_ttl {
            mgr.guarded(deadline, "get", || mgr.backend.get_with_pttl(key))
                .await
                .map(|(bytes, ms)| {
                    pttl = Some(ms);
                    bytes
                })
        } else {
            mgr.guarded(deadline, "get", || mgr.backend.read(key)).await
        };
        match first {
            Ok(None) => mgr.guarded(deadline, "lease", lease_read).await,
            other => other,
        }
    };
    match found {
        Ok(None) => Step::Lead,
        Ok(Some(bytes)) if codec::is_lease(&bytes) => Step::Busy(bytes),
        Ok(Some(bytes)) => match judge::<V>(look.version, &bytes) {
            Ok(Found::Own(entry, _)) => Step::Hit(into_option(entry), pttl),
            Ok(Found::Foreign) => Step::Foreign,
            Err(e) => discard_corrupt(mgr, key, &e, deadline).await,
        },
        Err(e) => refused_look(look, e).await,
    }
}

/// The first look failed with `e`: a key of another type is corrupt
/// (removed); out of memory (noeviction) refuses the lease write but
/// reads still work, so a cached value is served, else the database
/// answers without a lease and without a fill; anything else bypasses.
async fn refused_look<V: DeserializeOwned>(look: &Look<'_>, e: CacheError) -> Step<V> {
    let (mgr, key, deadline) = (look.mgr, look.key.as_str(), look.deadline);
    match e {
        e @ CacheError::Command(_) if is_wrong_type(&e) => discard_corrupt(mgr, key, &e, deadline).await,
        e if e.server_error_kind() == Some(&ServerErrorKind::OutOfMemory) => {
            match mgr.guarded(deadline, "get", || mgr.backend.get(key)).await {
                Ok(Some(bytes)) if !codec::is_lease(&bytes) => match judge::<V>(look.version, &bytes) {
                    Ok(Found::Own(entry, _)) => Step::Hit(into_option(entry), None),
                    _ => Step::Bypass,
                },
                _ => Step::Bypass,
            }
        }
        _ => Step::Bypass,
    }
}

/// With early refresh: `GET` + `PTTL` in one round trip, deciding a hit
/// (due for a refresh or not); `None` on a miss, which then takes the lease.
async fn look_early<V: DeserializeOwned>(look: &Look<'_>, early: &Early) -> Option<Step<V>> {
    let (mgr, key, deadline) = (look.mgr, look.key.as_str(), look.deadline);
    match mgr.guarded(deadline, "get", || mgr.backend.get_with_pttl(key)).await {
        Ok((Some(bytes), pttl)) if !codec::is_lease(&bytes) => Some(match judge::<V>(look.version, &bytes) {
            // Without a fill token (a version-1 entry) the refresh could
            // not tell this fill from a later one: no refresh.
            Ok(Found::Own(entry, token)) => {
                let v = into_option(entry);
                if token.is_some() && early.due(pttl) {
                    Step::Due(v, bytes)
                } else {
                    Step::Hit(v, Some(pttl))
                }
            }
            Ok(Found::Foreign) => Step::Foreign,
            Err(e) => discard_corrupt(mgr, key, &e, deadline).await,
        }),
        Ok(_) => None,
        Err(e @ CacheError::Command(_)) if is_wrong_type(&e) => Some(discard_corrupt(mgr, key, &e, deadline).await),
        Err(_) => Some(Step::Bypass),
    }
}

/// Decodes an entry for the reader of `version`: its own, another
/// version's, or corrupt. On the reader's side key another version's entry
/// is corrupt (no other version writes there).
fn judge<V: DeserializeOwned>((fingerprint, on_side): (u64, bool), bytes: &[u8]) -> Result<Found<V>, CacheError> {
    match codec::decode_any::<V>(fingerprint, bytes)? {
        Found::Foreign if on_side => Err(CacheError::SerializationError(
            "another version's entry at this version's side key".into(),
        )),
        found => Ok(found),
    }
}

fn into_option<V>(entry: Entry<V>) -> Option<V> {
    match entry {
        Entry::Record(v) => Some(v),
        Entry::Absent => None,
    }
}

fn is_wrong_type(e: &CacheError) -> bool {
    e.server_error_kind() == Some(&ServerErrorKind::WrongType)
}

/// Counts a corrupt entry, removes it, and asks for another look.
async fn discard_corrupt<V>(
    mgr: &CacheManager,
    key: &str,
    err: &CacheError,
    deadline: tokio::time::Instant,
) -> Step<V> {
    mgr.count_corrupt(1);
    mgr.warn("decode", err);
    let keys = [key.to_string()];
    match mgr.guarded(deadline, "discard", || mgr.backend.delete(&keys)).await {
        Ok(_) => Step::Retry,
        Err(_) => Step::Bypass,
    }
}
