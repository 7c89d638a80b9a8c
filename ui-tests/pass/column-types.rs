// Common column types (optional, boolean, float, time, JSON, bytes) are accepted for PostgreSQL and SQLite.
use storehaus::Cached;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, sqlx::FromRow, storehaus::Cached)]
#[cache(table = "events")]
struct Event {
    id: uuid::Uuid,
    note: Option<String>,
    urgent: bool,
    score: f64,
    at: chrono::DateTime<chrono::Utc>,
    payload: sqlx::types::Json<Vec<String>>,
    raw: Vec<u8>,
}

fn main() {
    assert_eq!(
        Event::COLUMNS,
        ["id", "note", "urgent", "score", "at", "payload", "raw"]
    );
    assert_eq!(
        Event::PG.insert,
        r#"INSERT INTO "events" ("id", "note", "urgent", "score", "at", "payload", "raw") VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING "id", "note", "urgent", "score", "at", "payload", "raw""#
    );
}
