//! A reader that found another reader's lease: it joins that reader's load
//! when the load is this process's, else polls the key for the fill, for a
//! bounded time.

use std::time::Duration;

use serde::de::DeserializeOwned;

use super::{into_option, judge};
use crate::cache::codec::{self, Found};
use crate::cache::flight::follow;
use crate::cache::CacheManager;
use crate::error::CacheError;

/// What a reader that found someone else's lease ends up with.
pub(super) enum Behind<V> {
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
pub(super) async fn behind_another_reader<V: DeserializeOwned + Clone + Send + Sync + 'static>(
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
