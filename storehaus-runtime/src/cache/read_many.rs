//! Batched read-through for `get_many`: what the near cache holds is
//! served from it, then one MGET for the rest, one database query for the
//! misses, one guarded fill for the misses that won their leases (see
//! `read` for the protocol). Values read from Redis by a `get_many` are not
//! kept near (MGET says nothing of their TTL); single reads keep them.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cache::codec::{self, Entry};
use crate::cache::fill::{Fill, Guard, Ttls};
use crate::cache::flight::Lease;
use crate::cache::read::new_lease;
use crate::cache::stats::{Op, Timing};
use crate::cache::telemetry::Outcome;
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
    fingerprint: u64,
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
        return read_redis(mgr, keys, ids, fingerprint, ttls, load).await;
    };
    let mut timing = Timing::start(mgr, Op::Hit);
    if !mgr.ready(mgr.deadline()).await {
        // Pending invalidations: the Redis path reads the database.
        timing.op = Op::Miss;
        return read_redis(mgr, keys, ids, fingerprint, ttls, load).await;
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
    timing.op = Op::Miss;
    drop(timing);
    let rest_keys: Vec<String> = rest.iter().map(|&i| keys[i].clone()).collect();
    let rest_ids: Vec<Id> = rest.iter().map(|&i| ids[i].clone()).collect();
    let (found, outcome) = read_redis(mgr, &rest_keys, &rest_ids, fingerprint, ttls, load).await;
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
    fingerprint: u64,
    ttls: Ttls,
    load: F,
) -> (Result<Vec<Option<V>>>, ManyOutcome)
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    Id: Clone + Eq + Hash,
    F: FnOnce(Vec<Id>) -> Fut,
    Fut: Future<Output = Result<HashMap<Id, V>>>,
{
    let mut timing = Timing::start(mgr, Op::Miss);
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

    let Decoded {
        mut out,
        missing,
        corrupt,
    } = decode_all::<V>(mgr, keys, cached, fingerprint);
    let hits = (ids.len() - missing.len()) as u64;
    mgr.count_n(|c| &c.hits, hits);
    mgr.count_n(|c| &c.misses, missing.len() as u64);
    let outcome = ManyOutcome {
        hits,
        rest: Outcome::Miss,
    };
    if missing.is_empty() {
        timing.op = Op::Hit;
        return (Ok(out), outcome);
    }

    if !corrupt.is_empty() {
        let _ = mgr.guarded(deadline, "discard", || mgr.backend.delete(&corrupt)).await;
    }
    let missing_keys: Vec<String> = missing.iter().map(|&i| keys[i].clone()).collect();
    let lease = new_lease();
    let granted = lease_missing(mgr, &missing_keys, &lease, deadline).await;

    let rows = match load(missing.iter().map(|&i| ids[i].clone()).collect()).await {
        Ok(rows) => rows,
        Err(e) => return (Err(e), outcome),
    };
    // Rows and "no such row" entries have their own TTLs: one fill each.
    let fill_of = |ttl_secs| Fill {
        keys: Vec::new(),
        values: Vec::new(),
        guard: Guard::Lease(lease),
        ttl_secs,
    };
    let (mut found, mut absent) = (fill_of(ttls.record), fill_of(ttls.absent));
    for (n, &i) in missing.iter().enumerate() {
        // `get`, not `remove`: an id may be asked for twice.
        let row = rows.get(&ids[i]).cloned();
        if granted.get(n).copied().unwrap_or(false) {
            if let Some(bytes) = mgr.encode_fill(fingerprint, row.as_ref()) {
                let fill = if row.is_some() { &mut found } else { &mut absent };
                fill.keys.push(keys[i].clone());
                fill.values.push(bytes);
            }
        }
        out[i] = row;
    }
    mgr.spawn_fill(found, None);
    mgr.spawn_fill(absent, None);
    (Ok(out), outcome)
}

/// What one MGET answered, decoded.
struct Decoded<V> {
    /// One slot per key: the hits filled in, `None` elsewhere for now.
    out: Vec<Option<V>>,
    /// Positions of the keys the cache could not answer.
    missing: Vec<usize>,
    /// Keys holding corrupt entries (counted, to be removed).
    corrupt: Vec<String>,
}

fn decode_all<V: DeserializeOwned>(
    mgr: &CacheManager,
    keys: &[String],
    cached: Vec<Option<Vec<u8>>>,
    fingerprint: u64,
) -> Decoded<V> {
    let mut d = Decoded {
        out: Vec::with_capacity(keys.len()),
        missing: Vec::new(),
        corrupt: Vec::new(),
    };
    for (i, bytes) in cached.into_iter().enumerate() {
        let value = match bytes {
            Some(b) if !codec::is_lease(&b) => match codec::decode::<V>(fingerprint, &b) {
                Ok(Entry::Record(v)) => Some(Some(v)),
                Ok(Entry::Absent) => Some(None),
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
