//! What a fresh connection learns about its node before it is used: the
//! node's `run_id` (a new one means a restart, possibly from an older
//! snapshot), its role (a Sentinel's primary must be a primary), and
//! whether it is part of a cluster (then the addresses of every node).
//!
//! One `INFO` per connect, off the callers' path: commands never pay for it.

use std::sync::{Arc, Mutex, OnceLock};

use redis::aio::MultiplexedConnection;

use crate::backend::contact::Contact;
use crate::error::{CacheError, CacheResult};

/// What `INFO` says about a node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct NodeInfo {
    pub run_id: Option<String>,
    pub cluster_enabled: bool,
    /// `master` or `slave` (`role:` of the replication section).
    pub role: Option<String>,
}

impl NodeInfo {
    /// Parses the `field:value` lines of an `INFO` reply.
    pub fn parse(info: &str) -> NodeInfo {
        let mut node = NodeInfo::default();
        for line in info.lines() {
            match line.trim_end().split_once(':') {
                Some(("run_id", v)) => node.run_id = Some(v.to_string()),
                Some(("cluster_enabled", v)) => node.cluster_enabled = v == "1",
                Some(("role", v)) => node.role = Some(v.to_string()),
                _ => {}
            }
        }
        node
    }
}

/// What the first connect found out about the deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Topology {
    /// One node (or a Sentinel's primary).
    Single,
    /// A cluster: the `host:port` of every node it reported.
    Cluster(Vec<(String, u16)>),
}

/// The probe's memory across connects: the last node seen and the topology.
#[derive(Debug)]
pub(crate) struct NodeWatch {
    contact: Arc<Contact>,
    /// `(address, run_id)` of the node the last connection reached.
    last: Mutex<Option<(String, String)>>,
    topology: OnceLock<Topology>,
    /// Whether the node must be a primary (Sentinel).
    want_primary: bool,
}

impl NodeWatch {
    pub fn new(contact: Arc<Contact>, want_primary: bool) -> Self {
        NodeWatch {
            contact,
            last: Mutex::new(None),
            topology: OnceLock::new(),
            want_primary,
        }
    }

    /// The topology, once a connect found it out.
    #[cfg(feature = "cluster")]
    pub fn topology(&self) -> Option<&Topology> {
        self.topology.get()
    }

    /// Asks a fresh connection to `addr` about its node, and records what
    /// changed: a node at another address or with another `run_id` than the
    /// last connection's bumps the contact epoch, before the connection is
    /// used by anybody.
    ///
    /// # Errors
    /// `ConnectionError` when a Sentinel's primary turns out to be a
    /// replica (the next connect asks Sentinel again).
    pub async fn probe(&self, addr: &str, conn: &mut MultiplexedConnection) -> CacheResult<()> {
        let reply: redis::RedisResult<String> = redis::cmd("INFO").query_async(conn).await;
        let node = match reply {
            Ok(info) => NodeInfo::parse(&info),
            // An ACL user without INFO: nothing to learn, nothing to compare.
            Err(e) if e.code() == Some("NOPERM") => NodeInfo::default(),
            Err(e) => return Err(crate::backend::wire::map_err(e)),
        };
        if self.want_primary && node.role.as_deref().is_some_and(|r| r != "master") {
            return Err(CacheError::ConnectionError(
                format!("{addr} is a replica, not the primary Sentinel named").into(),
            ));
        }
        if let Some(run_id) = node.run_id {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let changed = last.as_ref().is_some_and(|(a, r)| a != addr || *r != run_id);
            if changed {
                tracing::warn!(target: "storehaus", addr, "the cache server restarted or another primary took over: replaying recent invalidations before cached values are served");
                self.contact.bump("run_id or primary changed");
            }
            *last = Some((addr.to_string(), run_id));
        }
        #[cfg(not(feature = "cluster"))]
        if node.cluster_enabled && self.topology.get().is_none() {
            tracing::warn!(target: "storehaus",
                addr,
                "the cache URL names a Redis Cluster node, but storehaus was built without its `cluster` feature: keys of other slots will fail (MOVED) and go to the database"
            );
        }
        if self.topology.get().is_none() {
            let topology = if node.cluster_enabled {
                Topology::Cluster(cluster_nodes(conn).await?)
            } else {
                Topology::Single
            };
            let _ = self.topology.set(topology);
        }
        Ok(())
    }
}

/// Every node `CLUSTER SLOTS` names (primaries and replicas), as `host:port`.
async fn cluster_nodes(conn: &mut MultiplexedConnection) -> CacheResult<Vec<(String, u16)>> {
    let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(conn)
        .await
        .map_err(crate::backend::wire::map_err)?;
    let mut nodes = Vec::new();
    for range in slots {
        let redis::Value::Array(parts) = range else { continue };
        // [start, end, [host, port, id, ...], [replica...]...]
        for node in parts.into_iter().skip(2) {
            let redis::Value::Array(fields) = node else { continue };
            let mut fields = fields.into_iter();
            let host = match fields.next() {
                Some(redis::Value::BulkString(h)) => String::from_utf8_lossy(&h).into_owned(),
                Some(redis::Value::SimpleString(h)) => h,
                _ => continue,
            };
            let Some(redis::Value::Int(port)) = fields.next() else {
                continue;
            };
            let Ok(port) = u16::try_from(port) else { continue };
            if !host.is_empty() && !nodes.contains(&(host.clone(), port)) {
                nodes.push((host, port));
            }
        }
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_read() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\n# Replication\r\nrole:master\r\n# Cluster\r\ncluster_enabled:1\r\n";
        let node = NodeInfo::parse(info);
        assert_eq!(node.run_id.as_deref(), Some("abc123"));
        assert_eq!(node.role.as_deref(), Some("master"));
        assert!(node.cluster_enabled);
        assert!(!NodeInfo::parse("cluster_enabled:0\r\n").cluster_enabled);
    }
}
