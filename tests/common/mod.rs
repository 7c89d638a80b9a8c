//! Shared test harness: a fresh PostgreSQL schema per test, a random global
//! key prefix per test, raw Redis access for assertions, and private
//! `redis-server` processes for fault tests.
#![allow(dead_code)]

use std::future::Future;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use storehaus::{CacheConfig, CacheManager};

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// A random lowercase name with a prefix, e.g. `t_k3j9x0a1b2`.
pub fn random_name(prefix: &str) -> String {
    let n: u64 = rand::random();
    format!("{prefix}_{n:016x}")
}

/// A PostgreSQL pool whose connections all use a fresh schema (via
/// `search_path`), so every test has its own tables.
pub struct Db {
    pub pool: PgPool,
    pub schema: String,
}

impl Db {
    pub async fn new() -> Db {
        Self::with_max_connections(5).await
    }

    pub async fn with_max_connections(max: u32) -> Db {
        let schema = random_name("sh");
        let admin = PgPool::connect(&database_url()).await.expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
            .execute(&admin)
            .await
            .expect("create schema");
        admin.close().await;
        let opts: PgConnectOptions = database_url().parse().expect("DATABASE_URL");
        let pool = PgPoolOptions::new()
            .max_connections(max)
            .connect_with(opts.options([("search_path", schema.as_str())]))
            .await
            .expect("connect with search_path");
        Db { pool, schema }
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::query(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub async fn cleanup(self) {
        self.pool.close().await;
        let admin = PgPool::connect(&database_url()).await.expect("connect to PostgreSQL");
        let _ = sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", self.schema))
            .execute(&admin)
            .await;
        admin.close().await;
    }
}

/// A cache manager on `url` with a random global prefix.
pub fn manager_on(url: &str, tweak: impl FnOnce(CacheConfig) -> CacheConfig) -> Arc<CacheManager> {
    let config = tweak(CacheConfig::new(url, 3600, random_name("t")));
    Arc::new(CacheManager::new(config).expect("valid cache config"))
}

pub fn manager() -> Arc<CacheManager> {
    manager_on(&redis_url(), |c| c)
}

/// A raw Redis connection for assertions, bypassing StoreHaus.
pub async fn raw_redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

pub async fn raw_get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query_async(conn).await.expect("GET")
}

/// Removes every key of a manager's global prefix.
pub async fn clear_prefix(manager: &CacheManager) {
    let _ = manager.delete_pattern("*").await;
}

/// Polls `check` until it returns true, for at most 5 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// How long a test waits for a paused fill to be reached before it fails.
pub const PAUSE_PATIENCE: Duration = Duration::from_secs(10);

/// Waits until a reader has reached `pause` (it read the database and is
/// about to fill). Fails the test after [`PAUSE_PATIENCE`] instead of
/// hanging when no reader ever gets there.
pub async fn reached(pause: &storehaus_runtime::test_hooks::FillPause) {
    if tokio::time::timeout(PAUSE_PATIENCE, pause.reached()).await.is_err() {
        panic!(
            "no reader reached the fill pause within {PAUSE_PATIENCE:?}: the read did not miss, \
             did not take the lease, or never got to its fill"
        );
    }
}

/// Waits until `key` holds a value (not a fill lease).
pub async fn wait_for_value(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<u8> {
    let start = Instant::now();
    loop {
        if let Some(v) = raw_get(conn, key).await {
            if v.first() != Some(&0xC1) {
                return v;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no value appeared under {key}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A free TCP port on 127.0.0.1 (nothing listens on it once this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A private `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let url = self.url();
        let start = Instant::now();
        loop {
            if let Ok(client) = redis::Client::open(url.as_str()) {
                if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                    let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
                    if pong.is_ok() || matches!(&pong, Err(e) if e.code() == Some("NOAUTH")) {
                        return;
                    }
                }
            }
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").args([sig, &child.id().to_string()]).status();
        }
    }

    /// SIGSTOP: the server stops answering but keeps its connections.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server (its data is gone).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Starts it again on the same port with `requirepass password`, so that
    /// only a client that knows the password (a test's raw connection)
    /// reaches its data until [`unlock`](Self::unlock).
    pub async fn restart_locked(&mut self, password: &str) {
        self.kill();
        let plain = self.extra.clone();
        self.extra.extend(["--requirepass".to_string(), password.to_string()]);
        self.spawn().await;
        self.extra = plain;
    }

    /// Removes the password set by [`restart_locked`](Self::restart_locked).
    pub async fn unlock(&self, password: &str) {
        let mut c = raw_redis(&format!("redis://:{password}@127.0.0.1:{}", self.port)).await;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg("")
            .query_async(&mut c)
            .await
            .expect("CONFIG SET requirepass");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

// ----- The embedded stack: the in-process cache and SQLite -----

/// A cache manager on the in-process backend (`memory://`) with a random
/// global prefix. Every manager has its own cache.
pub fn memory_manager() -> Arc<CacheManager> {
    manager_on("memory://", |c| c)
}

/// A fresh in-memory SQLite database. The pool keeps its one connection for
/// its whole life (no idle timeout, no max lifetime): the database lives
/// exactly as long as that connection.
#[cfg(feature = "sqlite")]
pub async fn sqlite_memory() -> sqlx::SqlitePool {
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect("sqlite::memory:")
        .await
        .expect("open an in-memory SQLite database")
}

/// Waits until `manager` has landed at least `n` fills (on any backend;
/// reads no key, so it moves no hit or miss counter).
pub async fn wait_for_fills(manager: &CacheManager, n: u64) {
    eventually(&format!("{n} fills"), || async {
        manager.get_stats().await.map(|s| s.fills >= n).unwrap_or(false)
    })
    .await;
}
