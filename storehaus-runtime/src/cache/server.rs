//! What the cache server says about itself: memory, eviction, hit figures
//! and clients from Redis `INFO`, and the warnings a health check draws from
//! them.

use std::sync::atomic::Ordering;

use crate::backend::ServerStats;
use crate::cache::CacheManager;
use crate::error::CacheResult;

/// What [`CacheManager::health_check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The server's figures.
    pub server: ServerStats,
    /// What deserves attention; empty when all is well.
    pub warnings: Vec<HealthWarning>,
}

impl Health {
    /// Whether the check found nothing to warn about.
    pub fn is_ok(&self) -> bool {
        self.warnings.is_empty()
    }
}

/// A condition a health check warns about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthWarning {
    /// The server refuses writes when full (`noeviction`) and is at least
    /// 90 % full: soon every fill and every generation bump will be refused
    /// (reads still work, the cache stops filling).
    NoEvictionNearlyFull {
        /// Bytes in use.
        used_memory: u64,
        /// The limit.
        maxmemory: u64,
    },
    /// The server evicted keys since the previous health check: the cache is
    /// too small for its working set, and the hit rate suffers.
    EvictionsRising {
        /// Keys evicted since the previous check.
        evicted: u64,
    },
    /// A table watched through the outbox lost its triggers (re-created by a
    /// migration, swapped by an online schema change, a partition attached
    /// without them, triggers disabled): its writes no longer reach the
    /// cache. Install them again (`watch_external_writes`, or
    /// `external_writes_sql()` by migration).
    OutboxTriggersMissing {
        /// The watched table.
        table: String,
        /// Its relations (the table, its partitions) that lack a trigger.
        relations: Vec<String>,
    },
    /// The deployment's outbox position could not be trusted since the
    /// previous check (it expired, the database was restored or replaced):
    /// it cleared what it cached of its tables and started over.
    OutboxStartedOver {
        /// The deployment.
        deployment: String,
        /// Why.
        reason: String,
    },
    /// A replication slot of StoreHaus (`GenericStore::watch_wal`, feature
    /// `wal`) that no process of its deployment has streamed within the
    /// deployment's expiry: the server keeps every byte of WAL written since
    /// its position, forever, unless `max_slot_wal_keep_size` caps it. Drop
    /// a deployment that is gone for good with
    /// `GenericStore::drop_wal_deployment`.
    WalSlotRetained {
        /// The slot.
        slot: String,
        /// The deployment it belongs to.
        deployment: String,
        /// WAL the server retains for it, in bytes.
        retained_bytes: u64,
    },
    /// The deployment's replication slot was gone or invalidated (dropped,
    /// or past `max_slot_wal_keep_size`) since the previous check: changes
    /// may have been missed, so it cleared what it cached of its tables and
    /// started over with a new slot.
    WalStartedOver {
        /// The deployment.
        deployment: String,
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for HealthWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealthWarning::NoEvictionNearlyFull { used_memory, maxmemory } => write!(
                f,
                "the cache server is nearly full ({used_memory} of {maxmemory} bytes) and refuses writes when full (noeviction): fills will stop"
            ),
            HealthWarning::EvictionsRising { evicted } => write!(
                f,
                "the cache server evicted {evicted} keys since the previous check: it is too small for its working set"
            ),
            HealthWarning::OutboxTriggersMissing { table, relations } => write!(
                f,
                "the watched table {table} lost outbox triggers on {}: its writes no longer reach the cache (call watch_external_writes again)",
                relations.join(", ")
            ),
            HealthWarning::OutboxStartedOver { deployment, reason } => write!(
                f,
                "the outbox deployment {deployment} cleared what it cached and started over: {reason}"
            ),
            HealthWarning::WalSlotRetained {
                slot,
                deployment,
                retained_bytes,
            } => write!(
                f,
                "the replication slot {slot} of the stopped deployment {deployment} retains {retained_bytes} bytes of WAL (drop it with drop_wal_deployment, or bound it with max_slot_wal_keep_size)"
            ),
            HealthWarning::WalStartedOver { deployment, reason } => write!(
                f,
                "the write-ahead-log deployment {deployment} cleared what it cached and started over: {reason}"
            ),
        }
    }
}

/// The share of `maxmemory` from which a `noeviction` server is "nearly full".
const NEARLY_FULL: f64 = 0.9;

impl CacheManager {
    /// The cache server's own figures (Redis `INFO`: memory, evictions,
    /// keyspace hits and misses, clients), within the configured timeout.
    ///
    /// # Errors
    /// [`CacheError::CircuitOpen`](crate::CacheError::CircuitOpen) while the
    /// breaker is open, [`CacheError::ConnectionError`](crate::CacheError::ConnectionError)
    /// or [`CacheError::Timeout`](crate::CacheError::Timeout) when the
    /// server cannot be reached in time.
    #[tracing::instrument(target = "storehaus", skip(self))]
    pub async fn server_stats(&self) -> CacheResult<ServerStats> {
        self.guarded(self.deadline(), "info", || self.backend.server_stats())
            .await
    }

    /// Reaches the cache within the configured timeout and reads its
    /// figures; warns (in the returned value, not in a log line) when a
    /// `noeviction` server is nearly full, or when the server evicted keys
    /// since the previous health check of this manager.
    ///
    /// ```
    /// # use storehaus::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), CacheError> {
    /// let cache_manager = CacheManager::new(CacheConfig::new("memory://", 60, "app"))?;
    /// let health = cache_manager.health_check().await?;
    /// for warning in &health.warnings {
    ///     eprintln!("cache: {warning:?}");
    /// }
    /// # assert!(health.is_ok());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As for [`server_stats`](Self::server_stats): the cache is unreachable.
    #[tracing::instrument(target = "storehaus", skip(self))]
    pub async fn health_check(&self) -> CacheResult<Health> {
        let server = self.server_stats().await?;
        let mut warnings = Vec::new();
        if let (Some(policy), Some(used), Some(max)) = (&server.maxmemory_policy, server.used_memory, server.maxmemory)
        {
            if policy == "noeviction" && max > 0 && used as f64 >= max as f64 * NEARLY_FULL {
                warnings.push(HealthWarning::NoEvictionNearlyFull {
                    used_memory: used,
                    maxmemory: max,
                });
            }
        }
        if let Some(evicted) = server.evicted_keys {
            // u64::MAX: no check yet, so no baseline to compare with.
            let before = self.last_evicted.swap(evicted, Ordering::Relaxed);
            if before != u64::MAX && evicted > before {
                warnings.push(HealthWarning::EvictionsRising {
                    evicted: evicted - before,
                });
            }
        }
        warnings.extend(self.watchers.warnings());
        Ok(Health { server, warnings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_read() {
        let info = "# Memory\r\nused_memory:1048576\r\nmaxmemory:2097152\r\nmaxmemory_policy:noeviction\r\n\
                    # Stats\r\nevicted_keys:7\r\nkeyspace_hits:10\r\nkeyspace_misses:3\r\n# Clients\r\nconnected_clients:4\r\n";
        let s = ServerStats::from_info(info);
        assert_eq!(s.used_memory, Some(1_048_576));
        assert_eq!(s.maxmemory, Some(2_097_152));
        assert_eq!(s.maxmemory_policy.as_deref(), Some("noeviction"));
        assert_eq!(
            (s.evicted_keys, s.keyspace_hits, s.keyspace_misses),
            (Some(7), Some(10), Some(3))
        );
        assert_eq!(s.connected_clients, Some(4));
    }
}
