//! The seed's core behaviours against real PostgreSQL and Redis: hits,
//! invalidation, keys, TTLs, the value format, stats and manual operations.

mod common;

use std::sync::Arc;

use common::*;
use serde::{Deserialize, Serialize};
use storehaus::prelude::*;
use storehaus::{CacheError, CacheManager, CacheParams, GenericStore, StorehausError};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "users", ttl = 1800, prefix = "users")]
pub struct User {
    #[cache(id)]
    pub id: Uuid,
    pub name: String,
    pub email: String,
}

/// No `ttl` and no `prefix`: the config's default TTL and the table name apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
pub struct Note {
    pub id: i64,
    pub body: String,
}

/// A string id that needs escaping, and a renamed column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "tags", prefix = "tags")]
pub struct Tag {
    #[cache(id)]
    pub name: String,
    #[sqlx(rename = "use_count")]
    pub uses: i32,
}

async fn setup() -> (Db, Arc<CacheManager>) {
    let db = Db::new().await;
    db.exec("CREATE TABLE users (id uuid PRIMARY KEY, name text NOT NULL, email text NOT NULL)")
        .await;
    db.exec("CREATE TABLE note (id bigint PRIMARY KEY, body text NOT NULL)").await;
    db.exec("CREATE TABLE tags (name text PRIMARY KEY, use_count integer NOT NULL)").await;
    (db, manager())
}

async fn teardown(db: Db, manager: Arc<CacheManager>) {
    clear_prefix(&manager).await;
    db.cleanup().await;
}

fn user(name: &str) -> User {
    User {
        id: Uuid::new_v4(),
        name: name.to_string(),
        email: format!("{name}@example.com"),
    }
}

#[tokio::test]
async fn get_by_id_hit_is_served_from_cache_not_database() {
    let (db, manager) = setup().await;
    let store = GenericStore::<User>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let alice = store.create(user("alice"), None).await.unwrap();

    assert_eq!(store.get_by_id(&alice.id).await.unwrap(), Some(alice.clone()));
    let mut redis = raw_redis(&redis_url()).await;
    wait_for_value(&mut redis, &store.cache_key(&alice.id)).await;

    // Change the row behind the cache's back: a hit still returns the cached row.
    sqlx::query("UPDATE users SET name = 'changed' WHERE id = $1")
        .bind(alice.id)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(store.get_by_id(&alice.id).await.unwrap(), Some(alice.clone()));

    let stats = manager.get_stats().await.unwrap();
    assert_eq!((stats.hits, stats.misses), (1, 1));
    assert!((stats.hit_rate() - 0.5).abs() < 1e-9);
    teardown(db, manager).await;
}

#[tokio::test]
async fn update_invalidates_cached_record() {
    let (db, manager) = setup().await;
    let store = GenericStore::<User>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let bob = store.create(user("bob"), None).await.unwrap();
    store.get_by_id(&bob.id).await.unwrap();
    let mut redis = raw_redis(&redis_url()).await;
    let key = store.cache_key(&bob.id);
    wait_for_value(&mut redis, &key).await;

    let changed = User {
        name: "robert".into(),
        ..bob.clone()
    };
    let updated = store.update(&bob.id, changed.clone(), None).await.unwrap();
    assert_eq!(updated, changed);
    assert_eq!(raw_get(&mut redis, &key).await, None, "update removed the key");
    assert_eq!(store.get_by_id(&bob.id).await.unwrap(), Some(changed));
    teardown(db, manager).await;
}

#[tokio::test]
async fn delete_invalidates_and_reports_whether_a_row_existed() {
    let (db, manager) = setup().await;
    let store = GenericStore::<User>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let carol = store.create(user("carol"), None).await.unwrap();
    store.get_by_id(&carol.id).await.unwrap();
    let mut redis = raw_redis(&redis_url()).await;
    wait_for_value(&mut redis, &store.cache_key(&carol.id)).await;

    assert!(store.delete(&carol.id).await.unwrap());
    assert_eq!(store.get_by_id(&carol.id).await.unwrap(), None);
    assert!(!store.delete(&carol.id).await.unwrap());
    teardown(db, manager).await;
}

#[tokio::test]
async fn update_many_is_one_transaction_and_invalidates_every_key() {
    let (db, manager) = setup().await;
    let store = GenericStore::<User>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let a = store.create(user("a"), None).await.unwrap();
    let b = store.create(user("b"), None).await.unwrap();
    let mut redis = raw_redis(&redis_url()).await;
    for u in [&a, &b] {
        store.get_by_id(&u.id).await.unwrap();
        wait_for_value(&mut redis, &store.cache_key(&u.id)).await;
    }

    let a2 = User { name: "a2".into(), ..a.clone() };
    let b2 = User { name: "b2".into(), ..b.clone() };
    let out = store
        .update_many(vec![(a.id, a2.clone()), (b.id, b2.clone())])
        .await
        .unwrap();
    assert_eq!(out, vec![a2.clone(), b2.clone()]);
    for u in [&a, &b] {
        assert_eq!(raw_get(&mut redis, &store.cache_key(&u.id)).await, None);
    }
    assert_eq!(store.get_by_id(&a.id).await.unwrap(), Some(a2.clone()));

    // One absent row rolls the whole batch back.
    let ghost = user("ghost");
    let a3 = User { name: "a3".into(), ..a.clone() };
    let err = store
        .update_many(vec![(a.id, a3), (ghost.id, ghost.clone())])
        .await
        .unwrap_err();
    assert!(matches!(err, StorehausError::NotFound { .. }), "{err}");
    let name: String = sqlx::query_scalar("SELECT name FROM users WHERE id = $1")
        .bind(a.id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(name, "a2", "the first update of the failed batch was rolled back");
    teardown(db, manager).await;
}

#[tokio::test]
async fn keys_follow_the_documented_format_and_ttl_precedence() {
    let (db, manager) = setup().await;
    let global = manager.global_prefix().to_string();
    let mut redis = raw_redis(&redis_url()).await;

    // #[cache(prefix = "users", ttl = 1800)]
    let users = GenericStore::<User>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let u = users.create(user("keyed"), None).await.unwrap();
    users.get_by_id(&u.id).await.unwrap();
    let key = format!("{global}:users:{}", u.id);
    assert_eq!(users.cache_key(&u.id), key);
    assert_eq!(User::cache_key(&global, &u.id), key);
    wait_for_value(&mut redis, &key).await;
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut redis).await.unwrap();
    assert!((1790..=1800).contains(&ttl), "derive ttl applies: {ttl}");

    // with_ttl and with_prefix win over the derive.
    let premium = GenericStore::<User>::new(
        db.pool.clone(),
        None,
        Some(
            CacheParams::new(manager.clone())
                .with_ttl(300)
                .with_prefix("users_premium".to_string()),
        ),
    );
    premium.get_by_id(&u.id).await.unwrap();
    let key = format!("{global}:users_premium:{}", u.id);
    wait_for_value(&mut redis, &key).await;
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut redis).await.unwrap();
    assert!((290..=300).contains(&ttl), "with_ttl applies: {ttl}");

    // No ttl/prefix on the struct: the config's default TTL and the table name.
    let notes = GenericStore::<Note>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    notes
        .create(Note { id: 7, body: "hi".into() }, None)
        .await
        .unwrap();
    notes.get_by_id(&7).await.unwrap();
    let key = format!("{global}:note:7");
    wait_for_value(&mut redis, &key).await;
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut redis).await.unwrap();
    assert!((3590..=3600).contains(&ttl), "config default applies: {ttl}");
    teardown(db, manager).await;
}

#[tokio::test]
async fn ids_with_key_grammar_characters_are_escaped_and_never_collide() {
    let (db, manager) = setup().await;
    let store = GenericStore::<Tag>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let global = manager.global_prefix().to_string();
    let odd = ["a:b", "a%3Ab", "*", "x y", "ünï", "[x]?\\"];
    for (n, name) in odd.iter().enumerate() {
        store
            .create(Tag { name: name.to_string(), uses: n as i32 }, None)
            .await
            .unwrap();
    }
    let mut keys = std::collections::HashSet::new();
    for name in odd {
        let key = store.cache_key(&name.to_string());
        assert!(key.starts_with(&format!("{global}:tags:")));
        let id_part = &key[global.len() + 6..];
        assert!(
            id_part.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-%".contains(&b)),
            "{key}"
        );
        assert!(keys.insert(key));
    }
    for (n, name) in odd.iter().enumerate() {
        let got = store.get_by_id(&name.to_string()).await.unwrap().unwrap();
        assert_eq!(got.uses, n as i32);
    }
    // Second round: hits, each the right row.
    for (n, name) in odd.iter().enumerate() {
        let got = store.get_by_id(&name.to_string()).await.unwrap().unwrap();
        assert_eq!((got.name.as_str(), got.uses), (*name, n as i32));
    }
    teardown(db, manager).await;
}

#[tokio::test]
async fn cached_value_is_messagepack_in_a_versioned_envelope() {
    let (db, manager) = setup().await;
    let store = GenericStore::<User>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let dora = store.create(user("dora"), None).await.unwrap();
    store.get_by_id(&dora.id).await.unwrap();
    let mut redis = raw_redis(&redis_url()).await;
    let bytes = wait_for_value(&mut redis, &store.cache_key(&dora.id)).await;

    // An independent MessagePack decoder reads it.
    let value = rmpv::decode::read_value(&mut bytes.as_slice()).unwrap();
    let parts = value.as_array().expect("envelope is an array");
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0].as_u64(), Some(1), "version");
    assert_eq!(parts[1].as_u64(), Some(<User as storehaus::Cached>::FINGERPRINT));
    let record = parts[2].as_array().expect("compact record");
    assert_eq!(record[0].as_slice(), Some(dora.id.as_bytes().as_slice()), "uuid as 16 raw bytes");
    assert_eq!(record[1].as_str(), Some("dora"));
    assert_eq!(record[2].as_str(), Some("dora@example.com"));
    teardown(db, manager).await;
}

#[tokio::test]
async fn missing_rows_are_cached_and_create_clears_the_marker() {
    let (db, manager) = setup().await;
    let store = GenericStore::<User>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let eve = user("eve");
    assert_eq!(store.get_by_id(&eve.id).await.unwrap(), None);
    let mut redis = raw_redis(&redis_url()).await;
    wait_for_value(&mut redis, &store.cache_key(&eve.id)).await;
    assert_eq!(store.get_by_id(&eve.id).await.unwrap(), None);
    assert_eq!(manager.get_stats().await.unwrap().hits, 1, "the absent row was a hit");

    store.create(eve.clone(), None).await.unwrap();
    assert_eq!(store.get_by_id(&eve.id).await.unwrap(), Some(eve));
    teardown(db, manager).await;
}

#[tokio::test]
async fn get_many_keeps_order_and_caches_misses() {
    let (db, manager) = setup().await;
    let store = GenericStore::<User>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let a = store.create(user("m1"), None).await.unwrap();
    let b = store.create(user("m2"), None).await.unwrap();
    let ghost = Uuid::new_v4();
    let ids = [b.id, ghost, a.id];
    let expected = vec![Some(b.clone()), None, Some(a.clone())];
    assert_eq!(store.get_many(&ids).await.unwrap(), expected);
    let mut redis = raw_redis(&redis_url()).await;
    for id in &ids {
        wait_for_value(&mut redis, &store.cache_key(id)).await;
    }
    sqlx::query("UPDATE users SET name = 'changed'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(store.get_many(&ids).await.unwrap(), expected, "all three from the cache");
    let stats = manager.get_stats().await.unwrap();
    assert_eq!((stats.hits, stats.misses), (3, 3));
    assert!(store.get_many(&[]).await.unwrap().is_empty());
    teardown(db, manager).await;
}

#[tokio::test]
async fn redis_down_every_operation_still_answers_from_the_database() {
    let db = Db::new().await;
    db.exec("CREATE TABLE users (id uuid PRIMARY KEY, name text NOT NULL, email text NOT NULL)")
        .await;
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let manager = manager_on(&dead, |c| c.with_timeout(200).with_retry_delay(5));
    let store = GenericStore::<User>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));

    let f = store.create(user("frank"), None).await.unwrap();
    assert_eq!(store.get_by_id(&f.id).await.unwrap(), Some(f.clone()));
    let f2 = User { name: "frank2".into(), ..f.clone() };
    assert_eq!(store.update(&f.id, f2.clone(), None).await.unwrap(), f2);
    assert_eq!(store.get_by_id(&f.id).await.unwrap(), Some(f2.clone()));
    assert_eq!(store.get_many(&[f.id]).await.unwrap(), vec![Some(f2.clone())]);
    assert_eq!(store.update_many(vec![(f.id, f2.clone())]).await.unwrap(), vec![f2]);
    assert!(store.delete(&f.id).await.unwrap());
    assert_eq!(store.delete_many(&[f.id]).await.unwrap(), 0);
    assert_eq!(store.get_by_id(&f.id).await.unwrap(), None);

    let stats = manager.get_stats().await.unwrap();
    assert!(stats.connection_errors > 0, "{stats:?}");
    assert_eq!(stats.hits, 0);
    assert!(manager.health_check().await.is_err());
    db.cleanup().await;
}

#[tokio::test]
async fn corrupt_entry_is_a_counted_miss_and_is_replaced() {
    let (db, manager) = setup().await;
    let store = GenericStore::<User>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let g = store.create(user("gina"), None).await.unwrap();
    let key = store.cache_key(&g.id);
    let mut redis = raw_redis(&redis_url()).await;
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(b"\x93\x01garbage".as_slice())
        .query_async(&mut redis)
        .await
        .unwrap();

    assert_eq!(store.get_by_id(&g.id).await.unwrap(), Some(g.clone()));
    let stats = manager.get_stats().await.unwrap();
    assert_eq!(stats.serialization_errors, 1);
    let bytes = wait_for_value(&mut redis, &key).await;
    assert_eq!(bytes[0], 0x93);
    assert!(bytes.len() > 20, "replaced by a real envelope");
    teardown(db, manager).await;
}

#[tokio::test]
async fn manual_operations_stay_inside_the_global_prefix() {
    let manager = manager();
    let other = manager_on(&redis_url(), |c| c);
    let global = manager.global_prefix().to_string();
    let rec = user("manual");

    manager.set_record("users", "user123", &rec, 60).await.unwrap();
    let back: Option<User> = manager.get_record("users", "user123").await.unwrap();
    assert_eq!(back, Some(rec.clone()));
    let missing: Option<User> = manager.get_record("users", "nobody").await.unwrap();
    assert_eq!(missing, None);
    let stats = manager.get_stats().await.unwrap();
    assert_eq!((stats.hits, stats.misses), (1, 1));

    // Garbage under a manual key is a typed error, not a panic.
    let mut redis = raw_redis(&redis_url()).await;
    let _: () = redis::cmd("SET")
        .arg(format!("{global}:users:bad"))
        .arg("not msgpack")
        .query_async(&mut redis)
        .await
        .unwrap();
    let err = manager.get_record::<User>("users", "bad").await.unwrap_err();
    assert!(matches!(err, CacheError::SerializationError(_)), "{err}");

    assert!(manager.delete_record("users", "user123").await.unwrap());
    assert!(!manager.delete_record("users", "user123").await.unwrap());

    // delete_pattern("*") removes this prefix's keys and nothing of another's.
    other.set_record("users", "keep", &rec, 60).await.unwrap();
    for i in 0..25 {
        manager.set_record("sess", &format!("s{i}"), &rec, 60).await.unwrap();
    }
    assert_eq!(manager.delete_pattern("sess:*").await.unwrap(), 25);
    assert_eq!(manager.delete_pattern("*").await.unwrap(), 1, "only users:bad was left");
    let kept: Option<User> = other.get_record("users", "keep").await.unwrap();
    assert_eq!(kept, Some(rec));

    // Forbidden prefixes and TTLs are typed errors.
    assert!(matches!(
        manager.set_record("a:b", "x", &1, 60).await,
        Err(CacheError::InvalidInput(_))
    ));
    assert!(matches!(manager.set_record("ok", "x", &1, 0).await, Err(CacheError::InvalidInput(_))));
    assert!(matches!(manager.delete_pattern("").await, Err(CacheError::InvalidInput(_))));

    // invalidate_queries is one INCR of the generation counter.
    manager.invalidate_queries("users").await.unwrap();
    manager.invalidate_queries("users").await.unwrap();
    let gen: i64 = redis::cmd("GET")
        .arg(format!("{global}:users:query:gen"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(gen, 2);
    manager.health_check().await.unwrap();
    clear_prefix(&manager).await;
    clear_prefix(&other).await;
}

#[tokio::test]
async fn misuse_is_a_typed_error_not_a_panic() {
    let (db, manager) = setup().await;
    let plain = GenericStore::<User>::new(db.pool.clone(), None, None);
    assert!(matches!(plain.cache_manager(), Err(StorehausError::CacheDisabled)));
    let cached = GenericStore::<User>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    assert!(Arc::ptr_eq(&cached.cache_manager().unwrap(), &manager));

    let h = cached.create(user("hank"), None).await.unwrap();
    let other = user("other");
    let err = cached.update(&h.id, other.clone(), None).await.unwrap_err();
    assert!(matches!(err, StorehausError::IdMismatch { .. }), "{err}");
    assert_eq!(plain.get_by_id(&h.id).await.unwrap(), Some(h.clone()), "nothing written");
    let err = cached.update(&other.id, other.clone(), None).await.unwrap_err();
    assert!(matches!(err, StorehausError::NotFound { .. }), "{err}");
    let err = cached.create(h.clone(), None).await.unwrap_err();
    assert!(matches!(err, StorehausError::Database(_)), "duplicate id: {err}");

    for bad in [
        storehaus::CacheConfig::new("not a url", 60, "app"),
        storehaus::CacheConfig::new("http://127.0.0.1:6379", 60, "app"),
        storehaus::CacheConfig::new("redis://127.0.0.1:6379", 60, "app").with_pool_size(0),
        storehaus::CacheConfig::new("redis://127.0.0.1:6379", 60, "my app"),
        storehaus::CacheConfig::new("redis://127.0.0.1:6379", 60, ""),
        storehaus::CacheConfig::new("redis://127.0.0.1:6379", 0, "app"),
        storehaus::CacheConfig::new("redis://127.0.0.1:6379", 60, "app").with_timeout(0),
    ] {
        let err = CacheManager::new(bad.clone()).unwrap_err();
        assert!(matches!(err, CacheError::InvalidConfig(_)), "{bad:?}: {err}");
    }
    let secret = storehaus::CacheConfig::new("redis://user:hunter2@127.0.0.1:1/0", 60, "app");
    assert!(!format!("{secret:?}").contains("hunter2"));
    let err = CacheManager::new(secret.with_pool_size(0)).unwrap_err();
    assert!(!err.to_string().contains("hunter2"));

    let err = GenericStore::<User>::try_new(
        db.pool.clone(),
        None,
        Some(CacheParams::new(manager.clone()).with_prefix("bad prefix")),
    )
    .unwrap_err();
    assert!(matches!(err, StorehausError::Cache(CacheError::InvalidConfig(_))), "{err}");
    teardown(db, manager).await;
}
