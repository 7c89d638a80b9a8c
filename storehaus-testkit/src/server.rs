//! A private `redis-server` per test, for the faults a shared server must
//! never see: killed, stalled, restarted, locked, out of memory.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::raw_redis;

/// A free TCP port on 127.0.0.1 (nothing listens on it once this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A private `redis-server` on a free loopback port (no persistence),
/// killed on drop.
///
/// ```no_run
/// # async fn example() {
/// let mut server = storehaus_testkit::RedisServer::start().await;
/// let manager = storehaus_testkit::manager_on(&server.url(), |c| c.with_timeout(200));
/// server.pause(); // stalled: connections stay open, nothing answers
/// server.resume();
/// server.kill(); // refused: and its data is gone
/// server.restart().await;
/// # }
/// ```
pub struct RedisServer {
    /// The loopback port it listens on (the same after a restart).
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server and waits until it answers.
    pub async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    /// Starts a server with `extra` command-line options (kept across
    /// restarts), e.g. `&["--requirepass", "pw"]`, and waits until it
    /// answers (a `NOAUTH` error counts as an answer).
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

    /// `redis://127.0.0.1:<port>`.
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
