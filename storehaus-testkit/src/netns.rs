//! A private `redis-server` behind a real network: its own network
//! namespace, joined to the test's by a veth pair, with nftables rules in
//! the namespace for the faults the kernel makes (packet loss, a silent
//! partition that drops every packet and sends no RST). Added latency needs
//! `tc netem`, which kernels without `sch_netem` lack (this machine's), so it
//! comes from an in-process TCP proxy, [`DelayProxy`].
//!
//! Needs root (or `CAP_NET_ADMIN`), `ip` (iproute2) and `nft`. Only addresses
//! of a random `/30` inside `10.213.0.0/16` are used: one on the test's end
//! of the veth pair, one inside the namespace. The namespace (and with it
//! the veth pair and the server) is removed on drop.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::random_name;

/// The environment variable that lets the network fault tests skip (pass
/// with a message) where network namespaces are not available. Without it
/// they fail there, so a CI run without the privilege cannot pass silently.
pub const SKIP_NETNS_VAR: &str = "STOREHAUS_SKIP_NETNS";

/// A fault on the veth pair between the test and its `redis-server`.
///
/// Made by nftables in the server's namespace. This kernel has no `netem`
/// (`sch_netem`), so added latency comes from a [`DelayProxy`] instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetFault {
    /// Each packet is dropped with this probability (percent), in both
    /// directions.
    Loss(u32),
    /// Every packet is dropped in both directions: TCP connections stay
    /// open with no RST, new ones never complete their handshake.
    Partition,
}

/// A `redis-server` in a network namespace of its own, reached over a veth
/// pair whose packets can be dropped, some or all.
///
/// ```no_run
/// # async fn example() -> Result<(), String> {
/// use storehaus_testkit::{NetFault, NetnsRedis};
/// let server = NetnsRedis::start().await?;
/// let manager = storehaus_testkit::manager_on(&server.url(), |c| c.with_timeout(200));
/// server.fault(NetFault::Loss(5));
/// server.fault(NetFault::Partition);
/// server.heal();
/// # Ok(()) }
/// ```
pub struct NetnsRedis {
    ns: String,
    host_if: String,
    ns_if: String,
    /// The server's address (inside the namespace).
    pub addr: Ipv4Addr,
    /// The server's port.
    pub port: u16,
    child: Option<Child>,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetnsRedis {
    /// Creates the namespace and the veth pair, starts `redis-server` in
    /// the namespace (on its address and on the namespace's loopback, for
    /// [`connected_clients`](Self::connected_clients)) and waits until it
    /// answers.
    ///
    /// # Errors
    ///
    /// Why the namespace could not be made (no privilege, no `ip`); the
    /// caller decides whether that fails the test ([`require`]).
    pub async fn start() -> Result<NetnsRedis, String> {
        let tag = &random_name("")[1..9];
        let r: u16 = rand::random();
        // A /30 in 10.213.0.0/16: .1 on the test's end, .2 in the namespace.
        let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + u32::from(r & 0xfffc);
        let host_addr = Ipv4Addr::from(base + 1);
        let addr = Ipv4Addr::from(base + 2);
        let mut server = NetnsRedis {
            ns: format!("shns{tag}"),
            host_if: format!("shh{tag}"),
            ns_if: format!("shn{tag}"),
            addr,
            port: 6379,
            child: None,
        };
        // From here on, Drop removes whatever was made.
        run("ip", &["netns", "add", &server.ns])?;
        run(
            "ip",
            &[
                "link",
                "add",
                &server.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &server.ns_if,
                "netns",
                &server.ns,
            ],
        )?;
        run(
            "ip",
            &["addr", "add", &format!("{host_addr}/30"), "dev", &server.host_if],
        )?;
        run("ip", &["link", "set", &server.host_if, "up"])?;
        server.in_ns("ip", &["addr", "add", &format!("{addr}/30"), "dev", &server.ns_if])?;
        server.in_ns("ip", &["link", "set", &server.ns_if, "up"])?;
        server.in_ns("ip", &["link", "set", "lo", "up"])?;
        server.in_ns("nft", &["add table inet storehaus"])?;
        for chain in ["input", "output"] {
            let add =
                format!("add chain inet storehaus {chain} {{ type filter hook {chain} priority 0; policy accept; }}");
            server.in_ns("nft", &[&add])?;
        }
        let child = Command::new("ip")
            .args(["netns", "exec", &server.ns, "redis-server"])
            .args(["--bind", &addr.to_string(), "127.0.0.1", "--port", "6379"])
            .args(["--save", "", "--appendonly", "no"])
            // Not on loopback: the test reaches it over the veth pair.
            .args(["--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server in {}: {e}", server.ns))?;
        server.child = Some(child);
        let start = Instant::now();
        while server.redis_cli(&["PING"]).as_deref() != Some("PONG") {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!("redis-server in {} did not start", server.ns));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    fn in_ns(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.ns, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `redis://<addr>:<port>`, the address behind the veth pair.
    pub fn url(&self) -> String {
        format!("redis://{}:{}", self.addr, self.port)
    }

    /// Puts `fault` on the veth pair, replacing any other: nftables rules
    /// in the namespace that drop packets arriving on, and leaving by, the
    /// server's end of the pair (silently: no RST, no ICMP).
    pub fn fault(&self, fault: NetFault) {
        self.heal();
        let verdict = match fault {
            NetFault::Loss(pct) => format!("numgen random mod 100 < {pct} drop"),
            NetFault::Partition => "drop".to_string(),
        };
        for (chain, dir) in [("input", "iifname"), ("output", "oifname")] {
            let rule = format!("add rule inet storehaus {chain} {dir} \"{}\" {verdict}", self.ns_if);
            self.in_ns("nft", &[&rule]).expect("nft rule in the namespace");
        }
    }

    /// Removes any fault: packets flow again.
    pub fn heal(&self) {
        for chain in ["input", "output"] {
            self.in_ns("nft", &["flush", "chain", "inet", "storehaus", chain])
                .expect("nft flush");
        }
    }

    /// Runs `redis-cli` inside the namespace on its loopback (which no
    /// fault touches); its first line of output.
    pub fn redis_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "redis-cli", "-h", "127.0.0.1", "-p", "6379"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        Some(text.lines().next().unwrap_or("").trim().to_string())
    }

    /// How many clients the server has connected, not counting the
    /// `redis-cli` that asks (`CLIENT LIST` read on the namespace's
    /// loopback, so it answers during a partition too).
    pub fn connected_clients(&self) -> usize {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "redis-cli", "-h", "127.0.0.1", "-p", "6379"])
            .args(["CLIENT", "LIST"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli CLIENT LIST");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("addr=") && !l.contains("addr=127.0.0.1:"))
            .count()
    }

    /// How many TCP connections this process's network namespace has open
    /// (ESTABLISHED) to the server: the client's side of the count.
    pub fn established_from_here(&self) -> usize {
        let remote = format!("{:08X}:{:04X}", u32::from(self.addr).swap_bytes(), self.port);
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        table
            .lines()
            .skip(1)
            .filter(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                cols.len() > 3 && cols[2] == remote && cols[3] == "01"
            })
            .count()
    }
}

impl Drop for NetnsRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting the namespace deletes its end of the veth pair, and the
        // pair with it.
        let _ = run("ip", &["netns", "del", &self.ns]);
        let _ = run("ip", &["link", "del", &self.host_if]);
    }
}

/// Starts a [`NetnsRedis`], or decides what its absence means: `None` (the
/// test returns, passing with a message on stderr) only when
/// [`SKIP_NETNS_VAR`] is set to `1`; otherwise it panics, saying why.
pub async fn require() -> Option<NetnsRedis> {
    match NetnsRedis::start().await {
        Ok(server) => Some(server),
        Err(why) if std::env::var(SKIP_NETNS_VAR).as_deref() == Ok("1") => {
            eprintln!("SKIPPED: network namespaces are not available here ({why}); {SKIP_NETNS_VAR}=1");
            None
        }
        Err(why) => panic!(
            "network namespaces are not available here ({why}): these tests need root (CAP_NET_ADMIN), \
             iproute2 and nft; set {SKIP_NETNS_VAR}=1 to skip them"
        ),
    }
}

/// A TCP proxy on a free loopback port that holds every chunk the client
/// sends for a delay ([`set_delay`](Self::set_delay), none at first) before
/// passing it on (the round trip grows by as much); replies pass at once.
/// Stands in for `tc netem delay` where the kernel lacks it. It can also
/// freeze connections ([`freeze`](Self::freeze)): they stay open and pass
/// nothing, for good (a half-open connection, a stalled middlebox). Stops
/// accepting on drop; open pairs end with their sockets.
pub struct DelayProxy {
    /// The loopback port it listens on.
    pub port: u16,
    delay_ms: Arc<AtomicU64>,
    frost: Arc<Frost>,
    accept: tokio::task::JoinHandle<()>,
}

/// Which connections of a [`DelayProxy`] are frozen.
#[derive(Default)]
struct Frost {
    /// New connections are frozen from the start.
    freezing: std::sync::atomic::AtomicBool,
    /// Each connection's flag.
    connections: std::sync::Mutex<Vec<std::sync::Weak<std::sync::atomic::AtomicBool>>>,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: std::net::SocketAddr) -> DelayProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        let frost = Arc::new(Frost::default());
        let frosts = frost.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let delay = delay.clone();
                let frozen = Arc::new(std::sync::atomic::AtomicBool::new(
                    frosts.freezing.load(Ordering::SeqCst),
                ));
                let mut connections = frosts.connections.lock().unwrap_or_else(|p| p.into_inner());
                connections.retain(|c| c.strong_count() > 0);
                connections.push(Arc::downgrade(&frozen));
                drop(connections);
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, server_tx) = server.into_split();
                    let upstream = delayed_copy(client_rx, server_tx, delay, frozen);
                    let downstream = tokio::io::copy(&mut server_rx, &mut client_tx);
                    let _ = tokio::join!(upstream, downstream);
                });
            }
        });
        DelayProxy {
            port,
            delay_ms,
            frost,
            accept,
        }
    }

    /// Freezes every connection open now, and every one accepted until
    /// [`thaw`](Self::thaw): from now on they pass nothing the client
    /// sends, and stay open.
    pub fn freeze(&self) {
        self.frost.freezing.store(true, Ordering::SeqCst);
        let connections = self.frost.connections.lock().unwrap_or_else(|p| p.into_inner());
        for c in connections.iter().filter_map(std::sync::Weak::upgrade) {
            c.store(true, Ordering::SeqCst);
        }
    }

    /// Connections accepted from now on pass data again; the frozen ones
    /// stay frozen.
    pub fn thaw(&self) {
        self.frost.freezing.store(false, Ordering::SeqCst);
    }

    /// Every chunk read from now on waits `delay` before it is passed on.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `rx` to `tx`, every chunk `delay_ms` after it was read, in order
/// (chunks in flight overlap: a pipelined stream is delayed, not throttled);
/// nothing once `frozen`.
async fn delayed_copy(
    mut rx: tokio::net::tcp::OwnedReadHalf,
    mut tx: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
    frozen: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (queue, mut due) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if frozen.load(Ordering::SeqCst) {
                // Frozen: nothing passes; the connection stays open until
                // the client closes it.
                while due.recv().await.is_some() {}
                return;
            }
            if tx.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = tx.shutdown().await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = rx.read(&mut buf).await {
        let at = tokio::time::Instant::now() + Duration::from_millis(delay_ms.load(Ordering::Relaxed));
        if n == 0 || queue.send((at, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(queue);
    let _ = writer.await;
}
