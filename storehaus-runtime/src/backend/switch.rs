//! Finding out whether a `redis://` URL names one node or a node of a
//! cluster, as rueidis does: the first connection asks the node (`INFO`,
//! see `probe`), and a cluster node is then asked for every node's address
//! (`CLUSTER SLOTS`), which all become seeds of the cluster connection. It
//! happens on the first connect, in the background task that connects,
//! within the callers' budget. `CacheConfig::with_cluster_nodes` skips it.
//!
//! Once found out, a single node costs one atomic load per command.

#[cfg(feature = "cluster")]
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(feature = "cluster")]
use std::sync::{Arc, OnceLock};
#[cfg(feature = "cluster")]
use std::time::Duration;

#[cfg(feature = "cluster")]
use crate::backend::cluster::seeds::seed_url;
#[cfg(feature = "cluster")]
use crate::backend::cluster::topology::Topology as ClusterView;
#[cfg(feature = "cluster")]
use crate::backend::cluster::ClusterBackend;
#[cfg(feature = "cluster")]
use crate::backend::contact::Contact;
#[cfg(feature = "cluster")]
use crate::backend::redis::probe::Topology;
use crate::backend::redis::{RedisBackend, Target};
use crate::backend::tracking;
#[cfg(feature = "cluster")]
use crate::config::TlsCerts;
use crate::error::CacheResult;

/// What a `redis://` URL turned out to name: one node, or a node of a
/// cluster (never for Sentinel; always one node without the `cluster`
/// feature).
#[derive(Default)]
pub(crate) struct Switch {
    #[cfg(feature = "cluster")]
    cluster: Option<ClusterSwitch>,
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        #[cfg(feature = "cluster")]
        let cluster = self.cluster.as_ref().map(|s| s.backend.get().is_some());
        #[cfg(not(feature = "cluster"))]
        let cluster: Option<bool> = None;
        f.debug_struct("Switch").field("cluster", &cluster).finish()
    }
}

impl Switch {
    /// The switch for `target` (`sentinel`: a `redis+sentinel://` URL).
    ///
    /// # Errors
    /// `InvalidConfig` for a malformed seed node, or for seed nodes in a
    /// build without the `cluster` feature.
    pub fn new(target: &Target<'_>, sentinel: bool) -> CacheResult<Self> {
        #[cfg(feature = "cluster")]
        return Ok(Switch {
            cluster: if sentinel {
                None
            } else {
                Some(ClusterSwitch::new(target)?)
            },
        });
        #[cfg(not(feature = "cluster"))]
        {
            let _ = sentinel;
            if !target.cluster_nodes.is_empty() {
                return Err(crate::error::CacheError::InvalidConfig(
                    "cluster nodes need the `cluster` feature of storehaus".into(),
                ));
            }
            Ok(Switch::default())
        }
    }

    /// The cluster backend when the URL names a cluster, `None` for one
    /// node; finds out on the first call (which connects through `node`).
    #[cfg(feature = "cluster")]
    #[inline]
    pub async fn cluster(&self, node: &RedisBackend) -> CacheResult<Option<&ClusterBackend>> {
        match &self.cluster {
            Some(switch) => switch.cluster(node).await,
            None => Ok(None),
        }
    }

    /// Where the near cache's invalidations come from.
    pub fn tracking_source(&self, node: &RedisBackend) -> tracking::Source {
        tracking::Source {
            node: node.tracking_source(),
            #[cfg(feature = "cluster")]
            cluster: self
                .cluster
                .as_ref()
                .map(|switch| switch.topology.clone())
                .unwrap_or_default(),
        }
    }
}

#[cfg(feature = "cluster")]
struct ClusterSwitch {
    /// Found out: one node.
    single: AtomicBool,
    /// Found out (or configured): a cluster.
    backend: OnceLock<ClusterBackend>,
    /// Its view, for the near cache's tracking (set with `backend`).
    topology: Arc<OnceLock<Arc<ClusterView>>>,
    url: String,
    timeout: Duration,
    tls: TlsCerts,
    contact: Arc<Contact>,
    wait: Option<(u32, u64)>,
}

#[cfg(feature = "cluster")]
impl ClusterSwitch {
    pub fn new(target: &Target<'_>) -> CacheResult<Self> {
        let switch = ClusterSwitch {
            single: AtomicBool::new(false),
            backend: OnceLock::new(),
            topology: Arc::default(),
            url: target.url.to_string(),
            timeout: target.timeout,
            tls: target.tls.clone(),
            contact: target.contact.clone(),
            wait: target.wait,
        };
        if !target.cluster_nodes.is_empty() {
            let mut seeds = vec![target.url.to_string()];
            for node in target.cluster_nodes {
                seeds.push(seed_url(target.url, node)?);
            }
            let backend =
                ClusterBackend::new(&seeds, switch.timeout, &switch.tls, switch.contact.clone(), switch.wait)?;
            switch.set(backend);
        }
        Ok(switch)
    }
}

#[cfg(feature = "cluster")]
impl ClusterSwitch {
    fn set(&self, backend: ClusterBackend) {
        let topology = backend.topology().clone();
        if self.backend.set(backend).is_ok() {
            let _ = self.topology.set(topology);
        }
    }
}

#[cfg(feature = "cluster")]
impl ClusterSwitch {
    /// The cluster backend when the URL names a cluster, `None` for one
    /// node; finds out on the first call (which connects through `node`).
    #[inline]
    pub async fn cluster(&self, node: &RedisBackend) -> CacheResult<Option<&ClusterBackend>> {
        if self.single.load(Ordering::Acquire) {
            return Ok(None);
        }
        if let Some(backend) = self.backend.get() {
            return Ok(Some(backend));
        }
        self.find_out(node).await
    }

    #[tracing::instrument(target = "storehaus", skip_all)]
    async fn find_out(&self, node: &RedisBackend) -> CacheResult<Option<&ClusterBackend>> {
        let switch = self;
        let Some(Topology::Cluster(nodes)) = node.topology_found().await? else {
            switch.single.store(true, Ordering::Release);
            return Ok(None);
        };
        if let Some(backend) = switch.backend.get() {
            return Ok(Some(backend));
        }
        let mut seeds = vec![switch.url.clone()];
        for (host, port) in nodes {
            seeds.push(seed_url(&switch.url, &format!("{host}:{port}"))?);
        }
        tracing::info!(target: "storehaus",
            nodes = seeds.len(),
            "the cache URL names a Redis Cluster node: cluster mode"
        );
        let backend = ClusterBackend::new(&seeds, switch.timeout, &switch.tls, switch.contact.clone(), switch.wait)?;
        switch.set(backend);
        Ok(switch.backend.get())
    }
}
