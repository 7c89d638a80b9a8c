//! Cached query results (`find`, `find_one`, `count`), valid for one query
//! generation of their store.
//!
//! Results are cached at `{global}:{prefix}:query:{hash}` (a stable hash of
//! the SQL and the encoded parameters) together with the generation they
//! were computed under. Every committed write of the store and every
//! `invalidate_queries(prefix)` bumps the generation (one `INCR`, after a
//! `SET NX` that seeds a missing counter at a random value), which makes
//! every older result unreachable in O(1): nothing is scanned. A generation
//! that cannot be bumped (out of memory) or holds garbage is deleted and
//! seeded again instead, with the same effect.
//!
//! A read fetches the generation and the entry in one round trip (MGET) and
//! serves the entry only when its generation is current. A missing
//! generation is seeded (`SET NX GET`) before the database is read. The fill
//! carries the generation read *before* the query and lands only if the
//! generation is still the same, so a result computed across a concurrent
//! write is dropped, not cached.

use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::{counter_seed, Invalidation};
use crate::cache::codec::{self, Entry};
use crate::cache::fill::{Fill, Guard};
use crate::cache::telemetry::Outcome;
use crate::cache::CacheManager;
use crate::error::{Result, ServerErrorKind};

/// Where a store's query results live.
pub(crate) struct QuerySpace<'a> {
    /// The result's key.
    pub key: String,
    /// The store's generation counter.
    pub generation_key: &'a str,
    pub fingerprint: u64,
    pub ttl_secs: u64,
}

/// Reads a query result through the cache, checking its generation; on a
/// miss runs `load` (the database) and fills against the generation. Also
/// says how the cache took part.
pub(crate) async fn read_query<V, F, Fut>(
    mgr: &Arc<CacheManager>,
    space: QuerySpace<'_>,
    load: F,
) -> (Result<V>, Outcome)
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<V>>,
{
    let deadline = mgr.deadline();
    if !mgr.ready(deadline).await {
        mgr.count(|c| &c.misses);
        return (load().await, Outcome::Bypass);
    }
    let keys = [space.generation_key.to_string(), space.key];
    let Ok(mut found) = mgr.guarded(deadline, "query_get", || mgr.backend.mget(&keys)).await else {
        mgr.count(|c| &c.misses);
        return (load().await, Outcome::Bypass);
    };
    let entry = found.pop().flatten();
    let [generation_key, key] = keys;
    let Some(generation) = current_generation(mgr, &generation_key, found.pop().flatten(), deadline).await else {
        mgr.count(|c| &c.misses);
        return (load().await, Outcome::Bypass);
    };
    if let Some(bytes) = entry {
        match codec::decode::<(u64, V)>(space.fingerprint, &bytes) {
            Ok(Entry::Record((g, value))) if g == generation => {
                mgr.count(|c| &c.hits);
                return (Ok(value), Outcome::Hit);
            }
            Ok(_) => {}
            Err(e) => {
                mgr.count_corrupt(1);
                mgr.warn("decode", &e);
            }
        }
    }
    mgr.count(|c| &c.misses);
    let value = match load().await {
        Ok(value) => value,
        Err(e) => return (Err(e), Outcome::Miss),
    };
    if let Some(bytes) = mgr.encode_fill(space.fingerprint, Some(&(generation, &value))) {
        let fill = Fill {
            keys: vec![key],
            values: vec![bytes],
            guard: Guard::Generation {
                counter: generation_key,
                expected: generation,
            },
            ttl_secs: space.ttl_secs,
        };
        mgr.spawn_fill(fill, None);
    }
    (Ok(value), Outcome::Miss)
}

/// The store's current generation, given what MGET found under its key.
/// A missing generation is seeded at a random value (`SET NX GET`) *before*
/// the database is read, so that this read's result can be filled against
/// it, and so that entries written under a lost counter can never match
/// again. `None` when there is none to use: the cache was unreachable or out
/// of memory, or the counter held garbage (it is then replaced, counted).
/// The store's query generation now (seeding a missing counter), or `None`
/// when the cache cannot tell: for checks outside `read_query` (the index
/// lookups' cached "no such value").
pub(crate) async fn read_generation(mgr: &CacheManager, generation_key: &str) -> Option<u64> {
    let deadline = mgr.deadline();
    let found = mgr
        .guarded(deadline, "query_generation", || mgr.backend.get(generation_key))
        .await
        .ok()?;
    current_generation(mgr, generation_key, found, deadline).await
}

async fn current_generation(
    mgr: &CacheManager,
    generation_key: &str,
    found: Option<Vec<u8>>,
    deadline: tokio::time::Instant,
) -> Option<u64> {
    let parsed = match found {
        Some(bytes) => parse_counter(&bytes),
        None => {
            let start = counter_seed();
            match mgr
                .guarded(deadline, "query_generation", || {
                    mgr.backend.seed_counter(generation_key, start)
                })
                .await
            {
                Ok(None) => Some(start),
                Ok(Some(bytes)) => parse_counter(&bytes),
                Err(e) if e.server_error_kind() == Some(&ServerErrorKind::WrongType) => None,
                Err(_) => return None,
            }
        }
    };
    if parsed.is_none() {
        // Not an integer: replace it by a fresh seed.
        let counters = [generation_key.to_string()];
        let inv = Invalidation {
            counters: &counters,
            ..Invalidation::default()
        };
        if let Ok(done) = mgr
            .guarded(deadline, "query_generation", || mgr.backend.invalidate(&inv))
            .await
        {
            mgr.count_resets(&done);
        }
    }
    parsed
}

/// A generation counter's value, if it is one.
fn parse_counter(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse::<u64>().ok()
}
