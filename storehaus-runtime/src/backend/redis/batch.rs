//! Batching of concurrent `GET`s: while [`IN_FLIGHT`] reads are out on
//! the wire, the `GET`s that come meanwhile wait in a queue, and the queue
//! goes out as one `MGET` as soon as one of those reads answers. No timer:
//! a lone reader sends its `GET` at once and waits for nothing else; under
//! concurrent load the batches grow by themselves with the load (DataLoader
//! batching, without its tick).
//!
//! An `MGET` of n keys costs the server one command's dispatch instead of
//! n, and the client one request and one reply to encode and decode. The
//! answers go back key by key, so each caller sees what its own `GET` would
//! have returned, with one difference the read path accounts for: `MGET`
//! answers nil for a key holding another type where `GET` fails with
//! `WRONGTYPE` (the lease command that follows a nil meets it then).
//!
//! A batch is sent by a task of its own, which gives up on it, as a caller
//! gives up on its own command, once every caller waiting on it is gone
//! (their budgets ran out): the pool then sees the command abandoned and
//! drops a silent connection, and the queue never waits on a stuck batch
//! for longer than its callers do.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::pool::Pool;
use crate::error::{CacheError, CacheResult};

/// Reads on the wire (a lone `GET` or a batch) beyond which new `GET`s
/// queue for the next batch.
pub(super) const IN_FLIGHT: usize = 2;

/// Most keys in one `MGET`; a longer queue goes out in several.
const MAX_BATCH: usize = 512;

type Answer = CacheResult<Option<Vec<u8>>>;

/// A `GET` waiting for the next batch.
struct Waiting {
    key: String,
    tx: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct State {
    /// Reads on the wire: lone `GET`s and batches.
    in_flight: usize,
    queue: Vec<Waiting>,
}

/// The queue of `GET`s of one backend (see the module above).
#[derive(Default)]
pub(super) struct Batcher {
    state: Mutex<State>,
}

/// What [`Batcher::enter`] decided for one `GET`.
pub(super) enum Entry<'a> {
    /// Send it now; the ticket, dropped when the answer came (or the
    /// caller gave up), lets the queue go out.
    Send(Ticket<'a>),
    /// Wait for the batch it joined.
    Queued(oneshot::Receiver<Answer>),
}

/// A lone `GET` on the wire.
pub(super) struct Ticket<'a> {
    batcher: &'a Arc<Batcher>,
    pool: &'a Arc<Pool>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.batcher.finished(self.pool);
    }
}

impl Batcher {
    /// Sends `key`'s `GET` now, or queues it while enough reads are out.
    pub fn enter<'a>(self: &'a Arc<Self>, pool: &'a Arc<Pool>, key: &str) -> Entry<'a> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.in_flight < IN_FLIGHT {
            state.in_flight += 1;
            return Entry::Send(Ticket { batcher: self, pool });
        }
        let (tx, rx) = oneshot::channel();
        state.queue.push(Waiting {
            key: key.to_owned(),
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
                runtime.spawn(send(self.clone(), pool.clone(), batch));
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

/// Sends batches until the queue is empty: one `MGET` each (a `GET` for
/// one key), abandoned when every caller of the batch is gone.
async fn send(batcher: Arc<Batcher>, pool: Arc<Pool>, mut batch: Vec<Waiting>) {
    loop {
        let n = batch.len();
        let mut cmd = redis::cmd(if n == 1 { "GET" } else { "MGET" });
        for w in &batch {
            cmd.arg(&w.key);
        }
        // Every caller gone: each in turn (the last to go ends the wait).
        let all_gone = async {
            for w in batch.iter_mut() {
                w.tx.closed().await;
            }
        };
        let answers: Option<CacheResult<Vec<Option<Vec<u8>>>>> = tokio::select! {
            answers = async {
                if n == 1 {
                    pool.run::<Option<Vec<u8>>>(cmd).await.map(|v| vec![v])
                } else {
                    pool.run(cmd).await
                }
            } => Some(answers),
            _ = all_gone => None,
        };
        match answers {
            Some(Ok(values)) if values.len() == n => {
                for (w, v) in batch.into_iter().zip(values) {
                    let _ = w.tx.send(Ok(v));
                }
            }
            Some(Ok(values)) => fail(batch, &format!("MGET answered {} values for {n} keys", values.len())),
            Some(Err(e)) => {
                for w in batch {
                    let _ = w.tx.send(Err(e.clone()));
                }
            }
            None => {}
        }
        let mut state = batcher.state.lock().unwrap_or_else(|p| p.into_inner());
        match take(&mut state.queue) {
            Some(next) => batch = next,
            None => {
                state.in_flight -= 1;
                return;
            }
        }
    }
}
