//! Cached queries with O(1) invalidation. Run with `cargo run --example queries`
//! (same backends as the quick start: see `examples/support/mod.rs`).

use serde::{Deserialize, Serialize};
use storehaus::prelude::*;
use storehaus::{Order, Query};

mod support;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, Cached)]
#[cache(table = "example_products", ttl = 7200, prefix = "products")]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub price_cents: i64,
}

const CREATE_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS example_products (id bigint PRIMARY KEY, name text NOT NULL, price_cents bigint NOT NULL)";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let support::Backends { db_pool, cache_manager } = support::open("example_queries", CREATE_TABLE).await?;
    let store = GenericStore::<Product>::new(db_pool, None, Some(CacheParams::new(cache_manager.clone())));
    let base: i64 = rand_base();
    for (i, (name, price)) in [("pen", 150), ("notebook", 450), ("bag", 2900)].into_iter().enumerate() {
        store
            .create(
                Product {
                    id: base + i as i64,
                    name: name.into(),
                    price_cents: price,
                },
                None,
            )
            .await?;
    }

    let c = Product::columns();
    let cheap = || {
        Query::new()
            .filter(c.id.ge(base).and(c.price_cents.lt(1000)))
            .order_by(c.price_cents, Order::Asc)
    };
    let first = store.find(cheap()).await?;
    println!(
        "find      {:?} (database, then cached)",
        first.iter().map(|p| &p.name).collect::<Vec<_>>()
    );
    cache_manager.flush_fills().await; // the result is cached once its fill has landed
    let again = store.find(cheap()).await?;
    println!(
        "find      {:?} (cache)",
        again.iter().map(|p| &p.name).collect::<Vec<_>>()
    );

    store
        .update(
            &base,
            Product {
                id: base,
                name: "pen".into(),
                price_cents: 1200,
            },
            None,
        )
        .await?;
    let after = store.find(cheap()).await?;
    println!(
        "update    every cached query of the store is stale now (one INCR): {:?}",
        after.iter().map(|p| &p.name).collect::<Vec<_>>()
    );
    println!(
        "count     {} products of this run",
        store.count(Query::new().filter(c.id.ge(base))).await?
    );
    let stats = cache_manager.get_stats().await?;
    println!("stats     hits={} misses={}", stats.hits, stats.misses);

    store.delete_many(&[base, base + 1, base + 2]).await?;
    Ok(())
}

/// A fresh id range per run, so reruns against a persistent database work.
fn rand_base() -> i64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (nanos % 1_000_000_000_000) as i64 * 10
}
