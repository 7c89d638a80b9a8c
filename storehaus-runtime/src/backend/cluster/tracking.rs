//! The near cache on a cluster: one RESP3 connection per primary, each with
//! `CLIENT TRACKING ON BCAST PREFIX {global}:` (a broadcast subscription
//! hears of its own node's keys only, so every primary is subscribed).
//!
//! The near cache is live only while every primary of the backend's trusted
//! slot map (`topology`) is subscribed and answers its heartbeat. A lost
//! connection, a heartbeat left unanswered, or any change of the slot map
//! (a failover, a slot moved) makes it not live and flushes it; the
//! subscriptions are then made again on the primaries of the current map,
//! and the near cache is live again after a flush. The ticket rule of
//! `cache::near` is the same as on one node: a read whose ticket predates an
//! invalidation or a flush is never served from the near cache.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;

use super::topology::{Node, Snapshot, Topology};
use crate::backend::listener::KeyListener;
use crate::backend::redis::tracking::{connect, heartbeat, subscribe, Round, HEARTBEAT};
use crate::backend::wire::open_client;

/// Follows the cluster's primaries for `near` until `near` is dropped.
pub(crate) async fn follow(topology: Arc<Topology>, prefix: String, near: Weak<dyn KeyListener>, timeout: Duration) {
    let mut changes = topology.subscribe();
    let mut backoff = Duration::from_millis(20);
    loop {
        if near.strong_count() == 0 {
            return;
        }
        changes.mark_unchanged();
        let snapshot = topology.snapshot();
        let Some(view) = snapshot.view else {
            topology.suspect("the near cache needs the slot map");
            let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
            continue;
        };
        let round = Arc::new(Round::default());
        match subscribe_all(&topology, &view.primaries(), &prefix, &near, &round, timeout).await {
            Ok(mut conns) => {
                backoff = Duration::from_millis(20);
                let Some(n) = near.upgrade() else { return };
                n.set_live(true);
                drop(n);
                tracing::debug!(target: "storehaus", primaries = conns.len(), "near cache: tracking every primary");
                let why = watch(&mut conns, &mut changes, &round, &near, timeout).await;
                tracing::warn!(target: "storehaus", why, "near cache: flushed, following the cluster again");
            }
            Err(why) => {
                tracing::debug!(target: "storehaus", why, "near cache: a primary cannot be tracked");
                topology.suspect("the near cache cannot reach a primary");
            }
        }
        round.end();
        if let Some(n) = near.upgrade() {
            n.set_live(false);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Subscribes on every primary (all or none).
async fn subscribe_all(
    topology: &Topology,
    primaries: &[Node],
    prefix: &str,
    near: &Weak<dyn KeyListener>,
    round: &Arc<Round>,
    timeout: Duration,
) -> Result<Vec<MultiplexedConnection>, String> {
    let limit = timeout.max(Duration::from_secs(1));
    let subscribed = join_all(primaries.iter().map(|node| async move {
        let url = topology.url_of(node).map_err(|e| e.to_string())?;
        let client = open_client(&url, topology.tls()).map_err(|e| e.to_string())?;
        let attempt = async {
            let mut conn = connect(&client, near, round, timeout).await?;
            subscribe(&mut conn, prefix).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(format!("{}:{}: {e}", node.0, node.1)),
            Err(_) => Err(format!("{}:{}: no answer", node.0, node.1)),
        }
    }))
    .await;
    subscribed.into_iter().collect()
}

/// Watches the subscriptions until one is lost, a heartbeat goes
/// unanswered, or the slot map changes: why it stopped.
async fn watch(
    conns: &mut [MultiplexedConnection],
    changes: &mut tokio::sync::watch::Receiver<Snapshot>,
    round: &Round,
    near: &Weak<dyn KeyListener>,
    timeout: Duration,
) -> String {
    loop {
        tokio::select! {
            _ = round.lost.notified() => return "a primary's tracking connection was lost".into(),
            _ = changes.changed() => return "the slot map changed".into(),
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        if near.strong_count() == 0 {
            return "the cache manager was dropped".into();
        }
        let beats = join_all(conns.iter_mut().map(|c| heartbeat(c, false, timeout))).await;
        if let Some(Err(why)) = beats.into_iter().find(Result::is_err) {
            return why;
        }
    }
}
