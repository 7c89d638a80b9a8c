//! Batched read-through for `get_many`: one MGET for the hits, one database
//! query for the misses, one guarded fill script for the misses that won
//! their leases (see [`crate::lease`] for the protocol).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{self, Entry};
use crate::error::Result;
use crate::lease::new_lease;
use crate::manager::CacheManager;
use crate::stats::Counters;

/// Reads `keys` (one per id, same order) through the cache.
pub(crate) async fn read_many<V, Id, F, Fut>(
    mgr: &Arc<CacheManager>,
    keys: &[String],
    ids: &[Id],
    fingerprint: u64,
    ttl_secs: u64,
    load: F,
) -> Result<Vec<Option<V>>>
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
        Counters::add(&mgr.counters.misses, ids.len() as u64);
        let rows = load(ids.to_vec()).await?;
        return Ok(ids.iter().map(|id| rows.get(id).cloned()).collect());
    };

    let mut out: Vec<Option<V>> = Vec::with_capacity(ids.len());
    let mut missing: Vec<usize> = Vec::new();
    let mut corrupt: Vec<String> = Vec::new();
    for (i, bytes) in cached.into_iter().enumerate() {
        match bytes {
            Some(b) if !codec::is_lease(&b) => match codec::decode::<V>(fingerprint, &b) {
                Ok(Entry::Record(v)) => out.push(Some(v)),
                Ok(Entry::Absent) => out.push(None),
                Err(e) => {
                    Counters::bump(&mgr.counters.serialization_errors);
                    mgr.warn("decode", &e);
                    corrupt.push(keys[i].clone());
                    missing.push(i);
                    out.push(None);
                }
            },
            _ => {
                missing.push(i);
                out.push(None);
            }
        }
    }
    Counters::add(&mgr.counters.hits, (ids.len() - missing.len()) as u64);
    Counters::add(&mgr.counters.misses, missing.len() as u64);
    if missing.is_empty() {
        return Ok(out);
    }

    if !corrupt.is_empty() {
        let _ = mgr.guarded(deadline, "discard", || mgr.backend.delete(&corrupt)).await;
    }
    let missing_keys: Vec<String> = missing.iter().map(|&i| keys[i].clone()).collect();
    let lease = new_lease();
    let (granted, replaced) = mgr
        .guarded(deadline, "lease", || {
            mgr.backend.lease_many(&missing_keys, &lease, mgr.lease_ms())
        })
        .await
        .unwrap_or_default();
    // Keys of another Redis type (MGET reads them as nil) and strings
    // without expiry (a lease never lacks one) were replaced.
    Counters::add(&mgr.counters.serialization_errors, replaced);

    let rows = load(missing.iter().map(|&i| ids[i].clone()).collect()).await?;
    let mut fill_keys = Vec::new();
    let mut fill_values = Vec::new();
    for (n, &i) in missing.iter().enumerate() {
        // `get`, not `remove`: an id may be asked for twice.
        let row = rows.get(&ids[i]).cloned();
        if granted.get(n).copied().unwrap_or(false) {
            match codec::encode(fingerprint, row.as_ref()) {
                Ok(bytes) => {
                    fill_keys.push(keys[i].clone());
                    fill_values.push(bytes);
                }
                Err(e) => mgr.warn("encode", &e),
            }
        }
        out[i] = row;
    }
    if !fill_keys.is_empty() {
        let mgr = mgr.clone();
        tokio::spawn(async move {
            for key in &fill_keys {
                mgr.hooks.before_fill(key).await;
            }
            let deadline = mgr.deadline();
            let key_refs: Vec<&str> = fill_keys.iter().map(String::as_str).collect();
            let value_refs: Vec<&[u8]> = fill_values.iter().map(Vec::as_slice).collect();
            let ttl_ms = ttl_secs.saturating_mul(1000);
            if let Ok(filled) = mgr
                .guarded(deadline, "fill", || {
                    mgr.backend.fill(&key_refs, &value_refs, &lease, ttl_ms)
                })
                .await
            {
                Counters::add(&mgr.counters.fills, filled);
                Counters::add(&mgr.counters.fills_rejected, key_refs.len() as u64 - filled);
            }
        });
    }
    Ok(out)
}
