//! The cluster's slot map as StoreHaus sees it, learned and checked by the
//! backend itself rather than left to redis-rs' cluster connection alone.
//!
//! redis-rs refreshes its slot map when a node redirects a command
//! (`MOVED`). A primary that dies redirects nothing: its commands fail
//! (SIGKILL) or, when it hangs or is cut off, time out, and nothing tells
//! the connection that a replica took its slots; a connection made afresh
//! from seeds that include the hung node waits on it too. So the backend
//! keeps a view of its own:
//!
//! - a refresh asks every known node for `CLUSTER SLOTS` at once, each
//!   bounded by [`ask_timeout`]; a view is *trusted* when it covers every
//!   slot and each of its primaries answered in the same round (a node that
//!   has not heard of a failover yet still names the dead primary, which
//!   does not answer); the trusted view most nodes agree on wins;
//! - a refresh runs on suspicion ([`Topology::suspect`]: a connection
//!   error, a redirection, a command left unanswered), and again every
//!   [`RETRY`] while no view can be trusted (*degraded*), until one can;
//! - a view whose slot owners differ from the last one is published under a
//!   new version: the backend then makes a new cluster connection seeded
//!   with the nodes that answered (never waiting on a node that is gone),
//!   the contact epoch moves (recent invalidations are delivered again to
//!   the new owners), and the near cache's tracking follows the primaries
//!   (see `cluster::tracking`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;

use super::seeds::seed_url;
pub(crate) use super::view::View;
use crate::backend::contact::Contact;
use crate::backend::wire::open_client;
use crate::config::TlsCerts;
use crate::error::{CacheError, CacheResult};

/// A node: host and port, as the cluster names it.
pub(crate) type Node = (String, u16);

/// How soon a refresh runs again while no view can be trusted.
pub(crate) const RETRY: Duration = Duration::from_millis(100);

/// How long a node is given to answer `CLUSTER SLOTS`: the operation
/// budget, within 100 ms ..= 1 s.
pub(crate) fn ask_timeout(budget: Duration) -> Duration {
    budget.clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// What the backend last learned: the trusted view and its version (which
/// moves only when the slot owners change, not on the first view).
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub version: u64,
    pub view: Option<Arc<View>>,
    /// URLs of the nodes that answered the refresh that found the view
    /// with this view.
    pub seeds: Vec<String>,
}

/// The backend's own knowledge of the cluster (see the module above).
pub(crate) struct Topology {
    /// A node URL: scheme, credentials and TLS mode for every node.
    base_url: String,
    tls: TlsCerts,
    ask_timeout: Duration,
    contact: Arc<Contact>,
    /// Every node ever named (seeds first): asked on each refresh.
    known: Mutex<Vec<Node>>,
    /// One connection per node for the refreshes.
    links: Mutex<HashMap<Node, MultiplexedConnection>>,
    current: watch::Sender<Snapshot>,
    degraded: AtomicBool,
    /// A refresh loop runs; `again`: a suspicion came while it ran.
    running: AtomicBool,
    again: AtomicBool,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("version", &self.current.borrow().version)
            .field("degraded", &self.degraded.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Topology {
    /// Knows the cluster by the `seeds` (URLs) only, until a refresh.
    pub fn new(seeds: &[String], tls: &TlsCerts, budget: Duration, contact: Arc<Contact>) -> CacheResult<Self> {
        let mut known = Vec::new();
        for seed in seeds {
            let url = url::Url::parse(seed).map_err(|e| CacheError::InvalidConfig(format!("cluster seed: {e}")))?;
            if let (Some(host), Some(port)) = (url.host_str(), url.port()) {
                known.push((host.trim_matches(['[', ']']).to_string(), port));
            }
        }
        Ok(Topology {
            base_url: seeds.first().cloned().unwrap_or_default(),
            tls: tls.clone(),
            ask_timeout: ask_timeout(budget),
            contact,
            known: Mutex::new(known),
            links: Mutex::default(),
            current: watch::channel(Snapshot::default()).0,
            degraded: AtomicBool::new(false),
            running: AtomicBool::new(false),
            again: AtomicBool::new(false),
        })
    }

    /// The version of the trusted view (moves when slot owners change).
    pub fn version(&self) -> u64 {
        self.current.borrow().version
    }

    /// The last trusted view and the nodes to seed a connection with.
    pub fn snapshot(&self) -> Snapshot {
        self.current.borrow().clone()
    }

    /// Follows every change of the trusted view.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.current.subscribe()
    }

    /// Whether the last refresh found no view it could trust (a primary
    /// does not answer, or no node does).
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    /// The URL of `node`, with the seeds' scheme, credentials and TLS.
    pub fn url_of(&self, node: &Node) -> CacheResult<String> {
        seed_url(&self.base_url, &format!("{}:{}", node.0, node.1))
    }

    /// The TLS certificates of every node.
    pub fn tls(&self) -> &TlsCerts {
        &self.tls
    }

    /// Something suggests the slot map may have changed: refreshes in the
    /// background (at once unless a refresh loop runs, which then goes
    /// round again), and every [`RETRY`] while degraded. Needs a runtime;
    /// outside one, nothing happens.
    pub fn suspect(self: &Arc<Self>, why: &'static str) {
        self.again.store(true, Ordering::Release);
        self.ensure_refreshing(why);
    }

    /// Starts the refresh loop unless it runs, without resetting its
    /// back-off (a probe while degraded: the loop is what finds the map).
    pub fn ensure_refreshing(self: &Arc<Self>, why: &'static str) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.running.store(false, Ordering::Release);
            return;
        };
        tracing::debug!(target: "storehaus", why, "cluster: checking the slot map");
        runtime.spawn(refresh_loop(Arc::downgrade(self)));
    }

    /// Asks every known node for its view and publishes the trusted one
    /// if its owners changed. Returns how many nodes answered.
    ///
    /// It stops waiting as soon as a view can be trusted and every node that
    /// view names has answered: a node outside it (a frozen primary that
    /// was replaced stays known) would otherwise hold every refresh for its
    /// whole ask timeout.
    pub async fn refresh(&self) -> usize {
        let nodes = self.known.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut asks: FuturesUnordered<_> = nodes
            .iter()
            .map(|n| async move {
                let answer = tokio::time::timeout(self.ask_timeout, self.ask(n)).await;
                (n, answer.ok().and_then(Result::ok))
            })
            .collect();
        let mut answered = HashSet::new();
        let mut views: Vec<(&Node, View)> = Vec::new();
        while let Some((node, view)) = asks.next().await {
            match view {
                Some(view) => {
                    answered.insert(node.clone());
                    views.push((node, view));
                }
                None => self.forget_link(node),
            }
            if best(&views, &answered).is_some_and(|v| v.nodes().iter().all(|n| answered.contains(n))) {
                break;
            }
        }
        drop(asks);
        let best = best(&views, &answered);
        match best {
            Some(view) => {
                // Only nodes that already see this view seed a connection:
                // one that has not heard of the failover yet would hand it
                // a slot map naming the primary that is gone.
                let agreeing: HashSet<Node> = views
                    .iter()
                    .filter(|(_, v)| v.same_owners(view))
                    .map(|(n, _)| (*n).clone())
                    .collect();
                let changed = self.publish(view, &agreeing);
                if self.degraded.swap(false, Ordering::AcqRel) || changed {
                    self.contact.healed();
                }
            }
            None => {
                self.degraded.store(true, Ordering::Release);
                tracing::debug!(target: "storehaus",
                    answered = answered.len(),
                    asked = nodes.len(),
                    "cluster: no slot map to trust yet (a primary does not answer)"
                );
            }
        }
        answered.len()
    }

    /// Publishes `view` when its owners differ from the last trusted one
    /// (with the nodes in `agreeing` as seeds), learns its nodes, and moves
    /// the contact epoch on a change (which it returns).
    fn publish(&self, view: &View, agreeing: &HashSet<Node>) -> bool {
        {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            for n in view.nodes() {
                if !known.contains(&n) {
                    known.push(n);
                }
            }
        }
        let seeds: Vec<String> = view
            .nodes()
            .iter()
            .filter(|n| agreeing.contains(*n))
            .filter_map(|n| self.url_of(n).ok())
            .collect();
        let mut changed = false;
        self.current.send_if_modified(|snap| match &snap.view {
            Some(last) if last.same_owners(view) => false,
            last => {
                changed = last.is_some();
                snap.version += u64::from(changed);
                snap.view = Some(Arc::new(view.clone()));
                snap.seeds = seeds;
                true
            }
        });
        if changed {
            tracing::info!(target: "storehaus",
                primaries = ?view.primaries(),
                "cluster: the slot map changed; following it (recent invalidations are delivered again)"
            );
            self.contact.bump("the cluster's slot map changed");
        }
        changed
    }

    /// Whether every primary of the trusted view answers a `PING` within
    /// the ask timeout, all asked at once: `None` when there is no trusted
    /// view (none yet, or the last refresh found none). A primary that does
    /// not answer has the slot map checked again.
    pub async fn primaries_answer(self: &Arc<Self>) -> Option<bool> {
        let view = self.current.borrow().view.clone()?;
        if self.degraded() {
            return None;
        }
        let answers = join_all(view.primaries().into_iter().map(|node| async move {
            let ping = async {
                let mut conn = self.link(&node).await?;
                redis::cmd("PING")
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(crate::backend::wire::map_err)
            };
            let answered = matches!(tokio::time::timeout(self.ask_timeout, ping).await, Ok(Ok(())));
            if !answered {
                self.forget_link(&node);
            }
            answered
        }))
        .await;
        let all = answers.into_iter().all(|a| a);
        if !all {
            self.suspect("a primary did not answer a ping");
        }
        Some(all)
    }

    /// One node's view.
    async fn ask(&self, node: &Node) -> CacheResult<View> {
        let mut conn = self.link(node).await?;
        let reply: redis::Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .map_err(crate::backend::wire::map_err)?;
        View::parse(reply, &node.0).ok_or_else(|| CacheError::Command("CLUSTER SLOTS: unexpected reply".into()))
    }

    /// The refresh connection to `node`, made on first use.
    async fn link(&self, node: &Node) -> CacheResult<MultiplexedConnection> {
        if let Some(conn) = self.links.lock().unwrap_or_else(|p| p.into_inner()).get(node) {
            return Ok(conn.clone());
        }
        let client = open_client(&self.url_of(node)?, &self.tls).map_err(crate::backend::wire::map_err)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.ask_timeout))
            .set_response_timeout(Some(self.ask_timeout));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(crate::backend::wire::map_err)?;
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.clone(), conn.clone());
        Ok(conn)
    }

    fn forget_link(&self, node: &Node) {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).remove(node);
    }
}

/// The trusted view most answering nodes agree on: it covers every slot and
/// each of its primaries answered.
fn best<'a>(views: &'a [(&Node, View)], answered: &HashSet<Node>) -> Option<&'a View> {
    let trusted: Vec<&View> = views
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v.covers_all() && v.primaries().iter().all(|p| answered.contains(p)))
        .collect();
    trusted
        .iter()
        .max_by_key(|v| trusted.iter().filter(|w| w.same_owners(v)).count())
        .copied()
}

/// Clears `running` when the refresh loop is dropped before it ended.
struct Running {
    topology: Weak<Topology>,
    armed: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let (true, Some(topology)) = (self.armed, self.topology.upgrade()) {
            topology.running.store(false, Ordering::Release);
        }
    }
}

/// Refreshes until a view can be trusted and no suspicion came meanwhile:
/// every [`RETRY`], backing off to 1 s once degraded for [`PATIENT`] with
/// nothing else suggesting a change; ends when the backend is gone.
async fn refresh_loop(topology: Weak<Topology>) {
    // Stopped half way (its runtime shut down), the loop says so: the next
    // suspicion or probe starts another.
    let mut running = Running {
        topology: topology.clone(),
        armed: true,
    };
    let mut since = std::time::Instant::now();
    let mut pause = RETRY;
    loop {
        let Some(this) = topology.upgrade() else {
            running.armed = false;
            return;
        };
        if this.again.swap(false, Ordering::AcqRel) {
            since = std::time::Instant::now();
            pause = RETRY;
        }
        this.refresh().await;
        if !this.degraded() && !this.again.load(Ordering::Acquire) {
            this.running.store(false, Ordering::Release);
            // A suspicion between the check and the store started no
            // loop: go round once more.
            if !this.again.load(Ordering::Acquire) || this.running.swap(true, Ordering::AcqRel) {
                running.armed = false;
                return;
            }
        }
        drop(this);
        tokio::time::sleep(pause).await;
        if since.elapsed() > PATIENT {
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

/// How long a degraded cluster is looked at every [`RETRY`] (a failover
/// takes about twice the cluster-node-timeout) before the refreshes back off.
const PATIENT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value::{Array, BulkString, Int};

    fn range(start: i64, end: i64, nodes: &[(&str, i64)]) -> redis::Value {
        let mut parts = vec![Int(start), Int(end)];
        for (h, p) in nodes {
            parts.push(Array(vec![
                BulkString(h.as_bytes().to_vec()),
                Int(*p),
                BulkString(b"id".to_vec()),
            ]));
        }
        Array(parts)
    }

    #[test]
    fn views_parse_and_compare() {
        let a = View::parse(
            Array(vec![
                range(5461, 10922, &[("10.0.0.2", 2), ("10.0.0.5", 5)]),
                range(0, 5460, &[("", 1), ("10.0.0.4", 4)]),
                range(10923, 16383, &[("10.0.0.3", 3), ("?", 6)]),
            ]),
            "10.0.0.1",
        )
        .unwrap();
        assert!(a.covers_all());
        assert_eq!(
            a.primaries(),
            vec![("10.0.0.1".into(), 1), ("10.0.0.2".into(), 2), ("10.0.0.3".into(), 3)]
        );
        assert_eq!(a.nodes().len(), 5, "an unknown node (?) is left out");
        let b = View::parse(
            Array(vec![
                range(0, 5460, &[("10.0.0.4", 4)]),
                range(5461, 10922, &[("10.0.0.2", 2)]),
                range(10923, 16383, &[("10.0.0.3", 3)]),
            ]),
            "10.0.0.2",
        )
        .unwrap();
        assert!(!a.same_owners(&b), "slots 0..=5460 moved to node 4");
        let partial = View::parse(Array(vec![range(0, 5460, &[("h", 1)])]), "h").unwrap();
        assert!(!partial.covers_all());
    }
}
