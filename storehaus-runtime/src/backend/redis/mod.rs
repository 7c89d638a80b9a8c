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
//!
//! `pool` holds the connections, `scripts` the Lua scripts; this file holds
//! one function per primitive of the backend contract (see `backend`).

mod pool;
mod scripts;

use std::time::Duration;

use self::pool::{Pool, RunOn};
use self::scripts::Scripts;
#[cfg(feature = "test-hooks")]
pub use self::scripts::FILL_SCRIPT;
use crate::backend::{counter_seed, Invalidated, Invalidation, ScanStep, TagAdd};
use crate::cache::server::ServerStats;
use crate::config::TlsCerts;
use crate::error::{CacheError, CacheResult};

pub(crate) struct RedisBackend {
    pool: Pool,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend").field("pool", &self.pool).finish()
    }
}

impl RedisBackend {
    pub fn new(url: &str, pool_size: usize, timeout: Duration, tls: &TlsCerts) -> CacheResult<Self> {
        Ok(RedisBackend {
            pool: Pool::new(url, pool_size, timeout, tls)?,
            scripts: Scripts::new(),
        })
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: impl RunOn) -> CacheResult<T> {
        self.pool.run(cmd).await
    }

    pub async fn get(&self, key: &str) -> CacheResult<Option<Vec<u8>>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        self.run(cmd).await
    }

    pub async fn mget(&self, keys: &[String]) -> CacheResult<Vec<Option<Vec<u8>>>> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(keys);
        self.run(cmd).await
    }

    pub async fn get_or_lease(&self, key: &str, lease: &[u8], lease_ms: u64) -> CacheResult<Option<Vec<u8>>> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(lease).arg("NX").arg("PX").arg(lease_ms).arg("GET");
        self.run(cmd).await
    }

    pub async fn lease_many(&self, keys: &[String], lease: &[u8], lease_ms: u64) -> CacheResult<(Vec<bool>, u64)> {
        let mut inv = self.scripts.lease_many.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        inv.arg(lease).arg(lease_ms);
        let codes: Vec<u8> = self.run(inv).await?;
        let replaced = codes.iter().filter(|c| **c == 2).count() as u64;
        Ok((codes.into_iter().map(|c| c != 0).collect(), replaced))
    }

    pub async fn release_lease(&self, key: &str, lease: &[u8]) -> CacheResult<()> {
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(key).arg(lease);
        let _: u64 = self.run(inv).await?;
        Ok(())
    }

    pub async fn fill(&self, keys: &[&str], values: &[&[u8]], lease: &[u8], ttl_ms: u64) -> CacheResult<u64> {
        let mut inv = self.scripts.fill.prepare_invoke();
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

    pub async fn get_with_pttl(&self, key: &str) -> CacheResult<(Option<Vec<u8>>, i64)> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
        self.run(pipe).await
    }

    pub async fn delete(&self, keys: &[String]) -> CacheResult<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.run(redis::cmd("DEL").arg(keys).to_owned()).await
    }

    // One pipeline (errors kept per command), and a second one only when a counter or a tag set must be reset.
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
        if !reset_counters.is_empty() || !reset_tags.is_empty() {
            out.tags_refused |= self.reset(&reset_counters, &reset_tags).await?;
        }
        Ok(out)
    }

    /// The second round trip of an invalidation: a counter that cannot be
    /// bumped is deleted instead (DEL works even out of memory): a missing
    /// counter serves no query result, and it comes back at a fresh random
    /// seed. A tag set of another type is replaced. Returns whether a tag
    /// addition was refused.
    async fn reset(&self, counters: &[&String], tags: &[&TagAdd]) -> CacheResult<bool> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for c in counters {
            pipe.cmd("DEL").arg(*c);
            pipe.cmd("SET").arg(*c).arg(counter_seed()).arg("NX").ignore();
        }
        for t in tags {
            pipe.cmd("DEL").arg(&t.set).ignore();
            pipe.cmd("SADD").arg(&t.set).arg(&t.members);
            expire_at_least(&mut pipe, &t.set, t.ttl_secs);
        }
        let replies: Vec<redis::Value> = self.run(pipe).await?;
        let mut replies = replies.into_iter();
        for _ in counters {
            int_reply(replies.next())?;
        }
        Ok(tags
            .iter()
            .any(|_| !matches!(replies.next(), Some(redis::Value::Int(_)))))
    }

    pub async fn seed_counter(&self, key: &str, start: u64) -> CacheResult<Option<Vec<u8>>> {
        self.run(redis::cmd("SET").arg(key).arg(start).arg("NX").arg("GET").to_owned())
            .await
    }

    pub async fn server_stats(&self) -> CacheResult<ServerStats> {
        let info: String = self
            .run(redis::cmd("INFO").arg("memory").arg("stats").arg("clients").to_owned())
            .await?;
        Ok(ServerStats::from_info(&info))
    }

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

/// Query generations and tag sets.
impl RedisBackend {
    pub async fn fill_if_counter(
        &self,
        key: &str,
        value: &[u8],
        ttl_ms: u64,
        counter: &str,
        expected: u64,
    ) -> CacheResult<bool> {
        let mut inv = self.scripts.fill_if_counter.prepare_invoke();
        inv.key(key).key(counter).arg(value).arg(ttl_ms).arg(expected);
        let filled: u64 = self.run(inv).await?;
        Ok(filled == 1)
    }

    pub async fn drain_tag(&self, set: &str, draining: &str) -> CacheResult<u64> {
        let mut inv = self.scripts.drain_tag.prepare_invoke();
        inv.key(set).key(draining);
        self.run(inv).await
    }

    // SSCAN, then UNLINK of the members and SREM of them, in that order.
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
