//! The cache backends behind one enum: the URL scheme picks one.

use std::time::Duration;

use crate::error::{CacheError, CacheResult};
use crate::redis_backend::RedisBackend;

/// A cache backend.
#[derive(Debug)]
pub(crate) enum Backend {
    Redis(RedisBackend),
}

/// Delegates a method to the active backend.
macro_rules! delegate {
    ($(pub async fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $(
            pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                match self {
                    Backend::Redis(b) => b.$name($($arg),*).await,
                }
            }
        )*
    };
}

impl Backend {
    /// Opens the backend named by the URL's scheme. Connects lazily.
    pub fn open(url: &str, pool_size: usize, timeout: Duration) -> CacheResult<Self> {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        match scheme {
            "redis" | "rediss" | "redis+unix" | "unix" => Ok(Backend::Redis(RedisBackend::new(url, pool_size, timeout)?)),
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
        pub async fn mget(&self, keys: &[String]) -> CacheResult<Vec<Option<Vec<u8>>>>;
        pub async fn get_or_lease(&self, key: &str, lease: &[u8], lease_ms: u64) -> CacheResult<Option<Vec<u8>>>;
        pub async fn lease_many(&self, keys: &[String], lease: &[u8], lease_ms: u64) -> CacheResult<Vec<bool>>;
        pub async fn fill(&self, keys: &[&str], values: &[&[u8]], lease: &[u8], ttl_ms: u64) -> CacheResult<u64>;
        pub async fn set_ex(&self, key: &str, value: &[u8], ttl_secs: u64) -> CacheResult<()>;
        pub async fn invalidate(&self, keys: &[String], counters: &[String]) -> CacheResult<u64>;
        pub async fn incr(&self, key: &str) -> CacheResult<u64>;
        pub async fn ping(&self) -> CacheResult<()>;
        pub async fn scan_unlink(&self, pattern: &str) -> CacheResult<u64>;
    }
}
