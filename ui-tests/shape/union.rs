// A union cannot be a table row.
#[derive(Clone, Copy, storehaus::Cached)]
union Bits {
    id: i64,
    raw: u64,
}

fn main() {}
