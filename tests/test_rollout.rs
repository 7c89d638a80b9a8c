//! Rolling deploys (issue 24): two versions of a cached record type (v2 adds
//! a nullable column) served at once from one table, one prefix and one
//! cache. Each version keeps its own entries beside the other's (see
//! `docs/FORMAT.md`), so both keep hitting while reads alternate, and a
//! write by either version is seen by the other at once: records, `get_many`,
//! index lookups, cached queries, the near cache, the outbox, tags, manual
//! deletes and replayed invalidations.
//!
//! Two managers with one global prefix stand for an old and a new process
//! (on `memory://`, which one manager owns, both versions share it). Hits
//! are proved by changing rows behind the cache's back.

use std::sync::Arc;
use std::time::Duration;

use storehaus::prelude::*;
use storehaus::{CacheParams, CacheStats, DbPool, GenericStore, Query};
use storehaus_testkit::*;

/// The running version: no nickname.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "accounts", prefix = "accounts")]
struct AccountV1 {
    id: i64,
    #[cache(index)]
    email: String,
    name: String,
}

/// The version being rolled out: a nullable column more.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "accounts", prefix = "accounts")]
struct AccountV2 {
    id: i64,
    #[cache(index)]
    email: String,
    name: String,
    nickname: Option<String>,
}

const CREATE_POSTGRES: &str =
    "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL, nickname text)";
const CREATE_SQLITE: &str =
    "CREATE TABLE accounts (id integer PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL, nickname text)";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stack {
    RedisPostgres,
    ClusterPostgres,
    MemorySqlite,
}

/// One rollout: the database, the old process's manager and the new one's.
struct Rollout {
    db: Option<Db>,
    pool: DbPool,
    old: Arc<CacheManager>,
    new: Arc<CacheManager>,
}

impl Rollout {
    async fn new(stack: Stack, rows: i64) -> Rollout {
        Self::with(stack, rows, |c| c).await
    }

    async fn with(stack: Stack, rows: i64, tweak: impl Fn(CacheConfig) -> CacheConfig) -> Rollout {
        let global = random_name("roll");
        let config = |url: &str| tweak(CacheConfig::new(url, 3600, global.clone()));
        let (db, pool, old, new) = match stack {
            Stack::MemorySqlite => {
                let pool = sqlite_memory().await;
                sqlx::query(CREATE_SQLITE).execute(&pool).await.unwrap();
                let one = Arc::new(CacheManager::new(config("memory://")).unwrap());
                (None, pool.into(), one.clone(), one)
            }
            Stack::RedisPostgres | Stack::ClusterPostgres => {
                let url = if stack == Stack::RedisPostgres {
                    redis_url()
                } else {
                    cluster_url()
                };
                let db = Db::with_max_connections(10).await;
                db.exec(CREATE_POSTGRES).await;
                let pool = db.pool.clone().into();
                let old = Arc::new(CacheManager::new(config(&url)).unwrap());
                let new = Arc::new(CacheManager::new(config(&url)).unwrap());
                (Some(db), pool, old, new)
            }
        };
        let env = Rollout { db, pool, old, new };
        for id in 1..=rows {
            env.v2().create(account(id, "a"), None).await.unwrap();
        }
        env
    }

    fn v1(&self) -> GenericStore<AccountV1> {
        GenericStore::new(self.pool.clone(), None, Some(CacheParams::new(self.old.clone())))
    }

    fn v2(&self) -> GenericStore<AccountV2> {
        GenericStore::new(self.pool.clone(), None, Some(CacheParams::new(self.new.clone())))
    }

    /// Runs `sql` (`?1`-style parameters are not used) behind the cache's back.
    async fn behind(&self, sql: &str) {
        match &self.pool {
            DbPool::Postgres(p) => {
                sqlx::query(sql).execute(p).await.unwrap();
            }
            DbPool::Sqlite(p) => {
                sqlx::query(sql).execute(p).await.unwrap();
            }
            _ => unreachable!("the tests use PostgreSQL or SQLite"),
        }
    }

    async fn flush(&self) {
        self.old.flush_fills().await;
        self.new.flush_fills().await;
    }

    async fn teardown(self) {
        clear_prefix(&self.old).await;
        if let Some(db) = self.db {
            db.cleanup().await;
        }
    }
}

fn account(id: i64, name: &str) -> AccountV2 {
    AccountV2 {
        id,
        email: format!("{id}@example.com"),
        name: name.to_string(),
        nickname: Some(format!("nick{id}")),
    }
}

/// Every read path of both versions, over `ids`: the names each answered
/// (`get_by_id`, `get_many`, `get_by`, `find` by id).
async fn names(v1: &GenericStore<AccountV1>, v2: &GenericStore<AccountV2>, ids: &[i64]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let many1 = v1.get_many(ids).await.unwrap();
    let many2 = v2.get_many(ids).await.unwrap();
    for (n, &id) in ids.iter().enumerate() {
        let name1 = |a: Option<AccountV1>| a.map_or("-".to_string(), |a| a.name);
        let name2 = |a: Option<AccountV2>| a.map_or("-".to_string(), |a| a.name);
        out.push((format!("v1 get_by_id {id}"), name1(v1.get_by_id(&id).await.unwrap())));
        out.push((format!("v2 get_by_id {id}"), name2(v2.get_by_id(&id).await.unwrap())));
        out.push((format!("v1 get_many {id}"), name1(many1[n].clone())));
        out.push((format!("v2 get_many {id}"), name2(many2[n].clone())));
        let email = format!("{id}@example.com");
        let c1 = AccountV1::columns();
        let c2 = AccountV2::columns();
        out.push((
            format!("v1 get_by {id}"),
            name1(v1.get_by(c1.email, email.clone()).await.unwrap()),
        ));
        out.push((
            format!("v2 get_by {id}"),
            name2(v2.get_by(c2.email, email).await.unwrap()),
        ));
        let found1 = v1.find_one(Query::new().filter(c1.id.eq(id))).await.unwrap();
        let found2 = v2.find_one(Query::new().filter(c2.id.eq(id))).await.unwrap();
        out.push((format!("v1 find {id}"), name1(found1)));
        out.push((format!("v2 find {id}"), name2(found2)));
    }
    out
}

/// The reads among `got` that did not answer `want` (how many, and the
/// first few).
fn wrong(got: &[(String, String)], want: &str) -> Vec<String> {
    let all: Vec<String> = got
        .iter()
        .filter(|(_, name)| name != want)
        .map(|(what, name)| format!("{what}: {name}"))
        .collect();
    match all.len() {
        0..=6 => all,
        n => [all[..5].to_vec(), vec![format!("... {n} in all")]].concat(),
    }
}

fn hit_rate(before: &CacheStats, after: &CacheStats) -> f64 {
    let hits = after.hits - before.hits;
    let misses = after.misses - before.misses;
    hits as f64 / (hits + misses).max(1) as f64
}

async fn both_versions_keep_hitting_while_reads_alternate(stack: Stack) {
    let env = Rollout::new(stack, 50).await;
    let (v1, v2) = (env.v1(), env.v2());
    let ids: Vec<i64> = (1..=50).collect();
    // Warm both versions, every read path (twice: on one manager a first
    // read of one version may have joined the other's load of a hint).
    for _ in 0..2 {
        names(&v1, &v2, &ids).await;
        env.flush().await;
    }
    env.behind("UPDATE accounts SET name = 'changed behind the cache'")
        .await;

    let (before1, before2) = (v1.stats().unwrap(), v2.stats().unwrap());
    for _ in 0..3 {
        let got = names(&v1, &v2, &ids).await;
        assert_eq!(wrong(&got, "a"), Vec::<String>::new(), "served from the cache");
        env.flush().await;
    }
    let (rate1, rate2) = (
        hit_rate(&before1, &v1.stats().unwrap()),
        hit_rate(&before2, &v2.stats().unwrap()),
    );
    let s = stats(&env.new).await;
    eprintln!(
        "{stack:?} rollout: v1 hit rate {:.1} %, v2 {:.1} %; foreign entries met {}, registrations {}",
        rate1 * 100.0,
        rate2 * 100.0,
        s.foreign_entries,
        s.version_registrations
    );
    assert!(rate1 >= 0.9 && rate2 >= 0.9, "v1 {rate1:.3}, v2 {rate2:.3}");
    assert_eq!(
        s.serialization_errors, 0,
        "no version counts the other's entries corrupt"
    );
    env.teardown().await;
}

async fn a_write_by_either_version_is_seen_by_the_other_at_once(stack: Stack) {
    let env = Rollout::new(stack, 12).await;
    let (v1, v2) = (env.v1(), env.v2());
    let ids: Vec<i64> = (1..=12).collect();
    let mut stale = Vec::new();
    for round in 0..4 {
        // Both versions cache every read path (in either order of filling).
        names(&v1, &v2, &ids).await;
        env.flush().await;
        names(&v1, &v2, &ids).await;
        let name = format!("round {round}");
        for &id in &ids {
            if round % 2 == 0 {
                let mut a = v1.get_by_id(&id).await.unwrap().unwrap();
                a.name = name.clone();
                v1.update(&id, a, None).await.unwrap();
            } else {
                let mut a = v2.get_by_id(&id).await.unwrap().unwrap();
                a.name = name.clone();
                v2.update(&id, a, None).await.unwrap();
            }
        }
        stale.extend(wrong(&names(&v1, &v2, &ids).await, &name));
    }
    assert_eq!(stale, Vec::<String>::new(), "0 stale across versions");

    // A delete by one version, then a create by the other: neither serves
    // what it cached before.
    v2.delete(&1).await.unwrap();
    assert_eq!(v1.get_by_id(&1).await.unwrap(), None);
    env.flush().await;
    v1.create(
        AccountV1 {
            id: 1,
            email: "1@example.com".into(),
            name: "again".into(),
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        v2.get_by_id(&1).await.unwrap().map(|a| a.name).as_deref(),
        Some("again")
    );
    env.teardown().await;
}

/// After an invalidation: the old version reads first (and fills the home
/// key again), then the new one, which reads its side key: both `name`.
async fn seen_by_both(env: &Rollout, id: i64, name: &str, what: &str) {
    assert_eq!(env.v1().get_by_id(&id).await.unwrap().unwrap().name, name, "{what}: v1");
    env.flush().await;
    assert_eq!(env.v2().get_by_id(&id).await.unwrap().unwrap().name, name, "{what}: v2");
}

async fn invalidations_outside_store_writes_reach_every_version(stack: Stack) {
    let env = Rollout::new(stack, 3).await;
    let (v1, v2) = (env.v1(), env.v2());
    let ids = [1, 2, 3];
    let warm = || async {
        for _ in 0..2 {
            names(&env.v1(), &env.v2(), &ids).await;
            env.flush().await;
        }
    };
    let first = v1.get_by_id(&1).await.unwrap().unwrap();
    v1.update(&1, first, Some(vec!["vip".into()])).await.unwrap();
    warm().await;

    // `invalidate` by the new version reaches the old one's and its own.
    env.behind("UPDATE accounts SET name = 'b' WHERE id = 2").await;
    v2.invalidate(&2).await;
    seen_by_both(&env, 2, "b", "invalidate").await;
    // A tag the old version wrote reaches the new one's side entry.
    env.behind("UPDATE accounts SET name = 'b' WHERE id = 1").await;
    assert!(env.old.invalidate_tag("vip").await.unwrap() >= 1);
    seen_by_both(&env, 1, "b", "invalidate_tag").await;
    // A manual delete of the record reaches every version.
    warm().await;
    env.behind("UPDATE accounts SET name = 'c' WHERE id = 3").await;
    env.new.delete_record("accounts", "3").await.unwrap();
    seen_by_both(&env, 3, "c", "delete_record").await;
    // `get_fresh` by the new version puts its row at the home key; the old
    // version's read of it is a miss, then both are fresh.
    warm().await;
    env.behind("UPDATE accounts SET name = 'd' WHERE id = 3").await;
    assert_eq!(v2.get_fresh(&3).await.unwrap().unwrap().name, "d");
    v1.invalidate(&3).await;
    seen_by_both(&env, 3, "d", "get_fresh, then invalidate").await;
    env.teardown().await;
}

async fn fill_on_write_and_prime_keep_the_other_version_fresh(stack: Stack) {
    let env = Rollout::new(stack, 2).await;
    let (v1, v2) = (env.v1(), env.v2());
    let writer = GenericStore::<AccountV1>::new(
        env.pool.clone(),
        None,
        Some(CacheParams::new(env.old.clone()).with_fill_on_write(true)),
    );
    for _ in 0..2 {
        names(&v1, &v2, &[1, 2]).await;
        env.flush().await;
    }
    // The old version writes and fills the home key with its row; the new
    // version's side entry must go all the same.
    let mut a = v1.get_by_id(&1).await.unwrap().unwrap();
    a.name = "filled on write".into();
    writer.update(&1, a, None).await.unwrap();
    assert_eq!(v2.get_by_id(&1).await.unwrap().unwrap().name, "filled on write");

    // `prime` by the new version where the old one holds the home key: it
    // fills its side key (registered), and its next read is a hit.
    let row = v2.get_by_id(&2).await.unwrap().unwrap();
    let side = format!(
        "{}~{}",
        v2.cache_key(&2),
        storehaus::codec::layout_tag(AccountV2::FINGERPRINT)
    );
    let relative = &side[env.new.global_prefix().len() + 1..];
    assert_eq!(
        env.new.delete_pattern(relative).await.unwrap(),
        1,
        "v2 read its side key"
    );
    env.behind("UPDATE accounts SET name = 'behind' WHERE id = 2").await;
    assert!(v2.prime(&row).await, "primed beside the old version's entry");
    assert_eq!(
        v2.get_by_id(&2).await.unwrap().unwrap().name,
        "a",
        "a hit on the primed side key"
    );
    assert_eq!(
        v1.get_by_id(&2).await.unwrap().unwrap().name,
        "a",
        "the old version's entry stayed"
    );
    env.teardown().await;
}

every_stack!(
    both_versions_keep_hitting_while_reads_alternate,
    a_write_by_either_version_is_seen_by_the_other_at_once,
    invalidations_outside_store_writes_reach_every_version,
    fill_on_write_and_prime_keep_the_other_version_fresh,
);

/// Raw sorted-set members of a registry.
async fn registry(url: &str, global: &str) -> Vec<String> {
    let mut redis = raw_redis(url).await;
    redis::cmd("ZRANGE")
        .arg(format!("{global}:__versions:accounts"))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_nobody_uses_leaves_the_registry_after_its_ttl() {
    let env = Rollout::with(Stack::RedisPostgres, 2, |c| c.with_lease_ttl(200)).await;
    let ttl = |m: &Arc<CacheManager>| CacheParams::new(m.clone()).with_ttl(1).with_negative_ttl(1);
    let v1 = GenericStore::<AccountV1>::new(env.pool.clone(), None, Some(ttl(&env.old)));
    let v2 = GenericStore::<AccountV2>::new(env.pool.clone(), None, Some(ttl(&env.new)));
    let global = env.old.global_prefix().to_string();
    assert_eq!(
        registry(&redis_url(), &global).await,
        Vec::<String>::new(),
        "no rollout, no registry"
    );
    v1.get_by_id(&1).await.unwrap();
    env.flush().await;
    v2.get_by_id(&1).await.unwrap();
    env.flush().await;
    let tag = storehaus::codec::layout_tag(AccountV2::FINGERPRINT);
    assert_eq!(registry(&redis_url(), &global).await, vec![tag], "v2 filled a side key");
    // TTL 1 s + lease 0.2 s + 1 s margin: then the registry is gone, and a
    // write deletes the home key alone.
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    assert_eq!(registry(&redis_url(), &global).await, Vec::<String>::new());
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_near_cache_of_either_version_drops_what_the_other_wrote() {
    let env = Rollout::with(Stack::RedisPostgres, 4, |c| c.with_near_cache(1_000)).await;
    let (v1, v2) = (env.v1(), env.v2());
    // In one process (one manager): both versions near-cached, then a write.
    let same = GenericStore::<AccountV2>::new(env.pool.clone(), None, Some(CacheParams::new(env.old.clone())));
    for _ in 0..3 {
        v1.get_by_id(&1).await.unwrap();
        same.get_by_id(&1).await.unwrap();
        v2.get_by_id(&1).await.unwrap();
        env.flush().await;
    }
    eventually("near hits in both processes", || async {
        v1.get_by_id(&1).await.unwrap();
        same.get_by_id(&1).await.unwrap();
        v2.get_by_id(&1).await.unwrap();
        stats(&env.old).await.near_hits > 2 && stats(&env.new).await.near_hits > 0
    })
    .await;
    let mut a = v1.get_by_id(&1).await.unwrap().unwrap();
    a.name = "written by v1".into();
    v1.update(&1, a, None).await.unwrap();
    assert_eq!(
        same.get_by_id(&1).await.unwrap().unwrap().name,
        "written by v1",
        "same process: at once"
    );
    // Another process: once Redis's invalidation has reached it.
    eventually("the other process's near cache dropped v2's side entry", || async {
        v2.get_by_id(&1).await.unwrap().unwrap().name == "written by v1"
    })
    .await;
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_deletes_every_versions_entry() {
    let env = Rollout::new(Stack::RedisPostgres, 3).await;
    let (v1, v2) = (env.v1(), env.v2());
    v1.watch_external_writes().await.unwrap();
    for _ in 0..2 {
        names(&v1, &v2, &[1, 2, 3]).await;
        env.flush().await;
    }
    let side = format!(
        "{}~{}",
        v1.cache_key(&2),
        storehaus::codec::layout_tag(AccountV2::FINGERPRINT)
    );
    let mut redis = raw_redis(&redis_url()).await;
    assert!(raw_get(&mut redis, &side).await.is_some(), "v2 reads at its side key");
    env.behind("UPDATE accounts SET name = 'external' WHERE id = 2").await;
    eventually("the outbox delivered the write", || async {
        let s = stats(&env.old).await;
        s.outbox_delivered > 0 && s.outbox_backlog == 0
    })
    .await;
    // The old version fills the home key again; v2 (which watches nothing)
    // then reads its side key: the old process's delivery removed it too.
    assert_eq!(v1.get_by_id(&2).await.unwrap().unwrap().name, "external");
    env.flush().await;
    assert_eq!(v2.get_by_id(&2).await.unwrap().unwrap().name, "external");
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_invalidation_reaches_every_version() {
    let server = RedisServer::start().await;
    let db = Db::with_max_connections(10).await;
    db.exec(CREATE_POSTGRES).await;
    let global = random_name("roll");
    let config = || {
        CacheConfig::new(server.url(), 3600, global.clone())
            .with_timeout(200)
            .with_retry_attempts(0)
    };
    let old = Arc::new(CacheManager::new(config()).unwrap());
    let new = Arc::new(CacheManager::new(config()).unwrap());
    let v1 = GenericStore::<AccountV1>::new(db.pool.clone(), None, Some(CacheParams::new(old.clone())));
    let v2 = GenericStore::<AccountV2>::new(db.pool.clone(), None, Some(CacheParams::new(new.clone())));
    v2.create(account(1, "a"), None).await.unwrap();
    v1.get_by_id(&1).await.unwrap();
    old.flush_fills().await;
    v2.get_by_id(&1).await.unwrap();
    new.flush_fills().await;
    assert_eq!(v2.get_by_id(&1).await.unwrap().unwrap().name, "a");

    // The old version's write cannot reach the cache: remembered.
    server.pause();
    let mut a = v1.get_by_id(&1).await.unwrap().unwrap();
    a.name = "during the outage".into();
    v1.update(&1, a, None).await.unwrap();
    assert!(stats(&old).await.pending_invalidations > 0);
    server.resume();
    eventually("the old process replayed its invalidation", || async {
        v1.get_by_id(&1).await.unwrap();
        stats(&old).await.pending_invalidations == 0
    })
    .await;
    assert_eq!(
        v2.get_by_id(&1).await.unwrap().unwrap().name,
        "during the outage",
        "the replay removed the new version's side entry"
    );
    db.cleanup().await;
}
