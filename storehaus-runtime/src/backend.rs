//! The cache backends behind one enum: the URL scheme picks one.
//!
//! Both speak the same primitives with the same semantics (see
//! [`crate::lease`] for the protocol built on them): `redis://` /
//! `rediss://` talk to a Redis server, `memory://` keeps everything in this
//! process ([`crate::memory_backend`]).

use std::time::Duration;

use crate::config::TlsCerts;
use crate::error::{CacheError, CacheResult};
pub(crate) use crate::memory_backend::glob;
use crate::memory_backend::MemoryBackend;
use crate::redis_backend::RedisBackend;

/// A cache backend.
// One per `CacheManager`, built once and never moved: its size is
// irrelevant, and boxing would add an indirection to every command.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Backend {
    Redis(RedisBackend),
    Memory(MemoryBackend),
}

/// Delegates a method to the active backend.
macro_rules! delegate {
    ($(pub async fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $(
            pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                match self {
                    Backend::Redis(b) => b.$name($($arg),*).await,
                    Backend::Memory(b) => b.$name($($arg),*).await,
                }
            }
        )*
    };
}

impl Backend {
    /// Opens the backend named by the URL's scheme. Connects lazily.
    pub fn open(url: &str, pool_size: usize, timeout: Duration, tls: &TlsCerts) -> CacheResult<Self> {
        if tls.is_set() && !url.starts_with("rediss://") {
            return Err(CacheError::InvalidConfig(
                "TLS certificates were configured, but the cache URL is not rediss://".into(),
            ));
        }
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        match scheme {
            "redis" | "rediss" | "redis+unix" | "unix" => {
                Ok(Backend::Redis(RedisBackend::new(url, pool_size, timeout, tls)?))
            }
            "memory" => Ok(Backend::Memory(MemoryBackend::open(url)?)),
            "" => Err(CacheError::InvalidConfig(format!(
                "cache URL {:?} has no scheme; use redis://host:port, rediss://host:port or memory://",
                crate::config::redact_url(url)
            ))),
            other => Err(CacheError::InvalidConfig(format!(
                "unsupported cache URL scheme {other:?}; use redis://, rediss:// or memory://"
            ))),
        }
    }

    delegate! {
        pub async fn get(&self, key: &str) -> CacheResult<Option<Vec<u8>>>;
        pub async fn get_with_pttl(&self, key: &str) -> CacheResult<(Option<Vec<u8>>, i64)>;
        pub async fn mget(&self, keys: &[String]) -> CacheResult<Vec<Option<Vec<u8>>>>;
        pub async fn get_or_lease(&self, key: &str, lease: &[u8], lease_ms: u64) -> CacheResult<Option<Vec<u8>>>;
        pub async fn lease_many(&self, keys: &[String], lease: &[u8], lease_ms: u64) -> CacheResult<(Vec<bool>, u64)>;
        pub async fn release_lease(&self, key: &str, lease: &[u8]) -> CacheResult<()>;
        pub async fn fill(&self, keys: &[&str], values: &[&[u8]], lease: &[u8], ttl_ms: u64) -> CacheResult<u64>;
        pub async fn set_ex(&self, key: &str, value: &[u8], ttl_secs: u64) -> CacheResult<()>;
        pub async fn delete(&self, keys: &[String]) -> CacheResult<u64>;
        pub async fn invalidate(&self, inv: &Invalidation<'_>) -> CacheResult<Invalidated>;
        pub async fn seed_counter(&self, key: &str, start: u64) -> CacheResult<Option<Vec<u8>>>;
        pub async fn fill_if_counter(&self, key: &str, value: &[u8], ttl_ms: u64, counter: &str, expected: u64) -> CacheResult<bool>;
        pub async fn ping(&self) -> CacheResult<()>;
        pub async fn scan_step(&self, cursor: u64, pattern: &str) -> CacheResult<ScanStep>;
        pub async fn drain_tag(&self, set: &str, draining: &str) -> CacheResult<u64>;
        pub async fn drain_step(&self, draining: &str, cursor: u64) -> CacheResult<ScanStep>;
    }
}

/// What one invalidation round trip does, in this order: delete `keys`;
/// bump every counter in `counters` (a query generation: `SET NX` of a
/// random seed, then `INCR`); add each tag's members to its set and make
/// the set live at least `ttl_secs`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Invalidation<'a> {
    pub keys: &'a [String],
    pub counters: &'a [String],
    pub tags: &'a [TagAdd],
}

/// Record keys to add to a tag's set, and the least TTL the set must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TagAdd {
    pub set: String,
    pub members: Vec<String>,
    pub ttl_secs: u64,
}

/// What an [`Invalidation`] did. When it returns `Ok`, every key is
/// deleted and every counter holds a value no reader saw before it: bumped,
/// or (when it could not be bumped) deleted and seeded again at random.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Invalidated {
    /// How many of the keys existed.
    pub deleted: u64,
    /// Counters that held something other than an integer (or another
    /// Redis type), replaced by a fresh seed.
    pub corrupt: u64,
    /// Counters whose bump the server refused (out of memory), deleted instead.
    pub refused: u64,
    /// Whether the server refused the tag additions (out of memory): the
    /// caller keeps them for replay.
    pub tags_refused: bool,
}

/// One step of a `SCAN`/`SSCAN` walk that unlinks what it finds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ScanStep {
    /// The cursor of the next step; 0 when the walk is complete.
    pub next: u64,
    /// How many keys existed and were unlinked.
    pub removed: u64,
    /// The keys found.
    pub keys: Vec<String>,
}

/// A random starting value for a generation counter (below 2^32, so
/// `INCR` never overflows): results cached under a counter that was lost
/// can never become current again.
pub(crate) fn counter_seed() -> u64 {
    u64::from(rand::random::<u32>()) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_picks_the_backend() {
        let t = Duration::from_millis(100);
        assert!(matches!(
            Backend::open("memory://", 1, t, &TlsCerts::default()),
            Ok(Backend::Memory(_))
        ));
        assert!(matches!(
            Backend::open("memory://?max_capacity=5", 1, t, &TlsCerts::default()),
            Ok(Backend::Memory(_))
        ));
        assert!(matches!(
            Backend::open("redis://127.0.0.1:1", 1, t, &TlsCerts::default()),
            Ok(Backend::Redis(_))
        ));
        for bad in ["memory", "memory:", "http://x", "", "memory://x"] {
            assert!(
                matches!(
                    Backend::open(bad, 1, t, &TlsCerts::default()),
                    Err(CacheError::InvalidConfig(_))
                ),
                "{bad}"
            );
        }
    }
}
