//! Batched read-through for `get_many`: what the near cache holds is
//! served from it, then one MGET for the rest, one database query for the
//! misses, one guarded fill for the misses that won their leases (see
//! `read` for the protocol). Keys holding another version's entry are read
//! again at this version's side keys (one more MGET; see `versions`).
//! Values read from Redis by a `get_many` are not kept near (MGET says
//! nothing of their TTL); single reads keep them.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cache::codec::{self, Entry, Found};
use crate::cache::fill::{Fill, Guard, Ttls};
use crate::cache::flight::Lease;
use crate::cache::read::new_lease;
use crate::cache::telemetry::Outcome;
use crate::cache::versions::Layout;
use crate::cache::CacheManager;
use crate::error::Result;

/// How a `get_many` was answered: how many ids the cache answered, and how
/// the cache took part for the others.
pub(crate) struct ManyOutcome {
    pub hits: u64,
    pub rest: Outcome,
}

/// Reads `keys` (one per id, same order) through the cache; with `near`,
/// what the manager's near cache holds first.
pub(crate) async fn read_many<V, Id, F, Fut>(
    mgr: &Arc<CacheManager>,
    keys: &[String],
    ids: &[Id],
    layout: &Layout,
    ttls: Ttls,
    near: bool,
    load: F,
) -> (Result<Vec<Option<V>>>, ManyOutcome)
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    Id: Clone + Eq + Hash,
    F: FnOnce(Vec<Id>) -> Fut,
    Fut: Future<Output = Result<HashMap<Id, V>>>,
{
    let near = if near { mgr.near() } else { None };
    let Some(near) = near else {
        return read_redis(mgr, keys, ids, layout, ttls, load).await;
    };
    if !mgr.ready(mgr.deadline()).await {
        // Pending invalidations: the Redis path reads the database.
        return read_redis(mgr, keys, ids, layout, ttls, load).await;
    }
    let mut out: Vec<Option<V>> = Vec::with_capacity(keys.len());
    let mut rest = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        match near.get::<V>(key) {
            Some(v) => out.push(v),
            None => {
                rest.push(i);
                out.push(None);
            }
        }
    }
    let near_hits = (keys.len() - rest.len()) as u64;
    mgr.count_n(|c| &c.hits, near_hits);
    if near_hits > 0 {
        // Always ready: take a share of tokio's budget (see `read`).
        tokio::task::consume_budget().await;
    }
    if rest.is_empty() {
        return (
            Ok(out),
            ManyOutcome {
                hits: near_hits,
                rest: Outcome::NearHit,
            },
        );
    }
    let rest_keys: Vec<String> = rest.iter().map(|&i| keys[i].clone()).collect();
    let rest_ids: Vec<Id> = rest.iter().map(|&i| ids[i].clone()).collect();
    let (found, outcome) = read_redis(mgr, &rest_keys, &rest_ids, layout, ttls, load).await;
    let found = found.map(|found| {
        for (&i, v) in rest.iter().zip(found) {
            out[i] = v;
        }
        out
    });
    let outcome = ManyOutcome {
        hits: near_hits + outcome.hits,
        rest: outcome.rest,
    };
    (found, outcome)
}

/// Reads `keys` (one per id, same order) through Redis.
async fn read_redis<V, Id, F, Fut>(
    mgr: &Arc<CacheManager>,
    keys: &[String],
    ids: &[Id],
    layout: &Layout,
    ttls: Ttls,
    load: F,
) -> (Result<Vec<Option<V>>>, ManyOutcome)
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    Id: Clone + Eq + Hash,
    F: FnOnce(Vec<Id>) -> Fut,
    Fut: Future<Output = Result<HashMap<Id, V>>>,
{
    let deadline = mgr.deadline();
    let cached = if mgr.ready(deadline).await {
        mgr.guarded(deadline, "mget", || mgr.backend.mget(keys)).await.ok()
    } else {
        None
    };
    let Some(cached) = cached else {
        mgr.count_n(|c| &c.misses, ids.len() as u64);
        let bypass = ManyOutcome {
            hits: 0,
            rest: Outcome::Bypass,
        };
        let rows = match load(ids.to_vec()).await {
            Ok(rows) => rows,
            Err(e) => return (Err(e), bypass),
        };
        return (Ok(ids.iter().map(|id| rows.get(id).cloned()).collect()), bypass);
    };

    let fingerprint = layout.fingerprint;
    let mut decoded = decode_all::<V>(mgr, keys, cached, (fingerprint, false));
    let mut keys = keys.to_vec();
    read_sides(mgr, layout, &mut keys, &mut decoded, deadline).await;
    let Decoded {
        mut out,
        missing,
        corrupt,
        foreign,
    } = decoded;
    let hits = (ids.len() - missing.len()) as u64;
    mgr.count_n(|c| &c.hits, hits);
    mgr.count_n(|c| &c.misses, missing.len() as u64);
    let outcome = ManyOutcome {
        hits,
        rest: Outcome::Miss,
    };
    if missing.is_empty() {
        return (Ok(out), outcome);
    }

    if !corrupt.is_empty() {
        let _ = mgr.guarded(deadline, "discard", || mgr.backend.delete(&corrupt)).await;
    }
    let missing_keys: Vec<String> = missing.iter().map(|&i| keys[i].clone()).collect();
    let lease = new_lease();
    let mut granted = lease_missing(mgr, &missing_keys, &lease, deadline).await;
    if !foreign.is_empty() {
        register_for_sides(mgr, layout, &missing_keys, &mut granted, &lease, deadline).await;
    }

    let rows = match load(missing.iter().map(|&i| ids[i].clone()).collect()).await {
        Ok(rows) => rows,
        Err(e) => return (Err(e), outcome),
    };
    let leased = Leased {
        keys: &keys,
        at: &missing,
        granted: &granted,
        lease,
    };
    fill_loaded(mgr, &leased, (fingerprint, ttls), ids, &rows, &mut out);
    (Ok(out), outcome)
}

/// Another version holds the keys at `decoded.foreign`: reads this
/// version's side keys there, which replace them in `keys`.
async fn read_sides<V: DeserializeOwned>(
    mgr: &CacheManager,
    layout: &Layout,
    keys: &mut [String],
    decoded: &mut Decoded<V>,
    deadline: tokio::time::Instant,
) {
    let Decoded {
        out,
        missing,
        corrupt,
        foreign,
    } = decoded;
    if foreign.is_empty() {
        return;
    }
    mgr.count_n(|c| &c.foreign_entries, foreign.len() as u64);
    let sides: Vec<String> = foreign.iter().map(|&i| layout.side(&keys[i])).collect();
    let found = mgr.guarded(deadline, "mget", || mgr.backend.mget(&sides)).await;
    let found = found.unwrap_or_else(|_| vec![None; sides.len()]);
    let side = decode_all::<V>(mgr, &sides, found, (layout.fingerprint, true));
    for (n, &i) in foreign.iter().enumerate() {
        keys[i] = sides[n].clone();
    }
    for (n, v) in side.out.into_iter().enumerate() {
        out[foreign[n]] = v;
    }
    missing.extend(side.missing.iter().map(|&n| foreign[n]));
    missing.sort_unstable();
    corrupt.extend(side.corrupt);
}

/// The keys a batch read missed (`keys[at[n]]`), whether each one's lease
/// was granted, and the lease.
struct Leased<'a> {
    keys: &'a [String],
    at: &'a [usize],
    granted: &'a [bool],
    lease: Lease,
}

/// Puts what the database said for the missed ids into `out`, and fills
/// the keys whose lease was granted. Rows and "no such row" entries have
/// their own TTLs: one fill each.
fn fill_loaded<V, Id>(
    mgr: &Arc<CacheManager>,
    leased: &Leased<'_>,
    (fingerprint, ttls): (u64, Ttls),
    ids: &[Id],
    rows: &HashMap<Id, V>,
    out: &mut [Option<V>],
) where
    V: Serialize + Clone + Send + Sync + 'static,
    Id: Eq + Hash,
{
    let fill_of = |ttl_secs| Fill {
        keys: Vec::new(),
        values: Vec::new(),
        guard: Guard::Lease(leased.lease),
        ttl_secs,
    };
    let (mut found, mut absent) = (fill_of(ttls.record), fill_of(ttls.absent));
    for (n, &i) in leased.at.iter().enumerate() {
        // `get`, not `remove`: an id may be asked for twice.
        let row = rows.get(&ids[i]).cloned();
        if leased.granted.get(n).copied().unwrap_or(false) {
            if let Some(bytes) = mgr.encode_fill(fingerprint, row.as_ref()) {
                let fill = if row.is_some() { &mut found } else { &mut absent };
                fill.keys.push(leased.keys[i].clone());
                fill.values.push(bytes);
            }
        }
        out[i] = row;
    }
    mgr.spawn_fill(found, None);
    mgr.spawn_fill(absent, None);
}

/// What one MGET answered, decoded.
struct Decoded<V> {
    /// One slot per key: the hits filled in, `None` elsewhere for now.
    out: Vec<Option<V>>,
    /// Positions of the keys the cache could not answer.
    missing: Vec<usize>,
    /// Keys holding corrupt entries (counted, to be removed).
    corrupt: Vec<String>,
    /// Positions of the keys holding another version's entry (also missing).
    foreign: Vec<usize>,
}

/// Decodes what one MGET answered for the reader of `fingerprint`;
/// `on_side`: the keys are its side keys, where no other version writes.
fn decode_all<V: DeserializeOwned>(
    mgr: &CacheManager,
    keys: &[String],
    cached: Vec<Option<Vec<u8>>>,
    (fingerprint, on_side): (u64, bool),
) -> Decoded<V> {
    let mut d = Decoded {
        out: Vec::with_capacity(keys.len()),
        missing: Vec::new(),
        corrupt: Vec::new(),
        foreign: Vec::new(),
    };
    for (i, bytes) in cached.into_iter().enumerate() {
        let value = match bytes {
            Some(b) if !codec::is_lease(&b) => match codec::decode_any::<V>(fingerprint, &b) {
                Ok(Found::Own(Entry::Record(v), _)) => Some(Some(v)),
                Ok(Found::Own(Entry::Absent, _)) => Some(None),
                Ok(Found::Foreign) if !on_side => {
                    d.foreign.push(i);
                    d.out.push(None);
                    continue;
                }
                Ok(Found::Foreign) => {
                    mgr.count_corrupt(1);
                    d.corrupt.push(keys[i].clone());
                    None
                }
                Err(e) => {
                    mgr.count_corrupt(1);
                    mgr.warn("decode", &e);
                    d.corrupt.push(keys[i].clone());
                    None
                }
            },
            _ => None,
        };
        match value {
            Some(v) => d.out.push(v),
            None => {
                d.missing.push(i);
                d.out.push(None);
            }
        }
    }
    d
}

/// Registers this version before side keys it leased are filled; when it
/// cannot, gives those leases back and fills none of them.
async fn register_for_sides(
    mgr: &CacheManager,
    layout: &Layout,
    keys: &[String],
    granted: &mut [bool],
    lease: &Lease,
    deadline: tokio::time::Instant,
) {
    let is_side = |k: &String| k.contains(crate::keys::SIDE_MARK);
    let leased_sides = keys.iter().zip(granted.iter()).any(|(k, g)| *g && is_side(k));
    if !leased_sides || mgr.register_layout(layout, deadline).await {
        return;
    }
    for (k, g) in keys.iter().zip(granted.iter_mut()) {
        if *g && is_side(k) {
            *g = false;
            let _ = mgr
                .guarded(deadline, "release_lease", || mgr.backend.release_lease(k, lease))
                .await;
        }
    }
}

/// Takes fill leases on the missing keys in one round trip; `true` where
/// granted. Keys of another Redis type (MGET reads them as nil) and strings
/// without expiry (a lease never lacks one) are replaced, and counted as
/// corrupt.
async fn lease_missing(
    mgr: &CacheManager,
    keys: &[String],
    lease: &Lease,
    deadline: tokio::time::Instant,
) -> Vec<bool> {
    let (granted, replaced) = mgr
        .guarded(deadline, "lease", || {
            mgr.backend.lease_many(keys, lease, mgr.lease_ms())
        })
        .await
        .unwrap_or_default();
    mgr.count_corrupt(replaced);
    granted
}
