//! Cached lookups by a unique column (`#[cache(index)]`, issue 16 item 1):
//! `get_by` and `get_many_by`, on Redis + PostgreSQL, a Redis Cluster +
//! PostgreSQL (`STOREHAUS_CLUSTER_URL`) and `memory://` + SQLite. Hits are
//! proved by changing the row behind the cache's back.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use storehaus::{CacheManager, CacheParams, Cached, DbPool, GenericStore};
use storehaus_testkit::*;

/// An account, looked up by email and by handle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "accounts", prefix = "accounts")]
pub struct Account {
    #[cache(id)]
    pub id: i64,
    #[cache(index)]
    pub email: String,
    #[cache(index)]
    pub handle: String,
    pub name: String,
}

const DDL: &str = "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, \
                   handle text NOT NULL UNIQUE, name text NOT NULL)";

fn account(id: i64, name: &str) -> Account {
    Account {
        id,
        email: format!("{name}@example.com"),
        handle: format!("@{name}"),
        name: name.to_string(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stack {
    RedisPostgres,
    ClusterPostgres,
    MemorySqlite,
}

struct Env {
    pg: Option<Db>,
    pool: DbPool,
    manager: Arc<CacheManager>,
}

impl Env {
    async fn new(stack: Stack) -> Env {
        let (pg, pool): (Option<Db>, DbPool) = match stack {
            Stack::RedisPostgres | Stack::ClusterPostgres => {
                let db = Db::new().await;
                db.exec(DDL).await;
                let pool = db.pool.clone().into();
                (Some(db), pool)
            }
            Stack::MemorySqlite => {
                let pool = sqlite_memory().await;
                sqlx::query(DDL).execute(&pool).await.unwrap();
                (None, pool.into())
            }
        };
        let url = match stack {
            Stack::RedisPostgres => redis_url(),
            Stack::ClusterPostgres => cluster_url(),
            Stack::MemorySqlite => "memory://".to_string(),
        };
        Env {
            pg,
            pool,
            manager: manager_on(&url, |c| c),
        }
    }

    fn store(&self) -> GenericStore<Account> {
        GenericStore::new(self.pool.clone(), None, Some(CacheParams::new(self.manager.clone())))
    }

    /// Runs `sql` (`$1`, `$2` placeholders) with a text and an id, behind
    /// the cache's back.
    async fn behind(&self, sql: &str, text: &str, id: i64) {
        let n = match &self.pool {
            DbPool::Postgres(p) => sqlx::query(sql)
                .bind(text)
                .bind(id)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            DbPool::Sqlite(p) => sqlx::query(&sql.replace('$', "?"))
                .bind(text)
                .bind(id)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            _ => unreachable!("the tests use PostgreSQL or SQLite"),
        };
        assert_eq!(n.unwrap(), 1, "{sql}");
    }

    async fn teardown(self) {
        clear_prefix(&self.manager).await;
        if let Some(db) = self.pg {
            db.cleanup().await;
        }
    }
}

storehaus_testkit::every_stack! {
    get_by_serves_a_cached_record_through_its_index_entry,
    changing_a_value_through_the_store_is_seen_at_once_by_old_and_new_lookups,
    changing_a_value_from_outside_is_seen_once_the_record_is_invalidated,
    a_create_is_found_where_no_such_value_was_cached,
    a_deleted_row_is_not_found_through_its_old_hint,
    get_many_by_keeps_order_and_checks_every_hint,
    a_transaction_and_update_many_clear_the_entries_of_their_new_values,
    get_by_without_a_cache_reads_the_database,
    invalidate_queries_removes_index_entries_and_counts_records_only,
    lookups_racing_value_changes_never_end_on_an_old_answer,
}

async fn get_by_serves_a_cached_record_through_its_index_entry(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store();
    let ada = store.create(account(1, "ada"), None).await.unwrap();
    let c = Account::columns();
    // The first lookup caches the index entry, the next one the record.
    for _ in 0..2 {
        assert_eq!(
            store.get_by(c.email, "ada@example.com").await.unwrap(),
            Some(ada.clone())
        );
        env.manager.flush_fills().await;
    }
    env.behind("UPDATE accounts SET name = $1 WHERE id = $2", "renamed", 1)
        .await;
    assert_eq!(
        store.get_by(c.email, "ada@example.com").await.unwrap(),
        Some(ada.clone()),
        "the index entry and the record are cached"
    );
    let stats = env.manager.get_stats().await.unwrap();
    assert_eq!((stats.hits, stats.misses), (3, 2), "{stats:?}");
    // Another index's first lookup reads the database.
    let by_handle = store.get_by(c.handle, "@ada").await.unwrap().unwrap();
    assert_eq!((by_handle.id, by_handle.name.as_str()), (ada.id, "renamed"));
    assert_eq!(store.get_by(c.email, "nobody@example.com").await.unwrap(), None);
    env.teardown().await;
}

async fn changing_a_value_through_the_store_is_seen_at_once_by_old_and_new_lookups(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store();
    let c = Account::columns();
    let bo = store.create(account(2, "bo"), None).await.unwrap();
    assert!(store.get_by(c.email, "bo@example.com").await.unwrap().is_some());
    assert_eq!(store.get_by(c.email, "new@example.com").await.unwrap(), None);
    env.manager.flush_fills().await;
    // Both cached: the hint, and "no such value".
    assert!(store.get_by(c.email, "bo@example.com").await.unwrap().is_some());
    assert_eq!(store.get_by(c.email, "new@example.com").await.unwrap(), None);

    let moved = Account {
        email: "new@example.com".into(),
        ..bo
    };
    store.update(&2, moved.clone(), None).await.unwrap();
    assert_eq!(store.get_by(c.email, "bo@example.com").await.unwrap(), None);
    assert_eq!(
        store.get_by(c.email, "new@example.com").await.unwrap(),
        Some(moved.clone())
    );
    env.manager.flush_fills().await;
    assert_eq!(store.get_by(c.email, "bo@example.com").await.unwrap(), None);
    assert_eq!(store.get_by(c.email, "new@example.com").await.unwrap(), Some(moved));
    env.teardown().await;
}

async fn changing_a_value_from_outside_is_seen_once_the_record_is_invalidated(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store();
    let c = Account::columns();
    store.create(account(3, "cy"), None).await.unwrap();
    assert!(store.get_by(c.email, "cy@example.com").await.unwrap().is_some());
    assert_eq!(store.get_by(c.email, "cy2@example.com").await.unwrap(), None);
    env.manager.flush_fills().await;

    // Raw SQL, then the record's invalidation (what watch_external_writes
    // delivers): it knows the id only, not the old or new email.
    env.behind("UPDATE accounts SET email = $1 WHERE id = $2", "cy2@example.com", 3)
        .await;
    store.invalidate(&3).await;
    assert_eq!(
        store.get_by(c.email, "cy@example.com").await.unwrap(),
        None,
        "old value"
    );
    let found = store.get_by(c.email, "cy2@example.com").await.unwrap();
    assert_eq!(found.map(|a| a.id), Some(3), "new value");
    env.teardown().await;
}

async fn a_create_is_found_where_no_such_value_was_cached(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store();
    let c = Account::columns();
    assert_eq!(store.get_by(c.handle, "@dee").await.unwrap(), None);
    env.manager.flush_fills().await;
    assert_eq!(store.get_by(c.handle, "@dee").await.unwrap(), None);
    let dee = store.create(account(4, "dee"), None).await.unwrap();
    assert_eq!(store.get_by(c.handle, "@dee").await.unwrap(), Some(dee));
    env.teardown().await;
}

async fn a_deleted_row_is_not_found_through_its_old_hint(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store();
    let c = Account::columns();
    store.create(account(5, "eve"), None).await.unwrap();
    assert!(store.get_by(c.email, "eve@example.com").await.unwrap().is_some());
    env.manager.flush_fills().await;
    assert!(store.delete(&5).await.unwrap());
    assert_eq!(store.get_by(c.email, "eve@example.com").await.unwrap(), None);
    // Another row takes the value: found, not hidden by the old hint.
    let other = store
        .create(
            Account {
                id: 6,
                ..account(5, "eve")
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(store.get_by(c.email, "eve@example.com").await.unwrap(), Some(other));
    env.teardown().await;
}

async fn get_many_by_keeps_order_and_checks_every_hint(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store();
    let c = Account::columns();
    let a = store.create(account(7, "fa"), None).await.unwrap();
    let b = store.create(account(8, "fb"), None).await.unwrap();
    let first = store
        .get_many_by(c.email, &["fb@example.com", "none@example.com", "fa@example.com"])
        .await
        .unwrap();
    assert_eq!(first, vec![Some(b.clone()), None, Some(a.clone())]);
    env.manager.flush_fills().await;
    // The second lookup reads the records through the hints, and caches them.
    let second = store
        .get_many_by(c.email, &["fb@example.com", "none@example.com", "fa@example.com"])
        .await
        .unwrap();
    assert_eq!(second, first);
    env.manager.flush_fills().await;
    let b2 = Account {
        email: "fb2@example.com".into(),
        ..b.clone()
    };
    store.update(&8, b2.clone(), None).await.unwrap();
    env.behind("UPDATE accounts SET name = $1 WHERE id = $2", "behind", 7)
        .await;
    let again = store
        .get_many_by(
            c.email,
            &[
                "fa@example.com",
                "fb@example.com",
                "fb2@example.com",
                "none@example.com",
                "fa@example.com",
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![Some(a.clone()), None, Some(b2.clone()), None, Some(a)],
        "fa is a hit"
    );
    assert_eq!(store.get_many_by(c.email, &[] as &[&str]).await.unwrap(), vec![]);
    env.teardown().await;
}

async fn a_transaction_and_update_many_clear_the_entries_of_their_new_values(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store();
    let c = Account::columns();
    let g = store.create(account(9, "gi"), None).await.unwrap();
    for v in ["@gi2", "@gi3", "@gi4"] {
        assert_eq!(store.get_by(c.handle, v).await.unwrap(), None);
    }
    env.manager.flush_fills().await;
    let mut tx = store.begin().await.unwrap();
    let g2 = Account {
        handle: "@gi2".into(),
        ..g.clone()
    };
    tx.update(&9, g2.clone(), None).await.unwrap();
    let h = tx.create(account(10, "gi3"), None).await.unwrap();
    tx.commit().await.unwrap();
    // The commit removed the cached "no such value" entries of the values
    // it wrote: these reads find nothing in the cache (misses), rather than
    // an entry that the query generation alone would have to unmask.
    let before = env.manager.get_stats().await.unwrap();
    assert_eq!(store.get_by(c.handle, "@gi2").await.unwrap(), Some(g2.clone()));
    assert_eq!(store.get_by(c.handle, "@gi3").await.unwrap(), Some(h));
    let after = env.manager.get_stats().await.unwrap();
    assert_eq!(
        (after.hits - before.hits, after.misses - before.misses),
        (0, 2),
        "the transaction cleared the entries of its new values"
    );
    let g4 = Account {
        handle: "@gi4".into(),
        ..g2
    };
    store.update_many(vec![(9, g4.clone())]).await.unwrap();
    let before = env.manager.get_stats().await.unwrap();
    assert_eq!(store.get_by(c.handle, "@gi4").await.unwrap(), Some(g4));
    let after = env.manager.get_stats().await.unwrap();
    assert_eq!(
        (after.hits - before.hits, after.misses - before.misses),
        (0, 1),
        "update_many cleared the entry of its new value"
    );
    assert_eq!(store.get_by(c.handle, "@gi2").await.unwrap(), None);
    env.teardown().await;
}

async fn get_by_without_a_cache_reads_the_database(stack: Stack) {
    let env = Env::new(stack).await;
    let store = GenericStore::<Account>::new(env.pool.clone(), None, None);
    let c = Account::columns();
    let hal = store.create(account(11, "hal"), None).await.unwrap();
    assert_eq!(
        store.get_by(c.email, "hal@example.com").await.unwrap(),
        Some(hal.clone())
    );
    assert_eq!(
        store.get_many_by(c.handle, &["@hal", "@x"]).await.unwrap(),
        vec![Some(hal), None]
    );
    env.teardown().await;
}

/// The entry's key is `{global}:{prefix}:idx:{column}:{value}`, the value
/// escaped like an id, and it holds a hint, not the record.
#[tokio::test]
async fn index_entries_follow_the_documented_key_format() {
    let env = Env::new(Stack::RedisPostgres).await;
    let store = env.store();
    store.create(account(12, "ivy"), None).await.unwrap();
    store.get_by(Account::columns().email, "ivy@example.com").await.unwrap();
    env.manager.flush_fills().await;
    let global = env.manager.global_prefix().to_string();
    let mut redis = raw_redis(&redis_url()).await;
    let key = format!("{global}:accounts:idx:email:ivy%40example.com");
    assert!(raw_get(&mut redis, &key).await.is_some(), "{key}");
    assert_eq!(<Account as Cached>::INDEXES, &["email", "handle"]);
    env.teardown().await;
}

async fn invalidate_queries_removes_index_entries_and_counts_records_only(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store();
    let c = Account::columns();
    for (id, name) in [(13, "jo"), (14, "ka")] {
        store.create(account(id, name), None).await.unwrap();
        for _ in 0..2 {
            store.get_by(c.email, format!("{name}@example.com")).await.unwrap();
            env.manager.flush_fills().await;
        }
    }
    assert_eq!(env.manager.invalidate_queries("accounts").await.unwrap(), 2);
    env.behind("UPDATE accounts SET name = $1 WHERE id = $2", "behind", 13)
        .await;
    let jo = store.get_by(c.email, "jo@example.com").await.unwrap().unwrap();
    assert_eq!(jo.name, "behind", "entries and records were removed");
    env.teardown().await;
}

/// With `watch_external_writes`, a raw-SQL change of an index column is seen
/// by old and new lookups as soon as the outbox worker has delivered it: the
/// record is invalidated (the old value's hint fails its check) and the
/// store's generation is bumped (the new value's cached "no such value"
/// stops being trusted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_write_reaches_index_lookups_through_the_outbox() {
    let env = Env::new(Stack::RedisPostgres).await;
    let store = env.store();
    store.watch_external_writes().await.unwrap();
    let c = Account::columns();
    store.create(account(15, "lu"), None).await.unwrap();
    for _ in 0..2 {
        assert!(store.get_by(c.email, "lu@example.com").await.unwrap().is_some());
        assert_eq!(store.get_by(c.email, "lu2@example.com").await.unwrap(), None);
        env.manager.flush_fills().await;
    }
    env.behind("UPDATE accounts SET email = $1 WHERE id = $2", "lu2@example.com", 15)
        .await;
    eventually("both lookups see the external write", || async {
        store.get_by(c.email, "lu@example.com").await.unwrap().is_none()
            && store.get_by(c.email, "lu2@example.com").await.unwrap().map(|a| a.id) == Some(15)
    })
    .await;
    env.teardown().await;
}

async fn lookups_racing_value_changes_never_end_on_an_old_answer(stack: Stack) {
    let env = Env::new(stack).await;
    let store = env.store();
    let c = Account::columns();
    let mut current = store.create(account(16, "r0"), None).await.unwrap();
    for round in 1..30 {
        let old = current.email.clone();
        let next = Account {
            email: format!("r{round}@example.com"),
            ..current.clone()
        };
        let writer = {
            let store = store.clone();
            let next = next.clone();
            tokio::spawn(async move { store.update(&16, next, None).await.unwrap() })
        };
        let readers: Vec<_> = [old.clone(), next.email.clone()]
            .into_iter()
            .map(|email| {
                let store = store.clone();
                tokio::spawn(async move { store.get_by(c.email, email).await.unwrap() })
            })
            .collect();
        writer.await.unwrap();
        for r in readers {
            r.await.unwrap();
        }
        env.manager.flush_fills().await;
        assert_eq!(
            store.get_by(c.email, old.as_str()).await.unwrap(),
            None,
            "round {round}: old value"
        );
        assert_eq!(
            store.get_by(c.email, next.email.as_str()).await.unwrap(),
            Some(next.clone()),
            "round {round}: new value"
        );
        let both = store
            .get_many_by(c.email, &[old.as_str(), next.email.as_str()])
            .await
            .unwrap();
        assert_eq!(both, vec![None, Some(next.clone())], "round {round}: get_many_by");
        current = next;
    }
    env.teardown().await;
}
