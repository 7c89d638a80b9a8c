// Two fields mapped to the same column.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    id: i64,
    name: String,
    #[sqlx(rename = "name")]
    display_name: String,
}

fn main() {}
