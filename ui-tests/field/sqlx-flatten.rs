// #[sqlx(flatten)]: a cached record maps to the columns of one table.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow)]
struct Address {
    city: String,
}

#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    id: i64,
    #[sqlx(flatten)]
    address: Address,
}

fn main() {}
