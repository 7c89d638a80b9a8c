// A primary key without a Display form (Vec<u8>) cannot appear in a cache key.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct Blob {
    id: Vec<u8>,
    size: i64,
}

fn main() {}
