//! The worker that drains the outbox into the cache: one per cache manager
//! and database, started by the first `watch_external_writes`, ended when
//! the cache manager is dropped.
//!
//! One pass, in one database transaction: lock this deployment's position
//! row (`FOR UPDATE SKIP LOCKED`: another worker of the same deployment that
//! holds it is doing the work, this one skips, nobody waits), read up to
//! [`BATCH`] entries after it, delete their keys and bump their stores'
//! query generations in the cache, and only then move the position and
//! commit. A crash or a cache failure rolls the transaction back: the
//! entries stay for the next pass, of this worker or any other (at least
//! once). On PostgreSQL only entries of transactions older than every
//! running transaction are taken, so no entry can appear behind the
//! position later.
//!
//! Passes run on a `pg_notify` wake-up (a listener connection of its own,
//! re-established when lost, with a catch-up pass each time) and at least
//! every poll interval, so nothing depends on a notification arriving.
//! While a pass fails, or leaves a full batch behind, cached reads of the
//! manager bypass the cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgPool, Row};
use tokio::sync::{watch, Notify};

use super::{ddl, location_of};
use crate::backend::Invalidation;
use crate::cache::key;
use crate::cache::CacheManager;
use crate::error::{CacheError, Result, StorehausError};
use crate::store::pool::DbPool;

/// Outbox entries delivered per pass.
pub(crate) const BATCH: i64 = 1_000;

/// Installs the outbox and the table's triggers unless they are in place;
/// returns where the outbox lives (`kind:database/schema`).
pub(crate) async fn install(pool: &DbPool, table: &str, id: &str) -> Result<String> {
    match pool {
        DbPool::Postgres(p) => {
            let mut tx = p.begin().await?;
            // One installer at a time: concurrent CREATE ... IF NOT EXISTS
            // can collide in the catalog.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('storehaus_outbox'))")
                .execute(&mut *tx)
                .await?;
            let names = ddl::pg_trigger_names();
            let present: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
                 WHERE c.oid = to_regclass(quote_ident($1)) AND t.tgname = ANY($2)",
            )
            .bind(table)
            .bind(&names[..])
            .fetch_one(&mut *tx)
            .await?;
            if present < names.len() as i64 {
                tracing::info!(target: "storehaus", table, "installing the outbox triggers");
                sqlx::raw_sql(&ddl::postgres(table, id)).execute(&mut *tx).await?;
            }
            let row = sqlx::query("SELECT current_database()::text, current_schema()::text")
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(location_of(
                pool,
                &row.try_get::<String, _>(0)?,
                &row.try_get::<String, _>(1)?,
            ))
        }
        #[cfg(feature = "sqlite")]
        DbPool::Sqlite(p) => {
            sqlx::raw_sql(&ddl::sqlite(table, id)).execute(p).await?;
            // A database file has no name an in-memory one would not share:
            // the outbox carries an id of its own.
            let instance: String = sqlx::query_scalar("SELECT id FROM storehaus_outbox_instance LIMIT 1")
                .fetch_one(p)
                .await?;
            Ok(location_of(pool, &instance, "main"))
        }
    }
}

/// Registers `deployment` (at the log's current end, unless it is
/// registered already: a restart resumes where it stopped) and its watch of
/// `table` under the store prefix `prefix`.
pub(crate) async fn register(pool: &DbPool, deployment: &str, table: &str, prefix: &str) -> Result<()> {
    match pool {
        DbPool::Postgres(p) => {
            sqlx::query(
                "INSERT INTO storehaus_outbox_positions (deployment, xid, seq) \
                 VALUES ($1, (pg_snapshot_xmin(pg_current_snapshot())::text)::bigint, 0) \
                 ON CONFLICT (deployment) DO NOTHING",
            )
            .bind(deployment)
            .execute(p)
            .await?;
            sqlx::query("INSERT INTO storehaus_outbox_watches VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(deployment)
                .bind(table)
                .bind(prefix)
                .execute(p)
                .await?;
        }
        #[cfg(feature = "sqlite")]
        DbPool::Sqlite(p) => {
            sqlx::query(
                "INSERT OR IGNORE INTO storehaus_outbox_positions (deployment, seq) \
                 VALUES (?1, (SELECT coalesce(max(seq), 0) FROM storehaus_outbox))",
            )
            .bind(deployment)
            .execute(p)
            .await?;
            sqlx::query("INSERT OR IGNORE INTO storehaus_outbox_watches VALUES (?1, ?2, ?3)")
                .bind(deployment)
                .bind(table)
                .bind(prefix)
                .execute(p)
                .await?;
        }
    }
    Ok(())
}

/// The workers of one cache manager, and what its reads need to know of
/// them.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    workers: Mutex<HashMap<String, Arc<WorkerState>>>,
    /// Workers whose last pass failed or left a full batch behind.
    lagging: AtomicUsize,
}

/// One worker's shared state.
#[derive(Debug)]
pub(crate) struct WorkerState {
    wake: Notify,
    /// Passes completed (successful or not).
    passes: watch::Sender<u64>,
    lagging: AtomicBool,
    backlog: AtomicU64,
    lag_ms: AtomicU64,
    delivered: AtomicU64,
}

impl Watchers {
    /// Whether a worker of this manager is behind: an entry of the outbox
    /// may make a cached value stale. One atomic load.
    #[inline]
    pub fn lagging(&self) -> bool {
        self.lagging.load(Ordering::Acquire) > 0
    }

    /// (entries waiting, age of the oldest in ms, entries delivered) over
    /// every worker.
    pub fn figures(&self) -> (u64, u64, u64) {
        let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        workers.values().fold((0, 0, 0), |(b, l, d), w| {
            (
                b + w.backlog.load(Ordering::Relaxed),
                l.max(w.lag_ms.load(Ordering::Relaxed)),
                d + w.delivered.load(Ordering::Relaxed),
            )
        })
    }

    /// The worker of `location`, started if none runs.
    pub fn ensure(
        &self,
        manager: &Arc<CacheManager>,
        pool: DbPool,
        location: String,
        deployment: String,
    ) -> Arc<WorkerState> {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(state) = workers.get(&location) {
            state.wake.notify_one();
            return state.clone();
        }
        let state = Arc::new(WorkerState {
            wake: Notify::new(),
            passes: watch::channel(0).0,
            lagging: AtomicBool::new(false),
            backlog: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        });
        workers.insert(location.clone(), state.clone());
        let worker = Worker {
            manager: Arc::downgrade(manager),
            pool,
            deployment,
            state: state.clone(),
            poll: manager.config().outbox_poll_interval(),
        };
        tokio::spawn(worker.run(location));
        state
    }

    fn set_lagging(&self, state: &WorkerState, lagging: bool) {
        if state.lagging.swap(lagging, Ordering::AcqRel) != lagging {
            if lagging {
                self.lagging.fetch_add(1, Ordering::AcqRel);
            } else {
                self.lagging.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl WorkerState {
    /// Wakes the worker and waits for a pass that starts after this call
    /// (bounded: a worker stuck on a slow database gives up the wait after
    /// 30 s, with the reads still gated while it is behind).
    pub async fn catch_up(&self) {
        let mut passes = self.passes.subscribe();
        let seen = *passes.borrow_and_update();
        let two_passes = async {
            // The pass under way may have started before the caller's
            // writes; the one after it has not.
            for n in 1..=2 {
                self.wake.notify_one();
                if passes.wait_for(|p| *p >= seen + n).await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), two_passes).await;
    }
}

/// What one pass did.
enum Pass {
    /// Delivered `rows` entries; `more` when a full batch was taken.
    Delivered { rows: u64, more: bool },
    /// Another worker of this deployment holds the position.
    Busy,
}

struct Worker {
    manager: Weak<CacheManager>,
    pool: DbPool,
    deployment: String,
    state: Arc<WorkerState>,
    poll: Duration,
}

impl Worker {
    async fn run(self, location: String) {
        tracing::debug!(target: "storehaus", %location, deployment = %self.deployment, "outbox worker started");
        let listener = match &self.pool {
            DbPool::Postgres(p) => Some(tokio::spawn(listen(
                p.clone(),
                self.state.clone(),
                self.deployment.clone(),
            ))),
            #[cfg(feature = "sqlite")]
            DbPool::Sqlite(_) => None,
        };
        let mut backoff = Duration::from_millis(50);
        let mut last_prune = tokio::time::Instant::now();
        loop {
            let Some(manager) = self.manager.upgrade() else {
                break;
            };
            let outcome = self.pass(&manager).await;
            let wait = match outcome {
                Ok(Pass::Delivered { more: true, .. }) => {
                    manager.outbox.set_lagging(&self.state, true);
                    Duration::ZERO
                }
                Ok(Pass::Delivered { .. }) | Ok(Pass::Busy) => {
                    manager.outbox.set_lagging(&self.state, false);
                    backoff = Duration::from_millis(50);
                    self.poll
                }
                Err(e) => {
                    manager.outbox.set_lagging(&self.state, true);
                    manager.warn("outbox", &CacheError::ConnectionError(e.to_string().into()));
                    let wait = backoff;
                    backoff = (backoff * 2).min(self.poll.max(Duration::from_millis(50)));
                    wait
                }
            };
            if last_prune.elapsed() > Duration::from_secs(10) {
                last_prune = tokio::time::Instant::now();
                if let Err(e) = prune(&self.pool).await {
                    tracing::debug!(target: "storehaus", error = %e, "outbox prune failed");
                }
            }
            drop(manager);
            self.state.passes.send_modify(|n| *n += 1);
            if !wait.is_zero() {
                let _ = tokio::time::timeout(wait, self.state.wake.notified()).await;
            }
        }
        if let Some(listener) = listener {
            listener.abort();
        }
        tracing::debug!(target: "storehaus", %location, "outbox worker stopped: its cache manager is gone");
    }

    #[tracing::instrument(target = "storehaus", skip_all, fields(deployment = %self.deployment, rows))]
    async fn pass(&self, manager: &Arc<CacheManager>) -> Result<Pass> {
        let pass = match &self.pool {
            DbPool::Postgres(p) => pass_postgres(manager, p, &self.deployment, &self.state).await?,
            #[cfg(feature = "sqlite")]
            DbPool::Sqlite(p) => pass_sqlite(manager, p, &self.deployment, &self.state).await?,
        };
        if let Pass::Delivered { rows, .. } = pass {
            tracing::Span::current().record("rows", rows);
        }
        Ok(pass)
    }
}

/// One logged change: a table and the id's text (`None`: the whole table).
struct Entry {
    table: String,
    key: Option<String>,
}

/// The entries of outbox rows whose table and key are the columns `at` and `at + 1`.
fn entries<R>(rows: &[R], at: usize) -> std::result::Result<Vec<Entry>, sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|r| {
            Ok(Entry {
                table: r.try_get(at)?,
                key: r.try_get(at + 1)?,
            })
        })
        .collect()
}

async fn pass_postgres(
    manager: &Arc<CacheManager>,
    pool: &PgPool,
    deployment: &str,
    state: &WorkerState,
) -> Result<Pass> {
    let mut tx = pool.begin().await?;
    // First, before this transaction writes anything: every transaction
    // below this horizon has ended, so its entries are all visible.
    let horizon: i64 = sqlx::query_scalar("SELECT (pg_snapshot_xmin(pg_current_snapshot())::text)::bigint")
        .fetch_one(&mut *tx)
        .await?;
    let position: Option<(i64, i64)> =
        sqlx::query_as("SELECT xid, seq FROM storehaus_outbox_positions WHERE deployment = $1 FOR UPDATE SKIP LOCKED")
            .bind(deployment)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((xid, seq)) = position else {
        return Ok(Pass::Busy);
    };
    let rows = sqlx::query(
        "SELECT xid, seq, tbl, key FROM storehaus_outbox \
         WHERE (xid, seq) > ($1, $2) AND xid < $3 ORDER BY xid, seq LIMIT $4",
    )
    .bind(xid)
    .bind(seq)
    .bind(horizon)
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let more = rows.len() as i64 == BATCH;
    let next = match rows.last() {
        Some(last) if more => (last.try_get::<i64, _>(0)?, last.try_get::<i64, _>(1)?),
        // Everything below the horizon is delivered.
        _ => (horizon.max(xid), if horizon > xid { 0 } else { seq }),
    };
    let entries = entries(&rows, 2)?;
    if !entries.is_empty() {
        let watches: Vec<(String, String)> =
            sqlx::query_as("SELECT tbl, prefix FROM storehaus_outbox_watches WHERE deployment = $1")
                .bind(deployment)
                .fetch_all(&mut *tx)
                .await?;
        deliver(manager, &entries, &watches).await?;
    }
    if next != (xid, seq) {
        sqlx::query(
            "UPDATE storehaus_outbox_positions SET xid = $2, seq = $3, updated_at = now() WHERE deployment = $1",
        )
        .bind(deployment)
        .bind(next.0)
        .bind(next.1)
        .execute(&mut *tx)
        .await?;
    }
    let (backlog, lag_ms) = if more {
        let row = sqlx::query(
            "SELECT count(*), coalesce(max(age), 0) FROM (SELECT (extract(epoch FROM clock_timestamp() - created_at) * 1000)::bigint AS age \
             FROM storehaus_outbox WHERE (xid, seq) > ($1, $2) ORDER BY xid, seq LIMIT 100000) waiting",
        )
        .bind(next.0)
        .bind(next.1)
        .fetch_one(&mut *tx)
        .await?;
        (row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?)
    } else {
        (0, 0)
    };
    tx.commit().await?;
    record(state, entries.len() as u64, backlog, lag_ms);
    Ok(Pass::Delivered {
        rows: entries.len() as u64,
        more,
    })
}

#[cfg(feature = "sqlite")]
async fn pass_sqlite(
    manager: &Arc<CacheManager>,
    pool: &sqlx::SqlitePool,
    deployment: &str,
    state: &WorkerState,
) -> Result<Pass> {
    let Some(seq): Option<i64> = sqlx::query_scalar("SELECT seq FROM storehaus_outbox_positions WHERE deployment = ?1")
        .bind(deployment)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(Pass::Busy);
    };
    let rows = sqlx::query("SELECT seq, tbl, key FROM storehaus_outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2")
        .bind(seq)
        .bind(BATCH)
        .fetch_all(pool)
        .await?;
    let Some(last) = rows.last() else {
        record(state, 0, 0, 0);
        return Ok(Pass::Delivered { rows: 0, more: false });
    };
    let next: i64 = last.try_get(0)?;
    let entries = entries(&rows, 1)?;
    let watches: Vec<(String, String)> =
        sqlx::query_as("SELECT tbl, prefix FROM storehaus_outbox_watches WHERE deployment = ?1")
            .bind(deployment)
            .fetch_all(pool)
            .await?;
    deliver(manager, &entries, &watches).await?;
    // Compare-and-set: a worker of another process that moved it meanwhile
    // delivered the same entries; either way they are delivered.
    sqlx::query(
        "UPDATE storehaus_outbox_positions SET seq = ?2, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
         WHERE deployment = ?1 AND seq = ?3",
    )
    .bind(deployment)
    .bind(next)
    .bind(seq)
    .execute(pool)
    .await?;
    let more = rows.len() as i64 == BATCH;
    record(state, entries.len() as u64, if more { BATCH } else { 0 }, 0);
    Ok(Pass::Delivered {
        rows: entries.len() as u64,
        more,
    })
}

fn record(state: &WorkerState, rows: u64, backlog: i64, lag_ms: i64) {
    state.delivered.fetch_add(rows, Ordering::Relaxed);
    state.backlog.store(backlog.max(0) as u64, Ordering::Relaxed);
    state.lag_ms.store(lag_ms.max(0) as u64, Ordering::Relaxed);
}

/// Deletes the keys of `entries` (under every prefix this deployment
/// watches their table with) and bumps those stores' query generations, in
/// one round trip; a whole-table entry (TRUNCATE) clears the store's key
/// space. Any cache failure fails the pass, which the caller rolls back.
async fn deliver(manager: &Arc<CacheManager>, entries: &[Entry], watches: &[(String, String)]) -> Result<()> {
    let global = manager.global_prefix();
    let mut keys = Vec::new();
    let mut counters = Vec::new();
    let mut scopes = Vec::new();
    for (table, prefix) in watches {
        let mut touched = false;
        for entry in entries.iter().filter(|e| &e.table == table) {
            touched = true;
            match &entry.key {
                Some(id) => keys.push(key::record_key(global, prefix, id.as_str())),
                None => scopes.push(key::store_scope(global, prefix) + "*"),
            }
        }
        if touched {
            counters.push(key::generation_key(global, prefix));
        }
    }
    manager.flights.detach(&keys);
    let inv = Invalidation {
        keys: &keys,
        counters: &counters,
        tags: &[],
    };
    let done = manager
        .guarded(manager.deadline(), "outbox", || manager.backend.invalidate(&inv))
        .await
        .map_err(StorehausError::Cache)?;
    manager.count_resets(&done);
    manager.count_n(|c| &c.invalidations, keys.len() as u64);
    for glob in &scopes {
        manager.clear_glob(glob).await.map_err(StorehausError::Cache)?;
    }
    Ok(())
}

/// Removes the entries every registered deployment has passed, a bounded
/// number at a time.
async fn prune(pool: &DbPool) -> Result<()> {
    match pool {
        DbPool::Postgres(p) => {
            sqlx::query(
                "DELETE FROM storehaus_outbox WHERE seq IN (SELECT o.seq FROM storehaus_outbox o, \
                 (SELECT xid, seq FROM storehaus_outbox_positions ORDER BY xid, seq LIMIT 1) m \
                 WHERE (o.xid, o.seq) <= (m.xid, m.seq) LIMIT 10000)",
            )
            .execute(p)
            .await?;
        }
        #[cfg(feature = "sqlite")]
        DbPool::Sqlite(p) => {
            sqlx::query("DELETE FROM storehaus_outbox WHERE seq <= (SELECT min(seq) FROM storehaus_outbox_positions)")
                .execute(p)
                .await?;
        }
    }
    Ok(())
}

/// Forwards `pg_notify` wake-ups to the worker, on a connection of its own
/// (application name `storehaus-outbox <deployment>`). A lost connection is
/// replaced, and every (re)connect wakes a catch-up pass: notifications sent
/// while it was down are lost, the outbox is not.
async fn listen(pool: PgPool, state: Arc<WorkerState>, deployment: String) {
    let mut name = format!("storehaus-outbox {deployment}");
    // PostgreSQL keeps 63 bytes of an application name.
    while name.len() > 63 {
        name.pop();
    }
    let options = (*pool.connect_options()).clone().application_name(&name);
    loop {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options.clone());
        match PgListener::connect_with(&own).await {
            Ok(mut listener) => {
                if listener.listen(ddl::CHANNEL).await.is_ok() {
                    state.wake.notify_one();
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(_)) => state.wake.notify_one(),
                            // Lost and re-established: catch up.
                            Ok(None) => state.wake.notify_one(),
                            Err(_) => break,
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(target: "storehaus", error = %e, "outbox listener cannot connect"),
        }
        state.wake.notify_one();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
