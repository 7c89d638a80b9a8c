// `#[cache(id)]` put on the struct instead of the key field.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(id)]
struct User {
    id: i64,
    name: String,
}

fn main() {}
