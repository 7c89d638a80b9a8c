// A negative TTL.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(ttl = -60)]
struct User {
    id: i64,
    name: String,
}

fn main() {}
