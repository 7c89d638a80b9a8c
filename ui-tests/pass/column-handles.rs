// `Type::columns()` gives one typed `Column` handle per column (renames applied, skipped fields absent).
use storehaus::{Column, Order, Query};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
pub struct Item {
    #[sqlx(rename = "item_id")]
    pub id: i64,
    pub name: String,
    pub note: Option<String>,
    #[sqlx(skip)]
    pub hits: u64,
}

fn main() {
    let c: ItemColumns = Item::columns();
    let id: Column<Item, i64> = c.id;
    assert_eq!(id.name(), "item_id");
    assert_eq!(c.name.name(), "name");
    let note: Column<Item, Option<String>> = c.note;
    assert_eq!(note.name(), "note");
    let _query: Query<Item> = Query::new()
        .filter(c.name.eq("apple").and(c.note.is_null()))
        .order_by(c.id, Order::Asc);
}
