//! The cache side of a store's explicit controls and of fill-on-write:
//! read a record fresh and put it in place (`get_fresh`), prime a key
//! (`prime`), lease a key before a write that fills it.

use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cache::codec::{self, Found};
use crate::cache::fill::{Fill, Guard, Ttls};
use crate::cache::flight::Lease;
use crate::cache::read::{load_and_fill, new_lease, Held};
use crate::cache::versions::Layout;
use crate::cache::CacheManager;
use crate::error::Result;

/// Reads `key`'s value from the database (`load`) whatever the cache holds,
/// and puts it in the cache behind a lease of its own: the entry (and this
/// version's side entry) is deleted first, then leased (`SET NX`), so a
/// write that lands meanwhile deletes the lease and the fill is dropped.
/// When another reader takes the key between the delete and the lease (its
/// load began after the delete), or the cache cannot be reached, the value
/// is read from the database all the same and not filled.
pub(crate) async fn refresh_through<V, F, Fut>(
    mgr: &Arc<CacheManager>,
    key: String,
    layout: &Layout,
    ttls: Ttls,
    load: F,
) -> Result<Option<V>>
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<V>>>,
{
    let deadline = mgr.deadline();
    if !mgr.ready(deadline).await {
        return load().await;
    }
    let keys = [layout.side(&key), key];
    mgr.flights.detach(&keys);
    let lease = new_lease();
    let deleted = mgr.guarded(deadline, "refresh", || mgr.backend.delete(&keys)).await;
    // Whatever the near cache holds for the key is older than this read.
    mgr.near_forget(&keys);
    let [_, key] = keys;
    let leased = match deleted {
        Ok(_) => matches!(
            mgr.guarded(deadline, "lease", || mgr.backend.get_or_lease(
                &key,
                &lease,
                mgr.lease_ms()
            ))
            .await,
            Ok(None)
        ),
        Err(_) => false,
    };
    if leased {
        load_and_fill(mgr, Held { key, lease, deadline }, layout.fingerprint, ttls, load).await
    } else {
        load().await
    }
}

/// Puts `bytes` under `key` when the key is free (no value and no lease),
/// behind a lease of its own: taken with `SET NX`, then the value written
/// only while the lease is still there. When the key holds another
/// version's entry, the same at this version's side key (registered
/// first). Whether it was written.
pub(crate) async fn prime(mgr: &CacheManager, key: String, layout: &Layout, bytes: Vec<u8>, ttl_secs: u64) -> bool {
    let deadline = mgr.deadline();
    if !mgr.ready(deadline).await {
        return false;
    }
    let lease = new_lease();
    let mut key = key;
    let mut on_side = false;
    loop {
        let leased = mgr
            .guarded(deadline, "lease", || {
                mgr.backend.get_or_lease(&key, &lease, mgr.lease_ms())
            })
            .await;
        match leased {
            Ok(None) => break,
            Ok(Some(found)) if !on_side && !codec::is_lease(&found) => {
                if !matches!(
                    codec::decode_any::<serde::de::IgnoredAny>(layout.fingerprint, &found),
                    Ok(Found::Foreign)
                ) {
                    return false;
                }
                key = layout.side(&key);
                on_side = true;
            }
            _ => return false,
        }
    }
    let fill = Fill {
        keys: vec![key],
        values: vec![bytes],
        guard: Guard::Lease(lease),
        ttl_secs,
    };
    if (!on_side || mgr.register_layout(layout, deadline).await) && mgr.land(&fill).await == 1 {
        return true;
    }
    // Not written (the cache failed, or a write took the key): give back
    // the lease if it is still there, so that readers need not wait for it.
    let _ = mgr
        .guarded(deadline, "release_lease", || {
            mgr.backend.release_lease(&fill.keys[0], &lease)
        })
        .await;
    false
}

/// Takes a lease on `key` for a write that fills the cache with what it
/// wrote (`CacheParams::with_fill_on_write`), before the write is sent:
/// deletes the key, then leases it (`SET NX`). `None` when the cache could
/// not be reached or another reader took the key in between; the write then
/// only invalidates.
pub(crate) async fn write_lease(mgr: &CacheManager, key: &str) -> Option<Lease> {
    let deadline = mgr.deadline();
    if !mgr.ready(deadline).await {
        return None;
    }
    let keys = [key.to_string()];
    mgr.guarded(deadline, "write_lease", || mgr.backend.delete(&keys))
        .await
        .ok()?;
    let lease = new_lease();
    let leased = mgr
        .guarded(deadline, "write_lease", || {
            mgr.backend.get_or_lease(key, &lease, mgr.lease_ms())
        })
        .await;
    matches!(leased, Ok(None)).then_some(lease)
}
