// Naming a column the record does not have.
use storehaus::prelude::*;
use storehaus::Query;

#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
struct User {
    id: i64,
    name: String,
}

fn main() {
    let _ = Query::<User>::new().filter(User::columns().email.eq("a@b"));
}
