//! What a cache server says about itself (`INFO` on Redis, the in-process
//! backend's own counts). Backends fill it in; the cache's health check
//! reads it.

/// The cache server's own figures, from [`CacheManager::server_stats`](crate::CacheManager::server_stats).
/// On Redis they come from `INFO`; the in-process backend reports what it
/// has (fields it cannot know are `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Bytes of memory in use (`used_memory`).
    pub used_memory: Option<u64>,
    /// The memory limit in bytes (`maxmemory`; 0: none).
    pub maxmemory: Option<u64>,
    /// What the server does at the limit (`maxmemory_policy`, e.g.
    /// `allkeys-lru` or `noeviction`; `tinylfu` for the in-process backend).
    pub maxmemory_policy: Option<String>,
    /// Keys evicted since the server started (`evicted_keys`).
    pub evicted_keys: Option<u64>,
    /// Lookups of existing keys since the server started (`keyspace_hits`).
    pub keyspace_hits: Option<u64>,
    /// Lookups of missing keys since the server started (`keyspace_misses`).
    pub keyspace_misses: Option<u64>,
    /// Connected clients (`connected_clients`).
    pub connected_clients: Option<u64>,
    /// Entries held and the entry limit (in-process backend only).
    pub entries: Option<(u64, u64)>,
}

impl ServerStats {
    /// Reads the fields of a Redis `INFO` reply.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn from_info(info: &str) -> ServerStats {
        let mut s = ServerStats::default();
        for line in info.lines() {
            let Some((name, value)) = line.trim_end().split_once(':') else {
                continue;
            };
            let number = || value.parse::<u64>().ok();
            match name {
                "used_memory" => s.used_memory = number(),
                "maxmemory" => s.maxmemory = number(),
                "maxmemory_policy" => s.maxmemory_policy = Some(value.to_string()),
                "evicted_keys" => s.evicted_keys = number(),
                "keyspace_hits" => s.keyspace_hits = number(),
                "keyspace_misses" => s.keyspace_misses = number(),
                "connected_clients" => s.connected_clients = number(),
                _ => {}
            }
        }
        s
    }
}
