//! The pipelines of a committed write's invalidation, shared by the
//! single-node and the cluster backends (the cluster runs one per slot).

use std::future::Future;

use crate::backend::{counter_seed, Invalidated, Invalidation, Marker, TagAdd};
use crate::error::{CacheError, CacheResult, ErrorDetail, ServerErrorKind};

/// Sends `inv`: one pipeline (errors kept per command) through `run`, and
/// a second one only when a counter or a tag set must be reset.
pub(crate) async fn send<F, Fut>(inv: &Invalidation<'_>, wait: Option<(u32, u64)>, run: F) -> CacheResult<Invalidated>
where
    F: Fn(redis::Pipeline) -> Fut,
    Fut: Future<Output = CacheResult<Vec<redis::Value>>>,
{
    let Some(pipe) = pipeline(inv, wait) else {
        return Ok(Invalidated::default());
    };
    let (mut out, reset) = read_replies(inv, run(pipe).await?)?;
    if let Some(reset) = reset {
        let (tags_refused, markers_refused) = reset.read_replies(run(reset.pipeline()).await?)?;
        out.tags_refused |= tags_refused;
        out.markers_refused |= markers_refused;
    }
    Ok(out)
}

/// The one pipeline of an invalidation (errors kept per command): `ZADD GT`
/// and `PEXPIRE` of each replica marker (first: a reader that finds a key
/// deleted then finds its marker), `DEL` of the keys, `SET NX` + `INCR` of each counter, `SADD` + expiry of each
/// tag set; then, when `wait` is set, `WAIT replicas timeout_ms` (its
/// answer is not checked: a replica that is late does not fail the write).
/// `None` when there is nothing to do.
pub(crate) fn pipeline(inv: &Invalidation<'_>, wait: Option<(u32, u64)>) -> Option<redis::Pipeline> {
    if inv.markers.is_empty() && inv.keys.is_empty() && inv.counters.is_empty() && inv.tags.is_empty() {
        return None;
    }
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for m in inv.markers {
        raise_marker(&mut pipe, m);
    }
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
    if let Some((replicas, timeout_ms)) = wait {
        pipe.cmd("WAIT").arg(replicas).arg(timeout_ms).ignore();
    }
    Some(pipe)
}

/// Reads the replies of [`pipeline`]: what was done, and the second round
/// trip needed when a counter or a tag set must be reset.
pub(crate) fn read_replies<'a>(
    inv: &'a Invalidation<'_>,
    replies: Vec<redis::Value>,
) -> CacheResult<(Invalidated, Option<Reset<'a>>)> {
    let mut replies = replies.into_iter();
    let mut out = Invalidated::default();
    let mut reset = Reset::default();
    for m in inv.markers {
        match replies.next() {
            Some(redis::Value::Int(_)) => {}
            Some(redis::Value::ServerError(e)) if e.code() == "OOM" => out.markers_refused = true,
            // Another type at the marker's key: replaced.
            _ => reset.markers.push(m),
        }
    }
    if !inv.keys.is_empty() {
        out.deleted = int_reply(replies.next())?;
    }
    for c in inv.counters {
        match replies.next() {
            Some(redis::Value::Int(_)) => {}
            Some(redis::Value::ServerError(e)) if e.code() == "OOM" => {
                out.refused += 1;
                reset.counters.push(c);
            }
            // Not an integer, or another Redis type: a corrupt counter.
            _ => {
                out.corrupt += 1;
                reset.counters.push(c);
            }
        }
    }
    for t in inv.tags {
        match replies.next() {
            Some(redis::Value::Int(_)) => {}
            Some(redis::Value::ServerError(e)) if e.code() == "OOM" => out.tags_refused = true,
            _ => reset.tags.push(t),
        }
    }
    let needed = !reset.markers.is_empty() || !reset.counters.is_empty() || !reset.tags.is_empty();
    Ok((out, needed.then_some(reset)))
}

/// The second round trip of an invalidation: a counter that cannot be
/// bumped is deleted instead (DEL works even out of memory): a missing
/// counter serves no query result, and it comes back at a fresh random
/// seed. A tag set or a replica marker of another type is replaced.
#[derive(Default)]
pub(crate) struct Reset<'a> {
    markers: Vec<&'a Marker>,
    counters: Vec<&'a String>,
    tags: Vec<&'a TagAdd>,
}

impl Reset<'_> {
    pub fn pipeline(&self) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for m in &self.markers {
            pipe.cmd("DEL").arg(&m.key).ignore();
            raise_marker(&mut pipe, m);
        }
        for c in &self.counters {
            pipe.cmd("DEL").arg(*c);
            pipe.cmd("SET").arg(*c).arg(counter_seed()).arg("NX").ignore();
        }
        for t in &self.tags {
            pipe.cmd("DEL").arg(&t.set).ignore();
            pipe.cmd("SADD").arg(&t.set).arg(&t.members);
            expire_at_least(&mut pipe, &t.set, t.ttl_secs);
        }
        pipe
    }

    /// Whether a tag addition was refused, and whether a marker was.
    pub fn read_replies(&self, replies: Vec<redis::Value>) -> CacheResult<(bool, bool)> {
        let mut replies = replies.into_iter();
        let markers_refused = self.markers.iter().fold(false, |refused, _| {
            !matches!(replies.next(), Some(redis::Value::Int(_))) || refused
        });
        for _ in &self.counters {
            int_reply(replies.next())?;
        }
        let tags_refused = self.tags.iter().fold(false, |refused, _| {
            !matches!(replies.next(), Some(redis::Value::Int(_))) || refused
        });
        Ok((tags_refused, markers_refused))
    }
}

/// `ZADD key GT score m` + `PEXPIRE key ttl_ms` (only the `ZADD` answers).
fn raise_marker(pipe: &mut redis::Pipeline, m: &Marker) {
    pipe.cmd("ZADD").arg(&m.key).arg("GT").arg(m.score()).arg("m");
    pipe.cmd("PEXPIRE").arg(&m.key).arg(m.ttl_ms).ignore();
}

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
        Some(redis::Value::ServerError(e)) => Err(CacheError::Command(
            ErrorDetail::new(format!("{}: {}", e.code(), e.details().unwrap_or("")))
                .with_server_kind(ServerErrorKind::from_code(e.code())),
        )),
        other => Err(CacheError::Command(format!("unexpected reply {other:?}").into())),
    }
}
