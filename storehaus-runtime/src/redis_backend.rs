//! The Redis backend: a fixed set of multiplexed connections, the Lua scripts
//! of the fill protocol, and one function per cache primitive.
//!
//! Connections are created lazily, on first use, inside the caller's time
//! budget. A connection that fails at the connection level is dropped from its
//! slot and re-created by the next caller that lands on that slot. Picking a
//! connection is one atomic increment and one uncontended read lock: there is
//! no global lock on the hot path.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, Script};

use crate::config::redact_url;
use crate::error::{CacheError, CacheResult};

/// Writes each value only where the key still holds the reader's lease.
///
/// KEYS: the keys. ARGV[1]: the lease, ARGV[2]: TTL in ms, ARGV[3..]: one
/// value per key. Returns how many keys were filled. `pcall` keeps a key of
/// the wrong type from failing the others.
const FILL_SCRIPT: &str = r"
local filled = 0
for i, key in ipairs(KEYS) do
  if redis.pcall('GET', key) == ARGV[1] then
    redis.call('SET', key, ARGV[i + 2], 'PX', ARGV[2])
    filled = filled + 1
  end
end
return filled
";

struct Slot {
    conn: RwLock<Option<MultiplexedConnection>>,
    connecting: tokio::sync::Mutex<()>,
}

pub(crate) struct RedisBackend {
    client: Client,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    connection_config: AsyncConnectionConfig,
    fill: Script,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend").field("connections", &self.slots.len()).finish()
    }
}

/// Maps a redis-rs error to ours. The URL (and so any password) is never part
/// of redis-rs error messages; we add none.
pub(crate) fn map_err(err: RedisError) -> CacheError {
    if err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || matches!(err.kind(), ErrorKind::AuthenticationFailed)
        || err.code() == Some("NOAUTH")
        || err.code() == Some("WRONGPASS")
    {
        CacheError::ConnectionError(err.to_string())
    } else {
        CacheError::Command(err.to_string())
    }
}

impl RedisBackend {
    pub fn new(url: &str, pool_size: usize, connect_timeout: Duration) -> CacheResult<Self> {
        let client = Client::open(url).map_err(|e| {
            CacheError::InvalidConfig(format!("cannot use cache URL {}: {}", redact_url(url), e))
        })?;
        let slots = (0..pool_size)
            .map(|_| Slot {
                conn: RwLock::new(None),
                connecting: tokio::sync::Mutex::new(()),
            })
            .collect();
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(None);
        Ok(RedisBackend {
            client,
            slots,
            next: AtomicUsize::new(0),
            connection_config,
            fill: Script::new(FILL_SCRIPT),
        })
    }

    /// A connection: round-robin over the slots, connecting lazily.
    async fn conn(&self) -> CacheResult<(usize, MultiplexedConnection)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[i];
        if let Some(c) = slot.conn.read().ok().and_then(|g| g.clone()) {
            return Ok((i, c));
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(c) = slot.conn.read().ok().and_then(|g| g.clone()) {
            return Ok((i, c));
        }
        tracing::debug!(slot = i, "connecting to redis");
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.connection_config)
            .await
            .map_err(map_err)?;
        if let Ok(mut g) = slot.conn.write() {
            *g = Some(conn.clone());
        }
        Ok((i, conn))
    }

    fn reset(&self, slot: usize) {
        if let Ok(mut g) = self.slots[slot].conn.write() {
            *g = None;
        }
    }

    /// Runs one command or pipeline on a connection, dropping the connection
    /// when it failed at the connection level.
    async fn run<T: redis::FromRedisValue>(&self, cmd: impl RunOn) -> CacheResult<T> {
        let (slot, mut conn) = self.conn().await?;
        match cmd.run(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let e = map_err(e);
                if matches!(e, CacheError::ConnectionError(_)) {
                    self.reset(slot);
                }
                Err(e)
            }
        }
    }

    pub async fn get(&self, key: &str) -> CacheResult<Option<Vec<u8>>> {
        self.run(redis::cmd("GET").arg(key).to_owned()).await
    }

    pub async fn mget(&self, keys: &[String]) -> CacheResult<Vec<Option<Vec<u8>>>> {
        self.run(redis::cmd("MGET").arg(keys).to_owned()).await
    }

    /// `SET key lease NX PX ms GET`: the current value, or `None` when the
    /// key was free and the lease is now ours.
    pub async fn get_or_lease(&self, key: &str, lease: &[u8], lease_ms: u64) -> CacheResult<Option<Vec<u8>>> {
        self.run(
            redis::cmd("SET")
                .arg(key)
                .arg(lease)
                .arg("NX")
                .arg("PX")
                .arg(lease_ms)
                .arg("GET")
                .to_owned(),
        )
        .await
    }

    /// Takes leases on many keys in one round trip; `true` where granted.
    pub async fn lease_many(&self, keys: &[String], lease: &[u8], lease_ms: u64) -> CacheResult<Vec<bool>> {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("SET").arg(k).arg(lease).arg("NX").arg("PX").arg(lease_ms);
        }
        let replies: Vec<Option<String>> = self.run(pipe).await?;
        Ok(replies.into_iter().map(|r| r.is_some()).collect())
    }

    /// Compare-and-set fill of every key still holding `lease`.
    pub async fn fill(&self, keys: &[&str], values: &[&[u8]], lease: &[u8], ttl_ms: u64) -> CacheResult<u64> {
        let mut inv = self.fill.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        inv.arg(lease).arg(ttl_ms);
        for v in values {
            inv.arg(*v);
        }
        let (slot, mut conn) = self.conn().await?;
        match inv.invoke_async::<u64>(&mut conn).await {
            Ok(n) => Ok(n),
            Err(e) => {
                let e = map_err(e);
                if matches!(e, CacheError::ConnectionError(_)) {
                    self.reset(slot);
                }
                Err(e)
            }
        }
    }

    pub async fn set_ex(&self, key: &str, value: &[u8], ttl_secs: u64) -> CacheResult<()> {
        self.run(redis::cmd("SET").arg(key).arg(value).arg("EX").arg(ttl_secs).to_owned())
            .await
    }

    /// Deletes keys and bumps counters in one round trip; returns how many keys existed.
    pub async fn invalidate(&self, keys: &[String], counters: &[String]) -> CacheResult<u64> {
        let mut pipe = redis::pipe();
        if !keys.is_empty() {
            pipe.cmd("DEL").arg(keys);
        }
        for c in counters {
            pipe.cmd("INCR").arg(c).ignore();
        }
        if keys.is_empty() {
            let _: () = self.run(pipe).await?;
            return Ok(0);
        }
        let (deleted,): (u64,) = self.run(pipe).await?;
        Ok(deleted)
    }

    pub async fn incr(&self, key: &str) -> CacheResult<u64> {
        self.run(redis::cmd("INCR").arg(key).to_owned()).await
    }

    pub async fn ping(&self) -> CacheResult<()> {
        let _: String = self.run(redis::cmd("PING").to_owned()).await?;
        Ok(())
    }

    /// SCAN MATCH + UNLINK in batches; never KEYS.
    pub async fn scan_unlink(&self, pattern: &str) -> CacheResult<u64> {
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .run(redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(500).to_owned())
                .await?;
            if !keys.is_empty() {
                let n: u64 = self.run(redis::cmd("UNLINK").arg(&keys).to_owned()).await?;
                removed += n;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

/// A command or a pipeline.
trait RunOn {
    async fn run<T: redis::FromRedisValue>(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<T>;
}

impl RunOn for redis::Cmd {
    async fn run<T: redis::FromRedisValue>(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<T> {
        self.query_async(conn).await
    }
}

impl RunOn for redis::Pipeline {
    async fn run<T: redis::FromRedisValue>(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<T> {
        self.query_async(conn).await
    }
}
