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
use crate::cache::flight::{follow, Lease};
use crate::cache::stats::{Op, Timing};
use crate::cache::telemetry::Outcome;
use crate::cache::versions::Layout;
use crate::cache::CacheManager;
use crate::error::{CacheError, Result, ServerErrorKind};

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

/// Reads `key` through the cache: a near-cache hit or a Redis hit is
/// returned; a miss runs `load` (the database) and fills the cache behind a
/// lease. `near`: whether the store uses the manager's near cache; `mode`:
/// which command its reads start with. Also says how the cache took part.
pub(crate) async fn read_through<V, F, Fut>(
    mgr: &Arc<CacheManager>,
    key: String,
    layout: &Layout,
    ttls: Ttls,
    early: Option<&Early>,
    (near, mode): (bool, &ReadMode),
    load: F,
) -> (Result<Option<V>>, Outcome)
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<V>>>,
{
    // With early refresh, every load of the store measures δ.
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
    let mut timing = Timing::start(mgr, Op::Miss);
    let deadline = mgr.deadline();
    if !mgr.ready(deadline).await {
        mgr.count(|c| &c.misses);
        return (load().await, Outcome::Bypass);
    }
    let near = if near { mgr.near() } else { None };
    if let Some(n) = near {
        // The home key, or this version's side key (a rollout).
        if let Some(v) = n.get::<V>(&key).or_else(|| n.get::<V>(&layout.side(&key))) {
            mgr.count(|c| &c.hits);
            timing.op = Op::Hit;
            // Always ready: without a share of tokio's budget, a loop of near
            // hits would never yield, and the runtime's other tasks (writes,
            // the tracking connection's pushes) would wait for it to end.
            tokio::task::consume_budget().await;
            return (Ok(v), Outcome::NearHit);
        }
    }
    // Taken before the GET is sent: an invalidation of the key that arrives
    // after this point, whenever, keeps the answer out of the near cache.
    let ticket = near.and_then(|n| n.ticket());
    let lease = new_lease();
    let mut retried = false;
    let mut key = key;
    let mut on_side = false;
    let fingerprint = layout.fingerprint;
    loop {
        match lookup::<V>(
            mgr,
            &key,
            (fingerprint, on_side),
            &lease,
            early,
            deadline,
            (ticket.is_some(), mode),
        )
        .await
        {
            Step::Foreign => {
                mgr.count(|c| &c.foreign_entries);
                key = layout.side(&key);
                on_side = true;
            }
            Step::Hit(v, pttl) => {
                mgr.count(|c| &c.hits);
                mode.saw(false);
                timing.op = Op::Hit;
                if let (Some(n), Some(t), Some(left)) = (near, ticket, near_ttl(pttl, ttls.of(v.as_ref()))) {
                    #[cfg(feature = "test-hooks")]
                    mgr.hooks.before_near_insert(&key).await;
                    n.insert(&key, v.clone(), left, t);
                }
                return (Ok(v), Outcome::Hit);
            }
            Step::Due(v, bytes) => {
                mgr.count(|c| &c.hits);
                mode.saw(false);
                let side = on_side.then_some(layout);
                let refreshed = refresh_early(mgr, key, (v, bytes), (fingerprint, side), ttls, load).await;
                return (Ok(refreshed), Outcome::Hit);
            }
            Step::Lead => {
                mgr.count(|c| &c.misses);
                mode.saw(true);
                // A side key is filled only once this version is registered,
                // and registered before the database is read.
                if on_side && !mgr.register_layout(layout, deadline).await {
                    let _ = mgr
                        .guarded(deadline, "release_lease", || mgr.backend.release_lease(&key, &lease))
                        .await;
                    return (load().await, Outcome::Bypass);
                }
                let loaded = load_and_fill(mgr, key, lease, fingerprint, ttls, deadline, load).await;
                return (loaded, Outcome::Miss);
            }
            Step::Busy(found) => {
                match behind_another_reader::<V>(mgr, &key, &found, (fingerprint, on_side), deadline).await {
                    Behind::Served(v) => {
                        mgr.count(|c| &c.hits);
                        timing.op = Op::Hit;
                        return (Ok(v), Outcome::Hit);
                    }
                    Behind::Foreign => {
                        mgr.count(|c| &c.foreign_entries);
                        key = layout.side(&key);
                        on_side = true;
                    }
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

/// The lease is ours: loads, lets the readers of this process share the
/// load, and fills the cache behind the lease. A load that fails gives the
/// lease back, so that other readers need not wait for it to expire.
pub(crate) async fn load_and_fill<V, F, Fut>(
    mgr: &Arc<CacheManager>,
    key: String,
    lease: Lease,
    fingerprint: u64,
    ttls: Ttls,
    deadline: tokio::time::Instant,
    load: F,
) -> Result<Option<V>>
where
    V: Serialize + Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<V>>>,
{
    let lead = mgr.flights.lead(&key, lease);
    let value = match load().await {
        Ok(value) => value,
        Err(e) => {
            let _ = mgr
                .guarded(deadline, "release_lease", || mgr.backend.release_lease(&key, &lease))
                .await;
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

/// What a reader that found someone else's lease ends up with.
enum Behind<V> {
    /// The other reader's value (`None`: a cached "no such row").
    Served(Option<V>),
    /// The "lease" was a corrupt entry and is gone: look again.
    LookAgain,
    /// The fill that landed is another version's: look at the side key.
    Foreign,
    /// Nothing came in time: read the database, don't fill.
    Load,
}

/// Another reader holds the key's lease `found`: join its load when it is a
/// load of this process under that very lease, else wait for its fill.
async fn behind_another_reader<V: DeserializeOwned + Clone + Send + Sync + 'static>(
    mgr: &CacheManager,
    key: &str,
    found: &[u8],
    version: (u64, bool),
    deadline: tokio::time::Instant,
) -> Behind<V> {
    if let Some(rx) = mgr.flights.join(key, found) {
        return match follow::<Option<V>>(rx).await {
            Some(v) => {
                mgr.count(|c| &c.coalesced);
                tracing::Span::current().record("coalesced", true);
                Behind::Served(v)
            }
            None => Behind::Load,
        };
    }
    match wait_for_fill::<V>(mgr, key, found, version, deadline).await {
        Waited::Filled(v) => {
            mgr.count(|c| &c.lease_waits);
            tracing::Span::current().record("lease_waited", true);
            Behind::Served(v)
        }
        Waited::NotALease => Behind::LookAgain,
        Waited::Foreign => Behind::Foreign,
        Waited::GaveUp => Behind::Load,
    }
}

/// One look at the cache. With early refresh, a `GET` + `PTTL` first; else
/// a `GET` first, or the lease command first when the store's reads mostly
/// miss (see `adapt`). With `want_ttl` (the near cache is on) the `GET` also
/// reads the key's `PTTL`, so that a hit can be kept near. `version`: the
/// reader's fingerprint, and whether `key` is its side key (where another
/// version's entry is corrupt, not foreign).
async fn lookup<V: DeserializeOwned>(
    mgr: &CacheManager,
    key: &str,
    version: (u64, bool),
    lease: &[u8],
    early: Option<&Early>,
    deadline: tokio::time::Instant,
    (want_ttl, mode): (bool, &ReadMode),
) -> Step<V> {
    let lease_read = || mgr.backend.get_or_lease(key, lease, mgr.lease_ms());
    if let Some(early) = early {
        // GET + PTTL in one round trip; a miss then takes the lease.
        match mgr.guarded(deadline, "get", || mgr.backend.get_with_pttl(key)).await {
            Ok((Some(bytes), pttl)) if !codec::is_lease(&bytes) => {
                return match judge::<V>(version, &bytes) {
                    // Without a fill token (a version-1 entry) the refresh
                    // could not tell this fill from a later one: no refresh.
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
                };
            }
            Ok(_) => {}
            Err(e @ CacheError::Command(_)) if is_wrong_type(&e) => {
                return discard_corrupt(mgr, key, &e, deadline).await
            }
            Err(_) => return Step::Bypass,
        }
    }
    let mut pttl = None;
    let found = if mgr.config().single_command_reads || early.is_some() || mode.lease_first() {
        mgr.guarded(deadline, "get", lease_read).await
    } else {
        // A plain GET first: a hit costs what a raw GET does; only a miss
        // sends the lease command.
        let first = if want_ttl {
            mgr.guarded(deadline, "get", || mgr.backend.get_with_pttl(key))
                .await
                .map(|(bytes, ms)| {
                    pttl = Some(ms);
                    bytes
                })
        } else {
            mgr.guarded(deadline, "get", || mgr.backend.get(key)).await
        };
        match first {
            Ok(None) => mgr.guarded(deadline, "lease", lease_read).await,
            other => other,
        }
    };
    match found {
        Ok(None) => Step::Lead,
        Ok(Some(bytes)) if codec::is_lease(&bytes) => Step::Busy(bytes),
        Ok(Some(bytes)) => match judge::<V>(version, &bytes) {
            Ok(Found::Own(entry, _)) => Step::Hit(into_option(entry), pttl),
            Ok(Found::Foreign) => Step::Foreign,
            Err(e) => discard_corrupt(mgr, key, &e, deadline).await,
        },
        Err(e @ CacheError::Command(_)) if is_wrong_type(&e) => discard_corrupt(mgr, key, &e, deadline).await,
        // Out of memory (noeviction): the lease write is refused, but reads
        // still work. Serve a cached value; otherwise go to the database
        // without a lease and without a fill.
        Err(e) if e.server_error_kind() == Some(&ServerErrorKind::OutOfMemory) => {
            match mgr.guarded(deadline, "get", || mgr.backend.get(key)).await {
                Ok(Some(bytes)) if !codec::is_lease(&bytes) => match judge::<V>(version, &bytes) {
                    Ok(Found::Own(entry, _)) => Step::Hit(into_option(entry), None),
                    _ => Step::Bypass,
                },
                _ => Step::Bypass,
            }
        }
        Err(_) => Step::Bypass,
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

/// How a wait for another reader's fill ended.
enum Waited<V> {
    /// The fill landed (`None`: a cached "no such row").
    Filled(Option<V>),
    /// What looked like a lease has no expiry: it was removed as corrupt.
    NotALease,
    /// The fill that landed is another version's.
    Foreign,
    /// No value appeared in time, or the lease went away.
    GaveUp,
}

/// Polls `key` until another reader's fill lands, its lease disappears, or
/// the lease wait (bounded by the budget) runs out. The first look also
/// checks that `found` is a live lease: a lease always has an expiry, so a
/// lease-shaped value without one can never be filled by anybody, and is
/// removed (compare-and-delete) instead of being waited on forever.
async fn wait_for_fill<V: DeserializeOwned>(
    mgr: &CacheManager,
    key: &str,
    found: &[u8],
    version: (u64, bool),
    deadline: tokio::time::Instant,
) -> Waited<V> {
    let until = (tokio::time::Instant::now() + mgr.lease_wait()).min(deadline);
    match mgr
        .guarded(until, "lease_wait", || mgr.backend.get_with_pttl(key))
        .await
    {
        Ok((Some(bytes), -1)) if bytes == found => {
            mgr.count_corrupt(1);
            mgr.warn(
                "lease_wait",
                &CacheError::SerializationError("a fill lease without expiry: removed".into()),
            );
            return match mgr
                .guarded(deadline, "discard", || mgr.backend.release_lease(key, found))
                .await
            {
                Ok(()) => Waited::NotALease,
                Err(_) => Waited::GaveUp,
            };
        }
        Ok((Some(bytes), _)) if !codec::is_lease(&bytes) => return decoded(version, &bytes),
        Ok((Some(_), _)) => {}
        Ok((None, _)) | Err(_) => return Waited::GaveUp,
    }
    let mut pause = Duration::from_millis(1);
    loop {
        if tokio::time::Instant::now() + pause >= until {
            return Waited::GaveUp;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(16));
        match mgr.guarded(until, "lease_wait", || mgr.backend.get(key)).await {
            Ok(Some(bytes)) if codec::is_lease(&bytes) => continue,
            Ok(Some(bytes)) => return decoded(version, &bytes),
            Ok(None) | Err(_) => return Waited::GaveUp,
        }
    }
}

fn decoded<V: DeserializeOwned>(version: (u64, bool), bytes: &[u8]) -> Waited<V> {
    match judge::<V>(version, bytes) {
        Ok(Found::Own(entry, _)) => Waited::Filled(into_option(entry)),
        Ok(Found::Foreign) => Waited::Foreign,
        Err(_) => Waited::GaveUp,
    }
}
