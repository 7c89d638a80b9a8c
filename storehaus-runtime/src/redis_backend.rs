//! The Redis backend: a fixed set of multiplexed connections, the Lua scripts
//! of the fill protocol, and one function per cache primitive.
//!
//! Connections are created lazily, on first use. A connect runs in its own
//! task, bounded by its own timeout (the operation budget, at least 1 s):
//! callers wait for it only until their own deadline, and a slow handshake
//! (TLS, AUTH) still completes for the callers that come after. Concurrent
//! callers of one slot share one connect attempt.
//!
//! A connection is dropped from its slot, and re-created by the next caller
//! that lands on it, when a command on it fails at the connection level, or
//! when a caller gave up waiting on it (its budget ran out) and nothing at all
//! came back on that connection since the command was sent: a stalled or
//! half-open connection is not kept forever.
//!
//! Commands go to the first connection that has fewer than
//! [`SPILL_IN_FLIGHT`] commands in flight, so under ordinary load they share
//! one connection and its multiplexer batches them (one write and one read
//! for many commands); the other connections take the overflow. Spreading
//! every command round-robin over ten connections costs about twice the CPU
//! per command and halves throughput at 32 tasks on two cores (see
//! `bash scripts/bench.sh --diagnose`). A second connection is kept open as
//! a spare, so a caller never waits for the first one to reconnect. Picking a
//! connection is an atomic load or two and one uncontended read lock: there
//! is no global lock on the hot path.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, Script};
use tokio::sync::watch;

use crate::config::{redact_url, TlsCerts};
use crate::error::{CacheError, CacheResult};

/// Writes each value only where the key still holds the reader's lease.
///
/// KEYS: the keys. ARGV[1]: the lease, ARGV[2]: TTL in ms, ARGV[3..]: one
/// value per key. Returns how many keys were filled. `pcall` keeps a key of
/// the wrong type from failing the others.
pub const FILL_SCRIPT: &str = r"
local filled = 0
for i, key in ipairs(KEYS) do
  if redis.pcall('GET', key) == ARGV[1] then
    redis.call('SET', key, ARGV[i + 2], 'PX', ARGV[2])
    filled = filled + 1
  end
end
return filled
";

/// Takes a fill lease on each key that is free (`SET NX PX`). A key holding
/// another Redis type than a string (a hash, a list...) can never hold a
/// value of ours: it is deleted and the lease taken in its place.
///
/// KEYS: the keys. ARGV[1]: the lease, ARGV[2]: its TTL in ms. Returns one
/// integer per key: 1 granted, 2 granted after replacing a non-string, 0 not
/// granted (a value or another reader's lease is there).
const LEASE_MANY_SCRIPT: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 1
  elseif redis.call('TYPE', key).ok ~= 'string' then
    redis.call('DEL', key)
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    out[i] = 2
  else
    out[i] = 0
  end
end
return out
";

/// Deletes KEYS[1] only while it still holds the lease ARGV[1].
const RELEASE_SCRIPT: &str = r"
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
";

/// A random starting value for a generation counter (below 2^32, so
/// `INCR` never overflows).
fn counter_seed() -> u64 {
    u64::from(rand::random::<u32>()) + 1
}

/// Commands in flight on one connection beyond which new commands go to the
/// next connection of the pool.
const SPILL_IN_FLIGHT: usize = 64;

/// The least time a background connect is given, whatever the budget.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a finished connect attempt left for its waiters.
type Connected = Option<CacheResult<(u64, MultiplexedConnection)>>;

#[derive(Default)]
struct Slot {
    /// The live connection and its generation (which connect made it).
    conn: RwLock<Option<(u64, MultiplexedConnection)>>,
    /// The connect attempt in flight, if any.
    connecting: Mutex<Option<watch::Receiver<Connected>>>,
    /// Generation of the last connection made in this slot.
    generation: AtomicU64,
    /// When the current connection last delivered a reply (ms since the
    /// backend's epoch).
    last_reply_ms: AtomicU64,
    /// Commands sent on this slot and not yet answered or abandoned.
    in_flight: AtomicUsize,
}

impl Slot {
    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.conn.read().ok().and_then(|g| g.clone())
    }
}

pub(crate) struct RedisBackend {
    client: Client,
    slots: Arc<[Slot]>,
    next: AtomicUsize,
    connection_config: AsyncConnectionConfig,
    epoch: Instant,
    fill: Script,
    lease_many: Script,
    release: Script,
    fill_if_counter: Script,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("connections", &self.slots.len())
            .finish()
    }
}

/// Maps a redis-rs error to ours. The URL (and so any password) is never part
/// of redis-rs error messages; we add none.
pub(crate) fn map_err(err: RedisError) -> CacheError {
    if matches!(err.kind(), ErrorKind::AuthenticationFailed)
        || err.code() == Some("NOAUTH")
        || err.code() == Some("WRONGPASS")
    {
        CacheError::AuthenticationFailed(err.to_string())
    } else if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() || err.is_timeout() {
        CacheError::ConnectionError(err.to_string())
    } else {
        // Lead with the server's error code (`OOM`, `WRONGTYPE`, ...), which
        // the read path matches on.
        match err.code() {
            Some(code) if !err.to_string().starts_with(code) => CacheError::Command(format!("{code}: {err}")),
            _ => CacheError::Command(err.to_string()),
        }
    }
}

/// A client for `url`, with the configured certificates when there are any.
fn open_client(url: &str, tls: &TlsCerts) -> redis::RedisResult<Client> {
    if !tls.is_set() {
        return Client::open(url);
    }
    #[cfg(feature = "tls")]
    {
        let certs = redis::TlsCertificates {
            client_tls: tls.client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: tls.root.clone(),
        };
        Client::build_with_tls(url, certs)
    }
    #[cfg(not(feature = "tls"))]
    {
        Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "TLS certificates need the `tls` feature of storehaus",
        )))
    }
}

/// rustls needs a process-wide CryptoProvider. Applications that chose one
/// (ring, aws-lc-rs, ...) keep theirs; otherwise ring's is installed, so that
/// `rediss://` works even when several providers are compiled in (where
/// rustls cannot pick one by itself and would panic).
#[cfg(feature = "tls")]
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Marks a command in flight on one connection; if the caller drops it
/// before the reply (its budget ran out) and the connection has delivered
/// nothing since, the connection is presumed stalled and dropped.
struct InFlight<'a> {
    backend: &'a RedisBackend,
    slot: usize,
    generation: u64,
    sent_ms: u64,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let slot = &self.backend.slots[self.slot];
        slot.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.done {
            return;
        }
        if slot.last_reply_ms.load(Ordering::Relaxed) < self.sent_ms {
            tracing::debug!(
                slot = self.slot,
                "abandoned command on a silent connection: dropping it"
            );
            self.backend.reset_generation(self.slot, self.generation);
        }
    }
}

impl RedisBackend {
    pub fn new(url: &str, pool_size: usize, timeout: Duration, tls: &TlsCerts) -> CacheResult<Self> {
        #[cfg(feature = "tls")]
        if url.starts_with("rediss://") {
            install_crypto_provider();
        }
        let client = open_client(url, tls)
            .map_err(|e| CacheError::InvalidConfig(format!("cannot use cache URL {}: {}", redact_url(url), e)))?;
        let slots = (0..pool_size).map(|_| Slot::default()).collect();
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout.max(MIN_CONNECT_TIMEOUT)))
            .set_response_timeout(None);
        Ok(RedisBackend {
            client,
            slots,
            next: AtomicUsize::new(0),
            connection_config,
            epoch: Instant::now(),
            fill: Script::new(FILL_SCRIPT),
            lease_many: Script::new(LEASE_MANY_SCRIPT),
            release: Script::new(RELEASE_SCRIPT),
            fill_if_counter: Script::new(FILL_IF_COUNTER_SCRIPT),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// A connection (its slot, its generation): the first slot with fewer
    /// than [`SPILL_IN_FLIGHT`] commands in flight (round-robin when all are
    /// that busy), connecting lazily.
    async fn conn_with_generation(&self) -> CacheResult<(usize, u64, MultiplexedConnection)> {
        let i = self
            .slots
            .iter()
            .position(|s| s.in_flight.load(Ordering::Relaxed) < SPILL_IN_FLIGHT)
            .unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len());
        if let Some((generation, c)) = self.slots[i].current() {
            return Ok((i, generation, c));
        }
        // The spare: keep a second connection open so that the borrowing
        // below finds one while this slot (re)connects.
        if i == 0 && self.slots.len() > 1 {
            self.ensure_connecting(1);
        }
        let mut rx = {
            let mut connecting = self.slots[i].connecting.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((generation, c)) = self.slots[i].current() {
                return Ok((i, generation, c));
            }
            match connecting.as_ref() {
                // Join the attempt in flight; a finished one (or one whose
                // task died without an answer) is replaced by a new attempt.
                Some(rx) if rx.borrow().is_none() && rx.has_changed().is_ok() => rx.clone(),
                _ => {
                    let rx = self.spawn_connect(i);
                    *connecting = Some(rx.clone());
                    rx
                }
            }
        };
        // While this slot connects in the background, borrow a connected
        // neighbour: a caller never waits for a (re)connect while any
        // connection is up.
        if let Some(found) = self.any_connected(i) {
            return Ok(found);
        }
        // Only this wait is bounded by the caller's deadline; the connect
        // itself goes on for whoever comes next.
        let done = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| CacheError::ConnectionError("connect task ended".into()))?;
        match done.as_ref() {
            Some(Ok((generation, c))) => Ok((i, *generation, c.clone())),
            Some(Err(e)) => Err(e.clone()),
            None => Err(CacheError::ConnectionError("connect task ended".into())),
        }
    }

    /// Starts connecting slot `i` in the background unless it is connected
    /// or connecting.
    fn ensure_connecting(&self, i: usize) {
        if self.slots[i].current().is_some() {
            return;
        }
        let mut connecting = self.slots[i].connecting.lock().unwrap_or_else(|p| p.into_inner());
        let busy = connecting
            .as_ref()
            .is_some_and(|rx| rx.borrow().is_none() && rx.has_changed().is_ok());
        if !busy && self.slots[i].current().is_none() {
            *connecting = Some(self.spawn_connect(i));
        }
    }

    /// The first connected slot after `i`, if any.
    fn any_connected(&self, i: usize) -> Option<(usize, u64, MultiplexedConnection)> {
        let n = self.slots.len();
        (1..n)
            .map(|k| (i + k) % n)
            .find_map(|j| self.slots[j].current().map(|(generation, c)| (j, generation, c)))
    }

    /// Connects slot `i` in a task of its own and publishes the outcome.
    fn spawn_connect(&self, i: usize) -> watch::Receiver<Connected> {
        let (tx, rx) = watch::channel(None);
        let client = self.client.clone();
        let config = self.connection_config.clone();
        let slots = self.slots.clone();
        let epoch = self.epoch;
        let this_attempt = rx.clone();
        tokio::spawn(async move {
            tracing::debug!(slot = i, "connecting to redis");
            let outcome = match client.get_multiplexed_async_connection_with_config(&config).await {
                Ok(conn) => {
                    let slot = &slots[i];
                    let generation = slot.generation.fetch_add(1, Ordering::Relaxed) + 1;
                    slot.last_reply_ms
                        .store(epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
                    if let Ok(mut g) = slot.conn.write() {
                        *g = Some((generation, conn.clone()));
                    }
                    Ok((generation, conn))
                }
                Err(e) => Err(map_err(e)),
            };
            let _ = tx.send(Some(outcome));
            // Waiters hold their own receivers; the slot forgets this attempt
            // (and the connection it carries) unless a newer one replaced it.
            let mut connecting = slots[i].connecting.lock().unwrap_or_else(|p| p.into_inner());
            if connecting.as_ref().is_some_and(|r| r.same_channel(&this_attempt)) {
                *connecting = None;
            }
        });
        rx
    }

    /// Drops the connection of `slot` if it is still the one of `generation`
    /// (a newer connection is left alone).
    fn reset_generation(&self, slot: usize, generation: u64) {
        if let Ok(mut g) = self.slots[slot].conn.write() {
            if g.as_ref().is_some_and(|(current, _)| *current == generation) {
                *g = None;
            }
        }
    }

    /// Runs one command, pipeline or script on a connection, dropping the
    /// connection when it failed at the connection level or went silent.
    async fn run<T: redis::FromRedisValue>(&self, cmd: impl RunOn) -> CacheResult<T> {
        let (slot, generation, mut conn) = self.conn_with_generation().await?;
        self.slots[slot].in_flight.fetch_add(1, Ordering::Relaxed);
        let mut in_flight = InFlight {
            backend: self,
            slot,
            generation,
            sent_ms: self.now_ms(),
            done: false,
        };
        let result = cmd.run(&mut conn).await;
        in_flight.done = true;
        match result {
            Ok(v) => {
                self.slots[slot].last_reply_ms.store(self.now_ms(), Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => {
                let e = map_err(e);
                if matches!(e, CacheError::ConnectionError(_) | CacheError::AuthenticationFailed(_)) {
                    self.reset_generation(slot, generation);
                } else {
                    // The server answered.
                    self.slots[slot].last_reply_ms.store(self.now_ms(), Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }

    pub async fn get(&self, key: &str) -> CacheResult<Option<Vec<u8>>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        self.run(cmd).await
    }

    /// `MGET`: the values of `keys` (a key of another type reads as nil;
    /// [`lease_many`](Self::lease_many) replaces it).
    pub async fn mget(&self, keys: &[String]) -> CacheResult<Vec<Option<Vec<u8>>>> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(keys);
        self.run(cmd).await
    }

    /// `SET key lease NX PX ms GET`: the current value, or `None` when the
    /// key was free and the lease is now ours.
    pub async fn get_or_lease(&self, key: &str, lease: &[u8], lease_ms: u64) -> CacheResult<Option<Vec<u8>>> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(lease).arg("NX").arg("PX").arg(lease_ms).arg("GET");
        self.run(cmd).await
    }

    /// Takes leases on many keys in one round trip: `true` where granted,
    /// and how many keys of another Redis type were replaced by a lease
    /// (see [`LEASE_MANY_SCRIPT`]).
    pub async fn lease_many(&self, keys: &[String], lease: &[u8], lease_ms: u64) -> CacheResult<(Vec<bool>, u64)> {
        let mut inv = self.lease_many.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        inv.arg(lease).arg(lease_ms);
        let codes: Vec<u8> = self.run(inv).await?;
        let replaced = codes.iter().filter(|c| **c == 2).count() as u64;
        Ok((codes.into_iter().map(|c| c != 0).collect(), replaced))
    }

    /// Deletes `key` only while it still holds `lease` (a reader that could
    /// not load gives its lease back, so others need not wait it out).
    pub async fn release_lease(&self, key: &str, lease: &[u8]) -> CacheResult<()> {
        let mut inv = self.release.prepare_invoke();
        inv.key(key).arg(lease);
        let _: u64 = self.run(inv).await?;
        Ok(())
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
        self.run(inv).await
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
            // A counter that is missing (never made, or evicted) restarts at
            // a random value, never at 1: results cached under an old
            // generation can then never become current again.
            pipe.cmd("SET").arg(c).arg(counter_seed()).arg("NX").ignore();
            pipe.cmd("INCR").arg(c).ignore();
        }
        if keys.is_empty() {
            let _: () = self.run(pipe).await?;
            return Ok(0);
        }
        let (deleted,): (u64,) = self.run(pipe).await?;
        Ok(deleted)
    }

    /// `INCR` of a generation counter, seeded like [`invalidate`](Self::invalidate)'s.
    pub async fn incr(&self, key: &str) -> CacheResult<u64> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(key).arg(counter_seed()).arg("NX").ignore();
        pipe.cmd("INCR").arg(key);
        let (n,): (u64,) = self.run(pipe).await?;
        Ok(n)
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
                .run(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(500)
                        .to_owned(),
                )
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

/// A command, a pipeline or a script invocation.
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

impl RunOn for redis::ScriptInvocation<'_> {
    async fn run<T: redis::FromRedisValue>(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<T> {
        self.invoke_async(conn).await
    }
}

/// Writes KEYS[1] only while the counter KEYS[2] still equals ARGV[3].
/// ARGV[1]: the value, ARGV[2]: TTL in ms. Returns 1 when written.
const FILL_IF_COUNTER_SCRIPT: &str = r"
if redis.pcall('GET', KEYS[2]) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Query generations and tag sets.
impl RedisBackend {
    /// `SET key start NX`: starts a counter unless it exists.
    pub async fn init_counter(&self, key: &str, start: u64) -> CacheResult<()> {
        let _: Option<String> = self
            .run(redis::cmd("SET").arg(key).arg(start).arg("NX").to_owned())
            .await?;
        Ok(())
    }

    /// Writes `key` only while `counter` still holds `expected`.
    pub async fn fill_if_counter(
        &self,
        key: &str,
        value: &[u8],
        ttl_ms: u64,
        counter: &str,
        expected: u64,
    ) -> CacheResult<bool> {
        let mut inv = self.fill_if_counter.prepare_invoke();
        inv.key(key).key(counter).arg(value).arg(ttl_ms).arg(expected);
        let filled: u64 = self.run(inv).await?;
        Ok(filled == 1)
    }

    /// SADD each set's members, in one round trip.
    pub async fn add_to_sets(&self, members_by_set: &[(String, Vec<String>)]) -> CacheResult<()> {
        let mut pipe = redis::pipe();
        for (set, members) in members_by_set {
            if !members.is_empty() {
                pipe.cmd("SADD").arg(set).arg(members).ignore();
            }
        }
        self.run(pipe).await
    }

    /// UNLINKs every member of `set` (SSCAN in batches) and then the set;
    /// returns how many member keys existed.
    pub async fn unlink_set_members(&self, set: &str) -> CacheResult<u64> {
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, members): (u64, Vec<String>) = self
                .run(
                    redis::cmd("SSCAN")
                        .arg(set)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(500)
                        .to_owned(),
                )
                .await?;
            if !members.is_empty() {
                let n: u64 = self.run(redis::cmd("UNLINK").arg(&members).to_owned()).await?;
                removed += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let _: u64 = self.run(redis::cmd("UNLINK").arg(set).to_owned()).await?;
        Ok(removed)
    }
}
