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
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, Script};
use tokio::sync::watch;

use crate::backend::{counter_seed, Invalidated, Invalidation, ScanStep};
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

/// Takes a fill lease on each key that is free (`SET NX PX`). A key that can
/// never hold a value of ours is replaced by the lease: another Redis type
/// (a hash, a list...), or a string without an expiry (every value and
/// lease StoreHaus writes has one, so such a string is a leftover lease or
/// foreign data, and would otherwise block the key forever).
///
/// KEYS: the keys. ARGV[1]: the lease, ARGV[2]: its TTL in ms. Returns one
/// integer per key: 1 granted, 2 granted after replacing such a key, 0 not
/// granted (a value or another reader's live lease is there).
const LEASE_MANY_SCRIPT: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 1
  elseif redis.call('TYPE', key).ok ~= 'string' or redis.call('PTTL', key) == -1 then
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
    /// Replies delivered on this slot's connections so far: a command
    /// abandoned while this count has not moved since it was sent saw its
    /// connection silent. (A count, not a clock: a reply and a send in the
    /// same millisecond must not look alike.)
    replies: AtomicU64,
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
    fill: Script,
    lease_many: Script,
    release: Script,
    fill_if_counter: Script,
    drain_tag: Script,
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
    replies_at_send: u64,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let slot = &self.backend.slots[self.slot];
        slot.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.done {
            return;
        }
        if slot.replies.load(Ordering::Acquire) == self.replies_at_send {
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
            fill: Script::new(FILL_SCRIPT),
            lease_many: Script::new(LEASE_MANY_SCRIPT),
            release: Script::new(RELEASE_SCRIPT),
            fill_if_counter: Script::new(FILL_IF_COUNTER_SCRIPT),
            drain_tag: Script::new(DRAIN_TAG_SCRIPT),
        })
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
        let this_attempt = rx.clone();
        tokio::spawn(async move {
            tracing::debug!(slot = i, "connecting to redis");
            let outcome = match client.get_multiplexed_async_connection_with_config(&config).await {
                Ok(conn) => {
                    let slot = &slots[i];
                    let generation = slot.generation.fetch_add(1, Ordering::Relaxed) + 1;
                    slot.replies.fetch_add(1, Ordering::Release);
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
            replies_at_send: self.slots[slot].replies.load(Ordering::Acquire),
            done: false,
        };
        let result = cmd.run(&mut conn).await;
        in_flight.done = true;
        match result {
            Ok(v) => {
                self.slots[slot].replies.fetch_add(1, Ordering::Release);
                Ok(v)
            }
            Err(e) => {
                let e = map_err(e);
                if matches!(e, CacheError::ConnectionError(_) | CacheError::AuthenticationFailed(_)) {
                    self.reset_generation(slot, generation);
                } else {
                    // The server answered.
                    self.slots[slot].replies.fetch_add(1, Ordering::Release);
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

    /// `GET` and `PTTL` of one key in one round trip.
    pub async fn get_with_pttl(&self, key: &str) -> CacheResult<(Option<Vec<u8>>, i64)> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
        self.run(pipe).await
    }

    /// `DEL keys`: how many existed.
    pub async fn delete(&self, keys: &[String]) -> CacheResult<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.run(redis::cmd("DEL").arg(keys).to_owned()).await
    }

    /// One round trip for a committed write (see [`Invalidation`]), and a
    /// second one only when a counter or a tag set must be reset.
    pub async fn invalidate(&self, inv: &Invalidation<'_>) -> CacheResult<Invalidated> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        if !inv.keys.is_empty() {
            pipe.cmd("DEL").arg(inv.keys);
        }
        for c in inv.counters {
            // A missing counter (never made, or evicted) restarts at a random
            // value, never at 1: results cached under an old generation can
            // then never become current again.
            pipe.cmd("SET").arg(c).arg(counter_seed()).arg("NX").ignore();
            pipe.cmd("INCR").arg(c);
        }
        for t in inv.tags {
            pipe.cmd("SADD").arg(&t.set).arg(&t.members);
            expire_at_least(&mut pipe, &t.set, t.ttl_secs);
        }
        if inv.keys.is_empty() && inv.counters.is_empty() && inv.tags.is_empty() {
            return Ok(Invalidated::default());
        }
        let replies: Vec<redis::Value> = self.run(pipe).await?;
        let mut replies = replies.into_iter();
        let mut out = Invalidated::default();
        if !inv.keys.is_empty() {
            out.deleted = int_reply(replies.next())?;
        }
        let mut reset_counters = Vec::new();
        for c in inv.counters {
            match replies.next() {
                Some(redis::Value::Int(_)) => {}
                Some(redis::Value::ServerError(e)) if e.code() == "OOM" => {
                    out.refused += 1;
                    reset_counters.push(c);
                }
                // Not an integer, or another Redis type: a corrupt counter.
                _ => {
                    out.corrupt += 1;
                    reset_counters.push(c);
                }
            }
        }
        let mut reset_tags = Vec::new();
        for t in inv.tags {
            match replies.next() {
                Some(redis::Value::Int(_)) => {}
                Some(redis::Value::ServerError(e)) if e.code() == "OOM" => out.tags_refused = true,
                _ => reset_tags.push(t),
            }
        }
        if reset_counters.is_empty() && reset_tags.is_empty() {
            return Ok(out);
        }
        // A counter that cannot be bumped is deleted instead (DEL works even
        // out of memory): a missing counter serves no query result, and it
        // comes back at a fresh random seed. A tag set of another type is
        // replaced.
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for c in &reset_counters {
            pipe.cmd("DEL").arg(*c);
            pipe.cmd("SET").arg(*c).arg(counter_seed()).arg("NX").ignore();
        }
        for t in &reset_tags {
            pipe.cmd("DEL").arg(&t.set).ignore();
            pipe.cmd("SADD").arg(&t.set).arg(&t.members);
            expire_at_least(&mut pipe, &t.set, t.ttl_secs);
        }
        let replies: Vec<redis::Value> = self.run(pipe).await?;
        let mut replies = replies.into_iter();
        for _ in &reset_counters {
            int_reply(replies.next())?;
        }
        for _ in &reset_tags {
            if !matches!(replies.next(), Some(redis::Value::Int(_))) {
                out.tags_refused = true;
            }
        }
        Ok(out)
    }

    /// `SET key start NX GET`: `None` when the counter was missing and now
    /// starts at `start`, else what the key held.
    pub async fn seed_counter(&self, key: &str, start: u64) -> CacheResult<Option<Vec<u8>>> {
        self.run(redis::cmd("SET").arg(key).arg(start).arg("NX").arg("GET").to_owned())
            .await
    }

    pub async fn ping(&self) -> CacheResult<()> {
        let _: String = self.run(redis::cmd("PING").to_owned()).await?;
        Ok(())
    }

    /// One step of `SCAN cursor MATCH pattern` + `UNLINK` of what it found.
    pub async fn scan_step(&self, cursor: u64, pattern: &str) -> CacheResult<ScanStep> {
        let (next, keys): (u64, Vec<String>) = self
            .run(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .to_owned(),
            )
            .await?;
        let removed = if keys.is_empty() {
            0
        } else {
            self.run(redis::cmd("UNLINK").arg(&keys).to_owned()).await?
        };
        Ok(ScanStep { next, removed, keys })
    }
}

/// Keys asked for per `SCAN` / `SSCAN` step.
const SCAN_COUNT: usize = 500;

/// Sets `key`'s TTL to at least `secs`: `EXPIRE NX` gives one to a key
/// without, `EXPIRE GT` lengthens a shorter one. Never shortens.
fn expire_at_least(pipe: &mut redis::Pipeline, key: &str, secs: u64) {
    pipe.cmd("EXPIRE").arg(key).arg(secs).arg("NX").ignore();
    pipe.cmd("EXPIRE").arg(key).arg(secs).arg("GT").ignore();
}

/// An integer reply of a pipeline run with `ignore_errors`.
fn int_reply(reply: Option<redis::Value>) -> CacheResult<u64> {
    match reply {
        Some(redis::Value::Int(n)) => Ok(u64::try_from(n).unwrap_or(0)),
        Some(redis::Value::ServerError(e)) => Err(CacheError::Command(format!(
            "{}: {}",
            e.code(),
            e.details().unwrap_or("")
        ))),
        other => Err(CacheError::Command(format!("unexpected reply {other:?}"))),
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

/// Query generations and tag sets.
impl RedisBackend {
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

    /// Moves the members of the tag set `set` into its draining set
    /// `draining` (see [`DRAIN_TAG_SCRIPT`]); returns how many members the
    /// draining set holds now.
    pub async fn drain_tag(&self, set: &str, draining: &str) -> CacheResult<u64> {
        let mut inv = self.drain_tag.prepare_invoke();
        inv.key(set).key(draining);
        self.run(inv).await
    }

    /// One step over a draining set: `SSCAN`, then `UNLINK` of the member
    /// keys and `SREM` of them from the set, in that order, so that a step
    /// cut short leaves its members for the next try.
    pub async fn drain_step(&self, draining: &str, cursor: u64) -> CacheResult<ScanStep> {
        let (next, keys): (u64, Vec<String>) = self
            .run(
                redis::cmd("SSCAN")
                    .arg(draining)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .to_owned(),
            )
            .await?;
        if keys.is_empty() {
            return Ok(ScanStep { next, removed: 0, keys });
        }
        let mut pipe = redis::pipe();
        pipe.cmd("UNLINK").arg(&keys);
        pipe.cmd("SREM").arg(draining).arg(&keys).ignore();
        let (removed,): (u64,) = self.run(pipe).await?;
        Ok(ScanStep { next, removed, keys })
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

/// Moves a tag set KEYS[1] into its draining set KEYS[2] and returns the
/// draining set's size. The tag's name is free again at once, so a write
/// that tags a key meanwhile starts a new set instead of being swept up
/// (and lost) by the invalidation under way. Members that an interrupted
/// invalidation left in the draining set are kept and merged, so the next
/// `invalidate_tag` finishes its work. The draining set keeps the longer of
/// the two TTLs.
const DRAIN_TAG_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    local a = redis.call('PTTL', KEYS[1])
    local b = redis.call('PTTL', KEYS[2])
    redis.call('SUNIONSTORE', KEYS[2], KEYS[1], KEYS[2])
    redis.call('DEL', KEYS[1])
    if a > 0 and b > 0 then
      redis.call('PEXPIRE', KEYS[2], math.max(a, b))
    end
  else
    redis.call('RENAME', KEYS[1], KEYS[2])
  end
end
return redis.call('SCARD', KEYS[2])
";
