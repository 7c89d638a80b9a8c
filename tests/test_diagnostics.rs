//! Failures an operator can see: a wrong password, a database index the
//! server does not have and a Redis that is not there each give one WARN
//! log line naming the cause (not one per operation), a health check whose
//! error says why in the server's words, and an error whose `source()` is
//! the redis-rs error. A recovery is one WARN line too.
//!
//! Every case runs on a private redis-server (or a free port with nothing
//! listening), with the circuit breaker out of the way (a threshold of
//! 1 000), so that every operation really tries the server: the log stays
//! at one line because of the deduplication, not because calls were skipped.

use std::sync::Arc;

use storehaus::{CacheError, CacheManager, ServerErrorKind};
use storehaus_testkit::logs::{capture_logs, LevelFilter};
use storehaus_testkit::*;

/// A manager whose breaker never opens in these tests.
fn manager_always_trying(url: &str) -> Arc<CacheManager> {
    manager_on(url, |c| {
        c.with_timeout(300)
            .with_retry_attempts(0)
            .with_circuit_breaker(1_000, 1_000)
    })
}

/// Ten manual reads: each one tries the server and fails.
async fn try_ten_times(manager: &CacheManager) -> CacheError {
    let mut last = None;
    for i in 0..10 {
        match manager.get_record::<i64>("diag", &i.to_string()).await {
            Err(e) => last = Some(e),
            Ok(v) => panic!("read {i} answered {v:?} from a cache that cannot be reached"),
        }
    }
    let stats = manager.get_stats().await.unwrap();
    assert!(stats.connection_errors >= 10, "every read tried the server: {stats:?}");
    last.expect("ten failures")
}

/// The `redis::RedisError` in `err`'s source chain, if any.
fn redis_source(err: &CacheError) -> Option<&redis::RedisError> {
    let mut next = std::error::Error::source(err);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<redis::RedisError>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

#[tokio::test]
async fn a_wrong_password_is_one_warning_naming_the_cause_and_a_health_error() {
    let (logs, _guard) = capture_logs(LevelFilter::DEBUG);
    let server = RedisServer::start_with(&["--requirepass", "the-right-one"]).await;
    let url = format!("redis://:not-the-password@127.0.0.1:{}", server.port);
    let manager = manager_always_trying(&url);

    let err = try_ten_times(&manager).await;
    assert!(matches!(err, CacheError::AuthenticationFailed(_)), "{err:?}");
    let source = redis_source(&err).expect("the redis error is the source");
    assert_eq!(source.kind(), redis::ErrorKind::AuthenticationFailed, "{source:?}");

    let warned = logs.warnings("cache authentication failed");
    assert_eq!(warned.len(), 1, "one WARN for ten failures:\n{}", logs.text());
    assert!(warned[0].contains("cause="), "the line names the cause: {}", warned[0]);
    assert!(!logs.text().contains("not-the-password"), "no password in the logs");

    let health = manager.health_check().await.unwrap_err();
    assert!(matches!(health, CacheError::AuthenticationFailed(_)), "{health:?}");
    assert!(
        health
            .to_string()
            .to_lowercase()
            .contains("password authentication failed"),
        "the health check says why: {health}"
    );
}

#[tokio::test]
async fn a_wrong_database_index_is_one_warning_naming_the_cause_and_a_health_error() {
    let (logs, _guard) = capture_logs(LevelFilter::DEBUG);
    let server = RedisServer::start().await;
    // redis-server has 16 databases by default: 0..=15.
    let manager = manager_always_trying(&format!("{}/99", server.url()));

    let err = try_ten_times(&manager).await;
    // A connection the server would not set up is a connection error (it is
    // counted, retried and opens the breaker), with the server's words and kind.
    assert!(matches!(err, CacheError::ConnectionError(_)), "{err:?}");
    assert_eq!(err.server_error_kind(), Some(&ServerErrorKind::Generic), "{err:?}");
    assert!(err.to_string().contains("DB index is out of range"), "{err}");
    assert!(redis_source(&err).is_some(), "the redis error is the source: {err:?}");

    let warned = logs.warnings("cache unreachable");
    assert_eq!(warned.len(), 1, "one WARN for ten failures:\n{}", logs.text());
    assert!(warned[0].contains("DB index is out of range"), "{}", warned[0]);

    let health = manager.health_check().await.unwrap_err();
    assert!(health.to_string().contains("DB index is out of range"), "{health}");

    // The server's refusal would be the same on another try: not retried.
    let retrying = manager_on(&format!("{}/99", server.url()), |c| c.with_retry_attempts(3));
    let _ = retrying.get_record::<i64>("diag", "1").await;
    assert_eq!(retrying.get_stats().await.unwrap().connection_errors, 1);
}

#[tokio::test]
async fn a_dead_redis_is_one_warning_naming_the_cause_then_one_recovery() {
    let (logs, _guard) = capture_logs(LevelFilter::DEBUG);
    let mut server = RedisServer::start().await;
    let manager = manager_always_trying(&server.url());
    manager.set_record("diag", "up", &1i64, 60).await.unwrap();
    assert!(
        logs.warnings("").is_empty(),
        "no warning while it answers:\n{}",
        logs.text()
    );

    server.kill();
    let err = try_ten_times(&manager).await;
    assert!(matches!(err, CacheError::ConnectionError(_)), "{err:?}");
    let warned = logs.warnings("cache unreachable");
    assert_eq!(warned.len(), 1, "one WARN for ten failures:\n{}", logs.text());
    // The first failure is the open connection breaking (a broken pipe or
    // a reset); the refused reconnects that follow within seconds are the
    // same outage and are not logged again.
    assert!(
        warned[0].contains("cause=cache connection error:"),
        "the line names the cause: {}",
        warned[0]
    );
    let health = manager.health_check().await.unwrap_err();
    assert!(
        health.is_unavailable() && health.to_string().contains("refused"),
        "{health}"
    );

    server.restart().await;
    let start = std::time::Instant::now();
    while manager.health_check().await.is_err() {
        assert!(
            start.elapsed().as_secs() < 5,
            "the manager reaches the restarted server"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for i in 0..5 {
        manager.set_record("diag", &i.to_string(), &i, 60).await.unwrap();
    }
    let recovered = logs.warnings("cache recovered");
    assert_eq!(recovered.len(), 1, "one WARN for the recovery:\n{}", logs.text());
    assert!(
        recovered[0].contains("was="),
        "it says what it recovered from: {}",
        recovered[0]
    );
}

#[tokio::test]
async fn the_open_breaker_says_what_opened_it() {
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let manager = manager_on(&dead, |c| {
        c.with_timeout(300)
            .with_retry_attempts(0)
            .with_circuit_breaker(2, 60_000)
    });
    for i in 0..3 {
        let _ = manager.get_record::<i64>("diag", &i.to_string()).await;
    }
    let err = manager.health_check().await.unwrap_err();
    let CacheError::CircuitOpen { last_error, .. } = &err else {
        panic!("the breaker is open: {err:?}");
    };
    let last = last_error.as_deref().expect("the failure that opened it");
    assert!(matches!(last, CacheError::ConnectionError(_)), "{last:?}");
    assert!(
        err.to_string().contains("refused"),
        "its message names the cause: {err}"
    );
    assert!(
        redis_source(&err).is_some(),
        "and its source chain reaches redis: {err:?}"
    );
}
