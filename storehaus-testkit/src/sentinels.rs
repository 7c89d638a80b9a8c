//! Private Sentinel deployments (a primary, its replica and three
//! Sentinels), started by `scripts/sentinel.sh` on free loopback ports, for
//! the tests that kill a primary.

use std::time::{Duration, Instant};

use crate::cluster::{holds, try_raw, Deployment};

/// A private primary + replica + 3 Sentinels (service `mymaster`,
/// down-after 500 ms), stopped on drop.
pub struct Sentinels {
    deployment: Deployment,
}

impl Sentinels {
    /// Starts them and waits until every Sentinel sees the replica.
    pub fn start() -> Sentinels {
        Sentinels {
            deployment: Deployment::start("sentinel.sh", &[("DOWN_AFTER", "500")]),
        }
    }

    /// `redis+sentinel://127.0.0.1:<s1>,.../mymaster`.
    pub fn url(&self) -> String {
        self.deployment.url.clone()
    }

    /// The first primary's port.
    pub fn primary(&self) -> u16 {
        self.deployment.ports[0]
    }

    /// The replica's port.
    pub fn replica(&self) -> u16 {
        self.deployment.ports[1]
    }

    /// SIGKILLs the server on `port`.
    pub fn kill(&self, port: u16) {
        self.deployment.kill(port);
    }

    /// Starts the killed server on `port` again, as a replica of the
    /// primary the Sentinels name now. See
    /// [`wait_until_replica`](Self::wait_until_replica).
    pub fn restart(&self, port: u16) {
        self.deployment.restart(port);
    }

    /// Asks a Sentinel for a failover (`SENTINEL FAILOVER mymaster`): the
    /// replica is promoted, and the primary, alive, is demoted to a replica
    /// of it.
    pub async fn failover(&self) {
        let mut s = crate::raw_node(self.deployment.ports[2]).await;
        let _: () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg("mymaster")
            .query_async(&mut s)
            .await
            .expect("SENTINEL FAILOVER");
    }

    /// The port of the primary the Sentinels name now.
    pub async fn current_primary(&self) -> Option<u16> {
        for &sentinel in &self.deployment.ports[2..] {
            let Ok(mut s) = try_raw(sentinel).await else { continue };
            let addr: Vec<String> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg("mymaster")
                .query_async(&mut s)
                .await
                .unwrap_or_default();
            if let Some(port) = addr.get(1).and_then(|p| p.parse().ok()) {
                return Some(port);
            }
        }
        None
    }

    /// The data server that is not `port` (the primary's replica, or the
    /// primary of a replica).
    pub fn other(&self, port: u16) -> u16 {
        if port == self.deployment.ports[0] {
            self.deployment.ports[1]
        } else {
            self.deployment.ports[0]
        }
    }

    /// Waits until the server on `port` is a replica with its link up and
    /// every Sentinel lists it as a replica in good standing (not down,
    /// not disconnected), for at most 30 s.
    pub async fn wait_until_replica(&self, port: u16) {
        let start = Instant::now();
        while !self.replica_ready(port).await {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{port} did not become a replica"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn replica_ready(&self, port: u16) -> bool {
        let Ok(mut c) = try_raw(port).await else { return false };
        let repl: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        if !(repl.contains("role:slave") && repl.contains("master_link_status:up")) {
            return false;
        }
        for &sentinel in &self.deployment.ports[2..] {
            let Ok(mut s) = try_raw(sentinel).await else {
                return false;
            };
            let replicas: Vec<Vec<String>> = redis::cmd("SENTINEL")
                .arg("replicas")
                .arg("mymaster")
                .query_async(&mut s)
                .await
                .unwrap_or_default();
            let good = replicas.iter().any(|fields| {
                let field = |name: &str| fields.iter().position(|f| f == name).and_then(|i| fields.get(i + 1));
                field("port").is_some_and(|p| *p == port.to_string())
                    && field("flags").is_some_and(|f| !f.contains("down") && !f.contains("disconnected"))
                    && field("master-link-status").is_some_and(|s| s == "ok")
            });
            if !good {
                return false;
            }
        }
        true
    }

    /// Whether the server on `port` holds every key of `keys`.
    pub async fn replica_holds(&self, port: u16, keys: &[String]) -> bool {
        let Ok(mut c) = try_raw(port).await else { return false };
        holds(&mut c, keys).await
    }

    /// SIGSTOPs (`true`) or SIGCONTs (`false`) the server on `port`.
    pub fn freeze(&self, port: u16, frozen: bool) {
        self.deployment.signal(port, if frozen { "-STOP" } else { "-CONT" });
    }

    /// Waits until a Sentinel names `port` as the primary and it says so.
    pub async fn wait_until_primary(&self, port: u16) {
        let start = Instant::now();
        let sentinel = self.deployment.ports[2];
        loop {
            if let Ok(mut s) = try_raw(sentinel).await {
                let addr: Vec<String> = redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg("mymaster")
                    .query_async(&mut s)
                    .await
                    .unwrap_or_default();
                if addr.get(1).map(String::as_str) == Some(port.to_string().as_str()) {
                    if let Ok(mut c) = try_raw(port).await {
                        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.unwrap_or_default();
                        let first: Option<String> =
                            role.into_iter().next().and_then(|v| redis::from_redis_value(v).ok());
                        if first.as_deref() == Some("master") {
                            return;
                        }
                    }
                }
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no failover to {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
