//! Redis read and written with a plain client, bypassing StoreHaus: what a
//! test asserts on, and the bad data or conditions it plants.

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A raw connection to a single node or to a cluster (which follows
/// redirections), for assertions that run on both.
#[derive(Clone)]
pub enum RawConn {
    /// One node.
    Node(MultiplexedConnection),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for RawConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RawConn::Node(c) => c.req_packed_command(cmd),
            RawConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RawConn::Node(c) => c.req_packed_commands(cmd, offset, count),
            RawConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// A raw Redis connection for assertions, bypassing StoreHaus.
pub async fn raw_redis(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// A raw Redis connection without a response timeout, for commands that
/// take longer than redis-rs' default allows (`DEBUG POPULATE` of a million
/// keys).
pub async fn raw_redis_without_timeout(url: &str) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect to redis")
}

/// `GET key`: the raw bytes, `None` when there is no such key.
pub async fn raw_get(conn: &mut impl ConnectionLike, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query_async(conn).await.expect("GET")
}

/// `SET key value`: plants bytes under `key`.
pub async fn set_raw(redis: &mut impl ConnectionLike, key: &str, value: &[u8]) {
    let _: () = redis::cmd("SET").arg(key).arg(value).query_async(redis).await.unwrap();
}

/// `CONFIG SET name value`.
pub async fn config_set(redis: &mut MultiplexedConnection, name: &str, value: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async(redis)
        .await
        .unwrap();
}

/// Fills the server past a tiny `maxmemory` with eviction off, so that every
/// command that may grow memory (SET, INCR, SADD...) is refused with OOM;
/// DEL works. Use it on a private [`RedisServer`](crate::RedisServer) only.
pub async fn starve(redis: &mut MultiplexedConnection) {
    let junk = vec![b'x'; 2 << 20];
    let _: () = redis::cmd("SET")
        .arg("junk")
        .arg(junk)
        .query_async(redis)
        .await
        .unwrap();
    config_set(redis, "maxmemory-policy", "noeviction").await;
    config_set(redis, "maxmemory", "1mb").await;
}

/// How many times the server ran `command` (lower case, as `INFO
/// commandstats` names it) since its statistics were last reset.
pub async fn command_calls(redis: &mut MultiplexedConnection, command: &str) -> u64 {
    command_stat(redis, command, "calls").await
}

/// One figure of `command`'s line in `INFO commandstats` (`calls`,
/// `failed_calls`, `rejected_calls`, ...; 0 when the command has no line).
pub async fn command_stat(redis: &mut MultiplexedConnection, command: &str, figure: &str) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .expect("INFO commandstats");
    let line = stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:")))
        .unwrap_or("");
    line.split(',')
        .find_map(|kv| kv.strip_prefix(figure)?.strip_prefix('='))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Resets the server's command statistics (`CONFIG RESETSTAT`).
pub async fn reset_command_calls(redis: &mut MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(redis)
        .await
        .expect("CONFIG RESETSTAT");
}
