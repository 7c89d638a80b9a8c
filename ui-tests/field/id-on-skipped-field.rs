// The primary key is marked #[sqlx(skip)], so it is not a column.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    #[cache(id)]
    #[sqlx(skip)]
    id: i64,
    name: String,
}

fn main() {}
