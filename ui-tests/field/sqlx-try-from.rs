// #[sqlx(try_from)]: the derive also writes the field, so it must have the column's own type.
#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
struct User {
    id: i64,
    #[sqlx(try_from = "i64")]
    visits: u64,
}

fn main() {}
