// The same key twice: `ttl` is given two values.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(ttl = 60, ttl = 120)]
struct User {
    id: i64,
    name: String,
}

fn main() {}
