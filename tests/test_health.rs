//! The cache server's own figures (`server_stats`) and the warnings of
//! `health_check`, on private redis-servers configured to be full or to
//! evict, and on the in-process backend.

use storehaus::prelude::*;
use storehaus::HealthWarning;
use storehaus_testkit::*;

#[tokio::test]
async fn server_stats_report_the_servers_figures() {
    let server = RedisServer::start().await;
    let manager = manager_on(&server.url(), |c| c);
    let mut redis = raw_redis(&server.url()).await;
    config_set(&mut redis, "maxmemory", "64mb").await;
    config_set(&mut redis, "maxmemory-policy", "allkeys-lru").await;
    let _: Option<String> = redis::cmd("GET").arg("missing").query_async(&mut redis).await.unwrap();
    let s = manager.server_stats().await.unwrap();
    assert!(s.used_memory.is_some_and(|m| m > 0), "{s:?}");
    assert_eq!(s.maxmemory, Some(64 << 20));
    assert_eq!(s.maxmemory_policy.as_deref(), Some("allkeys-lru"));
    assert_eq!(s.evicted_keys, Some(0));
    assert!(s.keyspace_misses >= Some(1), "{s:?}");
    assert!(s.connected_clients >= Some(2), "this test's and the manager's: {s:?}");
    assert!(manager.health_check().await.unwrap().is_ok());
}

#[tokio::test]
async fn a_nearly_full_noeviction_server_is_a_warning() {
    let server = RedisServer::start().await;
    let manager = manager_on(&server.url(), |c| c);
    assert!(manager.health_check().await.unwrap().is_ok());
    let mut redis = raw_redis(&server.url()).await;
    starve(&mut redis).await;
    let health = manager.health_check().await.unwrap();
    assert!(
        matches!(
            health.warnings.as_slice(),
            [HealthWarning::NoEvictionNearlyFull { used_memory, maxmemory }] if used_memory >= maxmemory
        ),
        "{health:?}"
    );
}

#[tokio::test]
async fn evictions_since_the_last_check_are_a_warning() {
    let server = RedisServer::start().await;
    let manager = manager_on(&server.url(), |c| c);
    let mut redis = raw_redis(&server.url()).await;
    config_set(&mut redis, "maxmemory", "4mb").await;
    config_set(&mut redis, "maxmemory-policy", "allkeys-lru").await;
    assert!(
        manager.health_check().await.unwrap().is_ok(),
        "the first check sets the baseline"
    );
    let value = vec![b'v'; 64 << 10];
    for i in 0..200 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(&value)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let health = manager.health_check().await.unwrap();
    assert!(
        matches!(health.warnings.as_slice(), [HealthWarning::EvictionsRising { evicted }] if *evicted > 0),
        "{health:?}"
    );
    assert!(manager.health_check().await.unwrap().is_ok(), "no new evictions since");
}

#[tokio::test]
async fn the_in_process_backend_reports_entries_and_evictions() {
    let manager = manager_on("memory://?max_capacity=10", |c| c);
    assert!(manager.health_check().await.unwrap().is_ok());
    for i in 0..200 {
        manager.set_record("k", &i.to_string(), &i, 60).await.unwrap();
    }
    let mut health = manager.health_check().await.unwrap();
    for _ in 0..50 {
        if !health.is_ok() {
            break;
        }
        // moka evicts on its maintenance cycle.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        health = manager.health_check().await.unwrap();
    }
    assert!(
        matches!(health.warnings.as_slice(), [HealthWarning::EvictionsRising { .. }]),
        "{health:?}"
    );
    let (entries, limit) = health.server.entries.unwrap();
    assert_eq!(limit, 10);
    assert!(entries <= 200);
}

#[tokio::test]
async fn health_check_of_an_unreachable_cache_is_an_error() {
    let manager = manager_on(&format!("redis://127.0.0.1:{}", free_port()), |c| c.with_timeout(200));
    assert!(matches!(
        manager.health_check().await,
        Err(CacheError::ConnectionError(_))
    ));
}
