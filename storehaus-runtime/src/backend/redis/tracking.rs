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
//! On a Redis Cluster a broadcast subscription on one node would hear of
//! that node's keys only: the task finds the node is part of a cluster,
//! logs it once, and the near cache stays off.

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::Notify;

use super::pool::Connector;
use crate::cache::near::Near;

/// How often the tracking connection is pinged.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(200);

/// The client name of tracking connections (`CLIENT LIST`).
pub const TRACKING_CLIENT_NAME: &str = "storehaus-near";

/// Why a subscription ended or could not start.
enum Ended {
    /// The connection failed; try again.
    Lost(String),
    /// The node belongs to a cluster: the near cache stays off.
    Cluster,
}

/// Starts the tracking task of `near` for keys under `prefix`
/// (`{global}:`). It stops once `near` is dropped.
pub(crate) fn spawn(connector: Connector, prefix: String, near: &Arc<Near>, timeout: Duration) {
    let near = Arc::downgrade(near);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(20);
        loop {
            if near.strong_count() == 0 {
                return;
            }
            match track(&connector, &prefix, &near, timeout).await {
                Ended::Cluster => {
                    tracing::warn!(target: "storehaus", "the cache is a Redis Cluster: the near cache stays off");
                    return;
                }
                Ended::Lost(why) => {
                    if let Some(n) = near.upgrade() {
                        if n.is_live() {
                            tracing::warn!(target: "storehaus", error = %why, "near cache: tracking connection lost; flushed, serving from Redis until it is back");
                        } else {
                            tracing::debug!(target: "storehaus", error = %why, "near cache: tracking connection not available");
                        }
                        n.set_live(false);
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    });
}

/// One subscription, from connect to loss.
async fn track(connector: &Connector, prefix: &str, near: &Weak<Near>, timeout: Duration) -> Ended {
    let lost = Arc::new(Notify::new());
    let mut conn = match connect(connector, near, &lost, timeout).await {
        Ok(conn) => conn,
        Err(e) => return Ended::Lost(e.to_string()),
    };
    let info: redis::RedisResult<String> = redis::cmd("INFO").arg("cluster").query_async(&mut conn).await;
    match info {
        Ok(info) if info.contains("cluster_enabled:1") => return Ended::Cluster,
        Ok(_) => {}
        Err(e) => return Ended::Lost(e.to_string()),
    }
    let subscribed: redis::RedisResult<()> = async {
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(TRACKING_CLIENT_NAME)
            .query_async::<()>(&mut conn)
            .await?;
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(prefix)
            .query_async::<()>(&mut conn)
            .await
    }
    .await;
    if let Err(e) = subscribed {
        return Ended::Lost(e.to_string());
    }
    match near.upgrade() {
        Some(n) => n.set_live(true),
        None => return Ended::Lost("the cache manager was dropped".into()),
    }
    tracing::debug!(target: "storehaus", prefix, "near cache: tracking subscribed");
    loop {
        tokio::select! {
            _ = lost.notified() => return Ended::Lost("disconnected".into()),
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        if near.strong_count() == 0 {
            return Ended::Lost("the cache manager was dropped".into());
        }
        let ping = tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut conn)).await;
        match ping {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Ended::Lost(e.to_string()),
            Err(_) => return Ended::Lost(format!("no answer to PING within {} ms", timeout.as_millis())),
        }
    }
}

/// A RESP3 connection to the node `connector` names now, whose pushes go
/// to `near`.
async fn connect(
    connector: &Connector,
    near: &Weak<Near>,
    lost: &Arc<Notify>,
    timeout: Duration,
) -> redis::RedisResult<MultiplexedConnection> {
    let info = connector.client().await?.get_connection_info().clone();
    let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    let client = Client::open(info.set_redis_settings(settings))?;
    let (near, lost) = (near.clone(), lost.clone());
    let on_push = move |push: PushInfo| -> Result<(), ()> {
        let Some(near) = near.upgrade() else {
            return Err(());
        };
        match push.kind {
            PushKind::Invalidate => invalidate(&near, push.data),
            PushKind::Disconnection => {
                near.set_live(false);
                lost.notify_one();
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
fn invalidate(near: &Near, data: Vec<Value>) {
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
