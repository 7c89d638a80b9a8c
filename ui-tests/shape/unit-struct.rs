// A unit struct has no columns.
#[derive(Clone, serde::Serialize, serde::Deserialize, storehaus::Cached)]
struct Marker;

fn main() {}
