// Looking a record up by a column that is not declared #[cache(index)].
use storehaus::prelude::*;

#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
struct User {
    id: i64,
    email: String,
}

async fn read(store: GenericStore<User>) {
    let _ = store.get_by(User::columns().email, "ada@example.com").await;
}

fn main() {
    let _ = read;
}
