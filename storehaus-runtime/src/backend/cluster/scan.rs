//! `SCAN` over a cluster: one walk per primary, one after the other, under
//! one cursor. The cursor carries the primary's position (in the sorted
//! list of primaries) in its top 16 bits and that node's own cursor below.
//! A walk that meets another list of primaries (a failover during the walk)
//! goes on with whichever node is now at that position: keys present for
//! the whole walk on a stable cluster are all reached.

use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::ClusterBackend;
use crate::backend::ScanStep;
use crate::backend::ServerStats;
use crate::error::{CacheError, CacheResult};

/// Bits of a combined cursor left for a node's own cursor.
const NODE_BITS: u32 = 48;

impl ClusterBackend {
    /// One step of a walk over every primary's keys matching `pattern`,
    /// unlinking what it finds (per slot) except keys starting with `spare`.
    pub async fn scan_step(&self, cursor: u64, pattern: &str, spare: Option<&str>) -> CacheResult<ScanStep> {
        let primaries = self.primaries().await?;
        let index = (cursor >> NODE_BITS) as usize;
        let node_cursor = cursor & ((1 << NODE_BITS) - 1);
        let Some((host, port)) = primaries.get(index) else {
            return Ok(ScanStep::default());
        };
        let mut scan = redis::cmd("SCAN");
        scan.arg(node_cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(crate::backend::wire::SCAN_COUNT);
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.clone(),
            port: *port,
        });
        let reply = self
            .conn()
            .route_command(scan, routing)
            .await
            .map_err(|e| self.map_err(e))?;
        let (next, mut keys): (u64, Vec<String>) =
            redis::from_redis_value(reply).map_err(|e| self.map_err(e.into()))?;
        if let Some(spare) = spare {
            keys.retain(|k| !k.starts_with(spare));
        }
        if next >= 1 << NODE_BITS {
            return Err(CacheError::Command(
                format!("SCAN cursor {next} is too large to combine").into(),
            ));
        }
        let removed = if keys.is_empty() {
            0
        } else {
            self.delete_physical(&keys, "UNLINK").await?
        };
        let next = match next {
            0 if index + 1 < primaries.len() => (index as u64 + 1) << NODE_BITS,
            0 => 0,
            n => ((index as u64) << NODE_BITS) | n,
        };
        Ok(ScanStep { next, removed, keys })
    }

    /// The figures of every primary (`INFO memory stats clients`), added up
    /// (the eviction policy is the first primary's): a primary that cannot
    /// answer fails the call.
    pub async fn server_stats(&self) -> CacheResult<ServerStats> {
        let mut total = ServerStats::default();
        for (host, port) in self.primaries().await? {
            let mut info = redis::cmd("INFO");
            info.arg("memory").arg("stats").arg("clients");
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
            let reply = self
                .conn()
                .route_command(info, routing)
                .await
                .map_err(|e| self.map_err(e))?;
            let text: String = redis::from_redis_value(reply).map_err(|e| self.map_err(e.into()))?;
            let node = ServerStats::from_info(&text);
            let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (None, b) => b,
                (a, None) => a,
                (Some(a), Some(b)) => Some(a + b),
            };
            total.used_memory = add(total.used_memory, node.used_memory);
            total.maxmemory = add(total.maxmemory, node.maxmemory);
            total.evicted_keys = add(total.evicted_keys, node.evicted_keys);
            total.keyspace_hits = add(total.keyspace_hits, node.keyspace_hits);
            total.keyspace_misses = add(total.keyspace_misses, node.keyspace_misses);
            total.connected_clients = add(total.connected_clients, node.connected_clients);
            total.maxmemory_policy = total.maxmemory_policy.or(node.maxmemory_policy);
        }
        Ok(total)
    }

    /// The primaries' addresses, sorted, from `CLUSTER SLOTS`.
    async fn primaries(&self) -> CacheResult<Vec<(String, u16)>> {
        let slots: Vec<redis::Value> = self.run(redis::cmd("CLUSTER").arg("SLOTS").to_owned()).await?;
        let mut primaries = Vec::new();
        for range in slots {
            let redis::Value::Array(parts) = range else { continue };
            let Some(redis::Value::Array(primary)) = parts.into_iter().nth(2) else {
                continue;
            };
            let mut fields = primary.into_iter();
            let host: Option<String> = fields.next().and_then(|v| redis::from_redis_value(v).ok());
            let port: Option<u16> = fields.next().and_then(|v| redis::from_redis_value(v).ok());
            if let (Some(host), Some(port)) = (host, port) {
                if !primaries.contains(&(host.clone(), port)) {
                    primaries.push((host, port));
                }
            }
        }
        primaries.sort();
        Ok(primaries)
    }
}
