// A TTL written as a string.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(ttl = "3600")]
struct User {
    id: i64,
    name: String,
}

fn main() {}
