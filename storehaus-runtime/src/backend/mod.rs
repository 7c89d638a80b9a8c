//! The cache backends behind one enum: the URL scheme picks one.
//! `redis://` / `rediss://` talk to a Redis server (`redis`), which may turn
//! out to be a node of a Redis Cluster (`cluster`, found out on the first
//! connect); `redis+sentinel://` talks to the primary Sentinel names
//! (`sentinel`); `memory://` keeps everything in this process (`memory`).
//! `contact` is how a backend tells the manager that the server's data may
//! have been replaced by an older copy (a failover, a restart).
//!
//! # The contract
//!
//! Both backends speak the primitives of [`Backend`] with the same keys, the
//! same bytes and the same semantics, written down once, on each primitive
//! below; the read-through protocol (`crate::cache`) is built on them and
//! on nothing else. Every primitive is *atomic* the way its Redis command or
//! script is: no other primitive on the same key is seen half done. Values
//! are byte strings with an expiry; counters (query generations) are
//! integers without one; sets (tags) have an expiry that only grows.
//! Errors: a failure to reach the server is `ConnectionError` (or
//! `AuthenticationFailed`); a command the server refused is `Command`,
//! carrying the server's error kind (`OutOfMemory`, `WrongType`).
//!
//! The Redis backends are the `redis` cargo feature (on by default); without
//! it only `memory://` is compiled in.

use std::sync::Arc;
use std::time::Duration;

use crate::config::TlsCerts;
use crate::error::{CacheError, CacheResult};

#[cfg(feature = "cluster")]
pub(crate) mod cluster;
pub(crate) mod contact;
pub(crate) mod glob;
#[cfg(feature = "redis")]
pub(crate) mod listener;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(feature = "redis")]
pub(crate) mod sentinel;
pub(crate) mod server;
#[cfg(feature = "redis")]
pub(crate) mod switch;
#[cfg(feature = "redis")]
pub(crate) mod tls;
#[cfg(feature = "redis")]
pub(crate) mod tracking;
#[cfg(feature = "redis")]
pub(crate) mod wire;

pub use server::ServerStats;

use self::contact::Contact;
use self::memory::MemoryBackend;
#[cfg(feature = "redis")]
use self::redis::{RedisBackend, Target};
#[cfg(feature = "redis")]
use self::switch::Switch;

/// A cache backend.
// One per `CacheManager`, built once and never moved: its size is
// irrelevant, and boxing would add an indirection to every command.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Backend {
    #[cfg(feature = "redis")]
    Redis(RedisBackend, Switch),
    Memory(MemoryBackend),
}

/// Delegates a method to the active backend (on a `redis://` URL, to the
/// cluster backend once the node turned out to belong to a cluster).
macro_rules! delegate {
    ($($(#[$doc:meta])* pub async fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $(
            $(#[$doc])*
            pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                match self {
                    #[cfg(feature = "redis")]
                    Backend::Redis(b, _switch) => {
                        #[cfg(feature = "cluster")]
                        if let Some(cluster) = _switch.cluster(b).await? {
                            return cluster.$name($($arg),*).await;
                        }
                        b.$name($($arg),*).await
                    }
                    Backend::Memory(b) => b.$name($($arg),*).await,
                }
            }
        )*
    };
}

/// Where a backend connects to, beyond its URL (read by the Redis backends).
#[derive(Clone, Default)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Options {
    pub pool_size: usize,
    pub timeout: Duration,
    pub tls: TlsCerts,
    /// More seed nodes of a cluster.
    pub cluster_nodes: Vec<String>,
    /// `WAIT replicas timeout_ms` after each invalidation.
    pub wait_replicas: Option<(u32, u64)>,
}

impl Backend {
    /// Opens the backend named by the URL's scheme. Connects lazily.
    pub fn open(url: &str, options: &Options, contact: Arc<Contact>) -> CacheResult<Self> {
        let tls = &options.tls;
        if tls.is_set() && !(url.starts_with("rediss://") || url.starts_with("rediss+sentinel://")) {
            return Err(CacheError::InvalidConfig(
                "TLS certificates were configured, but the cache URL is not rediss://".into(),
            ));
        }
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        if !options.cluster_nodes.is_empty() && !matches!(scheme, "redis" | "rediss") {
            return Err(CacheError::InvalidConfig(
                "cluster nodes need a redis:// or rediss:// cache URL".into(),
            ));
        }
        match scheme {
            #[cfg(feature = "redis")]
            "redis" | "rediss" | "redis+unix" | "unix" | "redis+sentinel" | "rediss+sentinel" => {
                let target = Target {
                    url,
                    pool_size: options.pool_size,
                    timeout: options.timeout,
                    tls,
                    cluster_nodes: &options.cluster_nodes,
                    contact,
                    wait: options.wait_replicas,
                };
                let switch = Switch::new(&target, scheme.ends_with("+sentinel"))?;
                Ok(Backend::Redis(RedisBackend::new(target)?, switch))
            }
            #[cfg(not(feature = "redis"))]
            "redis" | "rediss" | "redis+unix" | "unix" | "redis+sentinel" | "rediss+sentinel" => {
                let _ = contact;
                Err(CacheError::InvalidConfig(format!(
                    "{scheme}:// needs the `redis` feature of storehaus (off in this build); memory:// works without it"
                )))
            }
            "memory" => Ok(Backend::Memory(MemoryBackend::open(url)?)),
            "" => Err(CacheError::InvalidConfig(format!(
                "cache URL {:?} has no scheme; use redis://host:port, rediss://host:port or memory://",
                crate::config::redact_url(url)
            ))),
            other => Err(CacheError::InvalidConfig(format!(
                "unsupported cache URL scheme {other:?}; use redis://, rediss://, redis+sentinel:// or memory://"
            ))),
        }
    }

    /// Where a Redis backend's near cache hears of changes (see
    /// `redis::tracking`); `None` for the in-process backend.
    #[cfg(feature = "redis")]
    pub(crate) fn tracking_source(&self) -> Option<self::tracking::Source> {
        match self {
            Backend::Redis(node, switch) => Some(switch.tracking_source(node)),
            Backend::Memory(_) => None,
        }
    }

    /// Whether the cache lives in this process (`memory://`): no other
    /// process shares it.
    pub(crate) fn is_in_process(&self) -> bool {
        matches!(self, Backend::Memory(_))
    }

    /// Whether the near cache can be kept coherent here (client tracking:
    /// Redis only).
    pub(crate) fn tracks(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.tracking_source().is_some();
        #[cfg(not(feature = "redis"))]
        return false;
    }

    delegate! {
        /// Whether the server answers, for the circuit breaker's probe: a
        /// `PING` on one node (through Sentinel, the primary it names now);
        /// on a cluster, a fresh look at the slot map, which must reach at
        /// least one live node.
        pub async fn probe(&self) -> CacheResult<()>;
        /// `GET key`: the bytes, or `None` for a missing key. A key of
        /// another type is a `WRONGTYPE` command error.
        pub async fn get(&self, key: &str) -> CacheResult<Option<Vec<u8>>>;
        /// The read path's `GET key`: on one Redis node it may go out in
        /// one `MGET` with concurrent reads (`redis::batch`), where a key
        /// of another type reads as `None` instead of failing.
        pub async fn read(&self, key: &str) -> CacheResult<Option<Vec<u8>>>;
        /// `GET key` + `PTTL key`: the bytes and the milliseconds left
        /// (-1: no expiry, -2: no such key). Not atomic; used only to tell a
        /// live lease from a leftover one.
        pub async fn get_with_pttl(&self, key: &str) -> CacheResult<(Option<Vec<u8>>, i64)>;
        /// `MGET keys`: one entry per key, in order; a key of another type
        /// reads as `None`.
        pub async fn mget(&self, keys: &[String]) -> CacheResult<Vec<Option<Vec<u8>>>>;
        /// `SET key lease NX PX lease_ms GET`, atomically: what the key held
        /// (a value or another reader's lease), or `None` when it was free
        /// and now holds `lease`.
        pub async fn get_or_lease(&self, key: &str, lease: &[u8], lease_ms: u64) -> CacheResult<Option<Vec<u8>>>;
        /// Takes `lease` on every key that is free, atomically per key:
        /// `true` where granted. A key that can never hold a value (another
        /// type, or a string without expiry) is replaced by the lease and
        /// counted in the second result.
        pub async fn lease_many(&self, keys: &[String], lease: &[u8], lease_ms: u64) -> CacheResult<(Vec<bool>, u64)>;
        /// Deletes `key` only while it holds exactly `lease`, atomically.
        pub async fn release_lease(&self, key: &str, lease: &[u8]) -> CacheResult<()>;
        /// For each key still holding `lease`, atomically with respect to
        /// every other primitive on it, `SET key value PX ttl_ms`: how many
        /// were written. Keys holding anything else are left alone.
        pub async fn fill(&self, keys: &[&str], values: &[&[u8]], lease: &[u8], ttl_ms: u64) -> CacheResult<u64>;
        /// `SET key value EX ttl_secs` (a manual write).
        pub async fn set_ex(&self, key: &str, value: &[u8], ttl_secs: u64) -> CacheResult<()>;
        /// `DEL keys` (values, leases, counters, sets alike): how many existed.
        pub async fn delete(&self, keys: &[String]) -> CacheResult<u64>;
        /// A committed write's invalidation (see [`Invalidation`] and
        /// [`Invalidated`]). Each key's delete and each counter's bump is
        /// atomic; together they are one round trip, not one transaction.
        pub async fn invalidate(&self, inv: &Invalidation<'_>) -> CacheResult<Invalidated>;
        /// `ZSCORE key m` of each replica marker `key` (see [`Marker`]), in
        /// order: the highest log position written there, `u64::MAX` for
        /// "the primary only", `None` for a missing marker. A key of another
        /// type is a `WRONGTYPE` command error.
        pub async fn markers(&self, keys: &[String]) -> CacheResult<Vec<Option<u64>>>;
        /// `SET key start NX GET`: `None` when the counter was missing and
        /// now holds `start`, else what the key held (`WRONGTYPE` for
        /// another type).
        pub async fn seed_counter(&self, key: &str, start: u64) -> CacheResult<Option<Vec<u8>>>;
        /// `SET key value PX ttl_ms` only while `counter` holds `expected`,
        /// atomically with respect to every bump of the counter: whether
        /// it was written.
        pub async fn fill_if_counter(&self, key: &str, value: &[u8], ttl_ms: u64, counter: &str, expected: u64) -> CacheResult<bool>;
        /// The server's figures (`INFO memory stats clients` on Redis).
        pub async fn server_stats(&self) -> CacheResult<ServerStats>;
        /// One step of a walk over the keys matching a Redis glob, removing
        /// what it finds except keys starting with `spare`: start at cursor
        /// 0, continue with `next` until it is 0. Keys present for the whole
        /// walk are removed; keys written meanwhile may or may not be.
        pub async fn scan_step(&self, cursor: u64, pattern: &str, spare: Option<&str>) -> CacheResult<ScanStep>;
        /// Moves the tag set `set` into `draining` (merging with what is
        /// there), atomically, so that the tag's name is free for new
        /// additions: the draining set's size after the move.
        pub async fn drain_tag(&self, set: &str, draining: &str) -> CacheResult<u64>;
        /// One step of a walk over a draining set: removes each member's key,
        /// then the member from the set (so a step cut short leaves its
        /// members for a later walk). Same cursor rules as `scan_step`.
        pub async fn drain_step(&self, draining: &str, cursor: u64) -> CacheResult<ScanStep>;
        /// Adds `tag` to the live-version registry `key` (a sorted set
        /// scored by expiry, in the server's clock) until at least `ttl_ms`
        /// from now, drops members whose time has passed, and keeps the
        /// registry itself alive as long as its longest member, atomically.
        /// A key of another type is replaced.
        pub async fn register_version(&self, key: &str, tag: &str, ttl_ms: u64) -> CacheResult<()>;
        /// The members of the live-version registry `key` (`ZRANGE key 0 -1`),
        /// including any whose time has passed and which no registration
        /// has dropped yet. A key of another type is a `WRONGTYPE` error.
        pub async fn versions(&self, key: &str) -> CacheResult<Vec<String>>;
    }
}

/// What one invalidation round trip does, in this order: raise each
/// replica marker in `markers` (before anything is deleted, see [`Marker`]);
/// delete `keys`; bump every counter in `counters` (a query generation:
/// `SET NX` of a random seed, then `INCR`); add each tag's members to its
/// set and make the set live at least `ttl_secs`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Invalidation<'a> {
    pub markers: &'a [Marker],
    pub keys: &'a [String],
    pub counters: &'a [String],
    pub tags: &'a [TagAdd],
}

/// A replica marker to raise: `ZADD key GT lsn m` (a max-register: a lower
/// position never replaces a higher one, whatever order two writers' markers
/// arrive in) and `PEXPIRE key ttl_ms`. `lsn` is a write-ahead log position
/// (`u64::MAX`: "read the primary", sent as `+inf`). A marker shares its
/// record's slot (`{home}` hash tag, see `keys::record_marker_key`)
/// and is sent before the record's `DEL` in one pipeline: a reader that
/// finds the key deleted finds the marker. On a cluster, the slots holding
/// markers are sent before the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    pub key: String,
    pub lsn: u64,
    pub ttl_ms: u64,
}

impl Marker {
    /// The sorted-set score of `lsn` (Redis backends): never below it (a double holds 53
    /// bits exactly; a larger position rounds up), `+inf` for `u64::MAX`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub fn score(&self) -> String {
        if self.lsn == u64::MAX {
            return "+inf".to_string();
        }
        let f = self.lsn as f64;
        let f = if (f as u64) < self.lsn {
            f64::from_bits(f.to_bits() + 1)
        } else {
            f
        };
        format!("{f}")
    }
}

/// The position a marker's score stands for (see [`Marker::score`]): a
/// fraction rounds up, `+inf` or anything past `u64` is `u64::MAX`.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn lsn_of_score(score: f64) -> u64 {
    if score.is_nan() || score >= u64::MAX as f64 {
        u64::MAX
    } else if score <= 0.0 {
        0
    } else {
        score.ceil() as u64
    }
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
    /// Whether the server refused a replica marker (out of memory): the
    /// caller keeps the whole invalidation for replay (reads use the
    /// database's primary meanwhile).
    pub markers_refused: bool,
}

/// One step of a `SCAN`/`SSCAN` walk that unlinks what it finds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ScanStep {
    /// The cursor of the next step; 0 when the walk is complete.
    pub next: u64,
    /// How many keys existed and were unlinked.
    pub removed: u64,
    /// The keys found (and not spared).
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
        let options = Options {
            pool_size: 1,
            timeout: Duration::from_millis(100),
            ..Options::default()
        };
        let open = |url: &str| Backend::open(url, &options, Arc::default());
        assert!(matches!(open("memory://"), Ok(Backend::Memory(_))));
        assert!(matches!(open("memory://?max_capacity=5"), Ok(Backend::Memory(_))));
        #[cfg(feature = "redis")]
        {
            assert!(matches!(open("redis://127.0.0.1:1"), Ok(Backend::Redis(..))));
            assert!(matches!(
                open("redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster"),
                Ok(Backend::Redis(..))
            ));
        }
        #[cfg(not(feature = "redis"))]
        assert!(matches!(open("redis://127.0.0.1:1"), Err(CacheError::InvalidConfig(_))));
        for bad in [
            "memory",
            "memory:",
            "http://x",
            "",
            "memory://x",
            "redis+sentinel://h:1",
        ] {
            assert!(matches!(open(bad), Err(CacheError::InvalidConfig(_))), "{bad}");
        }
    }
}
