// `table` without a value.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(table)]
struct User {
    id: i64,
    name: String,
}

fn main() {}
