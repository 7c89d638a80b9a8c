// Comparing a column with a value of another type (a newtype column, so the
// diagnostic names no From impls that depend on which crates are linked).
use storehaus::prelude::*;
use storehaus::Query;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, sqlx::Type)]
#[sqlx(transparent)]
struct Age(i32);

#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
struct User {
    id: i64,
    age: Age,
}

fn main() {
    let _ = Query::<User>::new().filter(User::columns().age.eq("forty"));
}
