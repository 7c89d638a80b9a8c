// An enum cannot be a table row.
#[derive(Clone, serde::Serialize, serde::Deserialize, storehaus::Cached)]
enum Status {
    Active,
    Banned,
}

fn main() {}
