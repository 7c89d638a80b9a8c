//! The reader of a deployment's slot: one per cache manager and database,
//! started by the first `watch_wal`, ended when the cache manager is
//! dropped.
//!
//! While it holds the slot, a task of its own owns the replication stream
//! (`pgoutput`, text format, no streaming of transactions under way) and
//! hands the decoded events over a bounded channel; the reader turns them
//! into the outbox's entries and delivers them with the outbox's delivery
//! (record keys, query generations, the recent-invalidation log), in
//! batches of what has arrived, then confirms the slot's position: the end
//! of the last complete transaction in the batch, never more. Nothing is
//! confirmed before the cache acknowledged; a failed delivery ends the
//! stream, and the next one resumes from the slot's confirmed position.
//!
//! Every poll interval (and on `catch_up`) it emits a heartbeat into the
//! write-ahead log (`pg_logical_emit_message`, not transactional, so it
//! also moves the slot through quiet periods and lets the server recycle
//! WAL). A heartbeat that comes back with everything before it delivered
//! renews the read gate; one that has not come back within the fresh bound
//! closes it. Standbys (processes of the deployment that do not hold the
//! slot) follow the holder's reports instead (see `turn`).

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use pg_walstream::{
    CancellationToken, ChangeEvent, EventType, LogicalReplicationStream, ReplicationError, ReplicationSlotOptions,
    ReplicationStreamConfig, RetryConfig, SharedLsnFeedback, StreamingMode,
};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::decode::{Batch, Needs};
use super::setup::{self, SlotName, Watched};
use super::turn::{self, Bounds, Turn};
use crate::cache::gate::{lock, Deployment, WorkerState};
use crate::cache::CacheManager;
use crate::error::WalError;
use crate::error::{CacheError, Result, StorehausError};
use crate::outbox::{clear_prefixes, deliver};

/// Entries delivered per round trip at most.
const BATCH: usize = 5_000;

/// How often the stream's task tells the server the confirmed position at
/// most.
const FEEDBACK_EVERY: Duration = Duration::from_millis(100);

/// Events buffered between the stream's task and the reader.
const CHANNEL: usize = 8_192;

/// How often the slots of every deployment are checked (retained WAL):
/// every 10 s, or twice per expiry when that is shorter.
fn check_every(expiry: Duration) -> Duration {
    (expiry / 2).min(Duration::from_secs(10))
}

pub(crate) struct Reader {
    pub manager: Weak<CacheManager>,
    pub pool: PgPool,
    pub slot: SlotName,
    pub deployment: Deployment,
    /// The replication connection's URL (`replication=database`).
    pub url: String,
    pub state: Arc<WorkerState>,
    pub poll: Duration,
    /// Streams started so far (an in-process deployment's temporary slot
    /// is new on every stream: each but the first starts over).
    pub streams: u64,
    /// When every deployment's slot was last checked.
    pub last_check: Option<Instant>,
}

/// Heartbeats emitted and not yet back.
#[derive(Default)]
struct Heartbeats {
    next: u64,
    outstanding: VecDeque<(u64, Instant)>,
}

impl Reader {
    pub async fn run(mut self) {
        tracing::debug!(target: "storehaus", slot = %self.slot.0, deployment = %self.deployment.name, "wal reader started");
        let bounds = Bounds::new(self.poll, self.deployment.expiry);
        let mut backoff = Duration::from_millis(50);
        while self.manager.strong_count() > 0 {
            self.maybe_check().await;
            let wait = match self.turn(bounds).await {
                Ok(()) => {
                    backoff = Duration::from_millis(50);
                    self.poll
                }
                Err(e) => {
                    self.set_lagging(true);
                    if let Some(m) = self.manager.upgrade() {
                        m.warn("wal", &CacheError::ConnectionError(e.to_string().into()));
                    }
                    let wait = backoff;
                    backoff = (backoff * 2).min(self.poll.max(Duration::from_millis(50)));
                    wait
                }
            };
            self.state.passes.send_modify(|n| *n += 1);
            let _ = tokio::time::timeout(wait, self.state.wake.notified()).await;
        }
        tracing::debug!(target: "storehaus", slot = %self.slot.0, "wal reader stopped: its cache manager is gone");
    }

    /// Checks every deployment's slot when a check is due.
    async fn maybe_check(&mut self) {
        if self
            .last_check
            .is_none_or(|at| at.elapsed() >= check_every(self.deployment.expiry))
        {
            self.last_check = Some(Instant::now());
            super::ops::check(&self.pool, &self.state).await;
        }
    }

    /// One turn: stream the slot until that ends, or stand by for one check.
    async fn turn(&mut self, bounds: Bounds) -> Result<()> {
        let turn = if self.deployment.ephemeral {
            Turn::Stream
        } else {
            turn::decide(&self.pool, &self.slot, bounds).await?
        };
        match turn {
            Turn::Stream => self.stream(bounds).await,
            Turn::Wait { holder_ok } => {
                self.set_lagging(!holder_ok);
                if holder_ok {
                    self.renewed();
                }
                Ok(())
            }
            Turn::StartOver(reason) => {
                self.set_lagging(true);
                self.start_over(&reason).await
            }
        }
    }

    fn set_lagging(&self, lagging: bool) {
        if let Some(m) = self.manager.upgrade() {
            m.watchers().set_lagging(&self.state, lagging);
        }
    }

    fn renewed(&self) {
        if let Some(m) = self.manager.upgrade() {
            m.watchers().renewed(&self.state);
        }
    }

    /// Starts the deployment over with a new slot: drops what is left of
    /// the old one, creates the new one (its position is taken before the
    /// cache is cleared, so every change it skips committed before the
    /// clear), then clears every store prefix the deployment watches.
    async fn start_over(&mut self, reason: &str) -> Result<()> {
        tracing::warn!(target: "storehaus", deployment = %self.deployment.name, slot = %self.slot.0, reason,
            "the replication slot of this cache deployment cannot be trusted: its cached entries are cleared and it starts over with a new slot");
        // Recorded first: until the clear is done, every process of the
        // deployment that finds the slot starts over too (this one may die
        // between the new slot and the clear).
        turn::clear_pending(&self.pool, &self.slot, Some(reason)).await?;
        if setup::slot_state(&self.pool, &self.slot).await? == setup::SlotState::Lost {
            setup::drop_slot(&self.pool, &self.slot).await?;
        }
        if setup::slot_state(&self.pool, &self.slot).await? == setup::SlotState::Missing {
            setup::create_slot(&self.pool, &self.slot).await?;
        }
        self.clear(reason).await?;
        turn::clear_pending(&self.pool, &self.slot, None).await
    }

    /// Clears every store prefix the deployment watches, and says so.
    async fn clear(&self, reason: &str) -> Result<()> {
        let Some(manager) = self.manager.upgrade() else {
            return Ok(());
        };
        let mut prefixes: BTreeSet<String> = lock(&self.state.watches).iter().map(|(_, p)| p.clone()).collect();
        prefixes.extend(
            setup::watches(&self.pool, &self.slot)
                .await?
                .pairs
                .into_iter()
                .map(|(_, p)| p),
        );
        clear_prefixes(&manager, &prefixes).await?;
        sqlx::query("UPDATE storehaus_wal_slots SET note = $2 WHERE slot = $1")
            .bind(&self.slot.0)
            .bind(reason)
            .execute(&self.pool)
            .await?;
        lock(&self.state.events).push(crate::HealthWarning::WalStartedOver {
            deployment: self.deployment.name.clone(),
            reason: reason.to_string(),
        });
        Ok(())
    }

    fn config(&self) -> ReplicationStreamConfig {
        let retry = RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        };
        let config = ReplicationStreamConfig::new(
            self.slot.0.clone(),
            self.slot.0.clone(),
            1,
            StreamingMode::Off,
            Duration::from_secs(1),
            Duration::from_secs(10),
            Duration::from_secs(60),
            retry,
        )
        .with_messages(true);
        if self.deployment.ephemeral {
            config.with_slot_options(ReplicationSlotOptions {
                temporary: true,
                snapshot: Some("nothing".into()),
                ..Default::default()
            })
        } else {
            config
        }
    }

    /// Streams the slot until the stream fails, a delivery fails, or the
    /// cache manager is gone.
    #[tracing::instrument(target = "storehaus", skip_all, fields(slot = %self.slot.0))]
    async fn stream(&mut self, bounds: Bounds) -> Result<()> {
        let wal = |e: ReplicationError| StorehausError::Wal(WalError::stream(e));
        let mut stream = LogicalReplicationStream::new(&self.url, self.config())
            .await
            .map_err(wal)?;
        stream.start(None).await.map_err(wal)?;
        self.streams += 1;
        if self.deployment.ephemeral && self.streams > 1 {
            self.clear(
                "its temporary replication slot ended with its stream (an in-process cache is its own deployment)",
            )
            .await?;
        }
        tracing::info!(target: "storehaus", slot = %self.slot.0, "streaming the deployment's replication slot");
        let feedback = stream.shared_lsn_feedback.clone();
        let token = CancellationToken::new();
        let (tx, mut rx) = mpsc::channel(CHANNEL);
        let pump = tokio::spawn(pump(stream, tx, feedback.clone(), token.clone()));
        let _stop = Stop(token, pump);
        let mut watched = setup::watches(&self.pool, &self.slot).await?;
        let mut batch = Batch::default();
        let mut beats = Heartbeats::default();
        self.emit(&mut beats).await?;
        let mut tick = tokio::time::interval(self.poll);
        loop {
            if self.manager.strong_count() == 0 {
                return Ok(());
            }
            let event = tokio::select! {
                event = rx.recv() => event,
                _ = tick.tick() => {
                    self.tick(&mut beats, bounds).await?;
                    continue;
                }
                _ = self.state.wake.notified() => {
                    self.emit(&mut beats).await?;
                    continue;
                }
            };
            let Some(event) = event else {
                return Err(WalError::Stream("the replication stream ended".into()).into());
            };
            self.take(&mut batch, event.map_err(wal)?, &mut watched).await?;
            while batch.entries.len() < BATCH {
                match rx.try_recv() {
                    Ok(event) => self.take(&mut batch, event.map_err(wal)?, &mut watched).await?,
                    Err(_) => break,
                }
            }
            self.state
                .backlog
                .store(rx.len() as u64, std::sync::atomic::Ordering::Relaxed);
            self.deliver(batch.take(), &watched, &feedback, &mut beats).await?;
        }
    }

    /// Takes `event` into `batch`, reading the watches again first when it
    /// names a table they lack.
    async fn take(&self, batch: &mut Batch, event: ChangeEvent, watched: &mut Watched) -> Result<()> {
        let announced =
            matches!(&event.event_type, EventType::Message { prefix, .. } if **prefix == self.slot.watches_prefix());
        if announced {
            // A process registered a watch: its store prefix is delivered
            // to from here on.
            *watched = setup::watches(&self.pool, &self.slot).await?;
        }
        if let Needs::Watches = Batch::needs(&event, &watched.ids) {
            *watched = setup::watches(&self.pool, &self.slot).await?;
            if let Needs::Watches = Batch::needs(&event, &watched.ids) {
                // Published, yet no watch names it (its watch was deleted
                // by hand?): nothing to deliver it to.
                tracing::warn!(target: "storehaus", slot = %self.slot.0, event = ?event.event_type,
                    "a change of a published table no store of this deployment watches");
            }
        }
        batch.add(&event, &watched.ids, &self.slot.heartbeat_prefix());
        Ok(())
    }

    /// Delivers `batch`, then confirms its position and counts its heartbeats.
    async fn deliver(
        &self,
        batch: Batch,
        watched: &Watched,
        feedback: &SharedLsnFeedback,
        beats: &mut Heartbeats,
    ) -> Result<()> {
        let Some(manager) = self.manager.upgrade() else {
            return Ok(());
        };
        if !batch.entries.is_empty() {
            // The end of the last commit taken in is at or after every
            // entry's commit, unless a transaction is still under way.
            let lsn = batch.confirm.filter(|_| !batch.in_transaction);
            if let Err(e) = deliver(&manager, &batch.entries, &watched.pairs, lsn).await {
                // Nothing is confirmed; the stream ends and the next one
                // resumes from the slot's position.
                manager.watchers().set_lagging(&self.state, true);
                let _ = turn::lagging(&self.pool, &self.slot).await;
                return Err(e);
            }
            self.state
                .delivered
                .fetch_add(batch.entries.len() as u64, std::sync::atomic::Ordering::Relaxed);
            #[cfg(feature = "test-hooks")]
            manager.test_hooks().before_wal_confirm().await;
        }
        if let Some(position) = batch.confirm {
            feedback.update_applied_lsn(position);
        }
        let back: Vec<u64> = batch.heartbeats.iter().filter_map(|h| h.parse().ok()).collect();
        if let Some(&last) = back.iter().max() {
            let mut age = Duration::ZERO;
            while let Some(&(seq, at)) = beats.outstanding.front() {
                if seq > last {
                    break;
                }
                age = at.elapsed();
                beats.outstanding.pop_front();
            }
            manager.watchers().set_lagging(&self.state, false);
            manager.watchers().renewed(&self.state);
            self.state
                .lag_ms
                .store(age.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
            self.state.passes.send_modify(|n| *n += 1);
            if !self.deployment.ephemeral {
                turn::caught_up(&self.pool, &self.slot, age).await?;
            }
        }
        Ok(())
    }

    /// Emits a heartbeat into the write-ahead log.
    async fn emit(&self, beats: &mut Heartbeats) -> Result<()> {
        beats.next += 1;
        sqlx::query("SELECT pg_logical_emit_message(false, $1, $2)")
            .bind(self.slot.heartbeat_prefix())
            .bind(beats.next.to_string())
            .execute(&self.pool)
            .await?;
        beats.outstanding.push_back((beats.next, Instant::now()));
        // Heartbeats of a stream that never delivers are not kept forever.
        while beats.outstanding.len() > 1_000 {
            beats.outstanding.pop_front();
        }
        Ok(())
    }

    /// Every poll interval: closes the read gate while a heartbeat is
    /// overdue, emits the next, and checks every slot now and then.
    async fn tick(&mut self, beats: &mut Heartbeats, bounds: Bounds) -> Result<()> {
        self.maybe_check().await;
        if let Some(&(_, at)) = beats.outstanding.front() {
            if at.elapsed() > bounds.fresh {
                self.set_lagging(true);
                self.state
                    .lag_ms
                    .store(at.elapsed().as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
                if !self.deployment.ephemeral {
                    turn::lagging(&self.pool, &self.slot).await?;
                }
            }
        }
        self.emit(beats).await
    }
}

/// Ends the stream's task when the reader leaves `stream`.
struct Stop(CancellationToken, tokio::task::JoinHandle<()>);

impl Drop for Stop {
    fn drop(&mut self) {
        // The task sends a last status update on cancellation and ends,
        // closing the connection; a task stuck on a dead connection is
        // aborted a little later.
        self.0.cancel();
        let handle = self.1.abort_handle();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    handle.abort();
                });
            }
            Err(_) => handle.abort(),
        }
    }
}

/// Owns the replication stream: hands every event over, and sends a status
/// update whenever the reader confirmed a further position.
async fn pump(
    mut stream: LogicalReplicationStream,
    tx: mpsc::Sender<std::result::Result<ChangeEvent, ReplicationError>>,
    feedback: Arc<SharedLsnFeedback>,
    token: CancellationToken,
) {
    let mut sent = feedback.get_applied_lsn();
    let mut sent_at = Instant::now();
    loop {
        let event = stream.next_event(&token).await;
        let failed = event.is_err();
        if failed && token.is_cancelled() {
            break;
        }
        if tx.send(event).await.is_err() || failed {
            break;
        }
        // At most every FEEDBACK_EVERY (a status update per transaction
        // costs the writer's server a wake-up each); the heartbeats wake
        // this task at least every poll interval.
        let applied = feedback.get_applied_lsn();
        if applied != sent && sent_at.elapsed() >= FEEDBACK_EVERY {
            sent_at = Instant::now();
            if let Err(e) = stream.send_feedback().await {
                tracing::debug!(target: "storehaus", error = %e, "wal status update failed");
                break;
            }
            sent = applied;
        }
    }
    let _ = stream.send_feedback().await;
}
