//! The near cache's tracking connection: one RESP3 connection per manager
//! with `CLIENT TRACKING ON BCAST PREFIX {global}:`, so that Redis pushes an
//! invalidation for every key of the manager's key space that anybody
//! changes (a write, a fill, an expiry, an eviction, a `FLUSHALL`).
//!
//! Broadcast mode rather than the default (or `OPTIN` + `REDIRECT`): the
//! keys are read on the pool's RESP2 connections, which are not the
//! tracking connection, and broadcast needs no per-key state on the server.
//!
//! Pushes are handled in the connection's reader, synchronously (no channel
//! in between): an invalidation evicts its key, a `FLUSHALL`/`FLUSHDB`
//! (a nil key list) flushes the near cache, and a lost connection marks it
//! not live and flushes it before anything else can be served. A heartbeat
//! `PING` every [`HEARTBEAT`] catches a silent partition (no RST: no
//! disconnect is ever seen) within one heartbeat plus the operation budget.
//! The task reconnects with a backoff and, once subscribed again, makes the
//! near cache live after a flush.
//!
//! Behind Sentinel the subscription follows the primary: a switch
//! announced by the Sentinels (`failover`) ends it (the near cache is
//! flushed, and the task subscribes on the new primary), and the heartbeat
//! asks `ROLE`, so that a primary demoted under the connection is noticed
//! within a heartbeat even when no announcement arrives.
//!
//! On a Redis Cluster a broadcast subscription on one node would hear of
//! that node's keys only: the subscription finds the node is part of a
//! cluster and ends, and the task (`backend::tracking`) hands over to
//! `cluster::tracking`, which subscribes on every primary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{watch, Notify};

use super::failover::Failovers;
use super::pool::Connector;
use crate::backend::listener::KeyListener;

/// How often the tracking connection is pinged.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(200);

/// The client name of tracking connections (`CLIENT LIST`).
pub const TRACKING_CLIENT_NAME: &str = "storehaus-near";

/// One round of subscriptions, from connect to loss: a connection of the
/// round that drops makes the near cache not live and ends the round; once
/// the round is over, its connections no longer speak for the near cache.
#[derive(Debug, Default)]
pub(crate) struct Round {
    pub lost: Notify,
    over: AtomicBool,
}

impl Round {
    /// The round is over (the near cache was or is about to be flushed).
    pub fn end(&self) {
        self.over.store(true, Ordering::Release);
    }
}

/// Why a subscription ended or could not start.
pub(crate) enum Ended {
    /// The connection failed; try again.
    Lost(String),
    /// The node belongs to a cluster: one node's subscription cannot
    /// follow it.
    Cluster,
}

/// Where the near cache's invalidations come from: the node (or the
/// primary Sentinel names) and, behind Sentinel, its switches.
#[derive(Clone)]
pub(crate) struct Source {
    pub connector: Connector,
    pub failovers: Option<Arc<Failovers>>,
}

/// One subscription, from connect to loss.
pub(crate) async fn track(source: &Source, prefix: &str, near: &Weak<dyn KeyListener>, timeout: Duration) -> Ended {
    let round = Arc::new(Round::default());
    let ended = track_round(source, prefix, near, &round, timeout).await;
    round.end();
    ended
}

async fn track_round(
    source: &Source,
    prefix: &str,
    near: &Weak<dyn KeyListener>,
    round: &Arc<Round>,
    timeout: Duration,
) -> Ended {
    // Before the primary is asked for: a switch from then on ends it.
    let mut switched = source.failovers.as_ref().map(|f| {
        f.start();
        f.subscribe()
    });
    let client = match source.connector.client().await {
        Ok(client) => client,
        Err(e) => return Ended::Lost(e.to_string()),
    };
    let mut conn = match connect(&client, near, round, timeout).await {
        Ok(conn) => conn,
        Err(e) => return Ended::Lost(e.to_string()),
    };
    let info: redis::RedisResult<String> = redis::cmd("INFO").arg("cluster").query_async(&mut conn).await;
    match info {
        Ok(info) if info.contains("cluster_enabled:1") => return Ended::Cluster,
        Ok(_) => {}
        Err(e) => return Ended::Lost(e.to_string()),
    }
    if let Err(e) = subscribe(&mut conn, prefix).await {
        return Ended::Lost(e.to_string());
    }
    match near.upgrade() {
        Some(n) => n.set_live(true),
        None => return Ended::Lost("the cache manager was dropped".into()),
    }
    tracing::debug!(target: "storehaus", prefix, "near cache: tracking subscribed");
    loop {
        tokio::select! {
            _ = round.lost.notified() => return Ended::Lost("disconnected".into()),
            _ = next_switch(&mut switched) => return Ended::Lost("Sentinel switched the primary".into()),
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        if near.strong_count() == 0 {
            return Ended::Lost("the cache manager was dropped".into());
        }
        if let Err(why) = heartbeat(&mut conn, source.failovers.is_some(), timeout).await {
            return Ended::Lost(why);
        }
    }
}

/// Waits for the next Sentinel switch (forever without Sentinel).
async fn next_switch(switched: &mut Option<watch::Receiver<u64>>) {
    if let Some(rx) = switched {
        if rx.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// `CLIENT SETNAME` and `CLIENT TRACKING ON BCAST PREFIX prefix`.
pub(crate) async fn subscribe(conn: &mut MultiplexedConnection, prefix: &str) -> redis::RedisResult<()> {
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(TRACKING_CLIENT_NAME)
        .query_async::<()>(conn)
        .await?;
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("BCAST")
        .arg("PREFIX")
        .arg(prefix)
        .query_async::<()>(conn)
        .await
}

/// One heartbeat within `timeout`: `PING`, or with `primary` (Sentinel)
/// `ROLE`, which must still say `master`. The reason it failed.
pub(crate) async fn heartbeat(
    conn: &mut MultiplexedConnection,
    primary: bool,
    timeout: Duration,
) -> Result<(), String> {
    let cmd = redis::cmd(if primary { "ROLE" } else { "PING" });
    match tokio::time::timeout(timeout, cmd.query_async::<Value>(conn)).await {
        Err(_) => Err(format!("no answer to a heartbeat within {} ms", timeout.as_millis())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(Value::Array(role))) if primary => match role.first() {
            Some(Value::BulkString(r)) if r.as_slice() == b"master" => Ok(()),
            Some(Value::SimpleString(r)) if r == "master" => Ok(()),
            _ => Err("the primary was demoted".into()),
        },
        Ok(Ok(_)) if primary => Err("ROLE: unexpected reply".into()),
        Ok(Ok(_)) => Ok(()),
    }
}

/// A RESP3 connection to the node of `client`, whose pushes go to `near`;
/// when it drops during `round`, the near cache is no longer live and the
/// round is told.
pub(crate) async fn connect(
    client: &Client,
    near: &Weak<dyn KeyListener>,
    round: &Arc<Round>,
    timeout: Duration,
) -> redis::RedisResult<MultiplexedConnection> {
    let info = client.get_connection_info().clone();
    let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    let client = Client::open(info.set_redis_settings(settings))?;
    let (near, round) = (near.clone(), round.clone());
    let on_push = move |push: PushInfo| -> Result<(), ()> {
        let Some(near) = near.upgrade() else {
            return Err(());
        };
        match push.kind {
            PushKind::Invalidate => invalidate(&*near, push.data),
            PushKind::Disconnection if !round.over.load(Ordering::Acquire) => {
                near.set_live(false);
                round.lost.notify_one();
            }
            _ => {}
        }
        Ok(())
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout.max(Duration::from_secs(1))))
        .set_response_timeout(Some(timeout.max(Duration::from_secs(1))))
        .set_push_sender(on_push);
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// An `invalidate` push: the keys that changed, or nil for "everything"
/// (`FLUSHALL`, `FLUSHDB`).
fn invalidate(near: &dyn KeyListener, data: Vec<Value>) {
    for item in data {
        match item {
            Value::Array(keys) | Value::Set(keys) => {
                for key in keys {
                    match key {
                        Value::BulkString(bytes) => near.invalidate(&String::from_utf8_lossy(&bytes)),
                        Value::SimpleString(s) => near.invalidate(&s),
                        // Anything else is not a key name: be safe.
                        _ => near.flush(),
                    }
                }
            }
            _ => near.flush(),
        }
    }
}
