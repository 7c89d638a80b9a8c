// An i64 key marked #[cache(id)] on a field not named `id`, with a table and a ttl; the prefix defaults to the table.
use storehaus::Cached;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(table = "orders", ttl = 31_536_000)]
struct Order {
    customer: String,
    #[cache(id)]
    order_no: i64,
    total_cents: i64,
}

fn main() {
    assert_eq!(Order::TABLE, "orders");
    assert_eq!(Order::PREFIX, "orders");
    assert_eq!(Order::TTL, Some(31_536_000));
    assert_eq!(Order::COLUMNS, ["customer", "order_no", "total_cents"]);
    assert_eq!(Order::ID_COLUMN, "order_no");
    // The id is bound first on insert, last on update, whatever its position.
    assert_eq!(
        Order::PG.insert,
        r#"INSERT INTO "orders" ("order_no", "customer", "total_cents") VALUES ($1, $2, $3) RETURNING "customer", "order_no", "total_cents""#
    );
    assert_eq!(
        Order::PG.update,
        r#"UPDATE "orders" SET "customer" = $1, "total_cents" = $2 WHERE "order_no" = $3 RETURNING "customer", "order_no", "total_cents""#
    );
    assert_eq!(
        Order::PG.delete_many,
        r#"DELETE FROM "orders" WHERE "order_no" = ANY($1)"#
    );
    assert_eq!(
        Order::SQLITE.delete_many,
        r#"DELETE FROM "orders" WHERE "order_no" IN ("#
    );
    assert_eq!(Order::cache_key("shop", &9_000_000_000), "shop:orders:9000000000");

    let order = Order {
        customer: "Ada".into(),
        order_no: 42,
        total_cents: 1999,
    };
    assert_eq!(*order.id(), 42i64);
}
