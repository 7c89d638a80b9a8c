// A TTL with a fraction of a second.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(ttl = 1.5)]
struct User {
    id: i64,
    name: String,
}

fn main() {}
