// Comparing an integer column with a string.
use storehaus::prelude::*;
use storehaus::Query;

#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
struct User {
    id: i64,
    age: i32,
}

fn main() {
    let _ = Query::<User>::new().filter(User::columns().age.eq("forty"));
}
