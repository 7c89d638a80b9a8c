//! Batching of concurrent `GET`s: while a read is out on the wire, the
//! `GET`s that come meanwhile wait in a queue, and the queue goes out as one
//! `MGET` as soon as that read answers. No timer: a lone reader sends its
//! `GET` at once and waits for nothing else; under concurrent load the
//! batches grow by themselves with the load (DataLoader batching, without
//! its tick), and the client decodes one batch's answers while the next
//! batch is on the wire.
//!
//! One read on the wire, not more: a second one let a lone `GET` out each
//! time the first came back, and those single-key round trips were 43 % of
//! all round trips at 32 tasks for 5 % of the keys; the server's cost is
//! its round trips (about 21 µs of CPU each on this machine, against
//! 0.2 µs per key inside an `MGET`). Measured with `bash scripts/bench.sh
//! --diagnose` and `--profile-op hit32_ours`: one read on the wire served
//! 0.95–1.20× the hits per second of two, in 6 of 6 interleaved rounds.
//!
//! An `MGET` of n keys costs the server one command's dispatch instead of
//! n, and the client one request and one reply to encode and decode. The
//! answers go back key by key, so each caller sees what its own `GET` would
//! have returned, with one difference the read path accounts for: `MGET`
//! answers nil for a key holding another type where `GET` fails with
//! `WRONGTYPE` (the lease command that follows a nil meets it then). Only
//! the read path's first look (`Backend::read`) is batched; `Backend::get`
//! is always a `GET` of its own.
//!
//! The lease commands of the misses (`SET key lease NX PX ms GET`) are
//! batched the same way, by a batcher of their own: while one is on the
//! wire, those that come meanwhile go out together as one pipeline, each
//! keeping its own answer and its own error (a key of another type fails
//! its own command, not its neighbours'). A `READONLY` in the pipeline (the
//! node was demoted) fails the whole batch as it fails a lone command, so
//! that the pool drops the connection.
//!
//! A batch is sent by a task of its own, which gives up on it, as a caller
//! gives up on its own command, once every caller waiting on it is gone
//! (their budgets ran out): the pool then sees the command abandoned and
//! drops a silent connection, and the queue never waits on a stuck batch
//! for longer than its callers do. A batch task that never runs, or stops
//! half way (its runtime shut down), still gives the wire back: the
//! callers queued behind it are told at once, and the next read goes out.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::pool::Pool;
use crate::backend::wire::{map_err, RunOn};
use crate::error::{CacheError, CacheResult};

/// Reads on the wire (a lone `GET` or a batch) beyond which new `GET`s
/// queue for the next batch (see the module above for why one).
pub(super) const IN_FLIGHT: usize = 1;

/// Most keys in one `MGET`; a longer queue goes out in several.
const MAX_BATCH: usize = 512;

type Answer = CacheResult<Option<Vec<u8>>>;

/// What a batcher's requests are.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    /// `GET`s, sent together as one `MGET`.
    Reads,
    /// Lease commands, `SET key lease NX PX ms GET`, sent together as one
    /// pipeline.
    Leases,
}

/// A request waiting for the next batch.
struct Waiting {
    key: String,
    /// Its lease command (lease batches only), taken when the batch goes out.
    command: Option<redis::Cmd>,
    tx: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct State {
    /// Reads on the wire: lone `GET`s and batches.
    in_flight: usize,
    queue: Vec<Waiting>,
}

/// The queue of `GET`s, or of lease commands, of one backend (see the
/// module above).
pub(super) struct Batcher {
    kind: Kind,
    state: Mutex<State>,
}

/// What [`Batcher::enter`] decided for one request.
enum Entry<'a> {
    /// Send it now; the ticket, dropped when the answer came (or the
    /// caller gave up), lets the queue go out.
    Send(Ticket<'a>),
    /// Wait for the batch it joined.
    Queued(oneshot::Receiver<Answer>),
}

/// A lone command on the wire.
struct Ticket<'a> {
    batcher: &'a Arc<Batcher>,
    pool: &'a Arc<Pool>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.batcher.finished(self.pool);
    }
}

impl Batcher {
    pub fn new(kind: Kind) -> Self {
        Batcher {
            kind,
            state: Mutex::default(),
        }
    }

    /// Runs `key`'s command: `alone` now, or queued for the next batch
    /// while enough are out; a lease command carries its lease and its time
    /// to live in ms.
    pub async fn call<F>(
        self: &Arc<Self>,
        pool: &Arc<Pool>,
        key: &str,
        lease: Option<(&[u8], u64)>,
        alone: impl FnOnce() -> F,
    ) -> Answer
    where
        F: std::future::Future<Output = Answer>,
    {
        match self.enter(pool, key, lease) {
            Entry::Send(_ticket) => alone().await,
            Entry::Queued(answer) => answer
                .await
                .unwrap_or_else(|_| Err(CacheError::ConnectionError("the batch was abandoned".into()))),
        }
    }

    /// Sends `key`'s command now, or queues it while enough are out; a
    /// lease command carries its lease and its time to live in ms.
    fn enter<'a>(self: &'a Arc<Self>, pool: &'a Arc<Pool>, key: &str, lease: Option<(&[u8], u64)>) -> Entry<'a> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.in_flight < IN_FLIGHT {
            state.in_flight += 1;
            return Entry::Send(Ticket { batcher: self, pool });
        }
        if state.queue.len() >= MAX_BATCH && state.queue.len().is_power_of_two() {
            // A stalled read holds the queue: forget the callers that gave
            // up meanwhile, so that it grows with the callers still waiting.
            state.queue.retain(|w| !w.tx.is_closed());
        }
        let (tx, rx) = oneshot::channel();
        state.queue.push(Waiting {
            key: key.to_owned(),
            command: lease.map(|(l, ms)| lease_cmd(key, l, ms)),
            tx,
        });
        Entry::Queued(rx)
    }

    /// A read left the wire: the queue, if any, goes out as the next batch.
    fn finished(self: &Arc<Self>, pool: &Arc<Pool>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match take(&mut state.queue) {
            Some(batch) => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    state.in_flight -= 1;
                    fail(batch, "no runtime to send the batch on");
                    return;
                };
                drop(state);
                let wire = Wire {
                    batcher: self.clone(),
                    pool: pool.clone(),
                    done: false,
                };
                runtime.spawn(send(wire, batch));
            }
            None => state.in_flight -= 1,
        }
    }
}

/// Up to [`MAX_BATCH`] waiting `GET`s whose callers still wait.
fn take(queue: &mut Vec<Waiting>) -> Option<Vec<Waiting>> {
    queue.retain(|w| !w.tx.is_closed());
    if queue.is_empty() {
        return None;
    }
    let rest = queue.split_off(queue.len().min(MAX_BATCH));
    Some(std::mem::replace(queue, rest))
}

fn fail(batch: Vec<Waiting>, why: &str) {
    for w in batch {
        let _ = w.tx.send(Err(CacheError::ConnectionError(why.to_owned().into())));
    }
}

/// One batch on the wire: a `GET` (one key), an `MGET`, or a pipeline of
/// lease commands.
enum Request {
    Get(redis::Cmd),
    Mget(redis::Cmd),
    Leases(Leases),
}

/// `SET key lease NX PX ms GET`: takes the lease when the key is free,
/// and answers what it held.
pub(super) fn lease_cmd(key: &str, lease: &[u8], lease_ms: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(lease).arg("NX").arg("PX").arg(lease_ms).arg("GET");
    cmd
}

fn request(kind: Kind, batch: &mut [Waiting]) -> Request {
    match kind {
        Kind::Reads => {
            let mut cmd = redis::cmd(if batch.len() == 1 { "GET" } else { "MGET" });
            for w in batch.iter() {
                cmd.arg(&w.key);
            }
            if batch.len() == 1 {
                Request::Get(cmd)
            } else {
                Request::Mget(cmd)
            }
        }
        Kind::Leases => {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            // Each waiting lease has its command (`enter`); one missing
            // would show as a batch short of answers, failed as a whole.
            for cmd in batch.iter_mut().filter_map(|w| w.command.take()) {
                pipe.add_command(cmd);
            }
            Request::Leases(Leases(pipe))
        }
    }
}

/// Sends one batch; one answer per request, in order.
async fn answer(pool: &Pool, request: Request) -> CacheResult<Vec<Answer>> {
    Ok(match request {
        Request::Get(cmd) => vec![Ok(pool.run::<Option<Vec<u8>>>(cmd).await?)],
        Request::Mget(cmd) => {
            let values: Vec<Option<Vec<u8>>> = pool.run(cmd).await?;
            values.into_iter().map(Ok).collect()
        }
        Request::Leases(pipe) => {
            let replies: Vec<redis::Value> = pool.run(pipe).await?;
            replies.into_iter().map(lease_answer).collect()
        }
    })
}

/// A pipeline of lease commands run with its errors kept per command,
/// except `READONLY` (a demoted node), which fails the whole pipeline as it
/// fails a lone command, so that the pool drops the connection.
struct Leases(redis::Pipeline);

impl RunOn for Leases {
    async fn run<T: redis::FromRedisValue, C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> redis::RedisResult<T> {
        let replies: Vec<redis::Value> = self.0.query_async(conn).await?;
        if let Some(redis::Value::ServerError(e)) = replies
            .iter()
            .find(|v| matches!(v, redis::Value::ServerError(e) if e.code() == "READONLY"))
        {
            return Err(e.clone().into());
        }
        Ok(redis::from_redis_value(redis::Value::Array(replies))?)
    }
}

/// One lease command's answer in a pipeline: what the key held, or the
/// error the server gave that command.
fn lease_answer(reply: redis::Value) -> Answer {
    match reply {
        redis::Value::ServerError(e) => Err(map_err(e.into())),
        other => redis::from_redis_value(other).map_err(|e| map_err(e.into())),
    }
}

/// The read on the wire a batch task holds. Dropped before the task
/// ended (a task that never ran, or stopped half way, because its runtime
/// shut down), it gives the wire back and tells the callers queued behind
/// it, instead of leaving every later read queued for good.
struct Wire {
    batcher: Arc<Batcher>,
    pool: Arc<Pool>,
    /// The task gave the wire back itself.
    done: bool,
}

impl Drop for Wire {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self.batcher.state.lock().unwrap_or_else(|p| p.into_inner());
        state.in_flight -= 1;
        let queued = std::mem::take(&mut state.queue);
        drop(state);
        fail(queued, "the task sending the batch was stopped (its runtime shut down)");
    }
}

/// Sends batches until the queue is empty: one `MGET` each (a `GET` for
/// one key), abandoned when every caller of the batch is gone.
async fn send(mut wire: Wire, mut batch: Vec<Waiting>) {
    let pool = wire.pool.clone();
    loop {
        let n = batch.len();
        let request = request(wire.batcher.kind, &mut batch);
        tracing::trace!(target: "storehaus", kind = ?wire.batcher.kind, n, "sending a batch");
        // Every caller gone: each in turn (the last to go ends the wait).
        let all_gone = async {
            for w in batch.iter_mut() {
                w.tx.closed().await;
            }
        };
        let answers: Option<CacheResult<Vec<Answer>>> = tokio::select! {
            answers = answer(&pool, request) => Some(answers),
            _ = all_gone => None,
        };
        match answers {
            Some(Ok(values)) if values.len() == n => {
                for (w, v) in batch.into_iter().zip(values) {
                    let _ = w.tx.send(v);
                }
            }
            Some(Ok(values)) => fail(batch, &format!("a batch of {n} got {} answers", values.len())),
            Some(Err(e)) => {
                for w in batch {
                    let _ = w.tx.send(Err(e.clone()));
                }
            }
            None => {}
        }
        let mut state = wire.batcher.state.lock().unwrap_or_else(|p| p.into_inner());
        match take(&mut state.queue) {
            Some(next) => batch = next,
            None => {
                state.in_flight -= 1;
                wire.done = true;
                return;
            }
        }
    }
}
