//! The near cache's tracking task: it subscribes on the node the cache URL
//! names (or the primary Sentinel names, see `redis::tracking`), and when
//! that node turns out to belong to a Redis Cluster it hands over to
//! `cluster::tracking`, which subscribes on every primary. It lives here,
//! above both, because choosing between them is the backend's topology
//! choice (see `switch`).

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "cluster")]
use super::cluster;
use super::listener::KeyListener;
use super::redis::tracking::{self as node_tracking, Ended};

/// Where the near cache's invalidations come from: the node's subscription
/// and, on a cluster, the backend's view of it once the backend has found
/// it out.
#[derive(Clone)]
pub(crate) struct Source {
    pub node: node_tracking::Source,
    #[cfg(feature = "cluster")]
    pub cluster: Arc<std::sync::OnceLock<Arc<cluster::topology::Topology>>>,
}

/// Starts the tracking task of `near` for keys under `prefix`
/// (`{global}:`). It stops once `near` is dropped.
pub(crate) fn spawn(source: Source, prefix: String, near: &Arc<dyn KeyListener>, timeout: Duration) {
    let near = Arc::downgrade(near);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(20);
        loop {
            if near.strong_count() == 0 {
                return;
            }
            match node_tracking::track(&source.node, &prefix, &near, timeout).await {
                Ended::Cluster => {
                    #[cfg(feature = "cluster")]
                    if let Some(topology) = found_cluster(&source).await {
                        cluster::tracking::follow(topology, prefix, near, timeout).await;
                        return;
                    }
                    tracing::warn!(target: "storehaus", "the cache is a Redis Cluster the backend does not follow: the near cache stays off");
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

/// The cluster backend's view, once the backend has found the cluster out
/// (it does on its first command; given 10 s).
#[cfg(feature = "cluster")]
async fn found_cluster(source: &Source) -> Option<Arc<cluster::topology::Topology>> {
    let start = std::time::Instant::now();
    loop {
        if let Some(topology) = source.cluster.get() {
            return Some(topology.clone());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
