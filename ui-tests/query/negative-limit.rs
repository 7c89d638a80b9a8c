// A negative limit: `limit` and `offset` take a `u32`, so it cannot compile.
use storehaus::prelude::*;
use storehaus::Query;

#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
struct User {
    id: i64,
    name: String,
}

fn main() {
    let _ = Query::<User>::new().limit(-1);
}
