// A prefix starting with `__`, which StoreHaus reserves.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(prefix = "__users")]
struct User {
    id: i64,
    name: String,
}

fn main() {}
