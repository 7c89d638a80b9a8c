//! Private Redis Clusters started by `scripts/cluster.sh` on free loopback
//! ports, for the tests that kill a primary (Sentinel deployments, started
//! the same way, are in `sentinels`); and the shared cluster the behaviour
//! suite runs on (`STOREHAUS_CLUSTER_URL`, started by `scripts/test.sh`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use crate::{random_name, raw_redis, Sentinels};

/// The URL of the shared test cluster: `STOREHAUS_CLUSTER_URL`, which
/// `scripts/test.sh` exports after starting one with `scripts/cluster.sh`.
///
/// # Panics
/// When the variable is not set, saying how to set it.
pub fn cluster_url() -> String {
    std::env::var("STOREHAUS_CLUSTER_URL").unwrap_or_else(|_| {
        panic!(
            "STOREHAUS_CLUSTER_URL is not set: run `bash scripts/test.sh`, or \
             `bash scripts/cluster.sh start DIR` and export STOREHAUS_CLUSTER_URL=$(cat DIR/url)"
        )
    })
}

fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

/// Runs a script; `Err` with its output when it failed.
fn run_script(script: &str, args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let out = Command::new("bash")
        .arg(scripts_dir().join(script))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("bash runs");
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{script} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// A deployment started by one of the scripts, in a directory of its own;
/// stopped (its processes killed by pid) on drop.
pub(crate) struct Deployment {
    script: &'static str,
    dir: PathBuf,
    pub(crate) ports: Vec<u16>,
    pub(crate) url: String,
    /// What the script was started with, for a restart.
    env: Vec<(String, String)>,
}

impl Deployment {
    /// Starts it on free ports; tries again on other ports when one was
    /// taken meanwhile (by another test), three times at most.
    pub(crate) fn start(script: &'static str, env: &[(&str, &str)]) -> Deployment {
        let mut failures = Vec::new();
        loop {
            let dir = std::env::temp_dir().join(random_name("storehaus"));
            let dir_arg = dir.to_string_lossy().to_string();
            match run_script(script, &["start", &dir_arg], env) {
                Ok(()) => return Self::started(script, dir, env),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    failures.push(e);
                    assert!(failures.len() < 3, "{failures:#?}");
                }
            }
        }
    }

    fn started(script: &'static str, dir: PathBuf, env: &[(&str, &str)]) -> Deployment {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("the script wrote it");
        let ports = read("ports")
            .split_whitespace()
            .map(|p| p.parse().expect("a port"))
            .collect();
        let url = read("url").trim().to_string();
        Deployment {
            script,
            dir,
            ports,
            url,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    /// Starts the server on `port` again (after [`kill`](Self::kill)),
    /// with the settings it was started with.
    pub(crate) fn restart(&self, port: u16) {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let dir = self.dir.to_string_lossy().to_string();
        let port = port.to_string();
        if let Err(e) = run_script(self.script, &["restart", &dir, &port], &env) {
            panic!("{e}");
        }
    }

    /// Sends `signal` to the server on `port` (its pid file names it).
    pub(crate) fn signal(&self, port: u16, signal: &str) {
        let pidfile = self.dir.join(port.to_string()).join("pid");
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            let _ = Command::new("kill").args([signal, pid.trim()]).status();
            if signal == "-9" {
                let _ = std::fs::remove_file(pidfile);
            }
        }
    }

    pub(crate) fn kill(&self, port: u16) {
        self.signal(port, "-9");
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for port in &self.ports {
            self.signal(*port, "-CONT");
        }
        let dir = self.dir.to_string_lossy().to_string();
        let _ = Command::new("bash")
            .arg(scripts_dir().join(self.script))
            .args(["stop", &dir])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private 6-node Redis Cluster (3 primaries, 3 replicas,
/// cluster-node-timeout 1000 ms), stopped on drop.
pub struct RedisCluster {
    deployment: Deployment,
}

impl RedisCluster {
    /// Starts one and waits until `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        RedisCluster {
            deployment: Deployment::start("cluster.sh", &[("NODE_TIMEOUT", "1000")]),
        }
    }

    /// Starts one whose replicas replace a silent primary after
    /// `node_timeout_ms` (cluster-node-timeout): a failover takes about
    /// twice that.
    pub fn start_with_node_timeout(node_timeout_ms: u64) -> RedisCluster {
        let timeout = node_timeout_ms.to_string();
        RedisCluster {
            deployment: Deployment::start("cluster.sh", &[("NODE_TIMEOUT", &timeout)]),
        }
    }

    /// Starts one whose nodes speak TLS only, with the certificates in
    /// `tls_dir` (`ca.crt`, `server.crt`, `server.key`); its URL is
    /// `rediss://`.
    pub fn start_tls(tls_dir: &str) -> RedisCluster {
        RedisCluster {
            deployment: Deployment::start("cluster.sh", &[("NODE_TIMEOUT", "1000"), ("TLS_DIR", tls_dir)]),
        }
    }

    /// Starts one whose nodes require `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> RedisCluster {
        RedisCluster {
            deployment: Deployment::start("cluster.sh", &[("NODE_TIMEOUT", "1000"), ("PASSWORD", password)]),
        }
    }

    /// `redis://127.0.0.1:<a node>`.
    pub fn url(&self) -> String {
        self.deployment.url.clone()
    }

    /// The six nodes' ports.
    pub fn ports(&self) -> &[u16] {
        &self.deployment.ports
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&self, port: u16) {
        self.deployment.kill(port);
    }

    /// SIGSTOPs (`true`) or SIGCONTs (`false`) the node on `port`.
    pub fn freeze(&self, port: u16, frozen: bool) {
        self.deployment.signal(port, if frozen { "-STOP" } else { "-CONT" });
    }

    /// Starts the killed node on `port` again: it rejoins the cluster (as
    /// a replica, once its slots went to its replica). See
    /// [`wait_until_healthy`](Self::wait_until_healthy).
    pub fn restart(&self, port: u16) {
        self.deployment.restart(port);
    }

    /// Waits until all six nodes answer, say `cluster_state:ok`, see three
    /// primaries each with a replica whose link is up and synced (as
    /// `scripts/cluster.sh start` does), for at most 30 s.
    pub async fn wait_until_healthy(&self) {
        let start = Instant::now();
        while !self.healthy().await {
            assert!(start.elapsed() < Duration::from_secs(30), "the cluster did not heal");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn healthy(&self) -> bool {
        for &p in self.ports() {
            let Ok(mut c) = try_raw(p).await else { return false };
            let query = |name: &str, arg: &str| {
                let mut cmd = redis::cmd(name);
                cmd.arg(arg);
                cmd
            };
            let info: String = query("CLUSTER", "INFO").query_async(&mut c).await.unwrap_or_default();
            let nodes: String = query("CLUSTER", "NODES").query_async(&mut c).await.unwrap_or_default();
            let repl: String = query("INFO", "replication")
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            let slots: Vec<redis::Value> = query("CLUSTER", "SLOTS").query_async(&mut c).await.unwrap_or_default();
            let replicas = nodes.lines().filter(|l| l.contains("slave")).count();
            let failing = nodes.lines().any(|l| l.contains("fail"));
            // CLUSTER SLOTS lists a replica once it has synced.
            let synced = slots.len() == 3
                && slots
                    .iter()
                    .all(|r| matches!(r, redis::Value::Array(parts) if parts.len() == 4));
            let linked = repl.contains("connected_slaves:1") || repl.contains("master_link_status:up");
            if !(info.contains("cluster_state:ok") && replicas == 3 && !failing && synced && linked) {
                return false;
            }
        }
        true
    }

    /// Whether the replica on `port` holds every key of `keys` (read with
    /// `READONLY`): what its primary wrote has reached it.
    pub async fn replica_holds(&self, port: u16, keys: &[String]) -> bool {
        let Ok(mut c) = try_raw(port).await else { return false };
        if redis::cmd("READONLY").query_async::<()>(&mut c).await.is_err() {
            return false;
        }
        holds(&mut c, keys).await
    }

    /// The port of the primary that serves `key`'s slot now, and the port
    /// of one of its replicas, asked of a live node.
    pub async fn owner(&self, key: &str) -> (u16, Option<u16>) {
        let slot = key_slot(key);
        for &port in self.ports() {
            let Ok(mut c) = try_raw(port).await else { continue };
            let Ok(slots) = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<redis::Value>(&mut c)
                .await
            else {
                continue;
            };
            if let Some(found) = owner_of(&slots, slot) {
                return found;
            }
        }
        panic!("no live node knows who serves slot {slot}");
    }

    /// Waits until every live node says `cluster_state:ok` and `port` says
    /// it is a primary (after a failover, the promoted replica). A node
    /// that does not answer within 300 ms (killed, or frozen) is
    /// not live.
    pub async fn wait_until_primary(&self, port: u16) {
        let start = Instant::now();
        loop {
            let mut ok = true;
            for &p in self.ports() {
                match tokio::time::timeout(LIVE_WITHIN, state_and_role(p)).await {
                    Ok(Some((info, role))) => {
                        ok &= info.contains("cluster_state:ok") && (p != port || role == "master");
                    }
                    _ => ok &= p != port,
                }
            }
            if ok {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no failover to {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How soon a live node answers a test's question.
const LIVE_WITHIN: Duration = Duration::from_millis(300);

/// What `CLUSTER INFO` and `ROLE` say on the node on `port`, if it answers.
async fn state_and_role(port: u16) -> Option<(String, String)> {
    let mut c = try_raw(port).await.ok()?;
    let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await.ok()?;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.ok()?;
    let role = role.into_iter().next().and_then(|v| redis::from_redis_value(v).ok())?;
    Some((info, role))
}

/// Where a failover test runs: a private Redis Cluster or a private
/// primary + replica behind Sentinels, with the same few moves.
pub enum Topology {
    /// A 6-node cluster.
    Cluster(RedisCluster),
    /// A primary, a replica and 3 Sentinels.
    Sentinel(Sentinels),
}

impl Topology {
    /// The URL a cache manager connects with.
    pub fn url(&self) -> String {
        match self {
            Topology::Cluster(c) => c.url(),
            Topology::Sentinel(s) => s.url(),
        }
    }

    /// The primary serving `key` and the replica that will replace it.
    pub async fn victim(&self, key: &str) -> (u16, u16) {
        match self {
            Topology::Cluster(c) => {
                let (primary, replica) = c.owner(key).await;
                (primary, replica.expect("every primary has a replica"))
            }
            Topology::Sentinel(s) => (s.primary(), s.replica()),
        }
    }

    /// Whether `key` is served by the node on `port`.
    pub async fn served_by(&self, key: &str, port: u16) -> bool {
        match self {
            Topology::Cluster(c) => c.owner(key).await.0 == port,
            Topology::Sentinel(s) => s.primary() == port,
        }
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&self, port: u16) {
        match self {
            Topology::Cluster(c) => c.kill(port),
            Topology::Sentinel(s) => s.kill(port),
        }
    }

    /// SIGSTOPs (`true`) or SIGCONTs (`false`) the node on `port`.
    pub fn freeze(&self, port: u16, frozen: bool) {
        match self {
            Topology::Cluster(c) => c.freeze(port, frozen),
            Topology::Sentinel(s) => s.freeze(port, frozen),
        }
    }

    /// Waits until `port` is a primary and the topology is healthy.
    pub async fn wait_until_primary(&self, port: u16) {
        match self {
            Topology::Cluster(c) => c.wait_until_primary(port).await,
            Topology::Sentinel(s) => s.wait_until_primary(port).await,
        }
    }
}

/// Cuts the replication links of the primary on `port` (`CLIENT KILL TYPE
/// replica`): with its replicas frozen, they cannot reconnect, and every
/// write the primary acknowledges from now on exists on the primary only,
/// as when it dies before replicating it.
pub async fn cut_replication(port: u16) {
    let mut c = raw_node(port).await;
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(&mut c)
        .await
        .expect("CLIENT KILL TYPE replica");
}

/// Whether the node behind `c` holds every key of `keys`.
pub(crate) async fn holds(c: &mut MultiplexedConnection, keys: &[String]) -> bool {
    for key in keys {
        let exists: i64 = redis::cmd("EXISTS").arg(key).query_async(c).await.unwrap_or(0);
        if exists != 1 {
            return false;
        }
    }
    true
}

pub(crate) async fn try_raw(port: u16) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// A raw connection to one node on 127.0.0.1 (no cluster redirections).
pub async fn raw_node(port: u16) -> MultiplexedConnection {
    raw_redis(&format!("redis://127.0.0.1:{port}")).await
}

/// A raw cluster connection for assertions (follows redirections).
pub async fn raw_cluster(url: &str) -> redis::cluster_async::ClusterConnection {
    redis::cluster::ClusterClient::new(vec![url])
        .expect("cluster url")
        .get_async_connection()
        .await
        .expect("connect to the cluster")
}

/// `CLUSTER KEYSLOT` computed locally (CRC16 of the hash tag or the key).
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let inner = &bytes[open + 1..];
            inner
                .iter()
                .position(|b| *b == b'}')
                .filter(|n| *n > 0)
                .map(|n| &inner[..n])
        })
        .unwrap_or(bytes);
    let mut crc: u16 = 0;
    for b in hashed {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16_384
}

/// The primary and first replica ports of `slot` in a `CLUSTER SLOTS` reply.
fn owner_of(slots: &redis::Value, slot: u16) -> Option<(u16, Option<u16>)> {
    let redis::Value::Array(ranges) = slots else {
        return None;
    };
    for range in ranges {
        let redis::Value::Array(parts) = range else { continue };
        let int = |v: &redis::Value| match v {
            redis::Value::Int(n) => Some(*n),
            _ => None,
        };
        let (Some(start), Some(end)) = (parts.first().and_then(int), parts.get(1).and_then(int)) else {
            continue;
        };
        if !(start..=end).contains(&i64::from(slot)) {
            continue;
        }
        let port = |v: Option<&redis::Value>| match v {
            Some(redis::Value::Array(node)) => node.get(1).and_then(int).and_then(|p| u16::try_from(p).ok()),
            _ => None,
        };
        return Some((port(parts.get(2))?, port(parts.get(3))));
    }
    None
}
