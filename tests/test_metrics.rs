//! What store operations report to a `metrics` recorder and on their
//! `tracing` spans (README, "Metrics and tracing").
//!
//! One recorder serves the whole binary (a global recorder can be installed
//! once); each scenario reads only the series of its own store prefix.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{SharedString, Unit};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::CompositeKey;
use storehaus::prelude::*;
use storehaus::{CacheParams, GenericStore};
use storehaus_testkit::*;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "metered")]
struct Metered {
    id: i64,
    name: String,
}

const CREATE: &str = "CREATE TABLE metered (id bigint PRIMARY KEY, name text NOT NULL)";

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("the only recorder of this binary");
        snapshotter
    })
}

type Snapshot = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

/// Everything recorded since the previous snapshot (taking one drains the
/// recorder's counters and histograms).
fn snapshot() -> Snapshot {
    snapshotter().snapshot().into_vec()
}

/// The counters, histogram sample counts and gauges of `snap` whose labels
/// include `label=value`, keyed by name and the other labels (`name{k=v,...}`).
fn series(snap: &Snapshot, label: &str, value: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for (key, _, _, v) in snap {
        let key = key.key();
        if !key.labels().any(|l| l.key() == label && l.value() == value) {
            continue;
        }
        let mut others: Vec<String> = key
            .labels()
            .filter(|l| l.key() != label && l.key() != "table")
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        others.sort();
        let figure = match v {
            DebugValue::Counter(n) => *n as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(samples) => samples.len() as f64,
        };
        *out.entry(format!("{}{{{}}}", key.name(), others.join(",")))
            .or_default() += figure;
    }
    out
}

fn get(series: &HashMap<String, f64>, name: &str) -> f64 {
    series.get(name).copied().unwrap_or(0.0)
}

/// The metrics scenario, then the tracing one: one test, because the
/// recorder's counters and histograms are drained by each snapshot.
#[tokio::test]
async fn metrics_and_spans() {
    reads_writes_and_failures_are_counted_and_timed().await;
    a_reads_span_says_how_it_was_answered().await;
}

/// Hits, misses, writes, a database error, a bypassed read and the breaker.
async fn reads_writes_and_failures_are_counted_and_timed() {
    snapshotter();
    let db = Db::new().await;
    db.exec(CREATE).await;
    let manager = manager();
    let prefix = random_name("m");
    let store = GenericStore::<Metered>::new(
        db.pool.clone(),
        None,
        Some(CacheParams::new(manager.clone()).with_prefix(prefix.clone())),
    );
    let mut redis = raw_redis(&redis_url()).await;

    // A write, a miss (then filled), a hit, a miss and a hit on "no such row".
    store
        .create(
            Metered {
                id: 1,
                name: "a".into(),
            },
            None,
        )
        .await
        .unwrap();
    store.get_by_id(&1).await.unwrap();
    wait_for_value(&mut redis, &store.cache_key(&1)).await;
    store.get_by_id(&1).await.unwrap();
    store.get_by_id(&2).await.unwrap();
    wait_for_value(&mut redis, &store.cache_key(&2)).await;
    store.get_by_id(&2).await.unwrap();
    // get_many: ids 1 and 2 are cached, 3 is not.
    store.get_many(&[1, 2, 3]).await.unwrap();
    store
        .update(
            &1,
            Metered {
                id: 1,
                name: "b".into(),
            },
            None,
        )
        .await
        .unwrap();
    store.delete(&1).await.unwrap();

    let snap = snapshot();
    let s = series(&snap, "prefix", &prefix);
    let reads = |op: &str, outcome: &str| get(&s, &format!("storehaus_reads_total{{op={op},outcome={outcome}}}"));
    let timed = |op: &str, outcome: &str| {
        get(
            &s,
            &format!("storehaus_read_duration_seconds{{op={op},outcome={outcome}}}"),
        )
    };
    assert_eq!(reads("get_by_id", "miss"), 2.0, "{s:#?}");
    assert_eq!(reads("get_by_id", "hit"), 2.0, "{s:#?}");
    assert_eq!(timed("get_by_id", "miss"), 2.0, "one latency sample per read: {s:#?}");
    assert_eq!(timed("get_by_id", "hit"), 2.0, "{s:#?}");
    assert_eq!(reads("get_many", "hit"), 2.0, "{s:#?}");
    assert_eq!(reads("get_many", "miss"), 1.0, "{s:#?}");
    assert_eq!(timed("get_many", "miss"), 1.0, "one sample per call: {s:#?}");
    for op in ["create", "update", "delete"] {
        assert_eq!(
            get(&s, &format!("storehaus_writes_total{{op={op},outcome=ok}}")),
            1.0,
            "{op}: {s:#?}"
        );
        assert_eq!(
            get(&s, &format!("storehaus_write_duration_seconds{{op={op},outcome=ok}}")),
            1.0,
            "{op}: {s:#?}"
        );
    }
    let global = series(&snap, "global", manager.global_prefix());
    assert!(
        get(&global, "storehaus_fills_total{outcome=written}") >= 2.0,
        "{global:#?}"
    );

    // The database fails: a read and a write counted as errors.
    db.exec("DROP TABLE metered").await;
    assert!(store.get_by_id(&9).await.is_err());
    assert!(store
        .create(
            Metered {
                id: 9,
                name: "x".into()
            },
            None
        )
        .await
        .is_err());
    let s = series(&snapshot(), "prefix", &prefix);
    assert_eq!(
        get(&s, "storehaus_reads_total{op=get_by_id,outcome=error}"),
        1.0,
        "{s:#?}"
    );
    assert_eq!(
        get(&s, "storehaus_writes_total{op=create,outcome=error}"),
        1.0,
        "{s:#?}"
    );
    db.exec(CREATE).await;

    // A dead cache: reads bypass it, its errors are counted by kind, and the
    // breaker's gauge shows it open.
    let dead = manager_on(&format!("redis://127.0.0.1:{}", free_port()), |c| {
        c.with_timeout(100)
            .with_retry_attempts(0)
            .with_circuit_breaker(2, 60_000)
    });
    let bypassed_prefix = random_name("m");
    let bypassed = GenericStore::<Metered>::new(
        db.pool.clone(),
        None,
        Some(CacheParams::new(dead.clone()).with_prefix(bypassed_prefix.clone())),
    );
    for _ in 0..3 {
        bypassed.get_by_id(&1).await.unwrap();
    }
    let snap = snapshot();
    let s = series(&snap, "prefix", &bypassed_prefix);
    assert_eq!(
        get(&s, "storehaus_reads_total{op=get_by_id,outcome=bypass}"),
        3.0,
        "{s:#?}"
    );
    let global = series(&snap, "global", dead.global_prefix());
    assert!(
        get(&global, "storehaus_cache_errors_total{kind=connection}") >= 2.0,
        "{global:#?}"
    );
    assert_eq!(get(&global, "storehaus_breaker_open{}"), 1.0, "{global:#?}");

    clear_prefix(&manager).await;
    db.cleanup().await;
}

/// A `MakeWriter` that keeps what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// `RUST_LOG=storehaus=debug` explains a read: its span carries the table
/// and the outcome. Run after the metrics scenario, not beside it: tracing
/// caches which callsites are enabled, and a subscriber set for one thread
/// while another test hits the same callsites can miss their events.
async fn a_reads_span_says_how_it_was_answered() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("storehaus=debug"))
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing_subscriber::util::SubscriberInitExt::set_default(subscriber);

    let db = Db::new().await;
    db.exec(CREATE).await;
    let manager = manager();
    let store = GenericStore::<Metered>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    store
        .create(
            Metered {
                id: 1,
                name: "a".into(),
            },
            None,
        )
        .await
        .unwrap();
    store.get_by_id(&1).await.unwrap();
    let mut redis = raw_redis(&redis_url()).await;
    wait_for_value(&mut redis, &store.cache_key(&1)).await;
    store.get_by_id(&1).await.unwrap();

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let answered: Vec<&str> = log.lines().filter(|l| l.contains("read answered")).collect();
    assert_eq!(answered.len(), 2, "log:\n{log}");
    assert!(
        answered[0].contains("get_by_id{table=\"metered\"") || answered[0].contains("get_by_id{table=metered"),
        "{log}"
    );
    assert!(
        answered[0].contains("outcome=\"miss\"") || answered[0].contains("outcome=miss"),
        "{log}"
    );
    assert!(
        answered[1].contains("outcome=\"hit\"") || answered[1].contains("outcome=hit"),
        "{log}"
    );

    clear_prefix(&manager).await;
    db.cleanup().await;
}
