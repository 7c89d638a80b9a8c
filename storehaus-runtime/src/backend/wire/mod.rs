//! What one Redis node and a Redis Cluster say alike: the error mapping,
//! how a client is opened, how commands, pipelines and scripts run on a
//! connection, the Lua scripts (`scripts`) and the pipelines of an
//! invalidation (`invalidation`). Both `redis` and `cluster` build on it;
//! it knows neither.

use redis::aio::ConnectionLike;
use redis::{Client, ErrorKind, RedisError};

use crate::config::TlsCerts;
use crate::error::{CacheError, ErrorDetail};

pub(crate) mod invalidation;
pub(crate) mod scripts;

/// How many keys one `SCAN` / `SSCAN` step asks for.
pub(crate) const SCAN_COUNT: usize = 500;

/// Whether redis-rs says the server refused our credentials.
fn is_auth_failure(err: &RedisError) -> bool {
    matches!(err.kind(), ErrorKind::AuthenticationFailed) || matches!(err.code(), Some("NOAUTH" | "WRONGPASS"))
}

/// Maps a redis-rs error to ours, keeping it as the source and its server
/// code as a typed kind. The URL (and so any password) is never part of
/// redis-rs error messages; we add none.
pub(crate) fn map_err(err: RedisError) -> CacheError {
    if is_auth_failure(&err) {
        CacheError::AuthenticationFailed(ErrorDetail::redis(err))
    } else if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() || err.is_timeout() {
        CacheError::ConnectionError(ErrorDetail::redis(err))
    } else {
        CacheError::Command(ErrorDetail::redis(err))
    }
}

/// Maps an error of opening a connection (connect, `AUTH`, `SELECT`, the
/// handshake): whatever the server said, the connection is not usable, so
/// it is a connection error (retried, counted, and it opens the breaker),
/// not a refused command. A refused database index (`redis://host/99`)
/// keeps the server's words and its kind.
pub(crate) fn map_connect_err(err: RedisError) -> CacheError {
    if is_auth_failure(&err) {
        return CacheError::AuthenticationFailed(ErrorDetail::redis(err));
    }
    let answered = err.code().is_some();
    let detail = ErrorDetail::redis(err);
    CacheError::ConnectionError(if answered {
        detail.context("the server refused to set up the connection")
    } else {
        detail
    })
}

/// A client for `url`, with the configured certificates when there are any.
pub(crate) fn open_client(url: &str, tls: &TlsCerts) -> redis::RedisResult<Client> {
    match crate::backend::tls::certificates(tls) {
        #[cfg(feature = "tls")]
        Ok(Some(certs)) => Client::build_with_tls(url, certs),
        Ok(_) => Client::open(url),
        Err(e) => Err(RedisError::from((ErrorKind::InvalidClientConfig, "TLS", e.to_string()))),
    }
}

/// A command, a pipeline or a script invocation, on any connection (one
/// node's multiplexed connection, a cluster connection).
pub(crate) trait RunOn {
    async fn run<T: redis::FromRedisValue, C: ConnectionLike + Send>(&self, conn: &mut C) -> redis::RedisResult<T>;
}

impl RunOn for redis::Cmd {
    async fn run<T: redis::FromRedisValue, C: ConnectionLike + Send>(&self, conn: &mut C) -> redis::RedisResult<T> {
        self.query_async(conn).await
    }
}

impl RunOn for redis::Pipeline {
    async fn run<T: redis::FromRedisValue, C: ConnectionLike + Send>(&self, conn: &mut C) -> redis::RedisResult<T> {
        self.query_async(conn).await
    }
}

impl RunOn for redis::ScriptInvocation<'_> {
    async fn run<T: redis::FromRedisValue, C: ConnectionLike + Send>(&self, conn: &mut C) -> redis::RedisResult<T> {
        self.invoke_async(conn).await
    }
}
