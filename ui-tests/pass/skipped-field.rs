// A #[sqlx(skip)] field (filled with Default when read) is not a column and is never bound.
use storehaus::Cached;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(table = "products", ttl = 60)]
struct Product {
    id: i64,
    #[sqlx(skip)]
    view_count: u64,
    name: String,
}

// The same columns without the skipped field: a different cached layout.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(table = "products", ttl = 60)]
struct ProductRow {
    id: i64,
    name: String,
}

fn main() {
    assert_eq!(Product::COLUMNS, ["id", "name"]);
    assert_eq!(Product::TTL, Some(60));
    assert_eq!(
        Product::PG.insert,
        r#"INSERT INTO "products" ("id", "name") VALUES ($1, $2) RETURNING "id", "name""#
    );
    assert_eq!(Product::PG, ProductRow::PG);
    assert_eq!(Product::SQLITE, ProductRow::SQLITE);
    // serde still writes the skipped field, so the fingerprints must differ.
    assert_ne!(Product::FINGERPRINT, ProductRow::FINGERPRINT);
    let p = Product {
        id: 1,
        view_count: 0,
        name: "x".into(),
    };
    assert_eq!(*p.id(), 1);
}
