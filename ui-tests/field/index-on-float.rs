// #[cache(index)] on an f64 field: a float cannot be a unique lookup key.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct Reading {
    id: i64,
    #[cache(index)]
    value: f64,
}

fn main() {}
