// Calling get_by_id with an integer on a store whose records have Uuid ids.
use storehaus::prelude::*;

#[derive(Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, Cached)]
struct User {
    id: uuid::Uuid,
    name: String,
}

async fn read(store: GenericStore<User>) {
    let _ = store.get_by_id(&42).await;
}

fn main() {
    let _ = read;
}
