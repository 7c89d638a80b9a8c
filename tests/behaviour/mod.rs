//! The behaviour suite: what a user of the store can observe, written once
//! and run on three stacks by `storehaus_testkit::every_stack!` at the bottom:
//!
//! - `redis_postgres::*`: Redis in front of PostgreSQL (a fresh schema per test);
//! - `cluster_postgres::*`: a 6-node Redis Cluster (`STOREHAUS_CLUSTER_URL`,
//!   started by `scripts/test.sh` with `scripts/cluster.sh`), found out from
//!   the URL of one node, in front of PostgreSQL;
//! - `memory_sqlite::*`: the in-process cache (`memory://`) in front of an
//!   in-memory SQLite database (a fresh database per test).
//!
//! Every test gets its own random global prefix and its own tables, and
//! cleans up after itself. Hits are proved by changing the row behind the
//! cache's back. Cache contents are read through the manager's manual
//! operations, which work on both backends; assertions on Redis' raw bytes
//! and TTLs run on the Redis stack only (`Env::raw_redis`).
//!
//! A module of `tests/test_core.rs`: it holds tests, not harness, so it is
//! not in `storehaus-testkit` (which it uses, with `records::users::User`).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use storehaus::{
    CacheConfig, CacheError, CacheManager, CacheParams, Cached, DbPool, GenericStore, Order, Query, StorehausError,
};
use storehaus_testkit::records::users::{self, user, User};
use storehaus_testkit::*;
use uuid::Uuid;

/// Runs a statement with bound arguments on the test's database. Write it
/// with PostgreSQL's `$N` placeholders; SQLite gets `?N`.
macro_rules! execute {
    ($env:expr, $sql:expr $(, $arg:expr)* $(,)?) => {
        match &$env.db {
            $crate::behaviour::TestDb::Postgres(db) => sqlx::query($sql)
                $(.bind($arg))*
                .execute(&db.pool)
                .await
                .map(|r| r.rows_affected()),
            #[cfg(feature = "sqlite")]
            $crate::behaviour::TestDb::Sqlite(pool) => sqlx::query(&$crate::behaviour::sqlite_sql($sql))
                $(.bind($arg))*
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
        }
        .unwrap_or_else(|e| panic!("{}: {e}", $sql))
    };
}

/// Fetches one scalar of type `$ty` from the test's database.
macro_rules! fetch_scalar {
    ($env:expr, $ty:ty, $sql:expr $(, $arg:expr)* $(,)?) => {
        match &$env.db {
            $crate::behaviour::TestDb::Postgres(db) => sqlx::query_scalar::<_, $ty>($sql)
                $(.bind($arg))*
                .fetch_one(&db.pool)
                .await,
            #[cfg(feature = "sqlite")]
            $crate::behaviour::TestDb::Sqlite(pool) => sqlx::query_scalar::<_, $ty>(&$crate::behaviour::sqlite_sql($sql))
                $(.bind($arg))*
                .fetch_one(pool)
                .await,
        }
        .unwrap_or_else(|e| panic!("{}: {e}", $sql))
    };
}

/// The same table and prefix as [`User`] with fewer columns: another schema
/// fingerprint, as an older or newer build of the application would have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "users", prefix = "users")]
pub struct UserName {
    pub id: Uuid,
    pub name: String,
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

/// Which cache and which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    RedisPostgres,
    ClusterPostgres,
    MemorySqlite,
}

impl Stack {
    /// The cache URL of this stack.
    pub fn cache_url(self) -> String {
        match self {
            Stack::RedisPostgres => redis_url(),
            Stack::ClusterPostgres => cluster_url(),
            Stack::MemorySqlite => "memory://".to_string(),
        }
    }
}

/// The test's own database.
pub enum TestDb {
    Postgres(Db),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
}

/// `$N` placeholders to SQLite's `?N`.
pub fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

/// One test's world: a fresh database with the tables of the records above,
/// and a cache manager with a random global prefix.
pub struct Env {
    pub stack: Stack,
    pub db: TestDb,
    pub manager: Arc<CacheManager>,
}

impl Env {
    pub async fn new(stack: Stack) -> Env {
        Self::with_default_ttl(stack, 3600).await
    }

    /// With `default_ttl` seconds as the config's default TTL.
    pub async fn with_default_ttl(stack: Stack, default_ttl: u64) -> Env {
        let (db, users_table) = match stack {
            Stack::RedisPostgres | Stack::ClusterPostgres => {
                (TestDb::Postgres(Db::new().await), users::CREATE_TABLE_POSTGRES)
            }
            #[cfg(feature = "sqlite")]
            Stack::MemorySqlite => (TestDb::Sqlite(sqlite_memory().await), users::CREATE_TABLE_SQLITE),
            #[cfg(not(feature = "sqlite"))]
            Stack::MemorySqlite => unreachable!("the memory_sqlite suite needs the sqlite feature"),
        };
        let config = CacheConfig::new(stack.cache_url(), default_ttl, random_name("t"));
        let env = Env {
            stack,
            db,
            manager: Arc::new(CacheManager::new(config).expect("valid cache config")),
        };
        for ddl in [
            users_table.to_string(),
            "CREATE TABLE note (id bigint PRIMARY KEY, body text NOT NULL)".to_string(),
            "CREATE TABLE tags (name text PRIMARY KEY, use_count integer NOT NULL)".to_string(),
        ] {
            execute!(env, ddl.as_str());
        }
        env
    }

    pub fn pool(&self) -> DbPool {
        match &self.db {
            TestDb::Postgres(db) => db.pool.clone().into(),
            #[cfg(feature = "sqlite")]
            TestDb::Sqlite(pool) => pool.clone().into(),
        }
    }

    /// A store of `T` cached by this test's manager.
    pub fn store<T: Cached>(&self) -> GenericStore<T> {
        self.store_with(CacheParams::new(self.manager.clone()))
    }

    pub fn store_with<T: Cached>(&self, params: CacheParams) -> GenericStore<T> {
        GenericStore::new(self.pool(), None, Some(params))
    }

    /// A store of `T` without a cache.
    pub fn plain_store<T: Cached>(&self) -> GenericStore<T> {
        GenericStore::new(self.pool(), None, None)
    }

    /// A raw Redis connection on the Redis and cluster stacks, `None` on
    /// the memory stack.
    pub async fn raw_redis(&self) -> Option<RawConn> {
        match self.stack {
            Stack::RedisPostgres => Some(RawConn::Node(raw_redis(&redis_url()).await)),
            Stack::ClusterPostgres => Some(RawConn::Cluster(raw_cluster(&cluster_url()).await)),
            Stack::MemorySqlite => None,
        }
    }

    /// Where a key of the documented layout is stored on this stack (a
    /// cluster gives query results, generations and tag sets a hash tag).
    pub fn stored_key(&self, key: &str) -> String {
        match self.stack {
            #[cfg(feature = "cluster")]
            Stack::ClusterPostgres => storehaus_runtime::test_hooks::cluster_key(key),
            _ => key.to_string(),
        }
    }

    pub async fn wait_for_fills(&self, n: u64) {
        wait_for_fills(&self.manager, n).await;
    }

    pub async fn teardown(self) {
        clear_prefix(&self.manager).await;
        match self.db {
            TestDb::Postgres(db) => db.cleanup().await,
            #[cfg(feature = "sqlite")]
            TestDb::Sqlite(pool) => pool.close().await,
        }
    }
}

/// What the cache holds for `id` under `prefix`, read with the manual
/// `get_record` (it counts as a hit or a miss).
async fn cached_user(env: &Env, prefix: &str, id: &Uuid) -> Option<User> {
    env.manager.get_record(prefix, &id.to_string()).await.unwrap()
}

pub async fn get_by_id_hit_is_served_from_cache_not_database(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store::<User>();
    let alice = store.create(user("alice"), None).await.unwrap();

    assert_eq!(store.get_by_id(&alice.id).await.unwrap(), Some(alice.clone()));
    env.wait_for_fills(1).await;

    // Change the row behind the cache's back: a hit still returns the cached row.
    execute!(env, "UPDATE users SET name = 'changed' WHERE id = $1", alice.id);
    assert_eq!(store.get_by_id(&alice.id).await.unwrap(), Some(alice.clone()));

    let stats = env.manager.get_stats().await.unwrap();
    assert_eq!((stats.hits, stats.misses), (1, 1));
    assert!((stats.hit_rate() - 0.5).abs() < 1e-9);
    env.teardown().await;
}

pub async fn update_invalidates_cached_record(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store::<User>();
    let bob = store.create(user("bob"), None).await.unwrap();
    store.get_by_id(&bob.id).await.unwrap();
    env.wait_for_fills(1).await;
    assert_eq!(cached_user(&env, "users", &bob.id).await, Some(bob.clone()));

    let changed = User {
        name: "robert".into(),
        ..bob.clone()
    };
    let updated = store.update(&bob.id, changed.clone(), None).await.unwrap();
    assert_eq!(updated, changed);
    assert_eq!(
        cached_user(&env, "users", &bob.id).await,
        None,
        "update removed the key"
    );
    assert_eq!(store.get_by_id(&bob.id).await.unwrap(), Some(changed));
    env.teardown().await;
}

pub async fn delete_invalidates_and_reports_whether_a_row_existed(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store::<User>();
    let carol = store.create(user("carol"), None).await.unwrap();
    store.get_by_id(&carol.id).await.unwrap();
    env.wait_for_fills(1).await;

    assert!(store.delete(&carol.id).await.unwrap());
    assert_eq!(store.get_by_id(&carol.id).await.unwrap(), None);
    assert!(!store.delete(&carol.id).await.unwrap());
    env.teardown().await;
}

pub async fn update_many_is_one_transaction_and_invalidates_every_key(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store::<User>();
    let a = store.create(user("a"), None).await.unwrap();
    let b = store.create(user("b"), None).await.unwrap();
    assert_eq!(
        store.get_many(&[a.id, b.id]).await.unwrap(),
        vec![Some(a.clone()), Some(b.clone())]
    );
    env.wait_for_fills(2).await;

    let a2 = User {
        name: "a2".into(),
        ..a.clone()
    };
    let b2 = User {
        name: "b2".into(),
        ..b.clone()
    };
    let out = store
        .update_many(vec![(a.id, a2.clone()), (b.id, b2.clone())])
        .await
        .unwrap();
    assert_eq!(out, vec![a2.clone(), b2.clone()]);
    for u in [&a, &b] {
        assert_eq!(cached_user(&env, "users", &u.id).await, None);
    }
    assert_eq!(store.get_by_id(&a.id).await.unwrap(), Some(a2.clone()));

    // One absent row rolls the whole batch back.
    let ghost = user("ghost");
    let a3 = User {
        name: "a3".into(),
        ..a.clone()
    };
    let err = store
        .update_many(vec![(a.id, a3), (ghost.id, ghost.clone())])
        .await
        .unwrap_err();
    assert!(matches!(err, StorehausError::NotFound { .. }), "{err}");
    let name = fetch_scalar!(env, String, "SELECT name FROM users WHERE id = $1", a.id);
    assert_eq!(name, "a2", "the first update of the failed batch was rolled back");
    assert_eq!(store.update_many(Vec::new()).await.unwrap(), Vec::<User>::new());
    env.teardown().await;
}

pub async fn delete_many_invalidates_every_key(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store::<User>();
    let a = store.create(user("da"), None).await.unwrap();
    let b = store.create(user("db"), None).await.unwrap();
    let keep = store.create(user("keep"), None).await.unwrap();
    let ids = [a.id, b.id, keep.id];
    store.get_many(&ids).await.unwrap();
    env.wait_for_fills(3).await;

    assert_eq!(store.delete_many(&[a.id, b.id, Uuid::new_v4()]).await.unwrap(), 2);
    assert_eq!(
        store.get_many(&ids).await.unwrap(),
        vec![None, None, Some(keep.clone())]
    );
    assert_eq!(store.delete_many(&[]).await.unwrap(), 0);
    let left = fetch_scalar!(env, i64, "SELECT COUNT(*) FROM users");
    assert_eq!(left, 1);
    env.teardown().await;
}

pub async fn ttl_precedence_decides_when_entries_expire(stack: Stack) {
    // The config's default TTL is 1 s here; User's derive says 1800 s.
    let env = Env::with_default_ttl(stack, 1).await;
    let users = env.store::<User>();
    let short = env.store_with::<User>(CacheParams::new(env.manager.clone()).with_ttl(1).with_prefix("short"));
    let notes = env.store::<Note>();
    assert_eq!(users.cache_ttl(), Some(1800), "#[cache(ttl)] wins over the config");
    assert_eq!(short.cache_ttl(), Some(1), "with_ttl wins over #[cache(ttl)]");
    assert_eq!(notes.cache_ttl(), Some(1), "the config's default without either");

    let u = users.create(user("ttl"), None).await.unwrap();
    notes
        .create(
            Note {
                id: 1,
                body: "old".into(),
            },
            None,
        )
        .await
        .unwrap();
    users.get_by_id(&u.id).await.unwrap();
    short.get_by_id(&u.id).await.unwrap();
    notes.get_by_id(&1).await.unwrap();
    env.wait_for_fills(3).await;
    execute!(env, "UPDATE users SET name = 'changed'");
    execute!(env, "UPDATE note SET body = 'changed'");

    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(
        users.get_by_id(&u.id).await.unwrap().unwrap().name,
        "ttl",
        "still cached"
    );
    assert_eq!(
        short.get_by_id(&u.id).await.unwrap().unwrap().name,
        "changed",
        "expired after 1 s"
    );
    assert_eq!(
        notes.get_by_id(&1).await.unwrap().unwrap().body,
        "changed",
        "expired after 1 s"
    );
    env.teardown().await;
}

pub async fn keys_follow_the_documented_format(stack: Stack) {
    let env = Env::new(stack).await;
    let global = env.manager.global_prefix().to_string();

    // #[cache(prefix = "users")]: the entry lives at {global}:users:{id}.
    let users = env.store::<User>();
    let u = users.create(user("keyed"), None).await.unwrap();
    let key = format!("{global}:users:{}", u.id);
    assert_eq!(users.cache_key(&u.id), key);
    assert_eq!(User::cache_key(&global, &u.id), key);
    users.get_by_id(&u.id).await.unwrap();
    env.wait_for_fills(1).await;
    assert_eq!(cached_user(&env, "users", &u.id).await, Some(u.clone()));

    // with_prefix wins over the derive.
    let premium =
        env.store_with::<User>(CacheParams::new(env.manager.clone()).with_prefix("users_premium".to_string()));
    assert_eq!(premium.cache_key(&u.id), format!("{global}:users_premium:{}", u.id));
    premium.get_by_id(&u.id).await.unwrap();
    env.wait_for_fills(2).await;
    assert_eq!(cached_user(&env, "users_premium", &u.id).await, Some(u.clone()));

    // No prefix on the struct: the table name.
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
    assert_eq!(notes.cache_key(&7), format!("{global}:note:7"));
    notes.get_by_id(&7).await.unwrap();
    env.wait_for_fills(3).await;
    let note: Option<Note> = env.manager.get_record("note", "7").await.unwrap();
    assert_eq!(
        note,
        Some(Note {
            id: 7,
            body: "hi".into()
        })
    );
    env.teardown().await;
}

pub async fn ids_with_key_grammar_characters_are_escaped_and_never_collide(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store::<Tag>();
    let global = env.manager.global_prefix().to_string();
    let odd = ["a:b", "a%3Ab", "*", "x y", "ünï", "[x]?\\"];
    for (n, name) in odd.iter().enumerate() {
        store
            .create(
                Tag {
                    name: name.to_string(),
                    uses: n as i32,
                },
                None,
            )
            .await
            .unwrap();
    }
    let mut keys = std::collections::HashSet::new();
    for name in odd {
        let key = store.cache_key(&name.to_string());
        assert!(key.starts_with(&format!("{global}:tags:")));
        let id_part = &key[global.len() + 6..];
        assert!(
            id_part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-%".contains(&b)),
            "{key}"
        );
        assert!(keys.insert(key));
    }
    for (n, name) in odd.iter().enumerate() {
        let got = store.get_by_id(&name.to_string()).await.unwrap().unwrap();
        assert_eq!(got.uses, n as i32);
    }
    env.wait_for_fills(odd.len() as u64).await;
    execute!(env, "UPDATE tags SET use_count = 100");
    // Second round: hits, each the right row.
    for (n, name) in odd.iter().enumerate() {
        let got = store.get_by_id(&name.to_string()).await.unwrap().unwrap();
        assert_eq!((got.name.as_str(), got.uses), (*name, n as i32));
    }
    // A glob over the store's keys reaches every escaped id (and the store's
    // query generation, bumped by the creates) and nothing else.
    env.manager.set_record("tagsx", "1", &1, 60).await.unwrap();
    assert_eq!(
        env.manager.delete_pattern("tags:*").await.unwrap(),
        odd.len() as u64 + 1
    );
    assert_eq!(env.manager.get_record::<i32>("tagsx", "1").await.unwrap(), Some(1));
    assert_eq!(store.get_by_id(&"*".to_string()).await.unwrap().unwrap().uses, 100);
    env.teardown().await;
}

pub async fn missing_rows_are_cached_and_create_clears_the_marker(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store::<User>();
    let eve = user("eve");
    assert_eq!(store.get_by_id(&eve.id).await.unwrap(), None);
    env.wait_for_fills(1).await;
    assert_eq!(store.get_by_id(&eve.id).await.unwrap(), None);
    assert_eq!(
        env.manager.get_stats().await.unwrap().hits,
        1,
        "the absent row was a hit"
    );

    store.create(eve.clone(), None).await.unwrap();
    assert_eq!(store.get_by_id(&eve.id).await.unwrap(), Some(eve));
    env.teardown().await;
}

pub async fn get_many_keeps_order_and_caches_misses(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store::<User>();
    let a = store.create(user("m1"), None).await.unwrap();
    let b = store.create(user("m2"), None).await.unwrap();
    let ghost = Uuid::new_v4();
    let ids = [b.id, ghost, a.id];
    let expected = vec![Some(b.clone()), None, Some(a.clone())];
    assert_eq!(store.get_many(&ids).await.unwrap(), expected);
    env.wait_for_fills(3).await;
    execute!(env, "UPDATE users SET name = 'changed'");
    assert_eq!(
        store.get_many(&ids).await.unwrap(),
        expected,
        "all three from the cache"
    );
    let stats = env.manager.get_stats().await.unwrap();
    assert_eq!((stats.hits, stats.misses), (3, 3));
    assert!(store.get_many(&[]).await.unwrap().is_empty());
    // A single read of one of them is a hit too.
    assert_eq!(store.get_by_id(&a.id).await.unwrap(), Some(a.clone()));
    // An id asked for twice gets its row twice, cold or cached.
    let c = store.create(user("m3"), None).await.unwrap();
    let twice = [c.id, a.id, c.id];
    let want = vec![Some(c.clone()), Some(a.clone()), Some(c.clone())];
    assert_eq!(store.get_many(&twice).await.unwrap(), want, "cold");
    assert_eq!(store.get_many(&twice).await.unwrap(), want, "cached");
    assert_eq!(env.plain_store::<User>().get_many(&twice).await.unwrap().len(), 3);
    env.teardown().await;
}

pub async fn corrupt_entry_is_a_counted_miss_and_is_replaced(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store::<User>();
    let g = store.create(user("gina"), None).await.unwrap();
    // A well-formed envelope whose payload is not a User.
    env.manager
        .set_record("users", &g.id.to_string(), &"garbage", 60)
        .await
        .unwrap();

    assert_eq!(store.get_by_id(&g.id).await.unwrap(), Some(g.clone()));
    let stats = env.manager.get_stats().await.unwrap();
    assert_eq!(stats.serialization_errors, 1);
    env.wait_for_fills(1).await;
    assert_eq!(
        cached_user(&env, "users", &g.id).await,
        Some(g.clone()),
        "replaced by the row"
    );

    // Bytes that are not MessagePack at all, on Redis.
    if let Some(mut redis) = env.raw_redis().await {
        let key = store.cache_key(&g.id);
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(b"\x93\x01garbage".as_slice())
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(store.get_by_id(&g.id).await.unwrap(), Some(g.clone()));
        assert_eq!(env.manager.get_stats().await.unwrap().serialization_errors, 2);
        let bytes = wait_for_value(&mut redis, &key).await;
        assert_eq!(bytes[0], 0x94, "an envelope: an array of four");
        assert!(bytes.len() > 20, "replaced by a real envelope");
    }
    env.teardown().await;
}

pub async fn entries_of_another_schema_stay_and_each_version_hits_its_own(stack: Stack) {
    let env = Env::new(stack).await;
    let old = env.store::<UserName>();
    let new = env.store::<User>();
    assert_eq!(old.cache_key(&Uuid::nil()), new.cache_key(&Uuid::nil()), "same keys");
    let h = new.create(user("hugo"), None).await.unwrap();
    // The old build caches its shape of the row.
    assert_eq!(old.get_by_id(&h.id).await.unwrap().unwrap().name, "hugo");
    env.wait_for_fills(1).await;

    // The new build finds a foreign fingerprint: a miss, never a misread,
    // and not a corrupt entry either: it fills its own entry beside it.
    assert_eq!(new.get_by_id(&h.id).await.unwrap(), Some(h.clone()));
    let stats = env.manager.get_stats().await.unwrap();
    assert_eq!(
        (stats.serialization_errors, stats.foreign_entries, stats.misses),
        (0, 1, 2)
    );
    env.wait_for_fills(2).await;
    execute!(env, "UPDATE users SET name = 'changed'");
    assert_eq!(
        new.get_by_id(&h.id).await.unwrap(),
        Some(h.clone()),
        "the new build's own entry: a hit"
    );
    assert_eq!(
        old.get_by_id(&h.id).await.unwrap().unwrap().name,
        "hugo",
        "the old build's entry was left alone: a hit"
    );
    env.teardown().await;
}

pub async fn guarded_fill_is_dropped_when_a_write_lands_first(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store::<User>();
    let v1 = store.create(user("ivy"), None).await.unwrap();
    let key = store.cache_key(&v1.id);

    // The reader reads v1 from the database; its fill is held.
    let pause = env.manager.test_hooks().pause_fill(&key);
    assert_eq!(store.get_by_id(&v1.id).await.unwrap(), Some(v1.clone()));
    reached(&pause).await;
    // A writer commits v2 (and invalidates) while that fill is held.
    let v2 = User {
        name: "ivy2".into(),
        ..v1.clone()
    };
    store.update(&v1.id, v2.clone(), None).await.unwrap();
    pause.release();
    eventually("the held fill ran", || async {
        let s = env.manager.get_stats().await.unwrap();
        s.fills + s.fills_rejected == 1
    })
    .await;
    assert_eq!(env.manager.get_stats().await.unwrap().fills_rejected, 1);
    assert_eq!(cached_user(&env, "users", &v1.id).await, None, "v1 was not put back");
    assert_eq!(store.get_by_id(&v1.id).await.unwrap(), Some(v2));
    env.teardown().await;
}

pub async fn guarded_batch_fill_drops_only_the_rewritten_key(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store::<User>();
    let a = store.create(user("ja"), None).await.unwrap();
    let b = store.create(user("jb"), None).await.unwrap();

    let pause = env.manager.test_hooks().pause_fill(&store.cache_key(&a.id));
    assert_eq!(
        store.get_many(&[a.id, b.id]).await.unwrap(),
        vec![Some(a.clone()), Some(b.clone())]
    );
    reached(&pause).await;
    let a2 = User {
        name: "ja2".into(),
        ..a.clone()
    };
    store.update(&a.id, a2.clone(), None).await.unwrap();
    pause.release();
    eventually("the held batch fill ran", || async {
        let s = env.manager.get_stats().await.unwrap();
        s.fills + s.fills_rejected == 2
    })
    .await;
    let stats = env.manager.get_stats().await.unwrap();
    assert_eq!((stats.fills, stats.fills_rejected), (1, 1));
    assert_eq!(
        cached_user(&env, "users", &a.id).await,
        None,
        "the old a was not put back"
    );
    assert_eq!(cached_user(&env, "users", &b.id).await, Some(b.clone()));
    assert_eq!(store.get_many(&[a.id, b.id]).await.unwrap(), vec![Some(a2), Some(b)]);
    env.teardown().await;
}

pub async fn concurrent_cold_reads_share_one_load(stack: Stack) {
    let env = Env::new(stack).await;
    let store = Arc::new(env.store::<User>());
    let k = store.create(user("kim"), None).await.unwrap();
    let readers: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            let id = k.id;
            tokio::spawn(async move { store.get_by_id(&id).await.unwrap() })
        })
        .collect();
    for r in readers {
        assert_eq!(r.await.unwrap(), Some(k.clone()));
    }
    let stats = env.manager.get_stats().await.unwrap();
    assert_eq!((stats.misses, stats.hits), (1, 19), "one database load: {stats:?}");
    env.teardown().await;
}

pub async fn reads_racing_writes_never_leave_an_old_row(stack: Stack) {
    let env = Env::new(stack).await;
    let store = Arc::new(env.store::<User>());
    let mut current = store.create(user("race"), None).await.unwrap();
    for round in 0..30 {
        let next = User {
            name: format!("race{round}"),
            ..current.clone()
        };
        let reader = {
            let store = store.clone();
            let id = current.id;
            tokio::spawn(async move { store.get_by_id(&id).await.unwrap() })
        };
        let writer = {
            let store = store.clone();
            let next = next.clone();
            tokio::spawn(async move { store.update(&next.id.clone(), next, None).await.unwrap() })
        };
        let seen = reader.await.unwrap().unwrap();
        assert!(seen == current || seen == next, "{seen:?}");
        writer.await.unwrap();
        // Once the write returned, every read sees it, now and later.
        assert_eq!(
            store.get_by_id(&next.id).await.unwrap(),
            Some(next.clone()),
            "round {round}"
        );
        current = next;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(store.get_by_id(&current.id).await.unwrap(), Some(current.clone()));
    env.teardown().await;
}

pub async fn manual_operations_stay_inside_the_global_prefix(stack: Stack) {
    let env = Env::new(stack).await;
    let manager = env.manager.clone();
    // A second application on the same cache server (on `memory://`, its own cache).
    let other = manager_on(&stack.cache_url(), |c| c);
    let global = manager.global_prefix().to_string();
    let rec = user("manual");

    manager.set_record("users", "user123", &rec, 60).await.unwrap();
    let back: Option<User> = manager.get_record("users", "user123").await.unwrap();
    assert_eq!(back, Some(rec.clone()));
    let missing: Option<User> = manager.get_record("users", "nobody").await.unwrap();
    assert_eq!(missing, None);
    let stats = manager.get_stats().await.unwrap();
    assert_eq!((stats.hits, stats.misses), (1, 1));

    // A value of another type under a manual key is a typed error, not a panic.
    manager.set_record("users", "bad", &"not a user", 60).await.unwrap();
    let err = manager.get_record::<User>("users", "bad").await.unwrap_err();
    assert!(matches!(err, CacheError::SerializationError(_)), "{err}");
    // So are bytes that are not MessagePack (only Redis can hold them).
    if let Some(mut redis) = env.raw_redis().await {
        let _: () = redis::cmd("SET")
            .arg(format!("{global}:users:bad"))
            .arg("not msgpack")
            .query_async(&mut redis)
            .await
            .unwrap();
        let err = manager.get_record::<User>("users", "bad").await.unwrap_err();
        assert!(matches!(err, CacheError::SerializationError(_)), "{err}");
    }

    assert!(manager.delete_record("users", "user123").await.unwrap());
    assert!(!manager.delete_record("users", "user123").await.unwrap());

    // delete_pattern("*") removes this prefix's keys and nothing of another's.
    other.set_record("users", "keep", &rec, 60).await.unwrap();
    for i in 0..25 {
        manager.set_record("sess", &format!("s{i}"), &rec, 60).await.unwrap();
    }
    assert_eq!(manager.delete_pattern("sess:s1?").await.unwrap(), 10);
    assert_eq!(manager.delete_pattern("sess:*").await.unwrap(), 15);
    assert_eq!(manager.delete_pattern("*").await.unwrap(), 1, "only users:bad was left");
    let kept: Option<User> = other.get_record("users", "keep").await.unwrap();
    assert_eq!(kept, Some(rec.clone()));

    // Forbidden prefixes and TTLs are typed errors.
    assert!(matches!(
        manager.set_record("a:b", "x", &1, 60).await,
        Err(CacheError::InvalidInput(_))
    ));
    assert!(matches!(
        manager.set_record("ok", "x", &1, 0).await,
        Err(CacheError::InvalidInput(_))
    ));
    assert!(matches!(
        manager.delete_pattern("").await,
        Err(CacheError::InvalidInput(_))
    ));

    // invalidate_queries bumps the generation counter by one (a missing
    // counter starts at a random value, never at 1).
    let read_gen = |mut redis: RawConn| {
        let key = env.stored_key(&format!("{global}:users:query:gen"));
        async move {
            let gen: i64 = redis::cmd("GET").arg(key).query_async(&mut redis).await.unwrap();
            gen
        }
    };
    manager.invalidate_queries("users").await.unwrap();
    let first = match env.raw_redis().await {
        Some(redis) => Some(read_gen(redis).await),
        None => None,
    };
    manager.invalidate_queries("users").await.unwrap();
    if let (Some(first), Some(redis)) = (first, env.raw_redis().await) {
        assert_eq!(read_gen(redis).await, first + 1);
        assert!(first > 1, "seeded, not started at 1: {first}");
    }
    manager.health_check().await.unwrap();
    clear_prefix(&other).await;
    env.teardown().await;
}

pub async fn misuse_is_a_typed_error_not_a_panic(stack: Stack) {
    let env = Env::new(stack).await;
    let plain = env.plain_store::<User>();
    assert!(matches!(plain.cache_manager(), Err(StorehausError::CacheDisabled)));
    let cached = env.store::<User>();
    assert!(Arc::ptr_eq(&cached.cache_manager().unwrap(), &env.manager));

    let h = cached.create(user("hank"), None).await.unwrap();
    let other = user("other");
    let err = cached.update(&h.id, other.clone(), None).await.unwrap_err();
    assert!(matches!(err, StorehausError::IdMismatch { .. }), "{err}");
    assert_eq!(
        plain.get_by_id(&h.id).await.unwrap(),
        Some(h.clone()),
        "nothing written"
    );
    let err = cached.update(&other.id, other.clone(), None).await.unwrap_err();
    assert!(matches!(err, StorehausError::NotFound { .. }), "{err}");
    let err = cached.create(h.clone(), None).await.unwrap_err();
    assert!(matches!(err, StorehausError::Database(_)), "duplicate id: {err}");

    for bad in [
        CacheConfig::new("not a url", 60, "app"),
        CacheConfig::new("http://127.0.0.1:6379", 60, "app"),
        CacheConfig::new("redis://127.0.0.1:6379", 60, "app").with_pool_size(0),
        CacheConfig::new("redis://127.0.0.1:6379", 60, "my app"),
        CacheConfig::new("redis://127.0.0.1:6379", 60, ""),
        CacheConfig::new("redis://127.0.0.1:6379", 0, "app"),
        CacheConfig::new("redis://127.0.0.1:6379", 60, "app").with_timeout(0),
        CacheConfig::new("memory://?max_capacity=0", 60, "app"),
        CacheConfig::new("memory://?capacity=10", 60, "app"),
        CacheConfig::new("memory://somewhere", 60, "app"),
        CacheConfig::new("memory://", 60, "app:x"),
    ] {
        let err = CacheManager::new(bad.clone()).unwrap_err();
        assert!(matches!(err, CacheError::InvalidConfig(_)), "{bad:?}: {err}");
    }
    CacheManager::new(CacheConfig::new("memory://?max_capacity=10", 60, "app")).unwrap();
    let secret = CacheConfig::new("redis://user:hunter2@127.0.0.1:1/0", 60, "app");
    assert!(!format!("{secret:?}").contains("hunter2"));
    let err = CacheManager::new(secret.with_pool_size(0)).unwrap_err();
    assert!(!err.to_string().contains("hunter2"));

    let err = GenericStore::<User>::try_new(
        env.pool(),
        None,
        Some(CacheParams::new(env.manager.clone()).with_prefix("bad prefix")),
    )
    .unwrap_err();
    assert!(
        matches!(err, StorehausError::Cache(CacheError::InvalidConfig(_))),
        "{err}"
    );
    env.teardown().await;
}

pub async fn store_without_cache_reads_and_writes_the_database(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.plain_store::<Note>();
    store
        .create(
            Note {
                id: 1,
                body: "one".into(),
            },
            None,
        )
        .await
        .unwrap();
    store
        .create(
            Note {
                id: 2,
                body: "two".into(),
            },
            None,
        )
        .await
        .unwrap();
    execute!(env, "UPDATE note SET body = 'uno' WHERE id = $1", 1i64);
    assert_eq!(store.get_by_id(&1).await.unwrap().unwrap().body, "uno");
    assert_eq!(
        store.get_many(&[2, 3, 1]).await.unwrap(),
        vec![
            Some(Note {
                id: 2,
                body: "two".into()
            }),
            None,
            Some(Note {
                id: 1,
                body: "uno".into()
            })
        ]
    );
    let edited = store
        .update(
            &2,
            Note {
                id: 2,
                body: "dos".into(),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(edited.body, "dos");
    assert_eq!(store.delete_many(&[1, 2]).await.unwrap(), 2);
    assert_eq!(
        env.manager.get_stats().await.unwrap(),
        Default::default(),
        "the cache was never touched"
    );
    env.teardown().await;
}

pub async fn query_results_are_cached_and_every_write_invalidates_them(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store::<Note>();
    for (id, body) in [(1, "alpha"), (2, "beta"), (3, "alpine")] {
        store.create(Note { id, body: body.into() }, None).await.unwrap();
    }
    let c = Note::columns();
    let al = || Query::new().filter(c.body.like("al%")).order_by(c.id, Order::Asc);
    let ids = |notes: Vec<Note>| notes.into_iter().map(|n| n.id).collect::<Vec<_>>();

    let first = store.find(al()).await.unwrap();
    assert_eq!(ids(first.clone()), vec![1, 3]);
    env.wait_for_fills(1).await;
    // Change rows behind the cache's back: the cached result is a hit.
    execute!(env, "UPDATE note SET body = 'zzz'");
    assert_eq!(store.find(al()).await.unwrap(), first);
    // Any committed store write makes the next find go to the database.
    store
        .create(
            Note {
                id: 4,
                body: "alto".into(),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(ids(store.find(al()).await.unwrap()), vec![4]);
    assert_eq!(store.count(Query::new()).await.unwrap(), 4);

    // invalidate_queries reaches every cached result of the prefix at once.
    let all = store.find(Query::new().order_by(c.id, Order::Asc)).await.unwrap();
    env.wait_for_fills(3).await;
    execute!(env, "DELETE FROM note WHERE id = 4");
    assert_eq!(store.find(Query::new().order_by(c.id, Order::Asc)).await.unwrap(), all);
    env.manager.invalidate_queries("note").await.unwrap();
    assert_eq!(
        ids(store.find(Query::new().order_by(c.id, Order::Asc)).await.unwrap()),
        vec![1, 2, 3]
    );
    env.teardown().await;
}

pub async fn invalidate_tag_removes_only_tagged_entries(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store::<User>();
    let a = store.create(user("tagged_a"), Some(vec!["vip".into()])).await.unwrap();
    let b = store.create(user("plain_b"), None).await.unwrap();
    let c = store.create(user("tagged_c"), None).await.unwrap();
    store.update(&c.id, c.clone(), Some(vec!["vip".into()])).await.unwrap();
    for u in [&a, &b, &c] {
        store.get_by_id(&u.id).await.unwrap();
    }
    env.wait_for_fills(3).await;
    assert_eq!(env.manager.invalidate_tag("vip").await.unwrap(), 2);
    assert_eq!(cached_user(&env, "users", &a.id).await, None);
    assert_eq!(cached_user(&env, "users", &c.id).await, None);
    assert_eq!(
        cached_user(&env, "users", &b.id).await,
        Some(b.clone()),
        "untagged entry stays"
    );
    env.teardown().await;
}

pub async fn transaction_invalidates_after_commit_and_never_on_rollback(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store::<User>();
    let a = store.create(user("tx_a"), None).await.unwrap();
    store.get_by_id(&a.id).await.unwrap();
    env.wait_for_fills(1).await;

    let a2 = User {
        name: "tx_a2".into(),
        ..a.clone()
    };
    let mut tx = store.begin().await.unwrap();
    tx.update(&a.id, a2.clone(), None).await.unwrap();
    assert_eq!(
        cached_user(&env, "users", &a.id).await,
        Some(a.clone()),
        "untouched before commit"
    );
    tx.rollback().await.unwrap();
    assert_eq!(
        cached_user(&env, "users", &a.id).await,
        Some(a.clone()),
        "untouched after rollback"
    );
    assert_eq!(store.get_by_id(&a.id).await.unwrap(), Some(a.clone()));

    let mut tx = store.begin().await.unwrap();
    tx.update(&a.id, a2.clone(), None).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        cached_user(&env, "users", &a.id).await,
        None,
        "invalidated after commit"
    );
    assert_eq!(store.get_by_id(&a.id).await.unwrap(), Some(a2));
    env.teardown().await;
}

storehaus_testkit::every_stack! {
    get_by_id_hit_is_served_from_cache_not_database,
    update_invalidates_cached_record,
    delete_invalidates_and_reports_whether_a_row_existed,
    update_many_is_one_transaction_and_invalidates_every_key,
    delete_many_invalidates_every_key,
    ttl_precedence_decides_when_entries_expire,
    keys_follow_the_documented_format,
    ids_with_key_grammar_characters_are_escaped_and_never_collide,
    missing_rows_are_cached_and_create_clears_the_marker,
    get_many_keeps_order_and_caches_misses,
    corrupt_entry_is_a_counted_miss_and_is_replaced,
    entries_of_another_schema_stay_and_each_version_hits_its_own,
    guarded_fill_is_dropped_when_a_write_lands_first,
    guarded_batch_fill_drops_only_the_rewritten_key,
    concurrent_cold_reads_share_one_load,
    reads_racing_writes_never_leave_an_old_row,
    manual_operations_stay_inside_the_global_prefix,
    misuse_is_a_typed_error_not_a_panic,
    store_without_cache_reads_and_writes_the_database,
    query_results_are_cached_and_every_write_invalidates_them,
    invalidate_tag_removes_only_tagged_entries,
    transaction_invalidates_after_commit_and_never_on_rollback,
}
