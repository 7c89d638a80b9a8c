//! The harness of StoreHaus' tests (`tests/`) and benchmarks (`benches/`).
//!
//! Every test gets its own world, so tests run in parallel and never see
//! each other's data:
//!
//! - a fresh PostgreSQL schema ([`Db`]; `search_path` on its pool) or a fresh
//!   in-memory SQLite database ([`sqlite_memory`]); where a test stops or
//!   restarts PostgreSQL, a private cluster of its own ([`PgServer`]);
//! - a cache manager with a random global key prefix ([`manager`],
//!   [`manager_on`], [`memory_manager`]);
//! - where a test breaks Redis, a private `redis-server` on a free loopback
//!   port ([`RedisServer`]: kill, pause, resume, restart, lock), or a private
//!   Redis Cluster ([`RedisCluster`]) or Sentinel deployment ([`Sentinels`]),
//!   started by `scripts/cluster.sh` and `scripts/sentinel.sh`, or a
//!   `redis-server` in a network namespace of its own behind a veth pair
//!   that drops packets ([`NetnsRedis`]: loss, silent partition) or a proxy
//!   that delays them ([`DelayProxy`]).
//!
//! Assertions read Redis with a plain client ([`raw_redis`], [`raw_get`],
//! [`set_raw`]) and wait with a deadline instead of hanging ([`eventually`],
//! [`wait_for_value`], [`wait_for_fills`], [`reached`]). The records that
//! more than one test file uses live in [`records`]; the fault suite's
//! managers, shared with the fault matrix benchmark, in [`faults`].
//!
//! Services: `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`)
//! and `REDIS_URL` (default `redis://127.0.0.1:6379`); `bash scripts/services.sh`
//! starts both. Every helper panics on a failure: it is the test's failure.
//!
//! ```no_run
//! use storehaus::{CacheParams, GenericStore};
//! use storehaus_testkit::records::users::{self, user, User};
//! use storehaus_testkit::{clear_prefix, manager, raw_redis, redis_url, wait_for_value, Db};
//!
//! # async fn example() {
//! let db = Db::new().await;
//! db.exec(users::CREATE_TABLE_POSTGRES).await;
//! let manager = manager();
//! let store = GenericStore::<User>::new(db.pool.clone(), None, Some(CacheParams::new(manager.clone())));
//! let ada = store.create(user("ada"), None).await.unwrap();
//! store.get_by_id(&ada.id).await.unwrap();
//! let mut redis = raw_redis(&redis_url()).await;
//! wait_for_value(&mut redis, &store.cache_key(&ada.id)).await;
//! clear_prefix(&manager).await;
//! db.cleanup().await;
//! # }
//! ```
#![warn(missing_docs)]

pub mod bench;
mod cache;
mod cluster;
mod db;
pub mod faults;
pub mod logs;
mod netns;
mod postgres;
mod raw;
pub mod records;
mod sentinels;
mod server;
mod wait;

pub use cache::{clear_prefix, manager, manager_on, memory_manager, redis_url, stats};
pub use cluster::{cluster_url, cut_replication, key_slot, raw_cluster, raw_node, RedisCluster, Topology};
pub use db::{database_url, sqlite_memory, Db};
pub use netns::{require as require_netns, DelayProxy, NetFault, NetnsRedis, SKIP_NETNS_VAR};
pub use postgres::{PgServer, LOGICAL_SETTINGS};
pub use raw::{
    command_calls, command_stat, config_set, raw_get, raw_redis, raw_redis_without_timeout, reset_command_calls,
    set_raw, starve, RawConn,
};
pub use sentinels::Sentinels;
pub use server::{free_port, RedisServer};
pub use wait::{eventually, eventually_within, reached, wait_for_fills, wait_for_value, PAUSE_PATIENCE};

/// A random lowercase name with a prefix, e.g. `t_3f9a0c1b2d4e5f60`: the
/// global key prefix of a test's manager, a schema, a file name.
pub fn random_name(prefix: &str) -> String {
    let n: u64 = rand::random();
    format!("{prefix}_{n:016x}")
}

/// Instantiates each named async test function once per stack: as
/// `redis_postgres::NAME`, `cluster_postgres::NAME` (feature `cluster`) and
/// `memory_sqlite::NAME` (feature `sqlite`), each calling
/// `super::NAME(super::Stack::X).await`. The invoking module defines
/// `Stack` with the variants `RedisPostgres`, `ClusterPostgres` and
/// `MemorySqlite`, and the functions, taking a `Stack`.
#[macro_export]
macro_rules! every_stack {
    ($($test:ident),* $(,)?) => {
        /// On Redis + PostgreSQL.
        mod redis_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Stack::RedisPostgres).await;
                }
            )*
        }

        /// On a Redis Cluster + PostgreSQL.
        #[cfg(feature = "cluster")]
        mod cluster_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Stack::ClusterPostgres).await;
                }
            )*
        }

        /// On the in-process cache + in-memory SQLite.
        #[cfg(feature = "sqlite")]
        mod memory_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Stack::MemorySqlite).await;
                }
            )*
        }
    };
}
