// A TTL of zero seconds.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(ttl = 0)]
struct User {
    id: i64,
    name: String,
}

fn main() {}
