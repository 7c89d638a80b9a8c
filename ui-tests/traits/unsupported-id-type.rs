// A floating-point primary key: f64 cannot be a cache id.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    id: f64,
    name: String,
}

fn main() {}
