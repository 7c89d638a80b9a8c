//! The seed's core behaviours: hits, invalidation, keys, TTLs, the value
//! format, stats and manual operations.
//!
//! The shared behaviour suite (`tests/behaviour`) runs here twice, as
//! `behaviour::redis_postgres::*` and `behaviour::memory_sqlite::*`. Below
//! it, what only a Redis server can show: exact TTLs and raw bytes read
//! with a plain Redis client, and a Redis that is down.

mod behaviour;

use behaviour::{Env, Note, Stack};
use storehaus::{CacheParams, GenericStore};
use storehaus_testkit::records::users::{self, user, User};
use storehaus_testkit::*;

#[tokio::test]
async fn keys_follow_the_documented_format_and_ttl_precedence() {
    let env = Env::new(Stack::RedisPostgres).await;
    let global = env.manager.global_prefix().to_string();
    let mut redis = raw_redis(&redis_url()).await;

    // #[cache(prefix = "users", ttl = 1800)]
    let users = env.store::<User>();
    let u = users.create(user("keyed"), None).await.unwrap();
    users.get_by_id(&u.id).await.unwrap();
    let key = format!("{global}:users:{}", u.id);
    assert_eq!(users.cache_key(&u.id), key);
    assert_eq!(User::cache_key(&global, &u.id), key);
    wait_for_value(&mut redis, &key).await;
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut redis).await.unwrap();
    assert!((1790..=1800).contains(&ttl), "derive ttl applies: {ttl}");

    // with_ttl and with_prefix win over the derive.
    let premium = env.store_with::<User>(
        CacheParams::new(env.manager.clone())
            .with_ttl(300)
            .with_prefix("users_premium".to_string()),
    );
    premium.get_by_id(&u.id).await.unwrap();
    let key = format!("{global}:users_premium:{}", u.id);
    wait_for_value(&mut redis, &key).await;
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut redis).await.unwrap();
    assert!((290..=300).contains(&ttl), "with_ttl applies: {ttl}");

    // No ttl/prefix on the struct: the config's default TTL and the table name.
    let notes = env.store::<Note>();
    notes
        .create(
            Note {
                id: 7,
                body: "hi".into(),
            },
            None,
        )
        .await
        .unwrap();
    notes.get_by_id(&7).await.unwrap();
    let key = format!("{global}:note:7");
    wait_for_value(&mut redis, &key).await;
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut redis).await.unwrap();
    assert!((3590..=3600).contains(&ttl), "config default applies: {ttl}");
    env.teardown().await;
}

#[tokio::test]
async fn cached_value_is_messagepack_in_a_versioned_envelope() {
    let env = Env::new(Stack::RedisPostgres).await;
    let store = env.store::<User>();
    let dora = store.create(user("dora"), None).await.unwrap();
    store.get_by_id(&dora.id).await.unwrap();
    let mut redis = raw_redis(&redis_url()).await;
    let bytes = wait_for_value(&mut redis, &store.cache_key(&dora.id)).await;

    // An independent MessagePack decoder reads it.
    let value = rmpv::decode::read_value(&mut bytes.as_slice()).unwrap();
    let parts = value.as_array().expect("envelope is an array");
    assert_eq!(parts.len(), 4);
    assert_eq!(parts[0].as_u64(), Some(2), "version");
    assert_eq!(parts[1].as_u64(), Some(<User as storehaus::Cached>::FINGERPRINT));
    assert!(parts[2].as_u64().is_some(), "the fill token");
    let record = parts[3].as_array().expect("compact record");
    assert_eq!(
        record[0].as_slice(),
        Some(dora.id.as_bytes().as_slice()),
        "uuid as 16 raw bytes"
    );
    assert_eq!(record[1].as_str(), Some("dora"));
    assert_eq!(record[2].as_str(), Some("dora@example.com"));
    env.teardown().await;
}

#[tokio::test]
async fn a_reader_whose_database_load_fails_gives_its_lease_back() {
    let env = Env::new(Stack::RedisPostgres).await;
    let store = env.store::<Note>();
    let key = store.cache_key(&1);
    let behaviour::TestDb::Postgres(db) = &env.db else {
        unreachable!("the Redis stack runs on PostgreSQL")
    };
    db.exec("ALTER TABLE note RENAME TO note_away").await;
    let err = store.get_by_id(&1).await.unwrap_err();
    assert!(matches!(err, storehaus::StorehausError::Database(_)), "{err}");
    let mut redis = raw_redis(&redis_url()).await;
    assert_eq!(raw_get(&mut redis, &key).await, None, "no lease left behind");
    db.exec("ALTER TABLE note_away RENAME TO note").await;
    env.teardown().await;
}

#[tokio::test]
async fn a_write_the_database_failed_still_invalidates_its_key() {
    let env = Env::new(Stack::RedisPostgres).await;
    let store = env.store::<Note>();
    let note = Note {
        id: 5,
        body: "kept".into(),
    };
    store.create(note.clone(), None).await.unwrap();
    store.get_by_id(&5).await.unwrap();
    let mut redis = raw_redis(&redis_url()).await;
    let key = store.cache_key(&5);
    wait_for_value(&mut redis, &key).await;
    let behaviour::TestDb::Postgres(db) = &env.db else {
        unreachable!("the Redis stack runs on PostgreSQL")
    };
    // The write fails in the database: whether it committed is unknown to
    // the caller in general, so the key is invalidated anyway.
    db.exec("ALTER TABLE note RENAME TO note_away").await;
    let err = store.update(&5, note.clone(), None).await.unwrap_err();
    assert!(matches!(err, storehaus::StorehausError::Database(_)), "{err}");
    assert_eq!(raw_get(&mut redis, &key).await, None);
    db.exec("ALTER TABLE note_away RENAME TO note").await;
    env.teardown().await;
}

#[tokio::test]
async fn redis_down_every_operation_still_answers_from_the_database() {
    let db = Db::new().await;
    db.exec(users::CREATE_TABLE_POSTGRES).await;
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let manager = manager_on(&dead, |c| c.with_timeout(200).with_retry_delay(5));
    let store = GenericStore::<User>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));

    let f = store.create(user("frank"), None).await.unwrap();
    assert_eq!(store.get_by_id(&f.id).await.unwrap(), Some(f.clone()));
    let f2 = User {
        name: "frank2".into(),
        ..f.clone()
    };
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
