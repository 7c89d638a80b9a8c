// A TTL given as a constant instead of a literal.
const ONE_HOUR: u64 = 3600;

#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(ttl = ONE_HOUR)]
struct User {
    id: i64,
    name: String,
}

fn main() {}
