//! The connections of the Redis backend: a fixed number of slots, each with
//! at most one multiplexed connection, connected lazily off the caller's
//! path, and dropped when a command on them fails at the connection level or
//! goes unanswered on a silent connection (see the module above).
//!
//! A connection reaches its node directly, or through Sentinel, which is
//! asked for the primary again on every connect. Before it is used, each
//! new connection is probed (`probe`): `INFO` tells a restarted node or
//! another primary (the contact epoch moves) and a cluster.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};
use tokio::sync::watch;

use super::failover::Failovers;
use super::probe::NodeWatch;
use crate::backend::wire::{map_connect_err, map_err, RunOn};
use crate::error::{CacheError, CacheResult};

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
    /// The Sentinel switch count when this slot's connection began to
    /// connect: a connection from before a switch is not used.
    switches: AtomicU64,
}

impl Slot {
    /// The live connection, unless it was made before the last switch.
    fn current(&self, switches: u64) -> Option<(u64, MultiplexedConnection)> {
        if self.switches.load(Ordering::Acquire) != switches {
            return None;
        }
        self.conn.read().ok().and_then(|g| g.clone())
    }
}

/// Where connections go: one node, or the primary Sentinel names at the
/// time of each connect.
#[derive(Clone)]
pub(crate) enum Connector {
    /// Boxed: a TLS client is large, and connectors are cloned rarely.
    Direct(Box<Client>),
    Sentinel(Arc<tokio::sync::Mutex<redis::sentinel::SentinelClient>>),
}

impl Connector {
    /// A client for the node to use now (for Sentinel, the primary it names).
    pub(crate) async fn client(&self) -> redis::RedisResult<Client> {
        match self {
            Connector::Direct(client) => Ok((**client).clone()),
            Connector::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await,
        }
    }

    /// A connection and the address of the node it reached.
    async fn connect(&self, config: &AsyncConnectionConfig) -> redis::RedisResult<(String, MultiplexedConnection)> {
        let client = self.client().await?;
        let addr = client.get_connection_info().addr().to_string();
        let conn = client.get_multiplexed_async_connection_with_config(config).await?;
        Ok((addr, conn))
    }
}

/// The slots and what they connect to.
pub(super) struct Pool {
    connector: Connector,
    watch: Arc<NodeWatch>,
    /// Sentinel's switches (`redis+sentinel://` only).
    failovers: Option<Arc<Failovers>>,
    connect_timeout: Duration,
    slots: Arc<[Slot]>,
    next: AtomicUsize,
    connection_config: AsyncConnectionConfig,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("connections", &self.slots.len()).finish()
    }
}

/// Marks a command in flight on one connection; if the caller drops it
/// before the reply (its budget ran out) and the connection has delivered
/// nothing since, the connection is presumed stalled and dropped.
struct InFlight<'a> {
    pool: &'a Pool,
    slot: usize,
    generation: u64,
    replies_at_send: u64,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let slot = &self.pool.slots[self.slot];
        slot.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.done {
            return;
        }
        if slot.replies.load(Ordering::Acquire) == self.replies_at_send {
            tracing::debug!(target: "storehaus",
                slot = self.slot,
                "abandoned command on a silent connection: dropping it"
            );
            self.pool.reset_generation(self.slot, self.generation);
        }
    }
}

impl Pool {
    pub fn new(
        connector: Connector,
        watch: Arc<NodeWatch>,
        failovers: Option<Arc<Failovers>>,
        pool_size: usize,
        timeout: Duration,
    ) -> Self {
        let slots = (0..pool_size).map(|_| Slot::default()).collect();
        let connect_timeout = timeout.max(MIN_CONNECT_TIMEOUT);
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(None);
        Pool {
            connector,
            watch,
            failovers,
            connect_timeout,
            slots,
            next: AtomicUsize::new(0),
            connection_config,
        }
    }

    /// Where this pool's connections go.
    pub(crate) fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Sentinel's switches, for a `redis+sentinel://` URL.
    pub(crate) fn failovers(&self) -> Option<&Arc<Failovers>> {
        self.failovers.as_ref()
    }

    /// How many Sentinel switches were seen (0 without Sentinel).
    #[inline]
    fn switches(&self) -> u64 {
        self.failovers.as_ref().map_or(0, |f| f.switches())
    }

    /// What the first connection's probe found out.
    #[cfg(feature = "cluster")]
    pub(super) fn topology(&self) -> Option<&super::probe::Topology> {
        self.watch.topology()
    }

    /// Waits for a connection (connecting if none is up), so that its
    /// probe has run: the topology is then known.
    #[cfg(feature = "cluster")]
    pub(super) async fn connected(&self) -> CacheResult<()> {
        self.conn_with_generation().await.map(|_| ())
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
        let switches = self.switches();
        if let Some((generation, c)) = self.slots[i].current(switches) {
            return Ok((i, generation, c));
        }
        // The spare: keep a second connection open so that the borrowing
        // below finds one while this slot (re)connects.
        if i == 0 && self.slots.len() > 1 {
            self.ensure_connecting(1);
        }
        let mut rx = {
            let mut connecting = self.slots[i].connecting.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((generation, c)) = self.slots[i].current(switches) {
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
        if let Some(found) = self.any_connected(i, switches) {
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
        let switches = self.switches();
        if self.slots[i].current(switches).is_some() {
            return;
        }
        let mut connecting = self.slots[i].connecting.lock().unwrap_or_else(|p| p.into_inner());
        let busy = connecting
            .as_ref()
            .is_some_and(|rx| rx.borrow().is_none() && rx.has_changed().is_ok());
        if !busy && self.slots[i].current(switches).is_none() {
            *connecting = Some(self.spawn_connect(i));
        }
    }

    /// The first connected slot after `i`, if any.
    fn any_connected(&self, i: usize, switches: u64) -> Option<(usize, u64, MultiplexedConnection)> {
        let n = self.slots.len();
        (1..n).map(|k| (i + k) % n).find_map(|j| {
            self.slots[j]
                .current(switches)
                .map(|(generation, c)| (j, generation, c))
        })
    }

    /// Connects slot `i` in a task of its own and publishes the outcome.
    fn spawn_connect(&self, i: usize) -> watch::Receiver<Connected> {
        let (tx, rx) = watch::channel(None);
        let connector = self.connector.clone();
        let probe = self.watch.clone();
        let config = self.connection_config.clone();
        let slots = self.slots.clone();
        let this_attempt = rx.clone();
        let limit = self.connect_timeout;
        // A connect that began before a switch may reach the old primary.
        let switches = self.switches();
        if let Some(failovers) = &self.failovers {
            failovers.start();
        }
        tokio::spawn(async move {
            tracing::debug!(target: "storehaus", slot = i, "connecting to redis");
            let connected = async {
                let (addr, mut conn) = connector.connect(&config).await.map_err(map_connect_err)?;
                // Before anybody uses it: a restarted node or another
                // primary moves the contact epoch first.
                probe.probe(&addr, &mut conn).await?;
                Ok::<_, CacheError>(conn)
            };
            let connected = match tokio::time::timeout(limit * 2, connected).await {
                Ok(outcome) => outcome,
                Err(_) => Err(CacheError::ConnectionError("connect timed out".into())),
            };
            let outcome = match connected {
                Ok(conn) => {
                    let slot = &slots[i];
                    let generation = slot.generation.fetch_add(1, Ordering::Relaxed) + 1;
                    slot.replies.fetch_add(1, Ordering::Release);
                    if let Ok(mut g) = slot.conn.write() {
                        *g = Some((generation, conn.clone()));
                        slot.switches.store(switches, Ordering::Release);
                    }
                    Ok((generation, conn))
                }
                Err(e) => Err(e),
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
    pub(super) async fn run<T: redis::FromRedisValue>(&self, cmd: impl RunOn) -> CacheResult<T> {
        let (slot, generation, mut conn) = self.conn_with_generation().await?;
        self.slots[slot].in_flight.fetch_add(1, Ordering::Relaxed);
        let mut in_flight = InFlight {
            pool: self,
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
                // READONLY: the node was demoted to a replica (a failover
                // behind Sentinel); the next connect asks Sentinel again.
                let demoted = e.code() == Some("READONLY");
                let e = map_err(e);
                if demoted || matches!(e, CacheError::ConnectionError(_) | CacheError::AuthenticationFailed(_)) {
                    self.reset_generation(slot, generation);
                } else {
                    // The server answered.
                    self.slots[slot].replies.fetch_add(1, Ordering::Release);
                }
                Err(e)
            }
        }
    }
}
