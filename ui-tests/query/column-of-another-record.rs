// Filtering users with a column of another record type.
use storehaus::prelude::*;
use storehaus::Query;

#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
struct User {
    id: i64,
    name: String,
}

#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
struct Post {
    id: i64,
    title: String,
}

fn main() {
    let _ = Query::<User>::new().filter(Post::columns().title.eq("hello"));
}
