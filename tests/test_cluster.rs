//! Redis Cluster and Sentinel beyond the behaviour suite (which runs on a
//! cluster as `behaviour::cluster_postgres` in `test_core`): the key
//! layout spreads a store over slots and primaries, walks reach every
//! primary, seeds and credentials work, and a Sentinel URL finds its
//! primary.
#![cfg(feature = "cluster")]

use std::collections::HashSet;

use storehaus::{CacheError, CacheParams, GenericStore};
use storehaus_testkit::records::items::{self, item, Item};
use storehaus_testkit::*;

/// The primaries of the shared test cluster, by the slot ranges they serve.
async fn primaries(url: &str) -> Vec<(u16, u16, u16)> {
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let mut c = raw_node(port).await;
    let slots: Vec<(u16, u16, (String, u16))> = {
        let v: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await.unwrap();
        v.into_iter()
            .map(|range| {
                let redis::Value::Array(parts) = range else {
                    panic!("a range")
                };
                let start: u16 = redis::from_redis_value(parts[0].clone()).unwrap();
                let end: u16 = redis::from_redis_value(parts[1].clone()).unwrap();
                let redis::Value::Array(node) = parts[2].clone() else {
                    panic!("a node")
                };
                let host: String = redis::from_redis_value(node[0].clone()).unwrap();
                let port: u16 = redis::from_redis_value(node[1].clone()).unwrap();
                (start, end, (host, port))
            })
            .collect()
    };
    slots.into_iter().map(|(s, e, (_, p))| (s, e, p)).collect()
}

fn owner(primaries: &[(u16, u16, u16)], key: &str) -> u16 {
    let slot = key_slot(key);
    primaries
        .iter()
        .find(|(s, e, _)| (*s..=*e).contains(&slot))
        .map(|(_, _, p)| *p)
        .expect("every slot is served")
}

#[tokio::test]
async fn a_stores_records_spread_over_slots_and_primaries_and_are_served_from_the_cache() {
    let db = Db::new().await;
    db.exec(items::CREATE_TABLE).await;
    let manager = manager_on(&cluster_url(), |c| c);
    let store = GenericStore::<Item>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let ids: Vec<i64> = (1..=60).collect();
    for &id in &ids {
        store.create(item(id, 1), None).await.unwrap();
    }
    // get_many: one MGET, lease and fill per slot, all answered in order.
    let rows = store.get_many(&ids).await.unwrap();
    assert_eq!(rows, ids.iter().map(|&id| Some(item(id, 1))).collect::<Vec<_>>());
    wait_for_fills(&manager, ids.len() as u64).await;

    let keys: Vec<String> = ids.iter().map(|id| store.cache_key(id)).collect();
    let slots: HashSet<u16> = keys.iter().map(|k| key_slot(k)).collect();
    assert!(slots.len() > 50, "{} slots for 60 records", slots.len());
    let primaries = primaries(&cluster_url()).await;
    let nodes: HashSet<u16> = keys.iter().map(|k| owner(&primaries, k)).collect();
    assert_eq!(nodes.len(), 3, "the records are on every primary");

    // Hits: the rows change behind the cache's back, the cache still answers.
    db.exec("UPDATE items SET version = 99").await;
    let rows = store.get_many(&ids).await.unwrap();
    assert!(rows.iter().all(|r| r.as_ref().is_some_and(|i| i.version == 1)));
    assert_eq!(store.get_by_id(&7).await.unwrap(), Some(item(7, 1)));
    assert_eq!(stats(&manager).await.hits, 61);
    clear_prefix(&manager).await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_stores_query_results_share_the_slot_of_its_generation() {
    let manager = manager_on(&cluster_url(), |c| c);
    let global = manager.global_prefix().to_string();
    let generation = storehaus_runtime::test_hooks::cluster_key(&format!("{global}:items:query:gen"));
    let result = storehaus_runtime::test_hooks::cluster_key(&format!("{global}:items:query:0123abcd"));
    assert_eq!(generation, format!("{global}:items:query:{{{global}:items}}:gen"));
    assert_eq!(key_slot(&generation), key_slot(&result));
    // And the counter is where invalidate_queries bumps it.
    manager.invalidate_queries("items").await.unwrap();
    let mut raw = raw_cluster(&cluster_url()).await;
    let seeded: Option<u64> = redis::cmd("GET").arg(&generation).query_async(&mut raw).await.unwrap();
    assert!(seeded.is_some_and(|g| g > 1), "{seeded:?}");
    clear_prefix(&manager).await;
}

#[tokio::test]
async fn delete_pattern_reaches_every_primary() {
    let manager = manager_on(&cluster_url(), |c| c);
    let primaries = primaries(&cluster_url()).await;
    let global = manager.global_prefix().to_string();
    let mut nodes = HashSet::new();
    for i in 0..120 {
        manager.set_record("sess", &format!("s{i}"), &i, 60).await.unwrap();
        nodes.insert(owner(&primaries, &format!("{global}:sess:s{i}")));
    }
    assert_eq!(nodes.len(), 3);
    manager.set_record("keep", "k", &1, 60).await.unwrap();
    assert_eq!(manager.delete_pattern("sess:*").await.unwrap(), 120);
    for i in 0..120 {
        let gone: Option<i32> = manager.get_record("sess", &format!("s{i}")).await.unwrap();
        assert_eq!(gone, None);
    }
    let kept: Option<i32> = manager.get_record("keep", "k").await.unwrap();
    assert_eq!(kept, Some(1));
    assert_eq!(manager.delete_pattern("*").await.unwrap(), 1);
}

#[tokio::test]
async fn cluster_seeds_reach_the_cluster_when_the_url_node_is_down() {
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let live = cluster_url().trim_start_matches("redis://").to_string();
    let manager = manager_on(&dead, |c| c.with_cluster_nodes([live.clone()]));
    manager.set_record("seeded", "a", &"x", 60).await.unwrap();
    let back: Option<String> = manager.get_record("seeded", "a").await.unwrap();
    assert_eq!(back.as_deref(), Some("x"));
    manager.health_check().await.unwrap();
    clear_prefix(&manager).await;

    // A seed that is not host:port is a configuration error, not a panic.
    let bad = storehaus::CacheManager::new(
        storehaus::CacheConfig::new("redis://127.0.0.1:1", 60, "p").with_cluster_nodes(["no-port"]),
    );
    assert!(matches!(bad, Err(CacheError::InvalidConfig(_))), "{bad:?}");
}

#[tokio::test]
async fn a_password_protected_cluster_is_reached_with_the_urls_credentials() {
    let cluster = RedisCluster::start_with_password("s3cret");
    let port = cluster.ports()[0];
    let with = manager_on(&format!("redis://:s3cret@127.0.0.1:{port}"), |c| c);
    with.set_record("auth", "a", &1, 60).await.unwrap();
    for i in 0..30 {
        // Keys on every primary: the credentials reach every node.
        with.set_record("auth", &format!("k{i}"), &i, 60).await.unwrap();
    }
    assert_eq!(with.delete_pattern("auth:*").await.unwrap(), 31);

    let without = manager_on(&format!("redis://127.0.0.1:{port}"), |c| c.with_timeout(300));
    let err = without.set_record("auth", "a", &1, 60).await.unwrap_err();
    assert!(matches!(err, CacheError::AuthenticationFailed(_)), "{err}");
    let wrong = manager_on(&format!("redis://:wrong@127.0.0.1:{port}"), |c| c.with_timeout(300));
    let err = wrong.set_record("auth", "a", &1, 60).await.unwrap_err();
    assert!(matches!(err, CacheError::AuthenticationFailed(_)), "{err}");
    assert!(!format!("{err} {:?}", wrong.config()).contains("wrong"));
}

#[tokio::test]
async fn a_sentinel_url_finds_the_primary_and_its_store_caches() {
    let sentinels = Sentinels::start();
    let db = Db::new().await;
    db.exec(items::CREATE_TABLE).await;
    let manager = manager_on(&sentinels.url(), |c| c);
    let store = GenericStore::<Item>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    store.create(item(1, 1), None).await.unwrap();
    assert_eq!(store.get_by_id(&1).await.unwrap(), Some(item(1, 1)));
    let mut primary = raw_node(sentinels.primary()).await;
    wait_for_value(&mut primary, &store.cache_key(&1)).await;
    db.exec("UPDATE items SET version = 5").await;
    assert_eq!(store.get_by_id(&1).await.unwrap(), Some(item(1, 1)), "a hit");
    store.update(&1, item(1, 2), None).await.unwrap();
    assert_eq!(raw_get(&mut primary, &store.cache_key(&1)).await, None);
    assert_eq!(store.get_by_id(&1).await.unwrap(), Some(item(1, 2)));
    db.cleanup().await;
}
