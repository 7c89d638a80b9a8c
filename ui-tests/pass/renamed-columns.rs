// Column names follow #[sqlx(rename)], #[sqlx(rename_all)] and raw identifiers; identifiers are quoted and escaped.
use storehaus::Cached;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[sqlx(rename_all = "camelCase")]
#[cache(table = "app.user_accounts")]
struct Account {
    #[sqlx(rename = "account_id")]
    id: i64,
    display_name: String,
    #[sqlx(rename = "e\"mail")]
    email: String,
    r#type: String,
}

fn main() {
    assert_eq!(Account::TABLE, "app.user_accounts");
    assert_eq!(Account::PREFIX, "app.user_accounts");
    assert_eq!(Account::COLUMNS, ["account_id", "displayName", "e\"mail", "type"]);
    assert_eq!(Account::ID_COLUMN, "account_id");
    assert_eq!(
        Account::PG.select_all,
        r#"SELECT "account_id", "displayName", "e""mail", "type" FROM "app"."user_accounts""#
    );
    assert_eq!(
        Account::PG.update,
        r#"UPDATE "app"."user_accounts" SET "displayName" = $1, "e""mail" = $2, "type" = $3 WHERE "account_id" = $4 RETURNING "account_id", "displayName", "e""mail", "type""#
    );
    assert_eq!(Account::cache_key("app", &5), "app:app.user_accounts:5");
}
