// #[cache(index)] on a #[sqlx(skip)] field, which is not a column.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    id: i64,
    #[cache(index)]
    #[sqlx(skip)]
    nickname: String,
}

fn main() {}
