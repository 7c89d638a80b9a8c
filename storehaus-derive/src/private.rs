//! The path every generated item goes through: `::storehaus::__private`, the
//! facade's hidden module (thiserror's `private.rs` idea), so the generated
//! code never depends on what the user imported.

use proc_macro2::TokenStream;
use quote::quote;

/// `::storehaus::__private`.
pub fn path() -> TokenStream {
    quote!(::storehaus::__private)
}
