// A TTL longer than one year (31_536_000 seconds).
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(ttl = 31_536_001)]
struct User {
    id: i64,
    name: String,
}

fn main() {}
