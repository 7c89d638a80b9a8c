//! Explicit controls over a store's cache (issue 16): `invalidate`,
//! `get_fresh`, `prime`, `with_fill_on_write`, `flush_fills`,
//! `invalidate_queries` removing the prefix's records, and the TTL of cached
//! "no such row" entries.
//!
//! Each behaviour runs on Redis + PostgreSQL, a Redis Cluster + PostgreSQL
//! (`STOREHAUS_CLUSTER_URL`, as in the behaviour suite) and `memory://` +
//! SQLite (`every_stack!`); raw TTLs and outages need a Redis server. Hits are
//! proved by changing the row behind the cache's back.

use std::sync::Arc;
use std::time::Duration;

use storehaus::{CacheConfig, CacheManager, CacheParams, DbPool, GenericStore, Query};
use storehaus_testkit::records::users::{self, user, User};
use storehaus_testkit::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stack {
    RedisPostgres,
    ClusterPostgres,
    MemorySqlite,
}

impl Stack {
    fn cache_url(self) -> String {
        match self {
            Stack::RedisPostgres => redis_url(),
            Stack::ClusterPostgres => cluster_url(),
            Stack::MemorySqlite => "memory://".to_string(),
        }
    }
}

/// One test's world: a fresh database with the `users` table and a manager
/// with a random global prefix.
struct Env {
    pg: Option<Db>,
    pool: DbPool,
    manager: Arc<CacheManager>,
}

impl Env {
    async fn new(stack: Stack) -> Env {
        Self::with_manager(stack, |c| c).await
    }

    async fn with_manager(stack: Stack, tweak: impl FnOnce(CacheConfig) -> CacheConfig) -> Env {
        let (pg, pool): (Option<Db>, DbPool) = match stack {
            Stack::RedisPostgres | Stack::ClusterPostgres => {
                let db = Db::new().await;
                db.exec(users::CREATE_TABLE_POSTGRES).await;
                let pool = db.pool.clone().into();
                (Some(db), pool)
            }
            Stack::MemorySqlite => {
                let pool = sqlite_memory().await;
                sqlx::query(users::CREATE_TABLE_SQLITE).execute(&pool).await.unwrap();
                (None, pool.into())
            }
        };
        let url = stack.cache_url();
        Env {
            pg,
            pool,
            manager: manager_on(&url, tweak),
        }
    }

    fn store(&self) -> GenericStore<User> {
        self.store_with(CacheParams::new(self.manager.clone()))
    }

    fn store_with(&self, params: CacheParams) -> GenericStore<User> {
        GenericStore::new(self.pool.clone(), None, Some(params))
    }

    /// Renames a user behind the cache's back (raw SQL).
    async fn rename_behind(&self, u: &User, name: &str) {
        let n = match &self.pool {
            DbPool::Postgres(p) => sqlx::query("UPDATE users SET name = $1 WHERE id = $2")
                .bind(name)
                .bind(u.id)
                .execute(p)
                .await
                .unwrap()
                .rows_affected(),
            DbPool::Sqlite(p) => sqlx::query("UPDATE users SET name = ?1 WHERE id = ?2")
                .bind(name)
                .bind(u.id)
                .execute(p)
                .await
                .unwrap()
                .rows_affected(),
            _ => unreachable!("the tests use PostgreSQL or SQLite"),
        };
        assert_eq!(n, 1);
    }

    /// What the cache holds for `u` (a manual read: counts a hit or a miss).
    async fn cached(&self, u: &User) -> Option<User> {
        self.manager.get_record("users", &u.id.to_string()).await.unwrap()
    }

    async fn teardown(self) {
        clear_prefix(&self.manager).await;
        if let Some(db) = self.pg {
            db.cleanup().await;
        }
    }
}

fn renamed(u: &User, name: &str) -> User {
    User {
        name: name.into(),
        ..u.clone()
    }
}

storehaus_testkit::every_stack! {
    flush_fills_waits_until_a_miss_is_cached,
    invalidate_drops_the_record_so_a_raw_sql_change_is_read,
    get_fresh_reads_the_database_and_refills_the_cache,
    get_fresh_fill_is_dropped_when_a_write_lands_first,
    prime_fills_a_free_key_and_leaves_a_cached_one_alone,
    prime_loses_to_a_write_that_lands_while_it_runs,
    fill_on_write_caches_what_create_and_update_wrote,
    fill_on_write_is_dropped_when_another_write_lands_first,
    fill_on_write_racing_writers_never_leave_an_old_row,
    fill_on_write_update_of_a_missing_row_leaves_no_lease,
    invalidate_queries_removes_the_prefix_records_and_counts_them,
    negative_entries_expire_on_their_own_ttl,
    early_refresh_replaces_a_hit_entry_before_it_expires,
    early_refresh_loses_to_a_write_that_lands_while_it_loads,
    store_stats_count_each_store_alone_and_time_its_operations,
}

async fn flush_fills_waits_until_a_miss_is_cached(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store();
    let mut created = Vec::new();
    for i in 0..20 {
        created.push(store.create(user(&format!("f{i}")), None).await.unwrap());
    }
    for u in &created {
        store.get_by_id(&u.id).await.unwrap();
    }
    let ids: Vec<_> = created.iter().map(|u| u.id).collect();
    store.get_many(&ids).await.unwrap();
    env.manager.flush_fills().await;
    for u in &created {
        assert_eq!(
            env.cached(u).await.as_ref(),
            Some(u),
            "filled before flush_fills returned"
        );
    }
    // Nothing under way: returns at once.
    tokio::time::timeout(Duration::from_secs(1), env.manager.flush_fills())
        .await
        .expect("an idle flush returns at once");
    env.teardown().await;
}

async fn invalidate_drops_the_record_so_a_raw_sql_change_is_read(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store();
    let ada = store.create(user("ada"), None).await.unwrap();
    store.get_by_id(&ada.id).await.unwrap();
    env.manager.flush_fills().await;
    env.rename_behind(&ada, "ada2").await;
    assert_eq!(store.get_by_id(&ada.id).await.unwrap(), Some(ada.clone()), "a hit");

    let before = env.manager.get_stats().await.unwrap().invalidations;
    store.invalidate(&ada.id).await;
    assert_eq!(env.manager.get_stats().await.unwrap().invalidations, before + 1);
    assert_eq!(env.cached(&ada).await, None);
    assert_eq!(store.get_by_id(&ada.id).await.unwrap(), Some(renamed(&ada, "ada2")));
    env.teardown().await;
}

async fn get_fresh_reads_the_database_and_refills_the_cache(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store();
    let bo = store.create(user("bo"), None).await.unwrap();
    store.get_by_id(&bo.id).await.unwrap();
    env.manager.flush_fills().await;
    env.rename_behind(&bo, "bo2").await;
    assert_eq!(store.get_by_id(&bo.id).await.unwrap(), Some(bo.clone()), "a hit");

    let fresh = renamed(&bo, "bo2");
    assert_eq!(store.get_fresh(&bo.id).await.unwrap(), Some(fresh.clone()));
    env.manager.flush_fills().await;
    // The refill is what the reads now get, even after another change behind the back.
    env.rename_behind(&bo, "bo3").await;
    assert_eq!(store.get_by_id(&bo.id).await.unwrap(), Some(fresh));

    // An id without a row: read fresh, cached as "no such row".
    let ghost = user("ghost");
    assert_eq!(store.get_fresh(&ghost.id).await.unwrap(), None);
    env.teardown().await;
}

async fn get_fresh_fill_is_dropped_when_a_write_lands_first(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store();
    let v1 = store.create(user("cy"), None).await.unwrap();
    let pause = env.manager.test_hooks().pause_fill(&store.cache_key(&v1.id));
    assert_eq!(store.get_fresh(&v1.id).await.unwrap(), Some(v1.clone()));
    reached(&pause).await;
    let v2 = renamed(&v1, "cy2");
    store.update(&v1.id, v2.clone(), None).await.unwrap();
    pause.release();
    env.manager.flush_fills().await;
    assert_eq!(env.manager.get_stats().await.unwrap().fills_rejected, 1);
    assert_eq!(env.cached(&v1).await, None, "v1 was not put back");
    assert_eq!(store.get_by_id(&v1.id).await.unwrap(), Some(v2));
    env.teardown().await;
}

async fn prime_fills_a_free_key_and_leaves_a_cached_one_alone(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store();
    let di = store.create(user("di"), None).await.unwrap();
    assert!(store.prime(&di).await, "a free key is primed");
    env.rename_behind(&di, "di2").await;
    assert_eq!(
        store.get_by_id(&di.id).await.unwrap(),
        Some(di.clone()),
        "served as a hit"
    );
    assert_eq!(env.manager.get_stats().await.unwrap().hits, 1);
    // A key that holds a value keeps it.
    assert!(!store.prime(&renamed(&di, "other")).await);
    assert_eq!(env.cached(&di).await, Some(di.clone()));
    // Without a cache there is nothing to prime.
    let plain = GenericStore::<User>::new(env.pool.clone(), None, None);
    assert!(!plain.prime(&di).await);
    env.teardown().await;
}

async fn prime_loses_to_a_write_that_lands_while_it_runs(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store();
    let v1 = store.create(user("ed"), None).await.unwrap();
    let pause = env.manager.test_hooks().pause_fill(&store.cache_key(&v1.id));
    let priming = {
        let store = store.clone();
        let v1 = v1.clone();
        tokio::spawn(async move { store.prime(&v1).await })
    };
    reached(&pause).await;
    let v2 = renamed(&v1, "ed2");
    store.update(&v1.id, v2.clone(), None).await.unwrap();
    pause.release();
    assert!(!priming.await.unwrap(), "the write removed prime's lease");
    assert_eq!(env.cached(&v1).await, None);
    assert_eq!(store.get_by_id(&v1.id).await.unwrap(), Some(v2));
    env.teardown().await;
}

async fn fill_on_write_caches_what_create_and_update_wrote(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store_with(CacheParams::new(env.manager.clone()).with_fill_on_write(true));
    let fay = store.create(user("fay"), None).await.unwrap();
    assert_eq!(env.cached(&fay).await, Some(fay.clone()), "create filled");
    env.rename_behind(&fay, "behind").await;
    assert_eq!(store.get_by_id(&fay.id).await.unwrap(), Some(fay.clone()), "a hit");

    let fay2 = renamed(&fay, "fay2");
    store.update(&fay.id, fay2.clone(), None).await.unwrap();
    assert_eq!(env.cached(&fay).await, Some(fay2.clone()), "update filled");
    env.rename_behind(&fay, "behind2").await;
    assert_eq!(store.get_by_id(&fay.id).await.unwrap(), Some(fay2));
    let stats = env.manager.get_stats().await.unwrap();
    assert_eq!((stats.fills, stats.misses), (2, 0), "no read missed: {stats:?}");

    // A store without the option only invalidates.
    let plain = env.store();
    let gus = plain.create(user("gus"), None).await.unwrap();
    assert_eq!(env.cached(&gus).await, None);
    env.teardown().await;
}

async fn fill_on_write_is_dropped_when_another_write_lands_first(stack: Stack) {
    let env = Env::new(stack).await;
    let filling = env.store_with(CacheParams::new(env.manager.clone()).with_fill_on_write(true));
    let plain = env.store();
    let v1 = plain.create(user("hal"), None).await.unwrap();
    // The filling writer commits v2 and is held before its fill; another
    // writer then commits v3 and invalidates.
    let pause = env.manager.test_hooks().pause_fill(&filling.cache_key(&v1.id));
    let v2 = renamed(&v1, "hal2");
    let writing = {
        let filling = filling.clone();
        let v2 = v2.clone();
        tokio::spawn(async move { filling.update(&v2.id.clone(), v2, None).await })
    };
    reached(&pause).await;
    let v3 = renamed(&v1, "hal3");
    plain.update(&v1.id, v3.clone(), None).await.unwrap();
    pause.release();
    assert_eq!(writing.await.unwrap().unwrap(), v2);
    assert_eq!(env.cached(&v1).await, None, "v2 was not put over v3");
    assert_eq!(filling.get_by_id(&v1.id).await.unwrap(), Some(v3));
    env.teardown().await;
}

async fn fill_on_write_racing_writers_never_leave_an_old_row(stack: Stack) {
    let env = Env::new(stack).await;
    // Two managers on one cache: two processes (on memory://, one manager
    // has one cache, so both stores share the first).
    let other = match stack {
        Stack::RedisPostgres | Stack::ClusterPostgres => {
            Arc::new(CacheManager::new(CacheConfig::new(stack.cache_url(), 3600, env.manager.global_prefix())).unwrap())
        }
        Stack::MemorySqlite => env.manager.clone(),
    };
    let a = env.store_with(CacheParams::new(env.manager.clone()).with_fill_on_write(true));
    let b = env.store_with(CacheParams::new(other).with_fill_on_write(true));
    let plain = env.store();
    let u = a.create(user("ivy"), None).await.unwrap();
    for round in 0..40 {
        let writers: Vec<_> = [(a.clone(), "a"), (b.clone(), "b"), (plain.clone(), "p")]
            .into_iter()
            .map(|(store, who)| {
                let row = renamed(&u, &format!("{who}{round}"));
                tokio::spawn(async move { store.update(&row.id.clone(), row, None).await.unwrap() })
            })
            .collect();
        let reader = {
            let a = a.clone();
            let id = u.id;
            tokio::spawn(async move { a.get_by_id(&id).await.unwrap() })
        };
        for w in writers {
            w.await.unwrap();
        }
        reader.await.unwrap();
        env.manager.flush_fills().await;
        let in_db = plain_read(&env, &u).await;
        if let Some(cached) = env.cached(&u).await {
            assert_eq!(cached, in_db, "round {round}: the cache holds an old row");
        }
        assert_eq!(a.get_by_id(&u.id).await.unwrap(), Some(in_db));
    }
    env.teardown().await;
}

async fn plain_read(env: &Env, u: &User) -> User {
    let plain = GenericStore::<User>::new(env.pool.clone(), None, None);
    plain.get_by_id(&u.id).await.unwrap().unwrap()
}

async fn fill_on_write_update_of_a_missing_row_leaves_no_lease(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store_with(CacheParams::new(env.manager.clone()).with_fill_on_write(true));
    let ghost = user("ghost");
    assert!(store.update(&ghost.id, ghost.clone(), None).await.is_err());
    // The key is free: a read fills it at once instead of waiting for a lease.
    assert_eq!(store.get_by_id(&ghost.id).await.unwrap(), None);
    env.manager.flush_fills().await;
    let stats = env.manager.get_stats().await.unwrap();
    assert_eq!((stats.lease_waits, stats.fills), (0, 1), "{stats:?}");
    env.teardown().await;
}

async fn invalidate_queries_removes_the_prefix_records_and_counts_them(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store();
    let other = env.store_with(CacheParams::new(env.manager.clone()).with_prefix("users_other"));
    let mut made = Vec::new();
    for i in 0..3 {
        made.push(store.create(user(&format!("q{i}")), None).await.unwrap());
    }
    for u in &made {
        store.get_by_id(&u.id).await.unwrap();
        other.get_by_id(&u.id).await.unwrap();
    }
    let everyone = || Query::new().filter(User::columns().name.like("q%"));
    assert_eq!(store.find(everyone()).await.unwrap().len(), 3);
    env.manager.flush_fills().await;
    for u in &made {
        env.rename_behind(u, "zz").await;
    }
    assert_eq!(store.find(everyone()).await.unwrap().len(), 3, "a cached result");

    assert_eq!(env.manager.invalidate_queries("users").await.unwrap(), 3);
    for u in &made {
        assert_eq!(env.cached(u).await, None);
        assert_eq!(store.get_by_id(&u.id).await.unwrap().unwrap().name, "zz");
        let kept: Option<User> = env.manager.get_record("users_other", &u.id.to_string()).await.unwrap();
        assert_eq!(kept.as_ref(), Some(u), "another prefix is untouched");
    }
    assert_eq!(store.find(everyone()).await.unwrap().len(), 0, "query results too");
    // Nothing cached any more: nothing removed (the reads above refilled
    // records only after flush; count what is there).
    env.manager.flush_fills().await;
    assert_eq!(env.manager.invalidate_queries("users").await.unwrap(), 3);
    assert_eq!(env.manager.invalidate_queries("users").await.unwrap(), 0);
    env.teardown().await;
}

async fn negative_entries_expire_on_their_own_ttl(stack: Stack) {
    let env = Env::new(stack).await;
    let short = env.store_with(
        CacheParams::new(env.manager.clone())
            .with_prefix("users_short")
            .with_negative_ttl(1),
    );
    let ghost = user("ghost");
    assert_eq!(short.get_by_id(&ghost.id).await.unwrap(), None);
    env.manager.flush_fills().await;
    assert_eq!(short.get_by_id(&ghost.id).await.unwrap(), None);
    assert_eq!(
        env.manager.get_stats().await.unwrap().hits,
        1,
        "the absent row is cached"
    );
    // A row inserted behind the cache's back is seen once the marker expires.
    let plain = GenericStore::<User>::new(env.pool.clone(), None, None);
    plain.create(ghost.clone(), None).await.unwrap();
    eventually("the negative entry expired", || async {
        short.get_by_id(&ghost.id).await.unwrap().is_some()
    })
    .await;

    env.teardown().await;
}

/// The raw TTLs: records keep the store's TTL, "no such row" the negative TTL
/// (60 s by default), on both the one-key and the batched read.
#[tokio::test]
async fn negative_ttl_is_60_s_by_default_and_configurable_on_raw_keys() {
    let env = Env::new(Stack::RedisPostgres).await;
    let redis = raw_redis(&redis_url()).await;
    let store = env.store();
    let custom = env.store_with(
        CacheParams::new(env.manager.clone())
            .with_prefix("users_custom")
            .with_negative_ttl(7),
    );
    let (ghost, ghost2) = (user("ghost"), user("ghost2"));
    let real = store.create(user("real"), None).await.unwrap();
    store.get_by_id(&ghost.id).await.unwrap();
    store.get_many(&[ghost2.id, real.id]).await.unwrap();
    custom.get_by_id(&ghost.id).await.unwrap();
    env.manager.flush_fills().await;
    let ttl = |key: String| {
        let mut redis = redis.clone();
        async move {
            let ms: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut redis).await.unwrap();
            ms
        }
    };
    let absent = ttl(store.cache_key(&ghost.id)).await;
    assert!((55_000..=60_000).contains(&absent), "default negative TTL: {absent} ms");
    let absent_many = ttl(store.cache_key(&ghost2.id)).await;
    assert!((55_000..=60_000).contains(&absent_many), "get_many: {absent_many} ms");
    let record = ttl(store.cache_key(&real.id)).await;
    assert!(
        (1_790_000..=1_800_000).contains(&record),
        "record TTL unchanged: {record} ms"
    );
    let custom_ttl = ttl(custom.cache_key(&ghost.id)).await;
    assert!(
        (1..=7_000).contains(&custom_ttl),
        "with_negative_ttl(7): {custom_ttl} ms"
    );
    // try_new rejects a negative TTL out of range.
    assert!(GenericStore::<User>::try_new(
        env.pool.clone(),
        None,
        Some(CacheParams::new(env.manager.clone()).with_negative_ttl(0))
    )
    .is_err());
    env.teardown().await;
}

/// A store's TTL shorter than 60 s caps the default negative TTL.
#[tokio::test]
async fn negative_ttl_defaults_to_the_store_ttl_when_shorter() {
    let env = Env::new(Stack::RedisPostgres).await;
    let store = env.store_with(CacheParams::new(env.manager.clone()).with_ttl(10));
    let ghost = user("ghost");
    store.get_by_id(&ghost.id).await.unwrap();
    env.manager.flush_fills().await;
    let mut redis = raw_redis(&redis_url()).await;
    let ms: i64 = redis::cmd("PTTL")
        .arg(store.cache_key(&ghost.id))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!((1..=10_000).contains(&ms), "{ms} ms");
    env.teardown().await;
}

/// `invalidate` on a Redis that is down is remembered and replayed like a
/// write's invalidation: reads bypass the cache meanwhile, and the stale
/// entry is gone once Redis is back.
#[tokio::test]
async fn invalidate_on_a_dead_redis_is_replayed_when_it_returns() {
    let server = RedisServer::start().await;
    let env = Env::with_manager(Stack::RedisPostgres, |c| c).await;
    let manager = manager_on(&server.url(), |c| c.with_timeout(200).with_circuit_breaker(100, 50));
    let store = GenericStore::<User>::new(env.pool.clone(), None, Some(CacheParams::new(manager.clone())));
    let jo = store.create(user("jo"), None).await.unwrap();
    store.get_by_id(&jo.id).await.unwrap();
    manager.flush_fills().await;
    env.rename_behind(&jo, "jo2").await;
    assert_eq!(store.get_by_id(&jo.id).await.unwrap(), Some(jo.clone()), "a hit");

    server.pause();
    store.invalidate(&jo.id).await;
    // Remembered: the record's key and the store's query generation.
    assert_eq!(manager.get_stats().await.unwrap().pending_invalidations, 2);
    // Meanwhile reads bypass the cache (the stale entry is still in Redis).
    assert_eq!(store.get_by_id(&jo.id).await.unwrap(), Some(renamed(&jo, "jo2")));
    server.resume();
    eventually("the invalidation was replayed", || async {
        manager.get_stats().await.unwrap().pending_invalidations == 0
    })
    .await;
    let mut redis = raw_redis(&server.url()).await;
    assert_eq!(raw_get(&mut redis, &store.cache_key(&jo.id)).await, None);
    assert_eq!(store.get_by_id(&jo.id).await.unwrap(), Some(renamed(&jo, "jo2")));
    drop(server);
    env.teardown().await;
}

async fn early_refresh_replaces_a_hit_entry_before_it_expires(stack: Stack) {
    let env = Env::new(stack).await;
    // beta so large that every hit is due; and so small that none is.
    let eager = env.store_with(
        CacheParams::new(env.manager.clone())
            .with_ttl(30)
            .with_early_refresh(1e12),
    );
    let lazy = env.store_with(
        CacheParams::new(env.manager.clone())
            .with_prefix("users_lazy")
            .with_early_refresh(1e-12),
    );
    let kim = eager.create(user("kim"), None).await.unwrap();
    for store in [&eager, &lazy] {
        store.get_by_id(&kim.id).await.unwrap(); // a miss measures the load time
    }
    env.manager.flush_fills().await;
    env.rename_behind(&kim, "kim2").await;

    assert_eq!(lazy.get_by_id(&kim.id).await.unwrap(), Some(kim.clone()), "a plain hit");
    assert_eq!(
        eager.get_by_id(&kim.id).await.unwrap(),
        Some(renamed(&kim, "kim2")),
        "the hit refreshed from the database"
    );
    env.manager.flush_fills().await;
    assert_eq!(
        env.cached(&kim).await,
        Some(renamed(&kim, "kim2")),
        "and replaced the entry"
    );
    let stats = env.manager.get_stats().await.unwrap();
    assert_eq!(stats.early_refreshes, 1, "{stats:?}");
    assert!(GenericStore::<User>::try_new(
        env.pool.clone(),
        None,
        Some(CacheParams::new(env.manager.clone()).with_early_refresh(-1.0))
    )
    .is_err());
    env.teardown().await;
}

async fn early_refresh_loses_to_a_write_that_lands_while_it_loads(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store_with(CacheParams::new(env.manager.clone()).with_early_refresh(1e12));
    let v1 = store.create(user("lee"), None).await.unwrap();
    store.get_by_id(&v1.id).await.unwrap();
    env.manager.flush_fills().await;
    // The refresh reads v1 again; its fill is held while a write commits v2.
    let pause = env.manager.test_hooks().pause_fill(&store.cache_key(&v1.id));
    assert_eq!(store.get_by_id(&v1.id).await.unwrap(), Some(v1.clone()));
    reached(&pause).await;
    let v2 = renamed(&v1, "lee2");
    store.update(&v1.id, v2.clone(), None).await.unwrap();
    pause.release();
    env.manager.flush_fills().await;
    assert_eq!(env.cached(&v1).await, None, "the refresh did not put v1 back");
    assert_eq!(store.get_by_id(&v1.id).await.unwrap(), Some(v2));
    env.teardown().await;
}

/// The refreshed entry gets a whole TTL again (Redis: the raw PTTL).
#[tokio::test]
async fn early_refresh_renews_the_ttl() {
    let env = Env::new(Stack::RedisPostgres).await;
    let store = env.store_with(
        CacheParams::new(env.manager.clone())
            .with_ttl(100)
            .with_early_refresh(1e12),
    );
    let mo = store.create(user("mo"), None).await.unwrap();
    store.get_by_id(&mo.id).await.unwrap();
    env.manager.flush_fills().await;
    let mut redis = raw_redis(&redis_url()).await;
    let key = store.cache_key(&mo.id);
    let _: () = redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(5_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    store.get_by_id(&mo.id).await.unwrap();
    env.manager.flush_fills().await;
    let ms: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut redis).await.unwrap();
    assert!((90_000..=100_000).contains(&ms), "{ms} ms");
    env.teardown().await;
}

async fn store_stats_count_each_store_alone_and_time_its_operations(stack: Stack) {
    let env = Env::new(stack).await;
    let a = env.store();
    let b = env.store_with(CacheParams::new(env.manager.clone()).with_prefix("users_b"));
    let u = a.create(user("nia"), None).await.unwrap();
    for _ in 0..3 {
        a.get_by_id(&u.id).await.unwrap();
        env.manager.flush_fills().await;
    }
    b.get_by_id(&u.id).await.unwrap();
    env.manager.flush_fills().await;

    let sa = a.stats().unwrap();
    assert_eq!((sa.hits, sa.misses, sa.fills), (2, 1, 1), "{sa:?}");
    assert_eq!(sa.invalidations, 1, "the create's: {sa:?}");
    assert_eq!(
        (sa.hit_latency.count, sa.miss_latency.count, sa.write_latency.count),
        (2, 1, 1),
        "{sa:?}"
    );
    for l in [sa.hit_latency, sa.miss_latency, sa.write_latency] {
        assert!(0 < l.p50_us && l.p50_us <= l.p99_us, "{l:?}");
    }
    let sb = b.stats().unwrap();
    assert_eq!((sb.hits, sb.misses, sb.fills, sb.invalidations), (0, 1, 1, 0), "{sb:?}");
    assert_eq!(sb.write_latency.count, 0);
    let all = env.manager.get_stats().await.unwrap();
    assert_eq!((all.hits, all.misses, all.fills), (2, 2, 2), "{all:?}");
    assert_eq!((all.hit_latency.count, all.miss_latency.count), (2, 2), "{all:?}");
    let plain = GenericStore::<User>::new(env.pool.clone(), None, None);
    assert!(matches!(plain.stats(), Err(storehaus::StorehausError::CacheDisabled)));
    env.teardown().await;
}
