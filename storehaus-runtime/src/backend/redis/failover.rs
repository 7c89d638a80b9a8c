//! Following Sentinel's failovers as they happen: one RESP3 connection per
//! Sentinel of a `redis+sentinel://` URL, subscribed to `+switch-master`.
//!
//! When a Sentinel announces that the service's primary moved, the switch
//! is counted ([`Failovers::switches`]): the pool drops every connection
//! made before it (they go to the old primary, which may be dead, hung, or
//! demoted and still answering reads: nothing waits on it), the contact
//! epoch moves (recent invalidations are delivered again, to the new
//! primary), the manager's circuit breaker probes at once, and the near
//! cache's tracking connection is flushed and made again on the new primary
//! (a demoted primary that keeps it open would never report a write made on
//! the new one). Every Sentinel announces the same switch: it counts once.
//!
//! The subscriptions start with the first connect, reconnect with a backoff,
//! are pinged every second, and end when the backend is dropped. Without
//! them (no Sentinel reachable), a switch is still found on the next
//! connect (`probe`: another primary address moves the contact epoch).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::{AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};

use crate::backend::contact::Contact;
use crate::backend::sentinel::SentinelUrl;

/// The Sentinel channel that announces a new primary.
const SWITCH_CHANNEL: &str = "+switch-master";

/// How often a subscription is pinged.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The switches of one service's primary, as the Sentinels announce them.
pub(crate) struct Failovers {
    sentinels: Vec<(String, u16)>,
    service: String,
    contact: Arc<Contact>,
    started: AtomicBool,
    /// How many switches were seen (the pool's hot path reads it).
    count: AtomicU64,
    /// The same count, for tasks that wait for the next switch.
    switched: watch::Sender<u64>,
    /// The primary named by the last switch, to count each switch once.
    last: Mutex<Option<(String, u16)>>,
}

impl std::fmt::Debug for Failovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failovers")
            .field("service", &self.service)
            .field("switches", &self.switches())
            .finish_non_exhaustive()
    }
}

impl Failovers {
    /// Follows the service of `url` on its Sentinels (once started).
    pub fn new(url: &SentinelUrl, contact: Arc<Contact>) -> Self {
        Failovers {
            sentinels: url.sentinels.clone(),
            service: url.service.clone(),
            contact,
            started: AtomicBool::new(false),
            count: AtomicU64::new(0),
            switched: watch::channel(0).0,
            last: Mutex::new(None),
        }
    }

    /// How many switches were seen. One atomic load.
    #[inline]
    pub fn switches(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Wakes on every switch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.switched.subscribe()
    }

    /// Subscribes on every Sentinel, once; needs a tokio runtime.
    pub fn start(self: &Arc<Self>) {
        if self.started.load(Ordering::Relaxed) || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        for sentinel in &self.sentinels {
            tokio::spawn(listen(Arc::downgrade(self), sentinel.clone()));
        }
    }

    /// A Sentinel announced `+switch-master` with `payload`:
    /// `<service> <old ip> <old port> <new ip> <new port>`.
    fn announced(&self, payload: &str) {
        let fields: Vec<&str> = payload.split_whitespace().collect();
        let [service, _, _, ip, port] = fields[..] else { return };
        let Ok(port) = port.parse::<u16>() else { return };
        if service != self.service {
            return;
        }
        let to = (ip.to_string(), port);
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.as_ref() == Some(&to) {
                return;
            }
            *last = Some(to);
        }
        let n = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        self.switched.send_replace(n);
        tracing::warn!(target: "storehaus",
            service,
            primary = %format!("{ip}:{port}"),
            "Sentinel switched the primary: reconnecting, recent invalidations are delivered again"
        );
        self.contact.bump("Sentinel switched the primary");
        self.contact.healed();
    }
}

/// The subscription on one Sentinel, made again after each loss, until
/// the backend is gone.
async fn listen(failovers: Weak<Failovers>, sentinel: (String, u16)) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if failovers.strong_count() == 0 {
            return;
        }
        match subscription(&failovers, &sentinel).await {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                tracing::debug!(target: "storehaus", error = %e, sentinel = ?sentinel, "Sentinel subscription lost")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One subscription, from connect to loss.
async fn subscription(failovers: &Weak<Failovers>, (host, port): &(String, u16)) -> redis::RedisResult<()> {
    let info = redis::IntoConnectionInfo::into_connection_info(format!("redis://{host}:{port}"))?;
    let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    let client = Client::open(info.set_redis_settings(settings))?;
    let (tx, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(HEARTBEAT))
        .set_response_timeout(Some(HEARTBEAT))
        .set_push_sender(tx);
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    conn.subscribe(SWITCH_CHANNEL).await?;
    loop {
        tokio::select! {
            push = pushes.recv() => match push {
                Some(PushInfo { kind: PushKind::Message, data }) => {
                    let Some(this) = failovers.upgrade() else { return Ok(()) };
                    if let Some(payload) = message_payload(data) {
                        this.announced(&payload);
                    }
                }
                Some(PushInfo { kind: PushKind::Disconnection, .. }) | None => {
                    return Err((redis::ErrorKind::Io, "disconnected").into());
                }
                Some(_) => {}
            },
            _ = tokio::time::sleep(HEARTBEAT) => {
                if failovers.strong_count() == 0 {
                    return Ok(());
                }
                redis::cmd("PING").query_async::<Value>(&mut conn).await?;
            }
        }
    }
}

/// The payload of a `message` push: `[channel, payload]`.
fn message_payload(data: Vec<Value>) -> Option<String> {
    match data.into_iter().nth(1)? {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_of_this_service_counts_once() {
        let url = SentinelUrl::parse("redis+sentinel://127.0.0.1:1/mymaster").unwrap();
        let contact = Arc::new(Contact::default());
        let f = Failovers::new(&url, contact.clone());
        f.announced("other 127.0.0.1 1 127.0.0.1 2");
        assert_eq!(f.switches(), 0, "another service");
        f.announced("mymaster 127.0.0.1 1 127.0.0.1 2");
        f.announced("mymaster 127.0.0.1 1 127.0.0.1 2");
        assert_eq!(f.switches(), 1, "three Sentinels announce one switch");
        assert_eq!((contact.epoch(), contact.heals()), (1, 1));
        f.announced("mymaster 127.0.0.1 2 127.0.0.1 1");
        assert_eq!(f.switches(), 2);
        f.announced("mymaster garbage");
        assert_eq!(f.switches(), 2);
    }
}
