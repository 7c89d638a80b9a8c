//! Finding out whether a `redis://` URL names one node or a node of a
//! cluster, as rueidis does: the first connection asks the node (`INFO`,
//! see `probe`), and a cluster node is then asked for every node's address
//! (`CLUSTER SLOTS`), which all become seeds of the cluster connection. It
//! happens on the first connect, in the background task that connects,
//! within the callers' budget. `CacheConfig::with_cluster_nodes` skips it.
//!
//! Once found out, a single node costs one atomic load per command.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::probe::Topology;
use super::{RedisBackend, Target};
use crate::backend::cluster::topology::Topology as ClusterView;
use crate::backend::cluster::ClusterBackend;
use crate::backend::contact::Contact;
use crate::config::{redact_url, TlsCerts};
use crate::error::{CacheError, CacheResult};

pub(crate) struct ClusterSwitch {
    /// Found out: one node.
    single: AtomicBool,
    /// Found out (or configured): a cluster.
    backend: OnceLock<ClusterBackend>,
    /// Its view, for the near cache's tracking (set with `backend`).
    pub(super) topology: Arc<OnceLock<Arc<ClusterView>>>,
    url: String,
    timeout: Duration,
    tls: TlsCerts,
    contact: Arc<Contact>,
    wait: Option<(u32, u64)>,
}

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

impl ClusterSwitch {
    fn set(&self, backend: ClusterBackend) {
        let topology = backend.topology().clone();
        if self.backend.set(backend).is_ok() {
            let _ = self.topology.set(topology);
        }
    }
}

impl RedisBackend {
    /// The cluster backend when the URL names a cluster, `None` for one
    /// node; finds out on the first call (which connects).
    #[inline]
    pub async fn cluster(&self) -> CacheResult<Option<&ClusterBackend>> {
        let Some(switch) = &self.cluster else {
            return Ok(None);
        };
        if switch.single.load(Ordering::Acquire) {
            return Ok(None);
        }
        if let Some(backend) = switch.backend.get() {
            return Ok(Some(backend));
        }
        self.find_out(switch).await
    }

    #[tracing::instrument(target = "storehaus", skip_all)]
    async fn find_out<'a>(&self, switch: &'a ClusterSwitch) -> CacheResult<Option<&'a ClusterBackend>> {
        self.pool.connected().await?;
        let Some(Topology::Cluster(nodes)) = self.pool.topology() else {
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

/// A seed's URL: a full URL as given, or `host:port` with the scheme and
/// credentials of the main URL.
pub(crate) fn seed_url(base: &str, node: &str) -> CacheResult<String> {
    if node.contains("://") {
        return Ok(node.to_string());
    }
    let bad = |why: &str| CacheError::InvalidConfig(format!("cluster node {node:?}: {why}"));
    let (host, port) = node.rsplit_once(':').ok_or_else(|| bad("write host:port"))?;
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
    let mut url =
        url::Url::parse(base).map_err(|e| CacheError::InvalidConfig(format!("cache URL {}: {e}", redact_url(base))))?;
    url.set_host(Some(host.trim_matches(['[', ']'])))
        .map_err(|e| bad(&e.to_string()))?;
    url.set_port(Some(port)).map_err(|()| bad("cannot carry a port"))?;
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_keep_the_credentials_and_scheme() {
        assert_eq!(
            seed_url("rediss://:pw@127.0.0.1:7000/#insecure", "127.0.0.1:7001").unwrap(),
            "rediss://:pw@127.0.0.1:7001/#insecure"
        );
        assert_eq!(
            seed_url("redis://127.0.0.1:7000", "redis://10.0.0.1:1").unwrap(),
            "redis://10.0.0.1:1"
        );
        assert!(seed_url("redis://127.0.0.1:7000", "nohost").is_err());
    }
}
